"""LoRA adapters (peft) for ``method: lora`` and ``qlora``: attach one to the model a retrain fine-tunes, write it so
that it names its base, and load a saved one back onto its base (the trainer's baseline, the model server's model).

An adapter directory holds ``adapter_model.safetensors`` and ``adapter_config.json``, whose
``base_model_name_or_path`` is the base model's URI as the job named it (never the local copy the trainer read), so
any pod, or vLLM with ``--enable-lora``, can find the base. A retrain whose baseline is an adapter goes on training
that adapter (same rank and modules), so its candidate needs the same base.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import json
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kaizen.api.retrainjob import LoraSettings, Method, Task
from kaizen_trainer.errors import invalid_config

if TYPE_CHECKING:
    from peft import PeftModel

ADAPTER_CONFIG = "adapter_config.json"


def adapter_base(directory: str) -> str | None:
    """The base model URI a saved adapter names, or None when ``directory`` holds no adapter."""
    path = Path(directory) / ADAPTER_CONFIG
    if not path.is_file():
        return None
    try:
        base = json.loads(path.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError) as error:
        raise invalid_config(f"cannot read the adapter config {path}: {error}") from None
    if not base:
        raise invalid_config(f"the adapter in {directory} names no base model: set base_model_name_or_path in its "
                             f"{ADAPTER_CONFIG} to the base model's URI")
    return str(base)


def check_method(method: Method) -> None:
    """Fail before any loading when the method cannot run here: qlora needs CUDA and bitsandbytes, and is never
    quietly replaced by lora."""
    if method != "qlora":
        return
    if not torch.cuda.is_available():
        raise invalid_config("method qlora quantises the base to 4 bits with bitsandbytes, which needs a CUDA GPU, and "
                             "this pod has none: request resources.gpus, or use method lora")
    try:
        import bitsandbytes  # noqa: F401 -- qlora's quantisation kernels
    except ImportError:
        raise invalid_config("method qlora needs bitsandbytes, which this trainer image lacks: build the image with "
                             "it (pip install bitsandbytes), or use method lora") from None


def quantisation(method: Method):
    """transformers' 4-bit NF4 quantisation config for qlora's base, else None."""
    if method != "qlora":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def peft_model(model: torch.nn.Module) -> PeftModel | None:
    """``model`` as the peft model (a base with an adapter) it is, or None for a model without an adapter.

    The trainer passes both kinds as a ``PreTrainedModel``, which a peft model is not (it wraps one and forwards to
    it); this gives the type checker the peft model where its own methods are called."""
    from peft import PeftModel

    return model if isinstance(model, PeftModel) else None


def is_adapter(model: torch.nn.Module) -> bool:
    return peft_model(model) is not None


def attach(model: PreTrainedModel, task: Task, settings: LoraSettings | None, method: Method, seed: int):
    """``model`` with a trainable LoRA adapter, initialised from ``seed`` (so that every pod of a job starts from the
    same adapter), and everything else frozen. A model that already carries an adapter (a baseline that is one)
    keeps it and trains it, whatever ``settings`` say."""
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    settings = settings or LoraSettings()
    if is_adapter(model):
        for name, parameter in model.named_parameters():
            parameter.requires_grad = "lora_" in name or "modules_to_save" in name
        return model
    if method == "qlora":
        model = prepare_model_for_kbit_training(model)
    config = LoraConfig(
        # peft annotates lora_alpha as an int, but only divides it by r: a float scales as well.
        r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,  # type: ignore[arg-type]
        target_modules=list(settings.target_modules) or None,
        # SEQ_CLS also trains the classification head in full: its rows for new labels start untrained.
        task_type=TaskType.CAUSAL_LM if task == "causal-lm" else TaskType.SEQ_CLS,
    )
    torch.manual_seed(seed)
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        names = sorted({name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name})
        raise invalid_config(f"lora.targetModules {list(settings.target_modules) or '(default)'}: {error}; this "
                             f"model's module names include {', '.join(names[:24])}") from None


def load(base: PreTrainedModel, directory: str, trainable: bool = False):
    """The saved adapter in ``directory`` on ``base``."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(base, directory, is_trainable=trainable)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise invalid_config(f"cannot load the adapter in {directory} onto its base: {error}") from None


def save(model, tokenizer: PreTrainedTokenizerBase, directory: Path, base_uri: str) -> None:
    """Write the adapter (and the tokenizer, so the directory is self-contained) naming ``base_uri`` as its base."""
    for config in model.peft_config.values():
        config.base_model_name_or_path = base_uri
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def parameters(model: torch.nn.Module) -> tuple[int, int]:
    """Trainable and total parameters."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
