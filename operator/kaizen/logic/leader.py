"""Leader election rules on a ``coordination.k8s.io/v1`` Lease, as client-go's ``leaderelection`` package has them.

Pure: every function takes the time it judges by. Two clocks, never mixed:

- *monotonic seconds* (``time.monotonic()`` in the operator, an injected number in tests) for every judgement of
  expiry. A replica never compares the Lease's ``renewTime`` with its own clock, which may be skewed from the
  leader's: a standby counts the lease's duration from when *it* first saw the record as it is now
  (:func:`observe`, client-go's ``observedTime``), and a leader counts its renew deadline from when *it* sent its
  last successful renewal (:func:`leading`).
- *wall time* only for the timestamps written into the Lease (``acquireTime``, ``renewTime``), for people to read.

Why a leader that cannot renew stops before anyone can take over: its renewal was stored at some moment after it was
sent, so a standby first sees it after the leader started counting. The leader stops ``renewDeadline`` after
sending; a standby may take over no sooner than ``leaseDuration`` after seeing. :class:`Timing` requires
``leaseDuration > renewDeadline``, and the difference is the margin for the two clocks' rates and for stopping.

The edge that reads and writes the Lease is :mod:`kaizen.k8s.lease`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timezone

#: client-go's JitterFactor: a renew deadline must leave room for more than one retry period.
JITTER_FACTOR = 1.2


@dataclass(frozen=True)
class Timing:
    """How long a lease lasts, how long a leader keeps trying to renew it, and how often replicas try (seconds)."""

    lease_duration: float
    renew_deadline: float
    retry_period: float

    def __post_init__(self) -> None:
        # The same constraints as client-go's NewLeaderElector, with the flags' names in the message.
        if self.retry_period <= 0:
            raise ValueError(f"the retry period ({self.retry_period:g}s) must be positive")
        if self.renew_deadline <= JITTER_FACTOR * self.retry_period:
            raise ValueError(f"the renew deadline ({self.renew_deadline:g}s) must be longer than {JITTER_FACTOR:g} "
                             f"times the retry period ({self.retry_period:g}s), so that a leader retries at least once")
        if self.lease_duration <= self.renew_deadline:
            raise ValueError(f"the lease duration ({self.lease_duration:g}s) must be longer than the renew deadline "
                             f"({self.renew_deadline:g}s): a leader that cannot renew must stop before its lease "
                             "can be taken")


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease's spec: who holds it, for how long after each renewal, and how many times it changed hands."""

    holder: str = ""
    lease_duration_seconds: int = 0
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0


@dataclass(frozen=True)
class Sighting:
    """A record as one replica last saw it, and when it first saw it so (its own monotonic clock)."""

    record: LeaseRecord
    since: float


def observe(previous: Sighting | None, record: LeaseRecord, now: float) -> Sighting:
    """The sighting after reading ``record`` at ``now``: its time moves only when the record changed (a renewal
    changes ``renewTime``), so a record nobody renews ages from the first time it was seen."""
    if previous is not None and previous.record == record:
        return previous
    return Sighting(record, now)


def held_by_other(sighting: Sighting, identity: str, now: float) -> bool:
    """Whether another replica holds the lease and may still be acting: then ``identity`` must not take it."""
    record = sighting.record
    return bool(record.holder) and record.holder != identity and now < sighting.since + record.lease_duration_seconds


def claim(current: LeaseRecord | None, identity: str, timing: Timing, wall: datetime) -> LeaseRecord:
    """The record ``identity`` writes to acquire the lease, or to renew it when it holds it already.

    A renewal keeps ``acquireTime`` and the transition count; taking the lease over (from another holder, or after a
    release) counts one more transition; creating the Lease counts none.
    """
    stamp = micro_time(wall)
    duration = math.ceil(timing.lease_duration)
    if current is not None and current.holder == identity:
        return replace(current, lease_duration_seconds=duration, renew_time=stamp)
    transitions = 0 if current is None else current.transitions + 1
    return LeaseRecord(identity, duration, acquire_time=stamp, renew_time=stamp, transitions=transitions)


def released(current: LeaseRecord, wall: datetime) -> LeaseRecord:
    """The record a leader writes when it stops cleanly: no holder, so a standby takes over at its next look
    instead of waiting for the lease to expire (client-go's ``ReleaseOnCancel``)."""
    stamp = micro_time(wall)
    return LeaseRecord("", 1, acquire_time=stamp, renew_time=stamp, transitions=current.transitions)


def leading(renewed_at: float | None, now: float, timing: Timing) -> bool:
    """Whether a replica whose last successful renewal was sent at ``renewed_at`` may still act at ``now``."""
    return renewed_at is not None and now < renewed_at + timing.renew_deadline


def next_look(sighting: Sighting | None, identity: str, now: float, timing: Timing) -> float:
    """Seconds a standby waits before it reads the lease again: the retry period, or less when the lease it saw
    expires sooner (so that it takes over when the lease expires, not up to a retry period later)."""
    if sighting is None or not held_by_other(sighting, identity, now):
        return timing.retry_period
    expires_in = sighting.since + sighting.record.lease_duration_seconds - now
    return max(min(timing.retry_period, expires_in), 0.0)


def micro_time(wall: datetime) -> str:
    """A ``metav1.MicroTime`` as the API server parses it: RFC 3339 in UTC with exactly six fractional digits."""
    return wall.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
