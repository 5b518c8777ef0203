"""The reconcile skeleton shared by every kind: gather → pure decide → :func:`apply`, scheduled by due time.

- Spec validation (:func:`register`, :func:`accept`): ``observedGeneration`` and the ``Ready`` / ``InvalidSpec``
  conditions, written once, only when they change. A spec the operator cannot act on is reported (condition +
  Warning Event) and *not* retried: retrying cannot fix it, and the next edit of the spec triggers a new reconcile.
- The look (:func:`schedule`): one asyncio task per object sleeps until the due time its last look returned, or until
  the object (or what the controller watches for it, :meth:`Scheduler.wake`) changes. The look gathers, calls its
  kind's pure decide function (which returns :class:`kaizen.logic.effects.Effects`), and :func:`apply` carries the
  effects out the same way for every kind; the status is written once, in one merge patch, skipped when nothing
  changed. A user's request (the ``kaizen.dev/action`` annotations) is read by :func:`take_request`.
- Time: every controller reads :data:`clock` (``clock.now()``), and the scheduler's sleeps are measured on it; tests
  replace it with a clock they drive, and :func:`clock_moved` makes every sleeping object measure its due time
  again: those now due look, the others sleep on.

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
import contextvars
import functools
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar, cast

import kopf
from pydantic import BaseModel

from kaizen.api import ResourceKind
from kaizen.api.actions import REQUEST_KEYS
from kaizen.k8s import configmaps, deployments, httproutes, jobs, resources
from kaizen.k8s.client import CONCURRENCY
from kaizen.k8s.errors import ApiError, NotOwned
from kaizen.logic.conditions import Event
from kaizen.logic.effects import CHILD_REJECTED, SLOW_RETRY, Effects, Failure, unblocked
from kaizen.logic.effects import refused as usual_refusal
from kaizen.logic.requests import Requested, consumable, pending
from kaizen.logic.validation import judge
from kaizen.metrics.exporter import EXPORTER

class Clock:
    """The time the controllers act on: ``now()`` is the wall clock. Tests replace :data:`clock` with a subclass
    whose ``now()`` they move (then call :func:`clock_moved`), instead of sleeping until a due time comes."""

    def now(self) -> datetime:
        return datetime.now(timezone.utc)


#: The one clock of every controller (looked up at each use, so that a test's replacement takes effect at once).
clock = Clock()

F = TypeVar("F", bound=Callable[..., Any])
#: The next try after a failure a person must fix: a name taken, a quota, RBAC.
SLOW_RETRY_SECONDS = SLOW_RETRY.total_seconds()
#: The next try after a bug: rarely enough to cost nothing, soon enough to pick up a fixed operator's peers' work.
BUG_RETRY_SECONDS = 300.0
_reported: set[tuple[str, str]] = set()
#: The latest a follow-up look comes (see :func:`schedule`) when the watch has not delivered the write it follows.
FOLLOW_UP_AT_MOST_SECONDS = 5.0
#: Of the look threads, how many take only looks woken by a change (a user's request, a spec edit, a child's change).
WOKEN_THREADS = 8
_executors: dict[bool, ThreadPoolExecutor] = {}


def executor(woken: bool = False) -> ThreadPoolExecutor:
    """The threads the looks run in: :data:`kaizen.k8s.client.CONCURRENCY` of them, the operator's own, of which
    :data:`WOKEN_THREADS` take only the looks woken by a change.

    A look mostly waits (on the API server, Prometheus, the collector), so looks due together must wait in
    parallel: in asyncio's default pool (cores + 4 threads: 6 on 2 cores) 200 loops due on one grid waited ~7s
    behind one another. And a woken look must never queue behind the due ones: at 1,000 loops and 500 Rollouts
    analysing, the due looks outran one shared pool, and a user's approval waited 68 s (p50) behind them. (Its own
    threads did not cure that there: see the README's scale section.)"""
    if woken not in _executors:
        size = WOKEN_THREADS if woken else CONCURRENCY - WOKEN_THREADS
        _executors[woken] = ThreadPoolExecutor(size, thread_name_prefix="kaizen-woken" if woken else "kaizen-look")
    return _executors[woken]


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
    """Judge the spec (:func:`kaizen.logic.validation.judge`, with the object's name) and write the conditions;
    return the parsed spec, or None when it is invalid."""
    parsed, effects = judge(resource, spec, name=(body.get("metadata") or {}).get("name"), status=status,
                            generation=generation, now=now or clock.now())
    for event in effects.events:
        logger.warning(f"Rejected spec: {event.message}")
        kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1024])
    write_status(status, patch, effects.status)
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


