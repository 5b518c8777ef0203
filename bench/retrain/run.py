"""Retrain benchmark: targeted retraining against full retraining on a task with a drifted slice, and the
trainer's throughput against a bare torch loop on the same model and data.

The task is :mod:`kaizen_trainer.synthetic` (twelve scenarios; after the drift, refund answers change). A baseline is
trained on pre-drift data. Then, evaluated after every step on the post-drift holdout:

* **targeted**: fine-tune the baseline on the trainer's own curation of consented refund corrections mixed half and
  half with replay data (stale refund replay rows superseded), until the refund slice is back within 1 point of
  its pre-drift accuracy;
* **full**: retrain from the same initial weights on the whole corrected dataset, until every slice is back within 1
  point of its pre-drift accuracy.

Both use the same hyperparameters (a RetrainJob has one set, whatever its data). Compute is steps x tokens seen.
The steps a tiny model needs depend on its random initialisation (over ``INITS``, 4 to 15 targeted steps, 53 to
71 full), so the comparison runs from ``INITS`` initialisations and is judged on the median ratio; every
init is reported. Targets (issue 3): median targeted <= 20 % of full; no other slice down more than 0.5 point in
any init.

LoRA (issue 11): full fine-tuning against a LoRA adapter (rank 8 on the attention's query/key/value projection)
of the same baseline on the same curated targeted data, with the same batch order and step budget (``LORA_STEPS``),
each at its usual rate (LoRA's ten times full fine-tuning's: it moves few weights from a zero start). The model is
larger than the tiny one above (4 layers of width 256, 3.2M parameters): at width 64 a step is framework overhead,
not matmuls, so nothing LoRA saves (weight gradients, optimizer state) could show. Measured: time of the training
loop (best of three interleaved rounds; wall time, and on a CPU also the process's CPU time, which on one torch
thread is what wall time is on an idle core: on this shared 2-core machine wall time mostly measures other people's
jobs, so on a CPU the time target is judged on CPU time, and both are reported), gradient + optimizer-state bytes
after the first step (and peak CUDA memory on a GPU), trainable parameters, the refund slice and the other slices
at the end. Targets: slice within 1 point of full; <= 10 % of its optimizer+gradient memory; <= 0.8x its time.

Throughput: the trainer's loop (``kaizen_trainer.train.train``) against a bare AdamW loop over the same padded
batches, best of three interleaved rounds each, target >= 0.9x. On a GPU the throughput model is ~100M parameters
in bf16, and GPU utilisation is sampled with nvidia-smi. Prints the table and writes it, with the machine, to
``bench/results/retrain.json``.

    .venv/bin/python bench/retrain/run.py [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "trainer-image"))

import torch  # noqa: E402

from kaizen.api.retrainjob import DataSpec, Hyperparameters, LoraSettings, Targets  # noqa: E402
from kaizen.api.trainer import Example  # noqa: E402
from kaizen_trainer import adapters, curate, evaluate, modeling, synthetic, train  # noqa: E402
import preferences  # noqa: E402  (bench/retrain/preferences.py: SFT vs DPO vs KTO, under "preferences")

RESULTS = ROOT / "bench" / "results" / "retrain.json"
TASK = "sequence-classification"
EVAL_EVERY = 1
WITHIN = 0.01  # "within 1 point"
OTHERS_MAX_DROP = 0.005  # "no other slice down more than 0.5 point"
BASELINE_STEPS = 300
ROUNDS = 3
#: Seeds of the tiny model's initial weights (an odd number, so the median is one run's).
INITS = (0, 1, 2, 3, 4)
LORA_SIZE = dict(layers=4, width=256, heads=4)
LORA_STEPS = 40
FULL_LR, LORA_LR = 1e-3, 1e-2
#: Rank 8 on the attention's input projection (GPT-2's c_attn: query, key and value), the LoRA paper's choice.
LORA = LoraSettings(rank=8, alpha=16, dropout=0.0, target_modules=["c_attn"])


def rows(dicts: list[dict], role: str = "replay") -> list[curate.Row]:
    return [curate.Row(d["id"], d["input"], d["output"], role, d.get("cohort"), d.get("scenario")) for d in dicts]


def per_slice(model, encoder, holdout, device) -> dict[str, float]:
    scored = evaluate.score(model, encoder, holdout, device)
    return {s: sum(x.correct for x in scored if x.row.scenario == s) / max(1, sum(x.row.scenario == s for x in scored))
            for s in synthetic.ALL_SCENARIOS}


def run_until(model, encoder, train_rows, hp, device, done) -> dict[str, Any]:
    """Train until ``done(accuracies)`` holds at an evaluation point; returns steps, tokens and the accuracies."""
    state: dict[str, Any] = {}

    def until(step: int, tokens: int) -> bool:
        if step % EVAL_EVERY:
            return False
        accuracies = done.evaluate(model)
        model.train()
        state.update(step=step, tokens=tokens, accuracies=accuracies)
        return done(accuracies)

    with tempfile.TemporaryDirectory() as checkpoints:
        stats = train.train(model, encoder, encoder.encode_all(train_rows), hp, device, Path(checkpoints),
                            "bench", until=until)
    reached = stats.steps == state.get("step") and done(state["accuracies"])
    return {"steps": state["step"], "tokens": state["tokens"], "reached": reached, "accuracies": state["accuracies"]}


class Goal:
    def __init__(self, scenarios, reference, evaluate_fn):
        self.scenarios, self.reference, self.evaluate = scenarios, reference, evaluate_fn

    def __call__(self, accuracies: dict[str, float]) -> bool:
        return all(accuracies[s] >= self.reference[s] - WITHIN for s in self.scenarios)


def compute_comparison(device: modeling.Device, seed: int) -> dict[str, Any]:
    """Targeted against full retraining from the initial weights of ``seed``."""
    tok = synthetic.tokenizer()
    init = synthetic.model(TASK, tok, seed=seed)
    encoder = modeling.Encoder(TASK, init, tok, max_length=32)
    hp = Hyperparameters(max_steps=2000, learning_rate=2e-3, batch_size=32, checkpoint_every_steps=10**6, seed=1)

    every = synthetic.ALL_SCENARIOS
    pre_drift = synthetic.dataset(4800, seed=1, task=TASK, scenarios=every)
    holdout_before = rows(synthetic.dataset(600, seed=99, task=TASK, prefix="ho", scenarios=every))
    holdout_after = rows(synthetic.dataset(600, seed=99, task=TASK, drifted=True, prefix="ho", scenarios=every))

    # The served model was trained to convergence (a fixed budget well past 100 % on every slice), as real ones are.
    baseline = copy.deepcopy(init)
    with tempfile.TemporaryDirectory() as checkpoints:
        base = train.train(baseline, encoder, encoder.encode_all(rows(pre_drift)),
                           hp.model_copy(update={"max_steps": BASELINE_STEPS}), device, Path(checkpoints), "base")
    before = per_slice(baseline, encoder, holdout_before, device)
    after = per_slice(baseline, encoder, holdout_after, device)

    # Targeted: the trainer's curation of consented corrections + replay, from the baseline.
    sources = [curate.Source("feedback.jsonl", "feedback", "-", tuple(
                   Example.model_validate(r) for r in synthetic.feedback(240, seed=7, task=TASK))),
               curate.Source("replay.jsonl", "replay", "-", tuple(Example.model_validate(r) for r in pre_drift))]
    curated = curate.curate(sources, DataSpec(targeted_ratio=0.5, min_rows=1), Targets(scenarios=["refund"]), seed=1)
    targeted_model = copy.deepcopy(baseline)
    targeted_goal = Goal([synthetic.DRIFTED], before, lambda m: per_slice(m, encoder, holdout_after, device))
    targeted = run_until(targeted_model, encoder, curated.train, hp, device, targeted_goal)
    final = per_slice(targeted_model, encoder, holdout_after, device)
    others = {s: round(final[s] - after[s], 4) for s in synthetic.ALL_SCENARIOS if s != synthetic.DRIFTED}

    # Full: every row of the corrected dataset, from the same initial weights as the baseline.
    full_model = copy.deepcopy(init)
    full_goal = Goal(synthetic.ALL_SCENARIOS, before, lambda m: per_slice(m, encoder, holdout_after, device))
    everything = rows(synthetic.dataset(4800, seed=1, task=TASK, drifted=True, scenarios=every))
    full = run_until(full_model, encoder, everything, hp, device, full_goal)
    ratio = targeted["tokens"] / full["tokens"]
    return {
        "seed": seed,
        "baseline": {"steps": base.steps, "preDriftAccuracy": before, "postDriftAccuracy": after},
        "targeted": {**targeted, "trainRows": len(curated.train), "otherSlicesChange": others},
        "full": {**full, "trainRows": len(everything)},
        "computeRatio": round(ratio, 4),
        "met": targeted["reached"] and full["reached"] and all(v >= -OTHERS_MAX_DROP for v in others.values()),
    }


def compute_comparisons(device: modeling.Device) -> dict[str, Any]:
    """The comparison from every initialisation of ``INITS``, judged on the median ratio."""
    runs = [compute_comparison(device, seed) for seed in INITS]
    ratios = sorted(r["computeRatio"] for r in runs)
    median = ratios[len(ratios) // 2]
    return {
        "task": f"synthetic support-bot intents ({len(synthetic.ALL_SCENARIOS)} scenarios, refund drifted), tiny "
                "GPT-2 classifier",
        "inits": runs,
        "computeRatio": median,
        "computeRatioRange": [ratios[0], ratios[-1]],
        "targets": {"computeRatioMax": 0.2, "otherSliceMaxDrop": OTHERS_MAX_DROP, "judgedOn": "median of inits"},
        "met": median <= 0.2 and all(r["met"] for r in runs),
    }


def targeted_rows(pre_drift: list[dict]) -> list[curate.Row]:
    """The trainer's curation of 240 consented refund corrections mixed half and half with replay."""
    sources = [curate.Source("feedback.jsonl", "feedback", "-", tuple(
                   Example.model_validate(r) for r in synthetic.feedback(240, seed=7, task=TASK))),
               curate.Source("replay.jsonl", "replay", "-", tuple(Example.model_validate(r) for r in pre_drift))]
    return curate.curate(sources, DataSpec(targeted_ratio=0.5, min_rows=1), Targets(scenarios=["refund"]),
                         seed=1).train


