"""The model server's classified failures (torch-free, so the HTTP side can name them before the engine is loaded)."""

from __future__ import annotations


class ServeError(Exception):
    """A model that cannot be served; the message says which and why, in one line."""


class WrongTask(ServeError):
    """A completion asked of a classifier, or a classification of a causal LM."""