def as_body(obj: dict[str, Any]) -> kopf.Body:
    """An object as the API returned it, for kopf's Event posting: kopf types that argument as its own Body (a view
    of such a dict) and reads only its apiVersion, kind and metadata."""
    return cast(kopf.Body, obj)


def report_bug(error: Exception, kwargs: dict[str, Any]) -> None:
    meta, logger = kwargs.get("meta") or {}, kwargs["logger"]
    key = (str(meta.get("uid")), f"{type(error).__name__}: {error}")
    if key not in _reported:
        _reported.add(key)
        logger.exception(f"Failed with an unexpected error namespace={meta.get('namespace')} name={meta.get('name')} "
                         f"error={type(error).__name__}; retrying every {BUG_RETRY_SECONDS:g}s, reported once")
    raise kopf.TemporaryError(f"{type(error).__name__}: {error} (reported above)", delay=BUG_RETRY_SECONDS) from error




# ------------------------------------------------------------------------------------------------ requests


def take_request(resource: ResourceKind, obj: dict[str, Any], allowed: Sequence[str], recorded: Any | None,
                 usage: str) -> Requested | None:
    """The user's request waiting on ``obj`` (:func:`kaizen.logic.requests.pending`), for every kind the same way.

    A request that ``recorded`` (the stored status.lastAction) shows handled, or that cannot be used (a Warning
    Event says why), has its annotations removed now: only once the status recording it has been written, so that
    a crash between acting on a request and writing the status can never lose it.
    """
    meta = obj["metadata"]
    annotations = dict(meta.get("annotations") or {})
    try:
        request = pending(annotations, allowed, recorded, usage)
    except ValueError as problem:
        kopf.warn(as_body(obj), reason="InvalidAction", message=str(problem))
        request = None
    if consumable(annotations, request):
        resources.remove_annotations(resource.kind, meta["namespace"], meta["name"], REQUEST_KEYS)
    return request


# ------------------------------------------------------------------------------------------------ apply


