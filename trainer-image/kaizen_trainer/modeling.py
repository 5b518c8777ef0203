"""Models and tensors: load the baseline with transformers, pick the device (CUDA with bf16 when present, CPU
otherwise), and turn curated rows into padded batches for both tasks.

Causal LM rows become ``prompt <sep> response <eos>`` with the loss on the response only; sequence classification
rows become the text and the id of its label, which must be one of the baseline's labels. :func:`prompt_ids` and
:func:`text_ids` are that format for the model's input, shared with the model server (``kaizen_server.engine``), so
what the trainer trains and evaluates is what the server is asked: the holdout's exactMatch predicts its answers.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from transformers import (
    AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel,
    PreTrainedTokenizerBase,
)

from kaizen.api.retrainjob import Method, Task
from kaizen_trainer import adapters
from kaizen_trainer.curate import Row
from kaizen_trainer.errors import TrainerError, invalid_config, invalid_data
from kaizen_trainer.load import local_path, require_fsspec

IGNORE = -100


@dataclass(frozen=True)
class Device:
    device: torch.device
    #: Autocast dtype: bf16 on GPUs that support it, None (full precision) elsewhere.
    autocast: torch.dtype | None

    @property
    def name(self) -> str:
        return self.device.type + ("+bf16" if self.autocast else "")


M = TypeVar("M", bound=torch.nn.Module)


def to_device(model: M, device: torch.device) -> M:
    """``model.to(device)``, typed: transformers wraps ``PreTrainedModel.to`` in ``functools.wraps``, which type
    checkers read as a plain function whose first argument is the model."""
    return model.to(device)


def pick_device() -> Device:
    if torch.cuda.is_available():
        return Device(torch.device("cuda"), torch.bfloat16 if torch.cuda.is_bf16_supported() else None)
    return Device(torch.device("cpu"), None)


def model_dir(uri: str) -> str:
    """A directory (or hub name) ``from_pretrained`` can read; s3:// models are copied to a local directory first."""
    path = local_path(uri)
    if path is not None:
        if not (path / "config.json").is_file() and not (path / adapters.ADAPTER_CONFIG).is_file():
            raise invalid_config(f"baseline {uri} is not a saved transformers model (no config.json there) nor a "
                                 f"LoRA adapter (no {adapters.ADAPTER_CONFIG})")
        return str(path)
    if uri.startswith("hf://"):
        return uri.removeprefix("hf://")
    if uri.startswith("s3://"):
        fsspec = require_fsspec(uri)
        target = tempfile.mkdtemp(prefix="kaizen-baseline-")
        try:
            fsspec.filesystem("s3").get(uri.rstrip("/") + "/", target, recursive=True)
        except (OSError, ValueError, ImportError) as error:
            raise TrainerError("Error", f"cannot download baseline {uri}: {error}") from None
        return target
    raise invalid_config(f"baseline uri {uri}: unsupported scheme; use a path, file://, s3:// or hf://")


