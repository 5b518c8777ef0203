"""Drives a :class:`~kaizen.dev.users.Population` against a served model over HTTP, as its users would: the edge of
the simulated users (:mod:`kaizen.dev.users` is the pure part).

:class:`Traffic` sends the users' requests to a base URL (a model server, or the Service proxy in front of its
pods) at ``rate`` requests/s from a few threads, one connection per request (so a Service proxy spreads them over
its endpoints as kube-proxy would), for ``count`` requests and/or ``duration`` seconds, then stops by itself. Each
request is an OpenAI ``POST /v1/completions`` (``/v1/classifications`` for the classification variant) with the
user's id as ``user`` and ``metadata`` {cohort, scenario, consent_training}; the server records the trace and
returns its ``trace_id`` and the ``X-Kaizen-Model-Version`` that answered. The user judges the answer; feedback
goes to the collector on that trace id (:class:`kaizen.sdk.FeedbackRecorder`); users whose time has come opt out
(``DELETE /v1/subjects/{id}``, admin scope). :meth:`Traffic.snapshot` is the measured quality (share of right
answers) per model version and cohort, cumulative and over a sliding window. Nothing here decides a quality: it is
whatever the served model answers.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

from kaizen.collector.client import CollectorClient, CollectorError
from kaizen.dev.users import Judgement, Population, Request
from kaizen.sdk import FeedbackRecorder

log = logging.getLogger(__name__)
ALL = "*"


@dataclass
class Counts:
    requests: int = 0
    right: int = 0

    @property
    def quality(self) -> float | None:
        """Share of right answers; None before any answer."""
        return self.right / self.requests if self.requests else None


@dataclass(frozen=True)
class Snapshot:
    """The tally at one moment. ``cumulative`` and ``window`` map (model version, cohort) to counts, with ``"*"``
    for all versions or all cohorts; the window is the last ``window_seconds`` of the run's clock."""

    cumulative: dict[tuple[str, str], Counts]
    window: dict[tuple[str, str], Counts]
    window_seconds: float
    #: Requests sent (answered or not), failed requests (no answer: connection refused, 5xx, ...), feedback sent,
    #: feedback the collector refused or could not take, opt-outs done.
    sent: int = 0
    errors: int = 0
    feedback: int = 0
    feedback_errors: int = 0
    opt_outs: int = 0
    last_error: str | None = None

    def counts(self, version: str = ALL, cohort: str = ALL, window: bool = False) -> Counts:
        return (self.window if window else self.cumulative).get((version, cohort), Counts())

    def quality(self, version: str = ALL, cohort: str = ALL, window: bool = False) -> float | None:
        """Share of right answers of ``version`` (all by default) to ``cohort`` (all by default)."""
        return self.counts(version, cohort, window).quality

    def versions(self) -> list[str]:
        return sorted({v for v, _ in self.cumulative if v != ALL})

    def lines(self, window: bool = False) -> list[str]:
        """Human-readable quality per version and cohort, for the demo's output."""
        table = self.window if window else self.cumulative
        out = []
        for version in [ALL, *self.versions()]:
            cohorts = sorted(c for v, c in table if v == version and c != ALL)
            total = table.get((version, ALL), Counts())
            if not total.requests:
                continue
            parts = ", ".join(f"{c} {table[(version, c)].right}/{table[(version, c)].requests}" for c in cohorts)
            name = "all versions" if version == ALL else version
            out.append(f"{name}: {total.quality:.1%} right ({total.right}/{total.requests}; {parts})")
        return out


