"""Notifications of a loop, derived from its decision log. Pure, no I/O: the edge that POSTs is :mod:`kaizen.notify`.

Every event is a fact the decision log already holds, so the payload carries the decision's id, reason and
evidence, and the same log always yields the same events (:func:`derive`):

- a ``Retrain`` decision: RetrainStarted; once its RetrainJob ended without a candidate that passed: GateFailed;
- ``AwaitApproval``: ApprovalAwaited; ``Rollback`` (of a promotion): RollbackStarted; ``Degraded``: LoopDegraded;
- a ``RollOut`` decision whose Rollout ended: CanaryPromoted, or CanaryRolledBack (rolled back or aborted).

An event's id is its decision id and its type (:func:`event_id`): the Standard Webhooks ``webhook-id``, the same on
every retry and after a restart, so a receiver drops a repeat. The durable cursor is the loop's
``status.notifications`` (:class:`kaizen.api.improvementloop.NotificationsStatus`): the keys (event and target) that
were delivered or given up, and those pending with their next attempt. :func:`outbox` says what to send now,
:func:`settle` what the attempts mean for the cursor, the Events and the next look.

The guarantee: the cursor is written after the POST, in the look's one status write, so an operator that dies
between the two sends that event again after its restart, with the same webhook-id: at least once to the wire,
exactly once per event for a receiver that drops repeated webhook-ids (as the Standard Webhooks spec asks).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from kaizen.api.improvementloop import (
    Decision, NotificationsSpec, NotificationsStatus, PendingNotification, WebhookTarget,
)
from kaizen.logic.conditions import Event

#: Attempts of one event at one webhook before it is given up (a Warning Event says so): 1+2+4+...+60 s, ~3 minutes.
MAX_ATTEMPTS = 8
#: The first retry's delay; each next one doubles, up to :data:`MAX_BACKOFF`.
FIRST_BACKOFF = timedelta(seconds=1)
MAX_BACKOFF = timedelta(seconds=60)
#: Keys remembered as delivered: each of the (at most 50) logged decisions yields at most two events per webhook.
REMEMBERED = 200
#: Events sent in one look at most: a backlog drains over a few looks instead of holding one.
PER_LOOK = 10


@dataclass(frozen=True)
class Notice:
    """One event of one loop, from one decision."""

    type: str
    decision: Decision
    namespace: str
    loop: str

    @property
    def id(self) -> str:
        return event_id(self.decision.id, self.type)

    @property
    def summary(self) -> str:
        title = {
            "RetrainStarted": "started a retrain", "GateFailed": "retrain did not pass its gates",
            "ApprovalAwaited": "awaits approval", "CanaryPromoted": "promoted a canary",
            "CanaryRolledBack": "rolled a canary back", "RollbackStarted": "is rolling back a promotion",
            "LoopDegraded": "is degraded",
        }[self.type]
        detail = self.decision.outcome if self.type in ("GateFailed", "CanaryPromoted", "CanaryRolledBack") \
            else self.decision.reason
        return f"Kaizen loop {self.namespace}/{self.loop} {title}: {detail}"


def event_id(decision_id: str, event_type: str) -> str:
    return f"{decision_id}.{event_type}"


def derive(decisions: list[Decision], namespace: str, loop: str) -> list[Notice]:
    """The events the decision log (newest first, as stored) holds, oldest first."""
    notices: list[Notice] = []
    for decision in reversed(decisions):
        outcome = decision.outcome or ""
        ended = outcome.split(":", 1)[0]
        types: list[str] = []
        if decision.action == "Retrain":
            types.append("RetrainStarted")
            if outcome and "passed its gates" not in ended:
                types.append("GateFailed")
        elif decision.action == "AwaitApproval":
            types.append("ApprovalAwaited")
        elif decision.action == "Rollback":
            types.append("RollbackStarted")
        elif decision.action == "Degraded":
            types.append("LoopDegraded")
        elif decision.action == "RollOut" and outcome:
            if ended.endswith(" promoted"):
                types.append("CanaryPromoted")
            elif ended.endswith((" rolled back", " aborted")):
                types.append("CanaryRolledBack")
        notices.extend(Notice(t, decision, namespace, loop) for t in types)
    return notices


def webhook_key(target: WebhookTarget) -> str:
    """A webhook's name in the cursor: a digest of its URL (which may hold a token), so reordering resends nothing."""
    return hashlib.sha256(target.url.encode()).hexdigest()[:8]


def key(notice_id: str, target: WebhookTarget) -> str:
    """A delivery's key in the cursor: the event at one webhook."""
    return f"{notice_id}@{webhook_key(target)}"


# ------------------------------------------------------------------------------------------------------ payloads


def payload(notice: Notice, target: WebhookTarget) -> str:
    """The request body for ``target``: deterministic for an event (a retry sends the same bytes)."""
    decision = notice.decision.model_dump(mode="json", by_alias=True, exclude_none=True)
    if target.format == "slack":
        evidence = json.dumps(notice.decision.evidence, indent=1, sort_keys=True, default=str)
        if len(evidence) > 2800:  # a Slack section's text holds 3000 characters
            evidence = evidence[:2800] + "\n…"
        return json.dumps({
            "text": notice.summary,
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": f"*{notice.type}* {notice.summary}"[:3000]}},
                {"type": "section", "text": {"type": "mrkdwn", "text": f"```{evidence}```"}},
                {"type": "context", "elements": [{"type": "mrkdwn", "text": f"decision `{notice.decision.id}` · "
                                                  f"event `{notice.id}`"}]},
            ],
        }, sort_keys=True)
    return json.dumps({
        "type": notice.type,
        "timestamp": decision["time"],
        "data": {"id": notice.id, "loop": {"namespace": notice.namespace, "name": notice.loop},
                 "summary": notice.summary, "decision": decision},
    }, sort_keys=True)


