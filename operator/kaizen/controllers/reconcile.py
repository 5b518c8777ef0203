"""The reconcile skeleton shared by every kind: validate the spec, then write ``observedGeneration`` and the
``Ready`` / ``InvalidSpec`` conditions, once, only when they change.

A spec the operator cannot act on is reported (condition + Warning Event) and *not* retried: retrying cannot fix
it, and the next edit of the spec triggers a new reconcile.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import kopf
from pydantic import BaseModel

from kaizen.api import ResourceKind
from kaizen.logic.conditions import remove_condition, set_condition
from kaizen.logic.validation import InvalidSpec, parse_spec


def register(resource: ResourceKind) -> None:
    """Register the spec handlers of ``resource`` with kopf."""
    target = ("kaizen.dev", "v1alpha1", resource.plural)

    @kopf.on.resume(*target)
    @kopf.on.create(*target)
    @kopf.on.update(*target, field="spec")
    def validate_spec(
        body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, patch: kopf.Patch,
        logger: kopf.Logger, **_: Any,
    ) -> None:
        accept(resource, body, dict(spec), dict(status), meta.get("generation"), patch, logger)


def accept(
    resource: ResourceKind, body: kopf.Body, spec: dict[str, Any], status: dict[str, Any], generation: int | None,
    patch: kopf.Patch, logger: kopf.Logger, now: datetime | None = None,
) -> BaseModel | None:
    """Judge the spec and write the conditions; return the parsed spec, or None when it is invalid."""
    now = now or datetime.now(timezone.utc)
    conditions = list(status.get("conditions") or [])
    try:
        parsed = parse_spec(resource, spec)
    except InvalidSpec as invalid:
        message = "; ".join(invalid.problems)
        conditions = set_condition(conditions, type="InvalidSpec", status="True", reason="SpecInvalid",
                                   message=message, now=now, generation=generation)
        conditions = set_condition(conditions, type="Ready", status="False", reason="InvalidSpec",
                                   message="The spec cannot be acted on; see the InvalidSpec condition.",
                                   now=now, generation=generation)
        logger.warning(f"Rejected spec: {message}")
        kopf.warn(body, reason="InvalidSpec", message=message[:1024])
        parsed = None
    else:
        conditions = remove_condition(conditions, "InvalidSpec")
        conditions = set_condition(conditions, type="Ready", status="True", reason="SpecAccepted",
                                   message=f"The {resource.kind} spec is valid.", now=now, generation=generation)
    write_status(status, patch, {"observedGeneration": generation, "conditions": conditions})
    return parsed


def write_status(status: dict[str, Any], patch: kopf.Patch, fields: dict[str, Any]) -> None:
    """Patch the status fields that differ from what is stored; nothing when nothing changed."""
    for key, value in fields.items():
        value = value if value is None else stored_form(value)  # a top-level None deletes the field
        if status.get(key) != value:
            patch.status[key] = value


def stored_form(value: Any) -> Any:
    """``value`` as the API server will store and return it: no nulls (a merge patch's null deletes), and JSON
    numbers without a fraction read back as ints. Comparing in this form avoids needless patches, and kopf's
    "patched with inconsistencies" warnings."""
    if isinstance(value, dict):
        return {k: stored_form(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [stored_form(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
