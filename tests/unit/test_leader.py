"""Leader election rules (kaizen.logic.leader), driven by an injected clock: who may take a lease, when a leader
must stop, and how a standby times its looks."""

from datetime import datetime, timedelta, timezone

import pytest

from kaizen.logic.leader import (
    LeaseRecord,
    Sighting,
    Timing,
    claim,
    held_by_other,
    leading,
    next_look,
    observe,
    released,
)

TIMING = Timing(lease_duration=10, renew_deadline=7, retry_period=2)
WALL = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc)


def test_timing_refuses_a_leader_that_could_outlive_its_lease():
    with pytest.raises(ValueError, match=r"lease duration \(7s\) must be longer than the renew deadline \(7s\)"):
        Timing(lease_duration=7, renew_deadline=7, retry_period=2)
    with pytest.raises(ValueError, match=r"renew deadline \(2s\) must be longer than 1.2 times the retry period"):
        Timing(lease_duration=10, renew_deadline=2, retry_period=2)
    with pytest.raises(ValueError, match="must be positive"):
        Timing(lease_duration=10, renew_deadline=7, retry_period=0)


def test_creating_the_lease_counts_no_transition_and_renewing_keeps_the_acquire_time():
    first = claim(None, "a", TIMING, WALL)
    assert first == LeaseRecord("a", 10, "2026-12-01T12:00:00.000000Z", "2026-12-01T12:00:00.000000Z", 0)
    renewed = claim(first, "a", TIMING, WALL + timedelta(seconds=2, microseconds=5))
    assert renewed == LeaseRecord("a", 10, "2026-12-01T12:00:00.000000Z", "2026-12-01T12:00:02.000005Z", 0)


def test_taking_over_counts_a_transition_and_so_does_taking_a_released_lease():
    held = LeaseRecord("a", 10, "2026-12-01T11:00:00.000000Z", "2026-12-01T11:59:58.000000Z", 3)
    taken = claim(held, "b", TIMING, WALL)
    assert (taken.holder, taken.transitions, taken.acquire_time) == ("b", 4, "2026-12-01T12:00:00.000000Z")
    free = released(taken, WALL + timedelta(seconds=1))
    assert (free.holder, free.lease_duration_seconds, free.transitions) == ("", 1, 4)
    assert claim(free, "a", TIMING, WALL + timedelta(seconds=2)).transitions == 5


def test_a_lease_expires_its_duration_after_this_replica_first_saw_it_unchanged():
    record = LeaseRecord("a", 10, renew_time="2026-12-01T12:00:00.000000Z")
    seen = observe(None, record, now=100.0)
    # The same record read again does not restart the count: nobody renewed it.
    assert observe(seen, record, now=105.0) is seen
    assert held_by_other(seen, "b", now=109.9)
    assert not held_by_other(seen, "b", now=110.0)
    # A renewal (a new renewTime) is a new sighting: the lease lasts another duration from when it was seen.
    renewed = observe(seen, LeaseRecord("a", 10, renew_time="2026-12-01T12:00:02.000000Z"), now=108.0)
    assert renewed.since == 108.0 and held_by_other(renewed, "b", now=117.9)


def test_the_lease_time_in_the_record_is_never_compared_with_this_clock():
    # A renewTime far in the past (a skewed leader clock) still counts from when this replica saw it.
    record = LeaseRecord("a", 10, renew_time="2020-01-01T00:00:00.000000Z")
    assert held_by_other(observe(None, record, now=5.0), "b", now=14.0)


def test_no_holder_or_own_holder_is_never_held_by_another():
    assert not held_by_other(Sighting(LeaseRecord("", 1), since=0.0), "b", now=0.0)
    assert not held_by_other(Sighting(LeaseRecord("b", 10), since=0.0), "b", now=0.0)


def test_a_leader_stops_its_renew_deadline_after_its_last_renewal_was_sent():
    assert not leading(None, now=0.0, timing=TIMING)
    assert leading(50.0, now=56.9, timing=TIMING)
    assert not leading(50.0, now=57.0, timing=TIMING)


def test_a_leader_stops_before_any_standby_may_take_the_lease():
    # The leader sends its renewal at 50; the API server stores it; the standby reads it at once (the earliest).
    sent = 50.0
    seen = observe(None, claim(None, "a", TIMING, WALL), now=sent)
    first_takeover = next(t / 10 for t in range(500, 700) if not held_by_other(seen, "b", now=t / 10))
    last_action = max(t / 10 for t in range(500, 700) if leading(sent, now=t / 10, timing=TIMING))
    assert first_takeover - last_action == pytest.approx(3.1)


def test_a_standby_looks_every_retry_period_and_again_when_the_lease_expires():
    seen = Sighting(LeaseRecord("a", 10), since=100.0)
    assert next_look(seen, "b", now=100.0, timing=TIMING) == 2
    assert next_look(seen, "b", now=108.5, timing=TIMING) == pytest.approx(1.5)
    assert next_look(None, "b", now=0.0, timing=TIMING) == 2
    assert next_look(seen, "b", now=111.0, timing=TIMING) == 2  # expired: a failed take (a race lost) waits a period