def load(task: Task, uri: str, method: Method = "full",
         base_uri: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model at ``uri`` and its tokenizer. A LoRA adapter directory (:mod:`kaizen_trainer.adapters`) is loaded
    onto ``base_uri``, by default the base its config names, as a peft model; ``method`` qlora loads the base
    quantised to 4 bits."""
    source = model_dir(uri)
    base = adapters.adapter_base(source) and (base_uri or adapters.adapter_base(source))
    if base is None:
        return _load(task, uri, source, adapters.quantisation(method))
    model, tokenizer = _load(task, base, model_dir(base), adapters.quantisation(method))
    if (Path(source) / "tokenizer_config.json").is_file():
        tokenizer = _tokenizer(source, uri)
    return adapters.load(model, source), tokenizer


def _tokenizer(source: str, uri: str) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, KeyError) as error:
        raise invalid_config(f"cannot load the tokenizer of {uri}: {error}") from None


def _load(task: Task, uri: str, source: str, quantisation) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    auto = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
    options = {"quantization_config": quantisation, "device_map": {"": 0}} if quantisation is not None else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = auto.from_pretrained(source, **options)
    except (OSError, ValueError, KeyError) as error:
        raise invalid_config(f"cannot load baseline {uri} as a {task} model: {error}") from None
    if task == "causal-lm" and tokenizer.eos_token_id is None:
        raise invalid_config(f"baseline {uri}: the tokenizer has no eos token, so responses cannot be delimited")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token_id is None:
        raise invalid_config(f"baseline {uri}: the tokenizer has neither a pad nor an eos token")
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def base_of(model: PreTrainedModel) -> str | None:
    """The base model URI an adapter (a peft model) applies to; None for a full model."""
    peft = adapters.peft_model(model)
    if peft is None:
        return None
    base = next(iter(peft.peft_config.values())).base_model_name_or_path
    return None if base is None else str(base)


def separator(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token between a causal LM's prompt and its response: the sep token, else eos."""
    return tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, room: int) -> list[int]:
    """A causal LM's input as trained, evaluated and served: the prompt's last ``room`` tokens (the start of a long
    prompt is cut, so that the response still fits), then the separator. The response follows, ended by eos."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return ids[max(0, len(ids) - room):] + [separator(tokenizer)]


def text_ids(tokenizer: PreTrainedTokenizerBase, text: str, max_length: int) -> list[int]:
    """A sequence classifier's input as trained, evaluated and served: the text, cut to ``max_length`` tokens."""
    return tokenizer(text, truncation=True, max_length=max_length)["input_ids"]


@dataclass(frozen=True)
class Encoded:
    """One row as token ids: ``labels`` is the response ids (causal LM) or a one-element label id."""

    input_ids: list[int]
    labels: list[int]


class Encoder:
    def __init__(self, task: Task, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_length: int):
        self.task, self.tokenizer, self.max_length = task, tokenizer, max_length
        self.label2id = {str(k): int(v) for k, v in (model.config.label2id or {}).items()}

    def encode(self, row: Row) -> Encoded:
        tok = self.tokenizer
        if self.task == "sequence-classification":
            if row.target not in self.label2id:
                raise invalid_data(f"row {row.id}: label {row.target!r} is not one of the baseline's labels "
                                   f"({', '.join(sorted(self.label2id))})")
            return Encoded(text_ids(tok, row.input, self.max_length), [self.label2id[row.target]])
        response = tok(row.target, add_special_tokens=False)["input_ids"][: self.max_length // 2] + [tok.eos_token_id]
        prompt = prompt_ids(tok, row.input, self.max_length - len(response) - 1)
        return Encoded(prompt + response, [IGNORE] * len(prompt) + response)

    def encode_all(self, rows: Sequence[Row]) -> list[Encoded]:
        return [self.encode(row) for row in rows]

    def loss_terms(self, items: Sequence[Encoded]) -> int:
        """How many terms the model's mean loss over ``items`` averages: the predicted label tokens of a causal LM
        (each predicts the next token, so the first label counts for nothing), one label per row otherwise."""
        if self.task == "sequence-classification":
            return len(items)
        return sum(sum(label != IGNORE for label in e.labels[1:]) for e in items)

    def batch(self, items: Sequence[Encoded], device: torch.device) -> dict[str, torch.Tensor]:
        """Right-padded tensors: ``input_ids``, ``attention_mask`` and ``labels``."""
        width = max(len(e.input_ids) for e in items)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(items), width), pad, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, e in enumerate(items):
            ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
            mask[i, : len(e.input_ids)] = 1
        if self.task == "causal-lm":
            labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
            for i, e in enumerate(items):
                labels[i, : len(e.labels)] = torch.tensor(e.labels)
        else:
            labels = torch.tensor([e.labels[0] for e in items], dtype=torch.long)
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path,
         base_uri: str | None = None) -> None:
    """``save_pretrained`` of model and tokenizer, replacing what a previous attempt left there; an adapter (a peft
    model) is written as one, naming ``base_uri`` as its base."""
    if directory.exists():
        shutil.rmtree(directory)
    try:
        if adapters.is_adapter(model):
            base = base_uri or base_of(model)
            assert base is not None, "peft names the base of every adapter it makes or loads"
            adapters.save(model, tokenizer, directory, base)
            return
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    except OSError as error:
        raise TrainerError("Error", f"cannot write the candidate model to {directory}: {error}") from None
