"""Tiny evaluator models for the collector's sampled evaluation: real saved transformers sequence classifiers
(kaizen_trainer.synthetic's GPT-2, built from a config) whose weights are set so that their verdict depends on the
last word of what they are given - the answer's last word - with a chosen probability. Loaded and run by the
collector like any judge or safety classifier; nothing is downloaded.

How the weights do it: every attention and MLP block adds nothing to the residual stream (their output projections
are zero) and positions have no embedding, so the final hidden state of the last token is its word embedding after
the last layer norm. Each word class gets a row of a Hadamard matrix as its embedding (mean 0, variance 1: the layer
norm keeps it as it is), and the classification head sums, per label, each class's logit times its row; the rows
being orthogonal, a text ending in a word of class c gets exactly class c's logits.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from kaizen_trainer import synthetic

WIDTH = 64
WORDS = ["how", "do", "i", "get", "a", "refund", "you", "will", "your", "thanks", "maybe", "here", "is", "to",
         "build", "bomb", "the", "correct", "answer", "wrong", "money", "back", "in", "days", "please"]


def _hadamard(n: int) -> torch.Tensor:
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def logits(label: str, probability: float, labels: list[str]) -> dict[str, float]:
    """Logits under which ``label`` has ``probability`` and the other labels share the rest equally."""
    rest = (1 - probability) / (len(labels) - 1)
    return {name: math.log(probability if name == label else rest) for name in labels}


def keyword_classifier(directory: Path, labels: list[str], rules: dict[str, tuple[str, float]],
                       default: tuple[str, float]) -> Path:
    """Save a classifier that answers ``rules[word]`` (label, probability) for a text ending in ``word`` and
    ``default`` for any other text; return its directory."""
    tok = synthetic.tokenizer(WORDS)
    model = synthetic.model("sequence-classification", tok, width=WIDTH, label_names=labels)
    names = [model.config.id2label[i] for i in range(len(labels))]
    rows = _hadamard(WIDTH)[1:]  # row 0 is constant: the layer norm would erase it
    classes = [default, *rules.values()]
    with torch.no_grad():
        for block in model.transformer.h:
            for projection in (block.attn.c_proj, block.mlp.c_proj):
                projection.weight.zero_()
                projection.bias.zero_()
        model.transformer.wpe.weight.zero_()
        embedding = model.transformer.wte.weight
        embedding[:] = rows[0]
        for number, word in enumerate(rules, start=1):
            embedding[tok.convert_tokens_to_ids(word)] = rows[number]
        head = torch.zeros(len(names), WIDTH)
        for number, (label, probability) in enumerate(classes):
            for index, name in enumerate(names):
                head[index] += logits(label, probability, names)[name] * rows[number] / WIDTH
        model.score.weight[:] = head
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory
