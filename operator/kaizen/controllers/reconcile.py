"""The reconcile skeleton shared by every kind: validate the spec, then write ``observedGeneration`` and the
``Ready`` / ``InvalidSpec`` conditions, once, only when they change; and classify what goes wrong on the way.

A spec the operator cannot act on is reported (condition + Warning Event) and *not* retried: retrying cannot fix
it, and the next edit of the spec triggers a new reconcile.

Errors (:func:`classify`, :func:`classified`), never a tight loop:

- a child's name taken by an object Kaizen does not own, or a child forbidden (RBAC, a ResourceQuota): a condition
  naming the object and what to do, and a slow retry (:data:`SLOW_RETRY_SECONDS`): a person can fix it;
- a child the API server refuses as invalid (422, 400): a condition with the API server's message, and no retry on
  the same spec (the RetrainJob fails; a loop's or Rollout's spec is marked invalid until it changes);
- the API server unreachable, overloaded or timing out: ``kopf.TemporaryError`` with a growing delay;
- anything else is a bug: logged once per object with its traceback, then retried slowly.
"""

from __future__ import annotations

import asyncio
import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

import kopf
from pydantic import BaseModel

from kaizen.api import ResourceKind
from kaizen.k8s import resources
from kaizen.k8s.errors import ApiError, NotOwned
from kaizen.logic.conditions import find_condition, remove_condition, set_condition
from kaizen.logic.validation import InvalidSpec, parse_spec

F = TypeVar("F", bound=Callable[..., Any])
#: The next try after a failure a person must fix: a name taken, a quota, RBAC.
SLOW_RETRY_SECONDS = 60.0
#: The next try after a bug: rarely enough to cost nothing, soon enough to pick up a fixed operator's peers' work.
BUG_RETRY_SECONDS = 300.0
#: Reason of the InvalidSpec condition when the API server refused a child built from the spec.
CHILD_REJECTED = "ChildRejected"
_reported: set[tuple[str, str]] = set()


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


@dataclass(frozen=True)
class Failure:
    """What went wrong with a child, as users see it: ``reason`` for the condition and the Event, ``message`` says
    what and what to do; ``final`` when sending the same again cannot succeed."""

    reason: str
    message: str
    final: bool


def classify(error: Exception, what: str) -> Failure | None:
    """A child's failure as a condition to show, or None when it is transient (retry with backoff).

    ``what`` names the child (``Job ns/name``); anything but a Kaizen API error is re-raised: it is a bug.
    """
    if isinstance(error, NotOwned):
        return Failure("NameConflict", str(error), final=False)
    if not isinstance(error, ApiError):
        raise error
    if error.invalid:
        return Failure(CHILD_REJECTED, f"The API server refused {what}: {error.message}", final=True)
    if error.forbidden:
        return Failure("ChildForbidden", f"The API server forbade {what}: {error.message}; a ResourceQuota, "
                       "LimitRange or RBAC rule refuses it, which an administrator can change (retried every "
                       f"{SLOW_RETRY_SECONDS:g}s)", final=False)
    if error.conflict:  # a write raced another writer: the next look reads the new state
        return None
    if error.transient or error.not_found:
        return None
    return Failure("ChildRejected", f"The API server refused {what}: {error}", final=True)


def backoff(retry: int) -> float:
    """1, 2, 4 … 60 seconds: the delay before the next try while the API server is unavailable."""
    return float(min(2 ** min(retry, 6), SLOW_RETRY_SECONDS))


def classified(handler: F) -> F:
    """Wrap a kopf handler: an unavailable API server becomes ``TemporaryError`` with backoff, a bug is logged once
    per object (with its traceback) and retried slowly; neither loops tightly nor floods the log."""

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except (kopf.TemporaryError, kopf.PermanentError):
            raise
        except ApiError as error:
            if error.transient or error.conflict:
                delay = backoff(kwargs.get("retry") or 0)
                raise kopf.TemporaryError(f"The API server did not answer ({error}); retrying in {delay:g}s",
                                          delay=delay) from error
            report_bug(error, kwargs)
        except Exception as error:  # noqa: BLE001  (a bug: reported once, never retried in a tight loop)
            report_bug(error, kwargs)

    return wrapper  # type: ignore[return-value]


def report_bug(error: Exception, kwargs: dict[str, Any]) -> None:
    meta, logger = kwargs.get("meta") or {}, kwargs["logger"]
    key = (str(meta.get("uid")), f"{type(error).__name__}: {error}")
    if key not in _reported:
        _reported.add(key)
        logger.exception(f"Failed with an unexpected error namespace={meta.get('namespace')} name={meta.get('name')} "
                         f"error={type(error).__name__}; retrying every {BUG_RETRY_SECONDS:g}s, reported once")
    raise kopf.TemporaryError(f"{type(error).__name__}: {error} (reported above)", delay=BUG_RETRY_SECONDS) from error


def rejected_for(status: dict[str, Any], generation: int | None) -> bool:
    """Whether a child built from this generation of the spec was refused by the API server: nothing to retry."""
    invalid = find_condition(list(status.get("conditions") or []), "InvalidSpec")
    return bool(invalid and invalid.get("status") == "True" and invalid.get("reason") == CHILD_REJECTED
                and invalid.get("observedGeneration") == generation)