class LookPatch(kopf.Patch):
    """A look's status patch, and the Events :func:`apply` holds back until it is written (:meth:`announce`): an
    Event never announces what a status that was not written (the operator stopped in between) does not hold, and
    the look that does it again announces it once."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[dict[str, Any], Event]] = []

    def announce(self) -> None:
        for obj, event in self.events:
            kopf.event(as_body(obj), type=event.type, reason=event.reason, message=event.message[:1024])
        self.events.clear()


#: What a refused child means for the object: pure, from the stored status, the failure, now and the generation.
Refused = Callable[[dict[str, Any], Failure, datetime, "int | None"], Effects]


def apply(obj: dict[str, Any], effects: Effects, patch: kopf.Patch, logger: kopf.Logger,
          refused: Refused | None = None) -> datetime | None:
    """Carry out one look's effects, the same way for every kind, and return when the object is next due.

    Children first, in order, and the status last: a crash in between leaves children with deterministic names that
    the next look adopts. A look's Events are posted once its status is written (:class:`LookPatch`). A child the
    API server refuses (or whose name is taken) stops the children there; what it means for the object is
    ``refused``'s to say (by default :func:`kaizen.logic.effects.refused`), and those effects are applied instead.
    A transient failure is raised: the scheduler retries with backoff.
    """
    meta = obj["metadata"]
    namespace, stored = meta["namespace"], dict(obj.get("status") or {})
    what = ""
    try:
        for body in effects.create:
            what = f"{body['kind']} {namespace}/{body['metadata']['name']}"
            _create(namespace, body, meta["uid"])
        for body in effects.apply:
            what = f"{body['kind']} {namespace}/{body['metadata']['name']}"
            _apply(namespace, body)
        for kind, name in effects.delete:
            what = f"{kind} {namespace}/{name}"
            _delete(kind, namespace, name)
    except (NotOwned, ApiError) as error:
        failure = classify(error, what)
        if failure is None:
            raise
        return apply(obj, (refused or usual_refusal)(stored, failure, clock.now(), meta.get("generation")), patch,
                     logger)
    for event in effects.events:
        if isinstance(patch, LookPatch):
            patch.events.append((obj, event))
        else:
            kopf.event(as_body(obj), type=event.type, reason=event.reason, message=event.message[:1024])
    for line in effects.log:
        logger.info(line)
    write_status(stored, patch, {**unblocked(stored), **effects.status})
    return effects.next_due


def _create(namespace: str, body: dict[str, Any], owner_uid: str) -> None:
    body = {**body, "metadata": {**body["metadata"], "namespace": namespace}}
    if body["kind"] in jobs.KINDS:
        jobs.create_or_adopt(body, owner_uid)
    else:
        resources.create_or_adopt(body["kind"], namespace, body, owner_uid)


def _apply(namespace: str, body: dict[str, Any]) -> None:
    body = {**body, "metadata": {**body["metadata"], "namespace": namespace}}
    if body["kind"] == "HTTPRoute":
        httproutes.apply(body)
    elif body["kind"] == "Deployment":
        deployments.apply(body)
    elif body["kind"] == "ConfigMap":
        configmaps.apply(body)
    else:
        raise ValueError(f"no server-side apply of {body['kind']} is known")


def _delete(kind: str, namespace: str, name: str) -> None:
    if kind == "Deployment":
        deployments.delete(namespace, name)
    else:
        resources.delete(kind, namespace, name)


# ------------------------------------------------------------------------------------------------ scheduling

#: A look at one object: given a snapshot of it, gather, decide and :func:`apply`, put the status to write into the
#: patch, and return when it is next due (None: only when the object or what is watched for it changes).
Look = Callable[[dict[str, Any], kopf.Patch, kopf.Logger, int], "datetime | None"]
#: Whether a look's status write (its fields) asks for a follow-up look once the watch delivers it, beyond a recorded
#: request (:data:`REQUEST_RECORD`), which always does.
FollowUp = Callable[[dict[str, Any]], bool]
#: The status field a look records a user's request in: the look after that write removes the request's annotations
#: (:func:`take_request`), for every kind.
REQUEST_RECORD = "lastAction"


class Sleeper:
    """One object's sleep between looks: a future that its due time, a change (:meth:`wake`), a moved clock or the
    daemon's end resolves. No task per sleep: three per sleep (one per thing to wait on), started and cancelled at
    every look, were about 6,000 of the operator's 10,650 asyncio tasks at 1,000 loops and 1,000 Rollouts. Used on
    the event loop that made it, except :meth:`wake` and :meth:`clock_moved`, which any thread may call."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        #: A change came since the look began: the sleep after it ends at once.
        self.woken = False
        self._moved = False
        self._future: asyncio.Future[None] | None = None

    def wake(self) -> None:
        self.loop.call_soon_threadsafe(self._poke, True, False)

    def clock_moved(self) -> None:
        self.loop.call_soon_threadsafe(self._poke, False, True)

    def stop(self) -> None:
        self._poke(False, False)

    def _poke(self, woken: bool, moved: bool) -> None:
        self.woken, self._moved = self.woken or woken, self._moved or moved
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    async def sleep(self, stopped: kopf.DaemonStopped, due: datetime | None) -> bool:
        """Until ``due`` on :data:`clock` (None: for ever), a change or the daemon's end; a moved clock measures the
        time left again. True when a change woke it."""
        while not (stopped or self.woken):
            self._moved = False
            delay = None if due is None else max((due - clock.now()).total_seconds(), 0.0)
            self._future = self.loop.create_future()
            timer = None if delay is None else self.loop.call_later(delay, self._poke, False, False)
            try:
                await self._future
            finally:
                self._future = None
                if timer is not None:
                    timer.cancel()
            if not self._moved or (due is not None and clock.now() >= due):
                break
        return self.woken


@dataclass(frozen=True)
class Slept:
    """What the scheduler of one object last did: how many looks it has taken, and until when it now sleeps
    (None: until a change). An observable for tests that must know a look has finished."""

    looks: int
    due: datetime | None


class Scheduler:
    """The looks of one kind: a task per object (by uid), woken by its due time or by :meth:`wake`."""

    def __init__(self, resource: ResourceKind, follow_up: FollowUp | None = None) -> None:
        self.resource = resource
        self.follow_up = follow_up
        #: The resourceVersion of each object's last status write by a look: its watch event is not a change.
        self._written: dict[tuple[str, str], str] = {}
        #: The objects whose last status write asks for a look as soon as the watch delivers it (``follow_up``).
        self._again: set[tuple[str, str]] = set()
        #: The objects whose last status write by a look the watch has delivered (kopf's body holds it).
        self._seen: set[tuple[str, str]] = set()
        #: The watch events (their resourceVersions) of each object that is looking now, held until the look ends.
        self._held: dict[tuple[str, str], list[str | None]] = {}
        self._sleepers: dict[str, Sleeper] = {}
        self._uids: dict[tuple[str, str], str] = {}
        self._slept: dict[tuple[str, str], Slept] = {}
        self._lock = threading.Lock()

    def changed(self, namespace: str, name: str, resource_version: str | None) -> None:
        """A watch event of the object: wake it, unless the event is its last look's own status write that asks for
        no follow-up (the look said when it is next due). An event that arrives while the object is
        looking is judged once the look is over: until its write has returned, the look cannot tell its own write's
        event from another's (under load the event often came first, and every own write woke another look)."""
        key = (namespace, name)
        held = self._held.get(key)
        if held is not None:
            held.append(resource_version)
        else:
            self._judge(key, resource_version)

    def _judge(self, key: tuple[str, str], resource_version: str | None) -> None:
        if resource_version is not None and self._written.get(key) == resource_version:
            self._seen.add(key)
            if key not in self._again:
                return
            self._again.discard(key)
        self.wake(*key)

    def looking(self, namespace: str, name: str) -> None:
        """A look of the object begins: its watch events wait for its end (:meth:`looked`)."""
        self._held[(namespace, name)] = []

    def looked(self, namespace: str, name: str) -> None:
        """The look has ended (its status written, or not): the events that arrived meanwhile are judged now."""
        for resource_version in self._held.pop((namespace, name), []):
            self._judge((namespace, name), resource_version)

    def wrote(self, namespace: str, name: str, resource_version: str, fields: dict[str, Any]) -> bool:
        """A look wrote the status ``fields`` of the object, which the API server stored as ``resource_version``.
        True when the write asks for a follow-up look."""
        key = (namespace, name)
        self._written[key] = resource_version
        self._seen.discard(key)
        again = REQUEST_RECORD in fields or (self.follow_up is not None and self.follow_up(fields))
        (self._again.add if again else self._again.discard)(key)
        return again

    def watched_own_write(self, namespace: str, name: str) -> bool:
        """Whether kopf's body of the object (and so a look's snapshot of it) holds the last status write of its
        looks: true, unless a look wrote and the watch has not yet delivered that write."""
        key = (namespace, name)
        return key not in self._written or key in self._seen

    def wake(self, namespace: str, name: str) -> None:
        """Make the object look now (from any thread): something it depends on changed."""
        with self._lock:
            sleeper = self._sleepers.get(self._uids.get((namespace, name), ""))
        if sleeper is not None:
            sleeper.wake()

    def clock_moved(self) -> None:
        """Make every sleeping object measure its due time again on :data:`clock` (from any thread)."""
        with self._lock:
            sleepers = list(self._sleepers.values())
        for sleeper in sleepers:
            sleeper.clock_moved()

    def slept(self, namespace: str, name: str) -> Slept | None:
        return self._slept.get((namespace, name))

    def _enter(self, meta: dict[str, Any]) -> Sleeper:
        sleeper = Sleeper()
        with self._lock:
            self._sleepers[meta["uid"]] = sleeper
            self._uids[(meta["namespace"], meta["name"])] = meta["uid"]
        return sleeper

    def _leave(self, meta: dict[str, Any], sleeper: Sleeper) -> None:
        with self._lock:
            if self._sleepers.get(meta["uid"]) is sleeper:
                del self._sleepers[meta["uid"]]
                self._uids.pop((meta["namespace"], meta["name"]), None)
                self._slept.pop((meta["namespace"], meta["name"]), None)
                self._written.pop((meta["namespace"], meta["name"]), None)
                self._seen.discard((meta["namespace"], meta["name"]))
                self._again.discard((meta["namespace"], meta["name"]))
                self._held.pop((meta["namespace"], meta["name"]), None)


_schedulers: list[Scheduler] = []


def clock_moved() -> None:
    """:data:`clock` was moved (a test drives it): every object of every kind measures its due time again."""
    for scheduler in _schedulers:
        scheduler.clock_moved()