# ------------------------------------------------------------------------------------------------------ cursor


@dataclass(frozen=True)
class Delivery:
    """One event to POST to one webhook now."""

    key: str
    notice: Notice
    target: WebhookTarget
    attempts: int  # failed attempts before this one


@dataclass(frozen=True)
class Outbox:
    cursor: NotificationsStatus  # the stored cursor, with a first look's baseline and forgotten keys dropped
    send: tuple[Delivery, ...]
    next_due: datetime | None  # the earliest pending retry not due now


def outbox(spec: NotificationsSpec | None, decisions: list[Decision], stored: list[Decision],
           cursor: NotificationsStatus | None, now: datetime, *, namespace: str, loop: str) -> Outbox:
    """What to send now. ``decisions`` is the log after this look, ``stored`` the log before it.

    For a webhook the cursor does not know yet (notifications just enabled, a webhook added, an older loop), the
    events of the stored log are history, not news: they become its baseline, and only what this look and later
    ones decide is sent to it.
    """
    targets = spec.webhooks if spec else []
    wanted = set(spec.events) if spec and spec.events else None
    notices = [n for n in derive(decisions, namespace, loop) if wanted is None or n.type in wanted]
    cursor = cursor or NotificationsStatus()
    new = [t for t in targets if webhook_key(t) not in cursor.webhooks]
    if new:
        old = {n.id for n in derive(stored, namespace, loop)}
        history = [key(n.id, t) for n in reversed(notices) if n.id in old for t in new]
        cursor = cursor.model_copy(update={"delivered": [*history, *cursor.delivered][:REMEMBERED]})
    cursor = cursor.model_copy(update={"webhooks": [webhook_key(t) for t in targets]})
    pending = {p.id: p for p in cursor.pending}
    done = set(cursor.delivered)
    send, later = [], []
    for notice in notices:
        for target in targets:
            k = key(notice.id, target)
            if k in done:
                continue
            waiting = pending.get(k)
            if waiting is not None and waiting.next_attempt and waiting.next_attempt > now:
                later.append(waiting.next_attempt)
                continue
            send.append(Delivery(k, notice, target, waiting.attempts if waiting else 0))
    live = {key(n.id, t) for n in notices for t in targets}  # an event pruned from the log is not retried
    cursor = cursor.model_copy(update={"pending": [p for p in cursor.pending if p.id in live]})
    beyond = send[PER_LOOK:]
    return Outbox(cursor, tuple(send[:PER_LOOK]), min([*later, *([now] if beyond else [])], default=None))


@dataclass(frozen=True)
class Settled:
    cursor: NotificationsStatus
    events: tuple[Event, ...]
    log: tuple[str, ...]
    next_due: datetime | None


def backoff(attempts: int) -> timedelta:
    """The delay after the ``attempts``-th failure: 1, 2, 4 … 60 seconds."""
    return min(FIRST_BACKOFF * 2 ** max(attempts - 1, 0), MAX_BACKOFF)


def settle(box: Outbox, results: dict[str, str | None], now: datetime) -> Settled:
    """The cursor after the attempts: ``results`` maps a delivery's key to None (delivered) or what went wrong
    (a delivery missing from it was not attempted). A delivery that failed :data:`MAX_ATTEMPTS` times is given up,
    with a Warning Event, so a receiver that stays down costs a few tries, never a tight loop."""
    delivered = list(box.cursor.delivered)
    pending = {p.id: p for p in box.cursor.pending}
    events: list[Event] = []
    log: list[str] = []
    for delivery in box.send:
        if delivery.key not in results:
            continue
        error = results[delivery.key]
        where = f"event={delivery.notice.id} url={delivery.target.url}"
        if error is None:
            delivered.insert(0, delivery.key)
            pending.pop(delivery.key, None)
            log.append(f"Notified {where}")
            continue
        attempts = delivery.attempts + 1
        if attempts >= MAX_ATTEMPTS:
            delivered.insert(0, delivery.key)
            pending.pop(delivery.key, None)
            events.append(Event("Warning", "NotificationFailed",
                                f"Gave up notifying {delivery.target.url} of {delivery.notice.id} after {attempts} "
                                f"attempts: {error}"[:1024]))
            log.append(f"Gave up notifying {where} attempts={attempts}: {error}")
            continue
        if attempts == 1:
            events.append(Event("Warning", "NotificationRetrying",
                                f"Could not notify {delivery.target.url} of {delivery.notice.id} ({error}); retrying "
                                f"with backoff, at most {MAX_ATTEMPTS} attempts"[:1024]))
        log.append(f"Failed to notify {where} attempts={attempts}: {error}")
        pending[delivery.key] = PendingNotification(id=delivery.key, attempts=attempts,
                                                    next_attempt=now + backoff(attempts), error=error[:1024])
    cursor = NotificationsStatus(delivered=delivered[:REMEMBERED], pending=list(pending.values())[:100],
                                 webhooks=box.cursor.webhooks)
    retries = [p.next_attempt for p in cursor.pending if p.next_attempt]
    return Settled(cursor, tuple(events), tuple(log), min([*retries, *([box.next_due] if box.next_due else [])],
                                                          default=None))