class Tally:
    """Thread-safe counts of right answers per model version and cohort, cumulative and over a sliding window."""

    def __init__(self, window: float = 30.0) -> None:
        self.window_seconds = window
        self._lock = threading.Lock()
        self._cumulative: dict[tuple[str, str], Counts] = collections.defaultdict(Counts)
        self._recent: collections.deque[tuple[float, str, str, bool]] = collections.deque()
        self._counters = {"sent": 0, "errors": 0, "feedback": 0, "feedback_errors": 0, "opt_outs": 0}
        self._last_error: str | None = None

    def answered(self, at: float, version: str, cohort: str, correct: bool) -> None:
        with self._lock:
            for key in _keys(version, cohort):
                self._cumulative[key].requests += 1
                self._cumulative[key].right += correct
            self._recent.append((at, version, cohort, correct))

    def count(self, what: str, error: str | None = None) -> None:
        with self._lock:
            self._counters[what] += 1
            if error is not None:
                self._last_error = error

    def snapshot(self, now: float) -> Snapshot:
        with self._lock:
            while self._recent and self._recent[0][0] < now - self.window_seconds:
                self._recent.popleft()
            window: dict[tuple[str, str], Counts] = collections.defaultdict(Counts)
            for _, version, cohort, correct in self._recent:
                for key in _keys(version, cohort):
                    window[key].requests += 1
                    window[key].right += correct
            return Snapshot({k: Counts(v.requests, v.right) for k, v in self._cumulative.items()}, dict(window),
                            self.window_seconds, **self._counters, last_error=self._last_error)


def _keys(version: str, cohort: str) -> tuple[tuple[str, str], ...]:
    return (version, cohort), (version, ALL), (ALL, cohort), (ALL, ALL)


@dataclass(frozen=True)
class Answered:
    """One served answer as the driver saw it."""

    text: str
    version: str
    trace_id: str | None


@dataclass(frozen=True)
class Outcome:
    """One request, the answer served, and the user's judgement of it (the driver keeps the latest ones)."""

    request: Request
    answered: Answered
    judgement: Judgement