def reject(body: kopf.Body, status: dict[str, Any], patch: kopf.Patch, logger: kopf.Logger, failure: Failure,
           now: datetime, generation: int | None) -> None:
    """Mark this generation of the spec invalid: the API server refused a child built from it."""
    conditions = list(patch.status.get("conditions") or status.get("conditions") or [])
    conditions = set_condition(conditions, type="InvalidSpec", status="True", reason=CHILD_REJECTED,
                               message=failure.message, now=now, generation=generation)
    conditions = set_condition(conditions, type="Ready", status="False", reason="InvalidSpec",
                               message="The spec cannot be acted on; see the InvalidSpec condition.", now=now,
                               generation=generation)
    write_status(status, patch, {"conditions": conditions})
    logger.warning(f"Rejected child: {failure.message}")
    kopf.warn(body, reason=failure.reason, message=failure.message[:1024])


#: Progressing reasons of :func:`blocked`: a look that gets through clears them.
BLOCKED = ("NameConflict", "ChildForbidden")


def unblocked(status: dict[str, Any]) -> dict[str, Any]:
    """The status fields that clear a :func:`blocked` condition, once the object is no longer blocked."""
    conditions = list(status.get("conditions") or [])
    progressing = find_condition(conditions, "Progressing")
    if progressing is None or progressing.get("reason") not in BLOCKED:
        return {}
    return {"conditions": remove_condition(conditions, "Progressing")}


def blocked(body: kopf.Body, status: dict[str, Any], patch: kopf.Patch, logger: kopf.Logger, failure: Failure,
            now: datetime, generation: int | None) -> None:
    """Say in ``Progressing`` why the object is stuck (once in a Warning Event), and retry slowly."""
    conditions = list(patch.status.get("conditions") or status.get("conditions") or [])
    before = find_condition(conditions, "Progressing")
    conditions = set_condition(conditions, type="Progressing", status="False", reason=failure.reason,
                               message=failure.message, now=now, generation=generation)
    write_status(status, patch, {"conditions": conditions})
    if before is None or before.get("message") != failure.message:
        logger.warning(f"Blocked reason={failure.reason}: {failure.message}")
        kopf.warn(body, reason=failure.reason, message=failure.message[:1024])
    raise kopf.TemporaryError(failure.message, delay=SLOW_RETRY_SECONDS)


#: A look at one object: given a snapshot of it, do what is due, put the status to write into the patch, and return
#: when it is next due (None: only when the object changes).
Look = Callable[[dict[str, Any], kopf.Patch, kopf.Logger, int], "datetime | None"]


def schedule(resource: ResourceKind, look: Look) -> None:
    """Run ``look`` for every object of ``resource`` when it is due, instead of polling: one asyncio task per object
    sleeps until the due time ``look`` returned, or until the object changes (any watch event wakes it). The look
    runs in a thread (the Kubernetes, Prometheus and collector clients block), and its status patch is written in
    one merge patch of the status subresource, skipped when empty; a TemporaryError's delay replaces the due time."""
    target = ("kaizen.dev", "v1alpha1", resource.plural)
    wakeups: dict[str, asyncio.Event] = {}

    @kopf.daemon(*target, id=f"schedule_{resource.plural}", cancellation_timeout=30)
    async def run(stopped: kopf.DaemonStopped, body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
        uid = body["metadata"]["uid"]
        wake = wakeups[uid] = asyncio.Event()
        retry = 0
        try:
            while not stopped:
                wake.clear()
                try:
                    due = await asyncio.to_thread(look_and_write, copy.deepcopy(dict(body)), logger, retry)
                    delay = None if due is None else max((due - datetime.now(timezone.utc)).total_seconds(), 0.0)
                    retry = 0
                except kopf.TemporaryError as error:
                    delay, retry = error.delay, retry + 1
                sleeping = [asyncio.ensure_future(stopped.wait()), asyncio.ensure_future(wake.wait())]
                await asyncio.wait(sleeping, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
                for task in sleeping:
                    task.cancel()
        finally:
            if wakeups.get(uid) is wake:
                del wakeups[uid]

    @kopf.on.event(*target, id=f"wake_{resource.plural}")
    async def changed(meta: kopf.Meta, **_: Any) -> None:
        wake = wakeups.get(meta.get("uid") or "")
        if wake is not None:
            wake.set()

    def look_and_write(obj: dict[str, Any], logger: kopf.Logger, retry: int) -> datetime | None:
        patch = kopf.Patch()
        try:
            return look(obj, patch, logger, retry)
        finally:
            write(resource=resource, meta=obj["metadata"], patch=patch, logger=logger, retry=retry)


@classified
def write(resource: ResourceKind, meta: dict[str, Any], patch: kopf.Patch, **_: Any) -> None:
    """A look's status patch, in one merge patch of the status subresource; nothing when nothing changed."""
    fields = dict(patch.get("status") or {})
    if fields:
        resources.patch_status(resource.kind, meta["namespace"], meta["name"], fields)