def lora_comparison(device: modeling.Device) -> dict[str, Any]:
    """Full fine-tuning against a LoRA adapter, same baseline, data, batch order and steps (module docstring)."""
    tok = synthetic.tokenizer()
    init = synthetic.model(TASK, tok, seed=0, **LORA_SIZE)
    encoder = modeling.Encoder(TASK, init, tok, max_length=32)
    every = synthetic.ALL_SCENARIOS
    pre_drift = synthetic.dataset(4800, seed=1, task=TASK, scenarios=every)
    holdout_after = rows(synthetic.dataset(600, seed=99, task=TASK, drifted=True, prefix="ho", scenarios=every))
    hp = Hyperparameters(max_steps=BASELINE_STEPS, learning_rate=FULL_LR, batch_size=32,
                         checkpoint_every_steps=10**6, seed=1)
    baseline = copy.deepcopy(init)
    with tempfile.TemporaryDirectory() as checkpoints:
        train.train(baseline, encoder, encoder.encode_all(rows(pre_drift)), hp, device, Path(checkpoints), "base")
    after = per_slice(baseline, encoder, holdout_after, device)
    data = encoder.encode_all(targeted_rows(pre_drift))

    def fine_tune(side: str) -> tuple[Any, train.TrainStats]:
        model = copy.deepcopy(baseline)
        if side == "lora":
            model = adapters.attach(model, TASK, LORA, "lora", seed=1)
        if device.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        cpu = time.process_time()
        with tempfile.TemporaryDirectory() as checkpoints:
            stats = train.train(model, encoder, data, hp.model_copy(update={
                "max_steps": LORA_STEPS, "learning_rate": FULL_LR if side == "full" else LORA_LR}),
                device, Path(checkpoints), side)
        cpus[side].append(round(time.process_time() - cpu, 2))
        return model, stats

    sides, walls, cpus = {}, {"full": [], "lora": []}, {"full": [], "lora": []}
    # Interleaved rounds, best of each (as for throughput): other work on a shared machine slows whichever side it
    # lands on. Every round trains the same weights; the first is also evaluated.
    for round_ in range(ROUNDS):
        for side in ("full", "lora"):
            model, stats = fine_tune(side)
            walls[side].append(round(stats.seconds, 2))
            if round_:
                continue
            trainable, total = adapters.parameters(model)
            final = per_slice(model, encoder, holdout_after, device)
            sides[side] = {
                "learningRate": FULL_LR if side == "full" else LORA_LR, "steps": stats.steps,
                "optimizerAndGradientBytes": stats.optimizer_bytes, "trainableParameters": trainable,
                "parameters": total,
                "peakCudaBytes": torch.cuda.max_memory_allocated() if device.device.type == "cuda" else None,
                "slice": final[synthetic.DRIFTED],
                "otherSlicesChange": {s: round(final[s] - after[s], 4) for s in every if s != synthetic.DRIFTED},
            }
    for side in sides:
        sides[side].update(wallSeconds=min(walls[side]), wallSecondsRounds=walls[side], cpuSeconds=min(cpus[side]),
                           cpuSecondsRounds=cpus[side])
    full, lora = sides["full"], sides["lora"]
    result = {
        "model": f"GPT-2 classifier, {full['parameters'] / 1e6:.1f}M parameters ({LORA_SIZE})",
        "adapter": LORA.model_dump(by_alias=True), "baselinePostDrift": after, "full": full, "lora": lora,
        "optimizerMemoryRatio": round(lora["optimizerAndGradientBytes"] / full["optimizerAndGradientBytes"], 4),
        "wallTimeRatio": round(lora["wallSeconds"] / full["wallSeconds"], 3),
        "cpuTimeRatio": round(lora["cpuSeconds"] / full["cpuSeconds"], 3),
        "timeJudgedOn": "wallTimeRatio" if device.device.type == "cuda" else "cpuTimeRatio",
        "sliceGapPoints": round(100 * (full["slice"] - lora["slice"]), 2),
        "otherSlicesWorstGapPoints": round(100 * max(
            full["otherSlicesChange"][s] - lora["otherSlicesChange"][s] for s in full["otherSlicesChange"]), 2),
        "trainableParameterRatio": round(lora["trainableParameters"] / full["trainableParameters"], 4),
        "targets": {"sliceGapPointsMax": 1, "optimizerMemoryRatioMax": 0.1, "wallTimeRatioMax": 0.8},
    }
    result["met"] = (result["sliceGapPoints"] <= 1 and result["optimizerMemoryRatio"] <= 0.1
                     and result[result["timeJudgedOn"]] <= 0.8)
    return result


