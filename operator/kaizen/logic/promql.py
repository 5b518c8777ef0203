"""PromQL templates: queries in specs name values the operator fills in ({{namespace}}, {{track}}, ...)."""

from __future__ import annotations

from kaizen.logic.validation import PLACEHOLDER


def fill(query: str, **values: str) -> str:
    """Replace each ``{{name}}`` with its value; validation has already rejected unknown placeholders."""
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], query)