def schedule(resource: ResourceKind, look: Look, follow_up: FollowUp | None = None) -> Scheduler:
    """Run ``look`` for every object of ``resource`` when it is due, instead of polling: one asyncio task per object
    sleeps until the due time ``look`` returned, or until the object changes (any watch event wakes it) or
    :meth:`Scheduler.wake` is called. The look runs in a thread (the Kubernetes, Prometheus and collector clients
    block), and its status patch is written in one merge patch of the status subresource, skipped when empty; a
    TemporaryError's delay replaces the due time.

    The watch event of a look's own status write does not wake the object (a look reads the object fresh and returns
    its next due time, so there is nothing to look at then: at 100 Rollouts analysing that second look was half of
    the operator's API requests, and a RetrainJob whose status changes at every look looked again for ever). A write
    of status fields the next look acts on (a request recorded, whose annotations the next look removes, or what
    ``follow_up`` of the fields is true for) wakes it when the watch delivers it, so that kopf's body then holds the
    write."""
    target = ("kaizen.dev", "v1alpha1", resource.plural)
    scheduler = Scheduler(resource, follow_up)
    _schedulers.append(scheduler)
    # The operator's /metrics, derived from the status each look writes (kaizen.metrics.exporter): the one hook.
    look = EXPORTER.instrumented(resource.kind, look, live=lambda ns, name: scheduler.slept(ns, name) is not None)

    @kopf.daemon(*target, id=f"schedule_{resource.plural}", cancellation_timeout=30)
    async def run(stopped: kopf.DaemonStopped, body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
        meta = dict(body["metadata"])
        key = (meta["namespace"], meta["name"])
        sleeper = scheduler._enter(meta)
        # The daemon's end ends its sleep: one task for the daemon's life, not one per sleep.
        stopping = asyncio.ensure_future(stopped.wait())
        stopping.add_done_callback(lambda _: sleeper.stop())
        retry = looks = 0
        woken = False  # the first look: at start-up every object is new, and they all take the many threads
        try:
            while not stopped:
                sleeper.woken = False
                try:
                    # A snapshot, taken here on the event loop that updates the body: by JSON, which is what the
                    # body is (copy.deepcopy of an 11 KB Rollout took 3.4 ms, this 0.6 ms, at every look).
                    snapshot = json.loads(json.dumps(dict(body)))
                    # In this task's context (as asyncio.to_thread would): kopf.event reads its settings there.
                    context = contextvars.copy_context()
                    scheduler.looking(*key)
                    try:
                        due = await asyncio.get_running_loop().run_in_executor(
                            executor(woken), context.run, look_and_write, snapshot, logger, retry)
                    finally:
                        scheduler.looked(*key)
                    retry = 0
                except kopf.TemporaryError as error:
                    due, retry = clock.now() + timedelta(seconds=error.delay or 0), retry + 1
                looks += 1
                scheduler._slept[key] = Slept(looks, due)
                woken = await sleeper.sleep(stopped, due)
        finally:
            stopping.cancel()
            scheduler._leave(meta, sleeper)

    @kopf.on.event(*target, id=f"wake_{resource.plural}")
    async def changed(event: kopf.RawEvent, meta: kopf.Meta, **_: Any) -> None:
        forget_managed_fields(event)
        scheduler.changed(meta.get("namespace") or "", meta.get("name") or "", meta.get("resourceVersion"))

    def look_and_write(obj: dict[str, Any], logger: kopf.Logger, retry: int) -> datetime | None:
        patch, again = LookPatch(), False
        try:
            due = look(obj, patch, logger, retry)
        finally:
            version = write(resource=resource, meta=obj["metadata"], patch=patch, logger=logger, retry=retry)
            if version is not None:
                again = scheduler.wrote(obj["metadata"]["namespace"], obj["metadata"]["name"], version,
                                        dict(patch.get("status") or {}))
            patch.announce()  # not when the write failed (it raised): the look that writes it announces it
        if again:  # the write's watch event wakes it; should the event not come, it looks all the same
            latest = clock.now() + timedelta(seconds=FOLLOW_UP_AT_MOST_SECONDS)
            due = latest if due is None else min(due, latest)
        return due

    return scheduler


def forget_managed_fields(event: kopf.RawEvent) -> None:
    """Drop ``metadata.managedFields`` from the object of a watch event, which is the body kopf keeps.

    kopf keeps the latest body of every object it runs a daemon for, as the event's own dict (the next event's
    replaces it; nothing is copied), so what is dropped here is not kept. Nothing Kaizen does reads managedFields,
    yet they are about half of a body as Python objects (21 of a loop's 42 KB, 15 of a paused Rollout's 26 KB: some
    36 MB at 1,000 loops and 1,000 Rollouts), and every look copied them into its snapshot. Should kopf one day copy
    the event, this only stops saving memory."""
    metadata: Any = event.get("object", {}).get("metadata")  # kopf types it without managedFields
    if isinstance(metadata, dict):
        metadata.pop("managedFields", None)


@classified
def write(resource: ResourceKind, meta: dict[str, Any], patch: kopf.Patch, **_: Any) -> str | None:
    """A look's status patch, in one merge patch of the status subresource; nothing when nothing changed. Returns
    the resourceVersion it wrote (None: nothing written)."""
    fields = dict(patch.get("status") or {})
    if fields:
        return resources.patch_status(resource.kind, meta["namespace"], meta["name"], fields)
    return None