class GPUSampler:
    """Samples GPU utilisation with nvidia-smi while a block runs."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                  "-i", os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]],
                                 capture_output=True, text=True, check=False)
            if out.returncode == 0 and out.stdout.strip():
                self.samples.append(float(out.stdout.split()[0]))

    def __enter__(self) -> GPUSampler:
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()

    @property
    def mean(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def bare_loop(model, batches, device: modeling.Device, lr: float) -> float:
    """The reference: AdamW over the same padded batches, nothing else. Returns tokens/s."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.to(device.device).train()
    autocast = torch.autocast(device_type=device.device.type, dtype=device.autocast,
                              enabled=device.autocast is not None)
    tokens = 0
    began = time.perf_counter()
    for batch in batches:
        batch = {k: v.to(device.device) for k, v in batch.items()}
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
    if device.device.type == "cuda":
        torch.cuda.synchronize()
    return tokens / (time.perf_counter() - began)


def throughput(device: modeling.Device) -> dict[str, Any]:
    """Trainer loop vs bare loop, same model, same data, same batch order."""
    tok = synthetic.tokenizer()
    gpu = device.device.type == "cuda"
    # ~100M parameters on a GPU (GPT-2 small's width, 14 layers); a small one on CPU so the run stays short.
    size = dict(layers=14, width=768, heads=12, positions=512) if gpu else dict(layers=4, width=256, heads=4)
    steps, batch_size, length = (100, 32, 512) if gpu else (30, 32, 64)
    model = synthetic.model("causal-lm", tok, **size)
    params = sum(p.numel() for p in model.parameters())
    encoder = modeling.Encoder("causal-lm", model, tok, max_length=length)
    data = rows(synthetic.dataset(2000, seed=3, task="causal-lm"))
    if gpu:  # a GPU is measured on sequences of a realistic length: ~300 tokens of several requests each
        data = [curate.Row(r.id, " ".join(d.input for d in data[i: i + 30]), r.target, r.origin, r.cohort,
                           r.scenario) for i, r in enumerate(data)]
    encoded = encoder.encode_all(data)
    hp = Hyperparameters(max_steps=steps, learning_rate=1e-4, batch_size=batch_size, checkpoint_every_steps=10**6)
    order = train.batch_order(len(encoded), hp)
    batches = [encoder.batch([encoded[i] for i in next(order)], torch.device("cpu")) for _ in range(steps)]

    warm = copy.deepcopy(model)  # one warm-up, so neither side pays for lazy initialisation
    bare_loop(warm, batches[:5], device, hp.learning_rate)
    # Interleaved rounds, best of each: other work on a shared machine slows whichever side it lands on.
    bare, trainer, utilisation = [], [], {"bare": [], "trainer": []}
    for _ in range(ROUNDS):
        with GPUSampler() as sampler:
            bare.append(bare_loop(copy.deepcopy(model), batches, device, hp.learning_rate))
        utilisation["bare"].append(sampler.mean)
        with tempfile.TemporaryDirectory() as checkpoints, GPUSampler() as sampler:
            trainer.append(train.train(copy.deepcopy(model), encoder, encoded, hp, device, Path(checkpoints),
                                       "bench").tokens_per_second)
        utilisation["trainer"].append(sampler.mean)
    results = {"bareTokensPerSecond": round(max(bare)), "trainerTokensPerSecond": round(max(trainer))}
    results["ratio"] = round(results["trainerTokensPerSecond"] / results["bareTokensPerSecond"], 3)
    peak = {side: max((u for u in values if u is not None), default=None) for side, values in utilisation.items()}
    return {"model": f"GPT-2 causal LM, {params / 1e6:.1f}M parameters", "device": device.name, "steps": steps,
            "batchSize": batch_size, "rounds": ROUNDS, **results, "gpuUtilisationPercent": peak,
            "target": 0.9, "met": results["ratio"] >= 0.9}


