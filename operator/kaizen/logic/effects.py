"""The effects of one look at an object, for every kind: what the pure decide functions return and the shared apply
(:func:`kaizen.controllers.reconcile.apply`) carries out. Pure, no I/O.

One look returns one :class:`Effects`: the children to create, to apply and to delete, the Events, the log lines,
the status fields to write (once, only those that differ from what is stored) and when the object is next due.
A child the API server refuses is a :class:`Failure`; what it means for the object is again pure
(:func:`blocked`, :func:`rejected`, or the kind's own rule, as a RetrainJob that fails).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from kaizen.logic.conditions import Event, find_condition, remove_condition, set_condition

#: The next try after a failure a person must fix: a name taken, a quota, RBAC.
SLOW_RETRY = timedelta(seconds=60)
#: Reason of the InvalidSpec condition when the API server refused a child built from the spec.
CHILD_REJECTED = "ChildRejected"
#: Progressing reasons of :func:`blocked`: a look that gets through clears them (:func:`unblocked`).
BLOCKED = ("NameConflict", "ChildForbidden")


@dataclass(frozen=True)
class Effects:
    """Every effect of one look, applied in this order: ``create`` (create-or-adopt, in order), ``apply``
    (server-side apply: sizes and values, never increments), ``delete`` (kind, name), ``events``, ``log`` (info
    lines), then the ``status`` fields (wire form; a None value removes the field), and the next look at
    ``next_due`` (None: only when the object or what it watches changes). Children live in the object's namespace.
    """

    status: dict[str, Any] = field(default_factory=dict)
    create: tuple[dict[str, Any], ...] = ()
    apply: tuple[dict[str, Any], ...] = ()
    delete: tuple[tuple[str, str], ...] = ()
    events: tuple[Event, ...] = ()
    log: tuple[str, ...] = ()
    next_due: datetime | None = None


@dataclass(frozen=True)
class Failure:
    """What went wrong with a child, as users see it: ``reason`` for the condition and the Event, ``message`` says
    what and what to do; ``final`` when sending the same again cannot succeed."""

    reason: str
    message: str
    final: bool


def _conditions(status: dict[str, Any]) -> list[dict[str, Any]]:
    return list(status.get("conditions") or [])


def blocked(status: dict[str, Any], failure: Failure, now: datetime, generation: int | None) -> Effects:
    """A child a person must unblock (its name taken, a quota, RBAC): ``Progressing`` says why, a Warning Event says
    it once (not on every retry), and the next try is a slow one."""
    conditions = _conditions(status)
    before = find_condition(conditions, "Progressing")
    conditions = set_condition(conditions, type="Progressing", status="False", reason=failure.reason,
                               message=failure.message, now=now, generation=generation)
    said = before is not None and before.get("message") == failure.message
    return Effects(
        status={"conditions": conditions},
        events=() if said else (Event("Warning", failure.reason, failure.message[:1024]),),
        log=() if said else (f"Blocked reason={failure.reason}: {failure.message}",),
        next_due=now + SLOW_RETRY,
    )


def unblocked(status: dict[str, Any]) -> dict[str, Any]:
    """The status fields that clear a :func:`blocked` condition, once the object is no longer blocked."""
    conditions = _conditions(status)
    progressing = find_condition(conditions, "Progressing")
    if progressing is None or progressing.get("reason") not in BLOCKED:
        return {}
    return {"conditions": remove_condition(conditions, "Progressing")}


def rejected(status: dict[str, Any], failure: Failure, now: datetime, generation: int | None) -> Effects:
    """A child the API server refuses as built from this generation of the spec: the spec is marked invalid
    (``InvalidSpec`` with the API server's message), and nothing is retried until the spec changes."""
    conditions = set_condition(_conditions(status), type="InvalidSpec", status="True", reason=CHILD_REJECTED,
                               message=failure.message, now=now, generation=generation)
    conditions = set_condition(conditions, type="Ready", status="False", reason="InvalidSpec",
                               message="The spec cannot be acted on; see the InvalidSpec condition.", now=now,
                               generation=generation)
    return Effects(status={"conditions": conditions},
                   events=(Event("Warning", failure.reason, failure.message[:1024]),),
                   log=(f"Rejected child: {failure.message}",))


def refused(status: dict[str, Any], failure: Failure, now: datetime, generation: int | None) -> Effects:
    """The usual meaning of a refused child (a loop's, a Rollout's): blocked when a person can fix it, else the spec
    is rejected."""
    return (rejected if failure.final else blocked)(status, failure, now, generation)


def rejected_for(status: dict[str, Any], generation: int | None) -> bool:
    """Whether a child built from this generation of the spec was refused by the API server: nothing to retry."""
    invalid = find_condition(_conditions(status), "InvalidSpec")
    return bool(invalid and invalid.get("status") == "True" and invalid.get("reason") == CHILD_REJECTED
                and invalid.get("observedGeneration") == generation)
