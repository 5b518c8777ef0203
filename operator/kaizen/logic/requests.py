"""User requests carried by the ``kaizen.dev/action*`` annotations, read the same way for every kind. Pure.

A controller acts on a request, records it in ``status.lastAction`` (action, by, at, outcome), and removes its
annotations only on a later look, once the status that records it has been written. A crash between acting and
writing the status therefore never loses a request, and a request already recorded is never acted on twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kaizen.api.actions import ACTION, ACTION_AT, ACTION_BY, parse_time


@dataclass(frozen=True)
class Requested:
    """A request as the annotations carry it: what, who asked, and when (which makes it unique)."""

    action: str
    by: str
    at: datetime


def pending(annotations: dict[str, str], allowed: Sequence[str], recorded: Any | None, usage: str) -> Requested | None:
    """The request waiting to be acted on: None when there is none or ``recorded`` (a status.lastAction) shows it
    handled. ValueError, saying what is wrong and what to do, when it is unusable; ``usage`` names the commands."""
    kind = annotations.get(ACTION)
    if kind is None:
        return None
    if kind not in allowed:
        raise ValueError(f"annotation {ACTION}={kind!r} is not an action on {usage}")
    at = parse_time(annotations.get(ACTION_AT))
    if at is None:
        raise ValueError(f"annotation {ACTION_AT}={annotations.get(ACTION_AT)!r} is not an RFC 3339 time; "
                         "the request was dropped: ask again with the kaizen CLI")
    request = Requested(kind, annotations.get(ACTION_BY) or "unknown", at)
    if recorded is not None and (recorded.action, recorded.by, recorded.at) == (request.action, request.by, at):
        return None
    return request


def consumable(annotations: dict[str, str], request: Requested | None) -> bool:
    """Whether the request's annotations may be removed now: there are some, and nothing is left to act on (it is
    recorded in status, or unusable)."""
    return ACTION in annotations and request is None
