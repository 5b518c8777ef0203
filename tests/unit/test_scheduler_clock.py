"""The scheduler's sleep on the controllers' clock (kaizen.controllers.reconcile): a due time is measured on
``reconcile.clock``, so a test that moves the clock brings a look without waiting, and a moved clock wakes only
what is due."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timedelta, timezone

import pytest

from kaizen.controllers import reconcile

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)


class Stepped(reconcile.Clock):
    def __init__(self) -> None:
        self.time = NOW

    def now(self) -> datetime:
        return self.time


class Running:
    """A daemon that is not being stopped (kopf's DaemonStopped: false, and never set)."""

    def __bool__(self) -> bool:
        return False

    async def wait(self) -> None:
        await asyncio.Event().wait()


@pytest.fixture
def clock(monkeypatch):
    stepped = Stepped()
    monkeypatch.setattr(reconcile, "clock", stepped)
    return stepped


def test_a_moved_clock_ends_the_sleep_of_what_is_due_and_only_that(clock):
    async def scenario():
        sleeper = reconcile.Sleeper()
        sleeping = asyncio.ensure_future(sleeper.sleep(Running(), NOW + timedelta(minutes=1)))
        await asyncio.sleep(0.05)
        clock.time = NOW + timedelta(seconds=59)
        sleeper.clock_moved()
        await asyncio.sleep(0.05)
        assert not sleeping.done()  # not due yet: it measured the time left and sleeps on
        clock.time = NOW + timedelta(minutes=1)
        sleeper.clock_moved()
        assert await asyncio.wait_for(sleeping, 1) is False  # due: the look comes at once, not a minute later

        never = asyncio.ensure_future(sleeper.sleep(Running(), None))
        clock.time += timedelta(days=365)
        sleeper.clock_moved()
        await asyncio.sleep(0.05)
        assert not never.done()  # nothing is due: only a change ends it
        threading.Thread(target=sleeper.wake).start()  # from a look's thread
        assert await asyncio.wait_for(never, 1) is True

    asyncio.run(scenario())


def test_a_due_time_in_the_past_is_looked_at_at_once(clock):
    async def scenario():
        assert await asyncio.wait_for(reconcile.Sleeper().sleep(Running(), NOW - timedelta(seconds=1)), 1) is False

    asyncio.run(scenario())


def test_a_due_time_ends_the_sleep_on_the_wall_clock():
    async def scenario():
        started = asyncio.get_running_loop().time()
        due = reconcile.clock.now() + timedelta(seconds=0.2)
        assert await asyncio.wait_for(reconcile.Sleeper().sleep(Running(), due), 2) is False
        assert asyncio.get_running_loop().time() - started >= 0.15

    asyncio.run(scenario())


def test_a_change_during_the_look_ends_the_next_sleep_at_once_and_a_stop_ends_any(clock):
    class Stopping(Running):
        def __init__(self) -> None:
            self.stopped = False

        def __bool__(self) -> bool:
            return self.stopped

    async def scenario():
        sleeper = reconcile.Sleeper()
        sleeper.wake()  # while the object was looking
        await asyncio.sleep(0)
        assert await asyncio.wait_for(sleeper.sleep(Running(), None), 1) is True
        sleeper.woken = False  # the next look begins
        stopped = Stopping()
        sleeping = asyncio.ensure_future(sleeper.sleep(stopped, None))
        await asyncio.sleep(0.05)
        assert not sleeping.done()
        stopped.stopped = True
        sleeper.stop()
        assert await asyncio.wait_for(sleeping, 1) is False

    asyncio.run(scenario())


def test_a_woken_look_never_waits_for_a_thread_behind_due_looks():
    """Every due-look thread busy (1,000 loops and 500 Rollouts analysing outran them): a look woken by a user's
    request still gets a thread at once."""
    release = threading.Event()
    due = reconcile.executor(woken=False)
    busy = [due.submit(release.wait, 10) for _ in range(reconcile.CONCURRENCY - reconcile.WOKEN_THREADS + 4)]
    try:
        assert reconcile.executor(woken=True).submit(lambda: "looked").result(timeout=2) == "looked"
        assert not any(future.done() for future in busy)  # the due looks were all still waiting
    finally:
        release.set()
    assert all(future.result(timeout=5) for future in busy)


def test_a_snapshot_holds_the_looks_last_write_only_once_the_watch_delivered_it():
    from kaizen.api import ROLLOUT

    scheduler = reconcile.Scheduler(ROLLOUT)
    assert scheduler.watched_own_write("ns", "r")  # nothing written yet: kopf's body is as fresh as any read
    scheduler.wrote("ns", "r", "41", {"phase": "Progressing"})
    assert not scheduler.watched_own_write("ns", "r")  # written, not yet watched: the look must read it fresh
    scheduler.changed("ns", "r", "40")  # an older event still arriving
    assert not scheduler.watched_own_write("ns", "r")
    scheduler.changed("ns", "r", "41")
    assert scheduler.watched_own_write("ns", "r")
    scheduler.changed("ns", "r", "42")  # someone else's change after ours: the body has ours, and theirs
    assert scheduler.watched_own_write("ns", "r")


def test_a_looks_own_write_seen_by_the_watch_before_the_write_returned_wakes_nothing():
    """Under load the watch event of a look's status write often arrived before the write returned, so the look
    could not tell it was its own: every analysis look woke another (and read the Rollout fresh)."""
    from kaizen.api import ROLLOUT

    scheduler = reconcile.Scheduler(ROLLOUT)
    woken: list[tuple[str, str]] = []
    scheduler.wake = lambda namespace, name: woken.append((namespace, name))  # type: ignore[method-assign]

    scheduler.looking("ns", "r")
    scheduler.changed("ns", "r", "51")  # the look's own write, delivered before it returned
    scheduler.wrote("ns", "r", "51", {"phase": "Progressing"})
    scheduler.looked("ns", "r")
    assert woken == [] and scheduler.watched_own_write("ns", "r")

    scheduler.looking("ns", "r")
    scheduler.changed("ns", "r", "52")  # someone else's change during the look: judged at its end, and it wakes
    assert woken == []
    scheduler.looked("ns", "r")
    assert woken == [("ns", "r")]
    scheduler.changed("ns", "r", "53")  # between looks: at once
    assert woken == [("ns", "r"), ("ns", "r")]


def test_only_a_write_that_asks_for_a_follow_up_wakes_the_object_when_the_watch_delivers_it():
    """A loop's write that records a request (its annotations go at the next look) or a decision (the next look
    audits it) wakes it once the watch has it; its other writes do not (1,000 loops at rest wrote 7 a second, and
    each woke a look that had nothing to do)."""
    from kaizen.api import IMPROVEMENT_LOOP

    scheduler = reconcile.Scheduler(IMPROVEMENT_LOOP, follow_up=lambda fields: "decisions" in fields)
    woken: list[tuple[str, str]] = []
    scheduler.wake = lambda namespace, name: woken.append((namespace, name))  # type: ignore[method-assign]

    assert not scheduler.wrote("ns", "l", "61", {"lastObserved": "2026-12-02T10:00:00Z"})
    scheduler.changed("ns", "l", "61")
    assert woken == []
    assert scheduler.wrote("ns", "l", "62", {"lastAction": {"action": "approve"}})
    assert woken == []  # not before the watch delivers it: kopf's body must hold the write
    scheduler.changed("ns", "l", "62")
    assert woken == [("ns", "l")]
    scheduler.changed("ns", "l", "62")  # delivered again (a re-list): followed up once
    assert woken == [("ns", "l")]

    # Delivered before the write returned, it is judged at the look's end, and still wakes once.
    scheduler.looking("ns", "l")
    scheduler.changed("ns", "l", "63")
    assert scheduler.wrote("ns", "l", "63", {"lastAction": {"action": "retrain"}})
    assert woken == [("ns", "l")]
    scheduler.looked("ns", "l")
    assert woken == [("ns", "l"), ("ns", "l")]
    assert scheduler.wrote("ns", "l", "64", {"decisions": [{"id": "l-1"}]})  # this kind's own follow-up
    scheduler.changed("ns", "l", "64")
    assert woken == [("ns", "l")] * 3

    # A recorded request is followed up for every kind, whatever its own rule.
    from kaizen.api import ROLLOUT
    assert reconcile.Scheduler(ROLLOUT).wrote("ns", "r", "1", {"lastAction": {"action": "approve"}})
    assert not reconcile.Scheduler(ROLLOUT).wrote("ns", "r", "1", {"decisions": []})
