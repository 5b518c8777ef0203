"""LoRA throughput of the trainer's loop on a ~1B-parameter model built from a config (TinyLlama's shape: 22 layers of
width 2048, random weights, no download), in bf16: tokens/s and model FLOPs utilisation (MFU). Run by
``trainer-image/gpu_check.sh`` on a GPU; ``--size tiny`` runs the same code on a small model anywhere (the tests).

The model FLOPs of a LoRA step per token are ``4 N + 6 N_lora + 12 L s d``: the frozen weights' matmuls forward and
their input gradients backward (no weight gradients: 4 N, N the base's matmul weights, the embedding lookup
excluded), the adapter's forward and both of its backward matmuls, and attention's score and value products forward
and backward (PaLM's accounting, s the sequence length). MFU divides what that gives per second by the GPU's dense
bf16 peak: a table of common GPUs, or ``KAIZEN_PEAK_TFLOPS``; unknown, MFU is left out.

    python bench/retrain/lora_gpu.py [--size 1b|tiny] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "trainer-image"))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402

from kaizen.api.retrainjob import Hyperparameters, LoraSettings  # noqa: E402
from kaizen_trainer import adapters, modeling, synthetic, train  # noqa: E402

#: Dense bf16 peak, TFLOP/s, by a substring of torch.cuda.get_device_name().
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0,
               "L4": 121.0, "A10": 125.0, "RTX 4090": 165.0, "MI300X": 1307.0}
SIZES = {
    "1b": dict(config=dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                           num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048),
               batch=8, length=1024, steps=30, warmup=5),
    "tiny": dict(config=dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128),
                 batch=4, length=64, steps=4, warmup=1),
}
LORA = LoraSettings(rank=16, alpha=32, dropout=0.0,
                    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def peak_tflops(device: modeling.Device) -> float | None:
    if os.environ.get("KAIZEN_PEAK_TFLOPS"):
        return float(os.environ["KAIZEN_PEAK_TFLOPS"])
    if device.device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(0)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def measure(size: str) -> dict:
    spec = SIZES[size]
    device = modeling.pick_device()
    config = LlamaConfig(**spec["config"])
    # Built where it trains and in bf16 on a GPU: a 1B model in fp32 on the host would take minutes to initialise.
    dtype = torch.bfloat16 if device.autocast else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device.device):
            model = AutoModelForCausalLM.from_config(config)
    finally:
        torch.set_default_dtype(previous)
    base_params = sum(p.numel() for p in model.parameters())
    matmul_params = base_params - model.get_input_embeddings().weight.numel()
    model = adapters.attach(model, "causal-lm", LORA, "lora", seed=0)
    trainable, _ = adapters.parameters(model)

    batch, length = spec["batch"], spec["length"]
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(4, config.vocab_size, (batch * (spec["steps"] + spec["warmup"]), length),
                        generator=generator).tolist()
    rows = [modeling.Encoded(row, row) for row in ids]  # causal LM loss on every token
    encoder = modeling.Encoder("causal-lm", model, synthetic.tokenizer(), length)
    hp = Hyperparameters(learning_rate=2e-4, batch_size=batch, max_length=length, checkpoint_every_steps=10**6)
    with tempfile.TemporaryDirectory() as checkpoints:
        # Warm-up: kernels chosen and memory pools grown outside the measured steps.
        train.train(model, encoder, rows[: batch * spec["warmup"]], hp.model_copy(update={"max_steps": spec["warmup"]}),
                    device, Path(checkpoints), "warmup")
        if device.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        stats = train.train(model, encoder, rows[batch * spec["warmup"]:], hp.model_copy(update={
            "max_steps": spec["steps"]}), device, Path(checkpoints), "measured")
    layers, width = config.num_hidden_layers, config.hidden_size
    flops_per_token = 4 * matmul_params + 6 * trainable + 12 * layers * length * width
    achieved = flops_per_token * stats.tokens_per_second
    peak = peak_tflops(device)
    return {
        "model": f"Llama config ({size}): {base_params / 1e9:.2f}B parameters, {layers} layers, width {width}",
        "device": device.name, "gpu": torch.cuda.get_device_name(0) if device.device.type == "cuda" else None,
        "dtype": str(dtype).removeprefix("torch."), "lora": LORA.model_dump(by_alias=True),
        "parameters": base_params + trainable, "trainableParameters": trainable, "batch": batch,
        "sequenceLength": length, "steps": stats.steps, "tokensPerSecond": round(stats.tokens_per_second, 1),
        "modelFlopsPerToken": flops_per_token, "achievedTflops": round(achieved / 1e12, 2),
        "peakTflops": peak, "mfu": round(achieved / (peak * 1e12), 4) if peak else None,
        "optimizerAndGradientBytes": stats.optimizer_bytes,
        "peakCudaBytes": torch.cuda.max_memory_allocated() if device.device.type == "cuda" else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument("--out", type=Path, help="also write the result here (JSON)")
    args = parser.parse_args()
    result = measure(args.size)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    mfu = f"{result['mfu']:.1%}" if result["mfu"] is not None else "unknown (no peak known for this device)"
    print(f"LoRA on {result['model']} in {result['dtype']} on {result['gpu'] or result['device']}: "
          f"{result['tokensPerSecond']:.0f} tokens/s, MFU {mfu}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