@dataclass
class Traffic:
    """Sends ``population``'s requests to ``url`` (see the module docstring). ``collector_url`` with ``ingest_token``
    enables feedback, with ``admin_token`` opt-outs; ``clock`` gives the domain time in seconds (default: seconds
    since :meth:`start`, plus ``start_at``). At least one of ``count`` and ``duration`` bounds the run."""

    population: Population
    url: str
    collector_url: str | None = None
    ingest_token: str | None = None
    admin_token: str | None = None
    model: str = "support-bot"
    rate: float = 20.0
    count: int | None = None
    duration: float | None = None
    threads: int = 3
    window: float = 30.0
    start_at: float = 0.0
    clock: Callable[[], float] | None = None
    #: Index of the first request (a second run of the same population continues its sequence).
    first_index: int = 0
    max_tokens: int = 24
    timeout: float = 10.0
    #: How many of the latest outcomes :attr:`outcomes` keeps (the demo prints some; tests check them all).
    keep: int = 1000
    tally: Tally = field(init=False)
    outcomes: collections.deque[Outcome] = field(init=False)

    def __post_init__(self) -> None:
        if self.count is None and self.duration is None:
            raise ValueError("unbounded traffic: give count (requests) and/or duration (seconds)")
        if self.rate <= 0 or self.threads < 1:
            raise ValueError(f"rate must be > 0 requests/s and threads >= 1, not rate={self.rate} "
                             f"threads={self.threads}")
        self.url = self.url.rstrip("/")
        self.tally = Tally(self.window)
        self.outcomes = collections.deque(maxlen=self.keep)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._next = 0
        self._opted_until: float | None = None
        self._feedback = FeedbackRecorder(self.collector_url, self.ingest_token, model=self.model,
                                          timeout=self.timeout) if self.collector_url and self.ingest_token else None
        self._admin = CollectorClient(self.collector_url, self.admin_token, self.timeout) \
            if self.collector_url and self.admin_token else None
        self._began = 0.0

    # -- lifecycle ------------------------------------------------------------------------------------------------

    def start(self) -> Traffic:
        self._began = time.monotonic()
        self._opted_until = self.now()
        self._workers = [threading.Thread(target=self._work, name=f"traffic-{i}", daemon=True)
                         for i in range(self.threads)]
        for worker in self._workers:
            worker.start()
        log.info("Started traffic url=%s rate=%g count=%s duration=%s", self.url, self.rate, self.count,
                 self.duration)
        return self

    def stop(self, timeout: float = 30.0) -> Snapshot:
        """Stop sending (requests in flight finish) and return the final tally."""
        self._stop.set()
        return self.wait(timeout)

    def wait(self, timeout: float | None = None) -> Snapshot:
        """Wait until the run ends by itself (its count or duration), then return the final tally."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for worker in self._workers:
            worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self.snapshot()

    @property
    def running(self) -> bool:
        return any(w.is_alive() for w in self._workers)

    def __enter__(self) -> Traffic:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def now(self) -> float:
        """The domain time: the injected clock, else seconds since start plus ``start_at``."""
        return self.clock() if self.clock is not None else self.start_at + time.monotonic() - self._began

    def snapshot(self) -> Snapshot:
        return self.tally.snapshot(self.now())

    # -- the work -------------------------------------------------------------------------------------------------

    def _claim(self) -> int | None:
        """The next request's number (0-based within this run), or None when the run is over."""
        with self._lock:
            n = self._next
            if self._stop.is_set() or (self.count is not None and n >= self.count) or (
                    self.duration is not None and n / self.rate >= self.duration):
                return None
            self._next += 1
            return n

    def _work(self) -> None:
        while (n := self._claim()) is not None:
            # Paced on the wall clock: request n is due n/rate seconds after the start.
            if self._stop.wait(max(0.0, self._began + n / self.rate - time.monotonic())):
                return
            at = self.now()
            self._opt_out(at)
            request = self.population.request(self.first_index + n, at)
            if request is None:
                continue
            self.tally.count("sent")
            try:
                answered = self._ask(request)
            except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
                self.tally.count("errors", f"{type(error).__name__}: {error}")
                continue
            judgement = self.population.judge(request, answered.text, at)
            self.tally.answered(self.now(), answered.version, request.user.cohort, judgement.correct)
            self.outcomes.append(Outcome(request, answered, judgement))
            self._send_feedback(request, answered, judgement)

    def _ask(self, request: Request) -> Answered:
        metadata = request.metadata()
        user = request.user.subject_id
        if self.population.task == "causal-lm":
            body = {"model": self.model, "prompt": request.text, "max_tokens": self.max_tokens, "user": user,
                    "metadata": metadata}
            reply, headers = self._post("/v1/completions", body)
            text = reply["choices"][0]["text"]
        else:
            reply, headers = self._post("/v1/classifications", {"model": self.model, "input": request.text,
                                                                 "user": user, "metadata": metadata})
            text = reply["data"][0]["label"]
        version = headers.get("X-Kaizen-Model-Version") or reply.get("system_fingerprint") or "unknown"
        return Answered(text, version, reply.get("trace_id") or headers.get("X-Kaizen-Trace-Id"))

    def _post(self, path: str, body: dict) -> tuple[dict, dict[str, str]]:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read()), dict(response.headers.items())
        except urllib.error.HTTPError as error:
            raise OSError(f"POST {self.url}{path} answered HTTP {error.code}: {error.read()[:300]!r}") from None

    def _send_feedback(self, request: Request, answered: Answered, judgement: Judgement) -> None:
        feedback = judgement.feedback
        if feedback is None or self._feedback is None:
            return
        if answered.trace_id is None:
            self.tally.count("feedback_errors", f"no trace id in the answer to {request.id}: is the server's "
                             "collector configured?")
            return
        fields = {k: v for k, v in (("category", feedback.category), ("correction", feedback.correction)) if v}
        try:
            self._feedback.feedback(answered.trace_id, feedback.rating, consent_training=request.user.consent,
                                    subject_id=request.user.subject_id, id=f"fb-{request.id}", **fields)
        except (CollectorError, ValueError) as error:
            self.tally.count("feedback_errors", str(error))
        else:
            self.tally.count("feedback")

    def _opt_out(self, at: float) -> None:
        """Opt out the users whose time came since the last look (each exactly once, whichever thread sees it)."""
        with self._lock:
            since, self._opted_until = self._opted_until, max(at, self._opted_until or at)
        if since is None or at <= since:
            return
        for user in self.population.opt_outs(since, at):
            if self._admin is None:
                continue
            try:
                self._admin.request("DELETE", f"/v1/subjects/{user.subject_id}")
            except CollectorError as error:
                self.tally.count("errors", str(error))
            else:
                self.tally.count("opt_outs")
                log.info("Opted out subject=%s at=%.1f", user.subject_id, at)
