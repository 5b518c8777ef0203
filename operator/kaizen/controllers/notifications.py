"""The loop's notifications, after each look (:func:`deliver`, the one hook in
:func:`kaizen.controllers.improvementloop.look_now`): derive the events the decision log holds and the cursor has not
seen (:func:`kaizen.logic.notifications.outbox`), POST them (:mod:`kaizen.notify.webhook`, a short timeout each), and
put the new cursor in the look's status patch (:func:`kaizen.logic.notifications.settle`), written with the status
in the scheduler's one merge patch. Only a leader runs looks, so only a leader sends.

The cluster default (``spec.notifications`` absent) is the JSON of a
:class:`kaizen.api.improvementloop.NotificationsSpec` in the ``KAIZEN_NOTIFICATIONS`` environment variable (the
chart's ``notifications`` value); its signing Secret is read in each loop's namespace, as a loop's own is.
"""

from __future__ import annotations

import functools
import json
import os
from datetime import datetime
from typing import Any

import kopf
from pydantic import ValidationError

from kaizen.api.improvementloop import Decision, NotificationsSpec, NotificationsStatus
from kaizen.controllers import reconcile
from kaizen.controllers.reconcile import write_status
from kaizen.k8s import resources
from kaizen.k8s.errors import ApiError
from kaizen.logic import notifications as logic
from kaizen.notify import webhook

#: The environment variable holding the cluster default (JSON), as the chart sets it.
DEFAULT_ENV = "KAIZEN_NOTIFICATIONS"
#: The cursor this process last wrote, by loop uid. Only the leader writes status.notifications, so while this
#: process leads, its own last cursor is newer than any cached status: a look that reads a status older than the
#: last write neither sends a delivered event again nor retries a pending one early. A new process (a restart, a
#: new leader) starts from the stored cursor.
_cursors: dict[str, NotificationsStatus] = {}


@functools.lru_cache(maxsize=4)
def cluster_default(raw: str) -> NotificationsSpec | None:
    """The cluster default, parsed; a default that does not parse is refused (at startup, :func:`check_default`)."""
    return NotificationsSpec.model_validate(json.loads(raw)) if raw.strip() else None


def check_default() -> str | None:
    """What is wrong with the cluster default, or None (the operator refuses to start on a bad one)."""
    raw = os.environ.get(DEFAULT_ENV, "")
    try:
        cluster_default(raw)
    except json.JSONDecodeError as error:
        return f"{DEFAULT_ENV} is not JSON ({error}); set it to a notifications spec, e.g. " \
               '{"webhooks": [{"url": "https://hooks.example/kaizen"}]}'
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return f"{DEFAULT_ENV} is not a valid notifications spec: {problems}"
    return None


def spec_of(obj: dict[str, Any]) -> NotificationsSpec | None:
    raw = (obj.get("spec") or {}).get("notifications")
    try:
        if raw is not None:
            return NotificationsSpec.model_validate(raw)
        return cluster_default(os.environ.get(DEFAULT_ENV, ""))
    except (ValidationError, json.JSONDecodeError):
        return None  # the spec handler reports an invalid spec; the operator refuses a bad default at startup


def deliver(obj: dict[str, Any], patch: kopf.Patch, logger: kopf.Logger, due: datetime | None) -> datetime | None:
    """Send what the look's decision log holds and the cursor has not, record it in ``patch``, and return when the
    loop is next due (a pending retry may come before ``due``)."""
    meta, stored = obj["metadata"], dict(obj.get("status") or {})
    spec = spec_of(obj)
    if spec is None or not spec.webhooks:
        if spec is not None and stored.get("notifications"):  # turned off: enabled again, it starts afresh
            _cursors.pop(meta["uid"], None)
            write_status(stored, patch, {"notifications": None})
        return due
    now = reconcile.clock.now()
    status_patch = patch.get("status") or {}
    after = [Decision.model_validate(d) for d in status_patch.get("decisions", stored.get("decisions")) or []]
    before = [Decision.model_validate(d) for d in stored.get("decisions") or []]
    cursor = _cursors.get(meta["uid"])
    if cursor is None and stored.get("notifications"):
        cursor = NotificationsStatus.model_validate(stored["notifications"])
    box = logic.outbox(spec, after, before, cursor, now, namespace=meta["namespace"], loop=meta["name"])
    results: dict[str, str | None] = {}
    down: set[str] = set()
    secrets: dict[tuple[str, str], str | Exception] = {}  # each Secret read once per look
    for delivery in box.send:
        if delivery.target.url in down:
            continue  # one failure per webhook and look: a receiver that hangs costs one timeout, not ten
        results[delivery.key] = error = _post(delivery, meta["namespace"], secrets)
        if error is not None:
            down.add(delivery.target.url)
    # Backoff counts from when the attempts ended: on a loaded machine a look's sends may take seconds.
    settled = logic.settle(box, results, reconcile.clock.now())
    for event in settled.events:
        kopf.event(reconcile.as_body(obj), type=event.type, reason=event.reason, message=event.message)
    for line in settled.log:
        (logger.info if line.startswith("Notified") else logger.warning)(line)
    write_status(stored, patch, {"notifications": settled.cursor.to_wire()})
    _cursors[meta["uid"]] = settled.cursor
    return min((d for d in (due, settled.next_due) if d is not None), default=None)


def _post(delivery: logic.Delivery, namespace: str, secrets: dict[tuple[str, str], str | Exception]) -> str | None:
    secret: str | None = None
    ref = delivery.target.secret_ref
    if ref is not None:
        if (ref.name, ref.key) not in secrets:
            try:
                secrets[(ref.name, ref.key)] = resources.read_secret_key(namespace, ref.name, ref.key)
            except (ApiError, KeyError) as error:
                secrets[(ref.name, ref.key)] = error
        read = secrets[(ref.name, ref.key)]
        if isinstance(read, Exception):
            what = "not found" if isinstance(read, ApiError) and read.not_found else str(read)
            return f"cannot read the signing secret from Secret {ref.name} key {ref.key}: {what}"
        secret = read
    return webhook.post(delivery.target.url, delivery.notice.id, logic.payload(delivery.notice, delivery.target),
                        secret)


@kopf.on.startup()
def refuse_a_bad_default(logger: kopf.Logger, **_: Any) -> None:
    problem = check_default()
    if problem:
        logger.error(f"Refused the cluster default notifications: {problem}")
        raise kopf.PermanentError(problem)
