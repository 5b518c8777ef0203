"""Kubernetes-style conditions, kept as a list keyed by ``type`` (metav1.Condition semantics), and the Events a
decision asks the controller to post."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event a pure decision asks for; the controller posts it."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def set_condition(
    conditions: list[dict[str, Any]], *, type: str, status: str, reason: str, message: str, now: datetime,
    generation: int | None,
) -> list[dict[str, Any]]:
    """Return ``conditions`` with the one of ``type`` set; ``lastTransitionTime`` moves only when status changes."""
    previous = next((c for c in conditions if c.get("type") == type), None)
    if previous is not None and previous.get("status") == status:
        transition = previous["lastTransitionTime"]
    else:
        transition = now.isoformat().replace("+00:00", "Z")
    condition = {
        "type": type,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
        "observedGeneration": generation,
    }
    return [condition if c.get("type") == type else c for c in conditions] if previous else [*conditions, condition]


def remove_condition(conditions: list[dict[str, Any]], type: str) -> list[dict[str, Any]]:
    return [c for c in conditions if c.get("type") != type]


def find_condition(conditions: list[dict[str, Any]], type: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type), None)
