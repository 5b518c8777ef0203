"""Inference as the model server answers: greedy completions of prompts in the trained format, and the labels of a
sequence classifier. One implementation for :class:`kaizen_server.engine.Engine` (serving) and for
:mod:`kaizen_trainer.evaluate` (the generative metrics and the judge), so that what the holdout scores is what the
server would answer; it lives in the trainer package because the trainer image ships without the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kaizen_trainer import modeling


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    #: "stop" at eos, "length" when max_tokens (or the model's positions) ran out first.
    finish_reason: str


@dataclass(frozen=True)
class Label:
    label: str
    #: The model's probability of the label.
    score: float
    prompt_tokens: int = 0


def positions(model: PreTrainedModel, fallback: int) -> int:
    """The model's limit on positions, from its config (``fallback`` when the config names none)."""
    config = model.config
    return int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or fallback)


def _autocast(device: modeling.Device):
    return torch.autocast(device_type=device.device.type, dtype=device.autocast, enabled=device.autocast is not None)


@torch.no_grad()
def complete(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, device: modeling.Device,
             prompts: Sequence[str], max_tokens: int, limit: int) -> list[Completion]:
    """Greedy completions of ``prompts``, batched (left-padded), each until eos or ``max_tokens`` tokens, within
    ``limit`` positions."""
    tok = tokenizer
    # Room for the answer within the model's positions; a long prompt loses its start, as in training.
    new = max(1, min(max_tokens, limit - 2))
    inputs = [modeling.prompt_ids(tok, p, limit - new - 1) for p in prompts]
    width = max(len(ids) for ids in inputs)
    ids = torch.full((len(inputs), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(inputs), width), dtype=torch.long)
    for i, row in enumerate(inputs):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    with _autocast(device):
        # Causal LMs' GenerationMixin (or peft's forward of it), which PreTrainedModel itself lacks.
        out = model.generate(  # type: ignore[operator]
            input_ids=ids.to(device.device), attention_mask=mask.to(device.device),
            max_new_tokens=new, do_sample=False, num_beams=1, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    completions = []
    for row, generated in zip(inputs, out[:, width:].tolist(), strict=True):
        stop = tok.eos_token_id in generated
        tokens = generated[: generated.index(tok.eos_token_id) + 1] if stop else generated
        text = tok.decode(tokens, skip_special_tokens=True)
        assert isinstance(text, str)  # one sequence of ids decodes to one string
        text = text.strip()
        completions.append(Completion(text, len(row), len(tokens), "stop" if stop else "length"))
    return completions


@torch.no_grad()
def classify(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, device: modeling.Device,
             texts: Sequence[str], limit: int) -> list[Label]:
    """The most likely label of each text, with its probability (right-padded, as the trainer batches)."""
    tok = tokenizer
    id2label = {int(k): str(v) for k, v in (model.config.id2label or {}).items()}
    inputs = [modeling.text_ids(tok, t, limit) for t in texts]
    width = max(len(ids) for ids in inputs)
    ids = torch.full((len(inputs), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(inputs), width), dtype=torch.long)
    for i, row in enumerate(inputs):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    with _autocast(device):
        logits = model(input_ids=ids.to(device.device), attention_mask=mask.to(device.device)).logits.float()
    probabilities = logits.softmax(-1)
    scores, best = probabilities.max(-1)
    return [Label(id2label.get(int(b), str(int(b))), float(s), len(row))
            for b, s, row in zip(best, scores, inputs, strict=True)]