def machine(device: modeling.Device) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torchThreads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if device.device.type == "cuda" else None,
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            # Other work on the machine slows both sides of each comparison: recorded, not hidden.
            "loadAverage": os.getloadavg()[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results file (default {RESULTS})")
    args = parser.parse_args()
    device = modeling.pick_device()
    if device.device.type == "cpu" and os.cpu_count() and os.cpu_count() <= 4:
        torch.set_num_threads(1)  # tiny models on a small, shared CPU: more threads only spin against each other
    began = time.perf_counter()
    compute = compute_comparisons(device)
    lora = lora_comparison(device)
    speed = throughput(device)
    report = {"machine": machine(device), "compute": compute, "lora": lora, "throughput": speed,
              "seconds": round(time.perf_counter() - began, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"Retrain benchmark on {device.name} ({report['machine']['cpu']}, {report['machine']['cores']} cores)")
    print(f"{'init':>6}{'targeted steps':>16}{'full steps':>12}{'ratio':>8}  other slices' worst change")
    for r in compute["inits"]:
        print(f"{r['seed']:>6}{r['targeted']['steps']:>16}{r['full']['steps']:>12}{r['computeRatio']:>8.1%}  "
              f"{min(r['targeted']['otherSlicesChange'].values()):+.3f}")
    print(f"compute targeted/full, median of {len(INITS)} inits = {compute['computeRatio']:.1%} "
          f"(range {compute['computeRatioRange'][0]:.1%}-{compute['computeRatioRange'][1]:.1%}; target <= 20%): "
          f"{'met' if compute['met'] else 'NOT met'}")
    full, adapter = lora["full"], lora["lora"]
    print(f"full vs LoRA ({lora['model']}, {LORA_STEPS} steps each): wall {full['wallSeconds']} / "
          f"{adapter['wallSeconds']} s = {lora['wallTimeRatio']}, CPU {full['cpuSeconds']} / {adapter['cpuSeconds']} s "
          f"= {lora['cpuTimeRatio']} (target <= 0.8 on {lora['timeJudgedOn']}); optimizer+gradient "
          f"{full['optimizerAndGradientBytes']} / {adapter['optimizerAndGradientBytes']} B = "
          f"{lora['optimizerMemoryRatio']:.1%} (target <= 10%); trainable {full['trainableParameters']} / "
          f"{adapter['trainableParameters']}; refund {full['slice']:.3f} / {adapter['slice']:.3f}, gap "
          f"{lora['sliceGapPoints']} points (target <= 1); other slices' worst change "
          f"{min(full['otherSlicesChange'].values()):+.3f} / {min(adapter['otherSlicesChange'].values()):+.3f}: "
          f"{'met' if lora['met'] else 'NOT met'}")
    print(f"throughput {speed['model']} on {speed['device']}: trainer {speed['trainerTokensPerSecond']} tok/s, "
          f"bare loop {speed['bareTokensPerSecond']} tok/s, ratio {speed['ratio']} (target >= 0.9): "
          f"{'met' if speed['met'] else 'NOT met'}; GPU utilisation {speed['gpuUtilisationPercent']}")
    print(f"wrote {args.out}")
    preferences.report(args.out, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
