"""The chaos suite's harness: one whole loop of an ImprovementLoop on the local control plane, with the operator as
processes that the suite kills, and the world around it played as the state it sees asks.

One :class:`Run` is one loop in its own namespace: a served Deployment, a real Prometheus scraping the stable and
canary tracks' telemetry (:class:`Telemetry`), the collector with the users' feedback, and the loop (breach → manual
approval → RetrainJob → the trainer's pod → gates → a Rollout with a timed pause, analysis, an untimed pause the user
approves → promotion → cooldown → healthy). The world acts on what it observes, never on a clock, so a run with faults
and one without take the same path: the served model drifts once the loop has seen it healthy, the user approves
what waits for approval (once), the trainer's pod ends with its result (as the dev node agent reports it), and the
telemetry recovers once the loop serves the candidate.

Faults: a :class:`Killer` SIGKILLs the operator at the points of a plan (:class:`Kill`): at a stage of the loop, on
a line of the operator's log (its kubebuilder-style action lines are written after the children are created and
before the status that records them), or after a time; every kill is recorded with where it landed. Each new
operator is a spare started ahead of time (``spare.py``). The tests take Prometheus, the collector and the API
server away themselves, at stages of their own.

:func:`record` is the run's outcome, normalised (names of the run's children and namespace replaced by their role),
so that two runs compare equal when they made the same decisions, the same children and the same requests' outcomes.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import json
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

import kaizen.cli
import kaizen.k8s.client
from kaizen.api.actions import ACTION, REQUEST_KEYS
from kaizen.api.common import ModelRef
from kaizen.api.retrainjob import DatasetSummary
from kaizen.api.trainer import TrainerResult
from kaizen.dev import processes
from kaizen.dev.emitter import Emitter
from kaizen.dev.prometheus import LocalPrometheus, pod_target

GROUP, VERSION = "kaizen.dev", "v1alpha1"
LOOP = "support-bot"
SPARE = Path(__file__).with_name("spare.py")
#: What a spare prints once released, its imports done.
RELEASED = "Released: starting the operator"
#: The Rollout's steps; the untimed pause (index 4) waits for the user's `kaizen approve`.
STEPS = [{"setWeight": 25}, {"pause": {"duration": "3s"}}, {"setWeight": 50}, {"analysis": {"duration": "2s"}},
         {"pause": {}}, {"setWeight": 100}]
UNTIMED_PAUSE = 4
#: The stages of a loop, in order (:func:`stage`).
STAGES = ("observing", "breaching", "awaiting-approval", "approved", "training", "trained",
          *(f"step-{i}" for i in range(UNTIMED_PAUSE + 1)), f"step-{UNTIMED_PAUSE}-approved",
          *(f"step-{i}" for i in range(UNTIMED_PAUSE + 1, len(STEPS))), "promoting", "promoted", "cooling", "done")
#: How long the loop is seen healthy before the served model drifts, and how long the trainer's pod runs.
OBSERVE_SECONDS, TRAIN_SECONDS = 2.0, 1.5
DRIFTED_ERROR_RATE = 0.3
#: How an Event names the decision it announces.
DECISION = re.compile(r"\[decision ([^\]]+)\]$")
#: Transient waits: a run with Prometheus or the collector away makes these decisions besides a fault-free run's.
OUTAGE_CODES = ("NoData", "CollectorUnavailable")


def loop_manifest(prometheus_url: str, collector_url: str) -> dict[str, Any]:
    stable = 'http_requests_total{namespace="{{namespace}}",track="stable"'
    success = {
        "name": "success-rate", "maxRegression": 0.05, "minSamples": 50,
        "ratio": {"good": 'sum(increase(http_requests_total{namespace="{{namespace}}",track="{{track}}",'
                          'code!~"5.."}[{{window}}]))',
                  "total": 'sum(increase(http_requests_total{namespace="{{namespace}}",track="{{track}}"}'
                           '[{{window}}]))'},
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ImprovementLoop", "metadata": {"name": LOOP},
        "spec": {
            "target": {"deployment": LOOP, "container": "server"},
            "model": {"version": "v1", "uri": "s3://models/support-bot/v1"},
            "prometheus": {"url": prometheus_url},
            "interval": "1s",
            "signals": [{"name": "error-rate", "max": 0.05, "for": "2s",
                         "query": f'sum(rate({stable},code="500"}}[4s])) / sum(rate({stable}}}[4s]))'}],
            "feedback": {"collectorURL": collector_url, "minNewItems": 5, "categories": ["incorrect"],
                         "tokenSecretRef": {"name": "collector-token", "key": "token"}},
            "policy": {"cooldown": "1h", "approval": {"retrain": "Manual", "promote": "Automatic"}},
            "retrain": {"image": "kaizen.invalid/trainer:chaos", "outputURI": "s3://models/support-bot",
                        "resources": {"gpus": 1}},
            "gates": [{"metric": "accuracy", "minDelta": 0}],
            "rollout": {"steps": STEPS, "analysis": {
                "interval": "1s", "alpha": 0.05, "metrics": [success],
                # Outages of the suite are shorter than these: missing data holds the rollout, never ends it.
                "failurePolicy": {"consecutiveErrorLimit": 60, "inconclusiveLimit": 60}}},
        },
    }


def served_manifest() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": LOOP, "labels": {"app": LOOP}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": LOOP}}, "template": {
            "metadata": {"labels": {"app": LOOP}},
            "spec": {"terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "server", "image": "example.com/support-bot-server:1"}]}}},
    }


class Telemetry:
    """A real Prometheus and two emitters, the stable and the canary track's servers; each run's namespace is
    scraped from them as its pods (the runs take turns, so they share the emitters)."""

    def __init__(self, workdir: Path) -> None:
        self.prometheus = LocalPrometheus(workdir / "prometheus").start()
        self.stable = Emitter(workdir, name="stable", rate=200)
        self.canary = Emitter(workdir, name="canary", rate=50)
        self.targets: list = []

    def watch(self, namespace: str) -> None:
        self.stable.set(error_rate=0.0)
        for track, emitter in (("stable", self.stable), ("canary", self.canary)):
            self.targets.append(pod_target(emitter.address, namespace=namespace, pod=f"{LOOP}-{track}",
                                           labels={"app": LOOP, "kaizen.dev/track": track}))
        self.prometheus.set_targets(self.targets)
        self.prometheus.wait_for_data(
            f'count(count by (track) (increase(http_requests_total{{namespace="{namespace}"}}[3s]) > 0)) == 2')

    def stop(self) -> None:
        self.stable.stop()
        self.canary.stop()
        self.prometheus.stop()


# ------------------------------------------------------------------------------------------------ operators


@dataclass
class Replica:
    """One operator process, started as a spare (imports done) and released when it is to run."""

    index: int
    process: processes.ManagedProcess
    release_file: Path
    identity: str
    released: float | None = None
    #: When it was first seen running the operator (its imports done): what a kill's time counts from.
    running_since: float | None = None

    def release(self) -> None:
        self.released = time.monotonic()
        self.release_file.touch()

    def wait_running(self, stopping: threading.Event) -> float:
        while self.running_since is None:
            if RELEASED in self.log():
                self.running_since = time.monotonic()
            elif stopping.wait(0.005) or not self.process.alive():
                return time.monotonic()
        return self.running_since

    def log(self, offset: int = 0) -> str:
        try:
            with self.process.log.open(errors="replace") as f:
                f.seek(offset)
                return f.read()
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        try:
            return self.process.log.stat().st_size
        except FileNotFoundError:
            return 0

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pgid, signal.SIGKILL)
        processes.stop([self.process], grace=0)


class Operators:
    """The operator processes of one run: ``kaizen operator --namespace NS`` (with ``--leader-elect`` for HA), each
    started as a spare so that a restart does not wait for Python's imports."""

    def __init__(self, workdir: Path, kubeconfig: Path, namespace: str, leader_elect: bool = False) -> None:
        self.workdir, self.kubeconfig, self.namespace, self.leader_elect = workdir, kubeconfig, namespace, leader_elect
        self.replicas: list[Replica] = []
        self.spares: list[Replica] = []
        self._lock = threading.Lock()

    def spawn(self) -> Replica:
        with self._lock:
            index = len(self.replicas) + len(self.spares)
            identity = f"{self.namespace}-{index}"
            args = ["--namespace", self.namespace]
            if self.leader_elect:
                # The chart's timing (tests/integration/test_operator_ha.py).
                args += ["--leader-elect", f"--leader-elect-resource-namespace={self.namespace}",
                         f"--leader-elect-identity={identity}", "--leader-elect-lease-duration=8s",
                         "--leader-elect-renew-deadline=5s", "--leader-elect-retry-period=2s"]
            release = self.workdir / f"release-{index}"
            process = processes.spawn(f"operator-{index}", [sys.executable, str(SPARE), str(release), *args],
                                      self.workdir / f"operator-{index}.log", detach=False,
                                      env={**os.environ, "KUBECONFIG": str(self.kubeconfig)})
            replica = Replica(index, process, release, identity)
            self.spares.append(replica)
            return replica

    def start(self) -> Replica:
        """Release a spare (spawning one when there is none) and keep two more ready."""
        with self._lock:
            spare = self.spares.pop(0) if self.spares else None
        if spare is None:
            spare = self.spawn()
            with self._lock:
                self.spares.remove(spare)
        spare.release()
        with self._lock:
            self.replicas.append(spare)
        while len(self.spares) < 2:
            self.spawn()
        return spare

    def running(self) -> list[Replica]:
        return [r for r in self.replicas if r.process.alive()]

    def leader(self, api: kubernetes.client.ApiClient) -> Replica | None:
        """The replica the Lease names (the only one without leader election)."""
        if not self.leader_elect:
            running = self.running()
            return running[-1] if running else None
        try:
            lease = kubernetes.client.CoordinationV1Api(api).read_namespaced_lease("kaizen-operator", self.namespace)
        except (ApiException, urllib3.exceptions.HTTPError):
            return None
        return next((r for r in self.running() if r.identity == lease.spec.holder_identity), None)

    def stop(self) -> None:
        processes.stop([r.process for r in [*self.replicas, *self.spares]], grace=5)

    def logs(self, tail: int = 40) -> str:
        return "\n".join(f"--- operator-{r.index} ({r.identity})\n" + "\n".join(r.log().splitlines()[-tail:])
                         for r in self.replicas)


# ------------------------------------------------------------------------------------------------ observing


@dataclass
class Seen:
    """One observation of a run's objects."""

    loop: dict[str, Any] | None = None
    retrainjobs: list[dict[str, Any]] = field(default_factory=list)
    rollouts: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    config_maps: list[str] = field(default_factory=list)

    @property
    def status(self) -> dict[str, Any]:
        return (self.loop or {}).get("status") or {}

    @property
    def decisions(self) -> list[dict[str, Any]]:
        return self.status.get("decisions") or []

    @property
    def rollout(self) -> dict[str, Any] | None:
        return self.rollouts[0] if self.rollouts else None

    @property
    def retrainjob(self) -> dict[str, Any] | None:
        return self.retrainjobs[0] if self.retrainjobs else None

    def summary(self) -> str:
        newest = self.decisions[0] if self.decisions else {}
        rollout = (self.rollout or {}).get("status") or {}
        retrain = (self.retrainjob or {}).get("status") or {}
        return (f"loop={self.status.get('phase')} decision={newest.get('action')}/"
                f"{(newest.get('evidence') or {}).get('code')} retrainjob={retrain.get('phase')} "
                f"rollout={rollout.get('phase')}@{rollout.get('currentStep')}")


def _items(listed: Any, api: kubernetes.client.ApiClient) -> list[dict[str, Any]]:
    return [api.sanitize_for_serialization(item) for item in listed.items]


def observe(api: kubernetes.client.ApiClient, namespace: str) -> Seen:
    custom = kubernetes.client.CustomObjectsApi(api)

    def kaizen(plural: str) -> list[dict[str, Any]]:
        items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)["items"]
        return sorted(items, key=lambda o: (o["metadata"]["creationTimestamp"], o["metadata"]["name"]))

    loops = kaizen("improvementloops")
    core, apps = kubernetes.client.CoreV1Api(api), kubernetes.client.AppsV1Api(api)
    return Seen(
        loop=loops[0] if loops else None,
        retrainjobs=kaizen("retrainjobs"), rollouts=kaizen("rollouts"),
        jobs=_items(kubernetes.client.BatchV1Api(api).list_namespaced_job(namespace), api),
        pods=_items(core.list_namespaced_pod(namespace, label_selector="kaizen.dev/retrainjob"), api),
        deployments={d["metadata"]["name"]: d for d in _items(apps.list_namespaced_deployment(namespace), api)},
        config_maps=[c.metadata.name for c in core.list_namespaced_config_map(namespace).items
                     if c.metadata.name != "kube-root-ca.crt"],
    )


def model_uri(deployment: dict[str, Any] | None) -> str | None:
    if deployment is None:
        return None
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "server")
    return next((e.get("value") for e in container.get("env") or [] if e["name"] == "MODEL_URI"), None)


# ------------------------------------------------------------------------------------------------ killing


@dataclass(frozen=True)
class Kill:
    """SIGKILL the leading operator once the loop has reached ``stage``: when its log shows ``line`` (a substring),
    or ``after`` seconds (from then, or from its start when it started there) if it does not (a line that an
    earlier operator already logged is not logged again); it stays down for ``down`` seconds."""

    stage: str
    line: str | None = None
    after: float = 8.0
    down: float = 0.0
    #: Among the kills of the short plan (``KAIZEN_CHAOS=quick``; ``make test`` runs them all).
    quick: bool = False


@dataclass(frozen=True)
class Killed:
    """Where a kill landed."""

    number: int
    kill: Kill
    at: float
    by: str
    state: str
    last_line: str
    #: Seconds the killed operator had run.
    ran: float
    #: The stage the loop was seen at when the kill came.
    landed: str

    def __str__(self) -> str:
        trigger = f"on {self.kill.line!r}" if self.by == "line" else f"{self.kill.after:g}s after arming"
        return (f"kill {self.number:2d} at {self.at:6.1f}s (it ran {self.ran:4.1f}s), planned at {self.kill.stage}, "
                f"{trigger}, landed at {self.landed}"
                f"{f', down {self.kill.down:g}s' if self.kill.down else ''}: {self.state}; last log line: "
                f"{self.last_line[:160]}")


class Killer(threading.Thread):
    """Carries out a plan of kills, one after another, against the run's leading operator; after each, a spare is
    released in its place (at once, or after the kill's ``down``)."""

    def __init__(self, run: Run, plan: tuple[Kill, ...]) -> None:
        super().__init__(daemon=True, name="killer")
        self.run_, self.plan = run, plan
        self.killed: list[Killed] = []
        self.error: BaseException | None = None
        self.stopping, self.finished = threading.Event(), threading.Event()
        self.next = 0  # the plan's entry being carried out

    def pending(self, stage: str) -> bool:
        """Whether kills planned at ``stage`` or before are still to come (the world holds until they are done)."""
        return any(STAGES.index(k.stage) <= STAGES.index(stage) for k in self.plan[self.next:]) \
            and not self.finished.is_set()

    def run(self) -> None:
        try:
            for number, kill in enumerate(self.plan, 1):
                self._one(number, kill)
                self.next = number
                if self.stopping.is_set():
                    return
        except BaseException as error:  # noqa: BLE001  (reported by the test's thread)
            self.error = error
        finally:
            self.finished.set()
        # The operators this thread started die with it (PR_SET_PDEATHSIG is per thread): it lives as long as they.
        self.stopping.wait()

    def _one(self, number: int, kill: Kill) -> None:
        run = self.run_
        while STAGES.index(run.stage) < STAGES.index(kill.stage):
            if self.stopping.wait(0.02):
                return
        victim = None
        while victim is None:
            victim = run.operators.leader(run.api)
            if victim is None and self.stopping.wait(0.05):
                return
        since = victim.wait_running(self.stopping)
        fresh = time.monotonic() - since < 0.3  # it starts as this kill is armed: everything it logs counts
        offset = 0 if fresh else victim.log_size()
        deadline = (since if fresh else time.monotonic()) + kill.after
        by = "time"
        while time.monotonic() < deadline:
            if kill.line is not None and kill.line in victim.log(offset):
                by = "line"
                break
            if self.stopping.wait(0.005):
                return
        victim.kill()
        lines = victim.log().splitlines()
        self.killed.append(Killed(number, kill, time.monotonic() - run.started, by, run.seen.summary(),
                                  lines[-1] if lines else "", time.monotonic() - since, run.stage))
        time.sleep(kill.down)
        run.operators.start()


# ------------------------------------------------------------------------------------------------ the run


class Run:
    """One loop, start to end, in ``namespace``; see the module docstring."""

    def __init__(self, cluster: Any, namespace: str, telemetry: Telemetry, collector: Any, workdir: Path, *,
                 leader_elect: bool = False, replicas: int = 1) -> None:
        self.cluster, self.namespace, self.telemetry, self.collector = cluster, namespace, telemetry, collector
        self.workdir = workdir
        self.api = cluster.api_client()
        self.operators = Operators(workdir, cluster.kubeconfig, namespace, leader_elect)
        self.replicas = replicas
        self.seen = Seen()
        self.stage = STAGES[0]
        self.started = time.monotonic()
        self.allow_drift = True
        #: What the world did, and when (seconds into the run).
        self.timeline: dict[str, float] = {}
        self.requests: list[tuple[str, str]] = []
        self.healthy_since: float | None = None
        self.killer: Killer | None = None
        self.generation: int | None = None
        #: Promotions of the stable Deployment seen (its MODEL_URI changed), and the looks when metrics were missing.
        self.served: list[str | None] = []

    # --- setting up

    def start(self) -> Run:
        ns = self.namespace
        self.cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(served_manifest()))
        self.cluster.kubectl("create", "secret", "generic", "collector-token", "-n", ns,
                             f"--from-literal=token={self.collector.tokens['read,audit']}")
        self.telemetry.watch(ns)
        send_feedback(self.collector, ns)
        self.cluster.kubectl("rollout", "status", f"deployment/{LOOP}", "-n", ns, "--timeout=60s")
        for _ in range(self.replicas):
            self.operators.spawn()
        for _ in range(self.replicas):
            self.operators.start()
        self.cluster.kubectl("apply", "--server-side", "-n", ns, "-f", "-",
                             input=json.dumps(loop_manifest(self.telemetry.prometheus.url, self.collector.url)))
        self.started = time.monotonic()
        return self

    def kill(self, plan: tuple[Kill, ...]) -> Killer:
        self.killer = Killer(self, plan)
        self.killer.start()
        return self.killer

    def stop(self) -> None:
        self.operators.stop()
        if self.killer is not None:
            self.killer.stopping.set()
            self.killer.join(timeout=30)

    # --- the world

    def at(self) -> float:
        return time.monotonic() - self.started

    def look(self) -> Seen:
        """Observe (riding out an API server that is away), move the world on, and say where the loop is."""
        try:
            seen = observe(self.api, self.namespace)
        except (ApiException, urllib3.exceptions.HTTPError, OSError):
            return self.seen  # the API server restarts: the last observation stands
        self.seen = seen
        self.drive(seen)
        self.stage = stage(seen, self)
        return seen

    def held(self, stage: str) -> bool:
        """Whether the world holds an action that leads out of ``stage``: kills planned there are still to come.
        (The world's actions are the gates between the stretches the operator goes through on its own, so each
        stretch gets its kills, however fast or slow the operator is.)"""
        return self.killer is not None and self.killer.pending(stage)

    def drive(self, seen: Seen) -> None:
        status, now = seen.status, self.at()
        signals = status.get("signals") or []
        if signals and signals[0].get("state") == "Healthy" and self.healthy_since is None:
            self.healthy_since = now
        if "drift" not in self.timeline and self.allow_drift and self.healthy_since is not None \
                and now - self.healthy_since >= OBSERVE_SECONDS and not self.held("observing"):
            self.telemetry.stable.set(error_rate=DRIFTED_ERROR_RATE)
            self.timeline["drift"] = now
        if status.get("phase") == "AwaitingApproval" and "approve-loop" not in self.timeline \
                and not self.held("awaiting-approval"):
            self.request(f"loop/{LOOP}")
            self.timeline["approve-loop"] = now
        stable = seen.deployments.get(LOOP)
        if stable is not None:
            if self.generation is None:
                self.generation = stable["metadata"]["generation"]
            uri = model_uri(stable)
            if not self.served or self.served[-1] != uri:
                self.served.append(uri)
        for pod in seen.pods:
            if pod["status"].get("phase") != "Running" or "trained" in self.timeline:
                continue
            self.timeline.setdefault("training", now)
            if now - self.timeline["training"] >= TRAIN_SECONDS and not self.held("training") \
                    and self.finish_training(pod):
                self.timeline["trained"] = now
        rollout = seen.rollout
        rollout_status = (rollout or {}).get("status") or {}
        if rollout_status.get("awaitingApproval") and rollout_status.get("currentStep") == UNTIMED_PAUSE \
                and "approve-rollout" not in self.timeline and not self.held(f"step-{UNTIMED_PAUSE}"):
            self.request(f"rollout/{rollout['metadata']['name']}")
            self.timeline["approve-rollout"] = now
        model = status.get("model") or {}
        candidate = ((seen.retrainjob or {}).get("status") or {}).get("candidate") or {}
        if candidate and model.get("version") == candidate.get("version") and "recovered" not in self.timeline \
                and not self.held("promoted"):
            self.telemetry.stable.set(error_rate=0.0)  # the users now get the candidate's answers
            self.timeline["recovered"] = now

    def request(self, target: str) -> None:
        """The user's `kaizen approve TARGET`, through the CLI's own code (in this process)."""
        with _kubeconfig(self.cluster.kubeconfig), contextlib.redirect_stdout(open(os.devnull, "w")):
            assert kaizen.cli.main(["approve", target, "-n", self.namespace]) == 0, target
        self.requests.append(("approve", target))

    def finish_training(self, pod: dict[str, Any]) -> bool:
        """Play the kubelet, as the dev node agent does for a trainer it ran: the trainer's container exited 0 with
        its result (the candidate where the config said, its metrics and the baseline's) as termination message."""
        core = kubernetes.client.CoreV1Api(self.api)
        job = pod["metadata"]["labels"]["batch.kubernetes.io/job-name"]
        try:
            config = json.loads(core.read_namespaced_config_map(job, self.namespace).data["config.json"])
        except (ApiException, urllib3.exceptions.HTTPError):
            return False
        result = TrainerResult(
            phase="Succeeded", reason="Completed", message="done", steps=40,
            candidate=ModelRef(version=config["candidateVersion"], uri=f"{config['outputDir']}/model"),
            metrics={"candidate": {"holdout.accuracy": 0.93}, "baseline": {"holdout.accuracy": 0.90}},
            dataset=DatasetSummary(sha256="c" * 64, rows={"train": 300, "targeted": 120, "replay": 180,
                                                          "holdout": 60}, excluded={"noConsent": 0, "optedOut": 0}),
        )
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        started = pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
        status = {"phase": "Succeeded", "containerStatuses": [{
            "name": "trainer", "image": pod["spec"]["containers"][0]["image"], "imageID": "", "ready": False,
            "restartCount": 0, "started": False, "state": {"terminated": {
                "exitCode": 0, "reason": "Completed", "startedAt": started, "finishedAt": now,
                "message": result.to_termination_message()}}}]}
        try:
            core.patch_namespaced_pod_status(pod["metadata"]["name"], self.namespace, {"status": status})
        except (ApiException, urllib3.exceptions.HTTPError):
            return False
        return True

    # --- waiting

    def until(self, predicate: Callable[[Seen], Any], what: str, timeout: float = 90.0) -> Any:
        """Look (and drive the world) until ``predicate`` holds; fail with where the run stood, the kills, and the
        operators' logs."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.look()
            if self.killer is not None and self.killer.error is not None:
                raise self.killer.error
            if not self.operators.running() and (self.killer is None or self.killer.finished.is_set()):
                self.fail(f"no operator is running while waiting for {what}")
            value = predicate(seen)
            if value:
                return seen if value is True else value
            if time.monotonic() > deadline:
                self.fail(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(0.1)

    def done(self, seen: Seen) -> bool:
        """The loop serves the candidate, is healthy, and every request is consumed."""
        newest = seen.decisions[0] if seen.decisions else {}
        rollout = seen.rollout
        return (stage(seen, self) == "done"
                and all(ACTION not in ((o or {}).get("metadata", {}).get("annotations") or {})
                        for o in (seen.loop, rollout))
                and (newest.get("evidence") or {}).get("code") == "Healthy")

    def finish(self, timeout: float = 120.0) -> Seen:
        """Drive the loop to its end, then look a few more times: nothing may change once it is done."""
        self.until(self.done, "the loop to serve the candidate, healthy", timeout)
        if self.killer is not None:
            self.until(lambda s: self.killer.finished.is_set(), "the last kills", timeout)
            self.until(self.done, "the loop to be done again after the last kill", timeout)
        looked = self.seen.status.get("lastObserved")
        self.until(lambda s: s.status.get("lastObserved") != looked and self.done(s), "one more look")
        return self.seen

    def fail(self, message: str) -> None:
        kills = "\n".join(str(k) for k in (self.killer.killed if self.killer else []))
        text = (f"{message}\nstage {self.stage}: {self.seen.summary()}\ntimeline {self.timeline}\nkills:\n{kills}\n"
                f"{self.operators.logs()}")
        (self.workdir / "failure.txt").write_text(text)
        pytest.fail(text, pytrace=False)


def stage(seen: Seen, run: Run) -> str:
    """Where the loop stands (:data:`STAGES`)."""
    status = seen.status
    rj = seen.retrainjob
    candidate = ((rj or {}).get("status") or {}).get("candidate") or {}
    if candidate and (status.get("model") or {}).get("version") == candidate.get("version"):
        newest = seen.decisions[0] if seen.decisions else {}
        cooled = (newest.get("evidence") or {}).get("code") == "Healthy" and LOOP + "-canary" not in seen.deployments
        return "done" if cooled else "cooling"
    rollout = (seen.rollout or {}).get("status") or {}
    if rollout.get("phase") == "Promoted":
        return "promoted"
    if seen.rollout is not None and rollout.get("currentStep") is not None:
        step = rollout["currentStep"]
        if step >= len(STEPS):
            return "promoting"
        if step == UNTIMED_PAUSE and "approve-rollout" in run.timeline:
            return f"step-{step}-approved"
        return f"step-{step}"
    if "trained" in run.timeline:
        return "trained"
    if rj is not None and (rj.get("status") or {}).get("phase") == "Training":
        return "training"
    if "approve-loop" in run.timeline:
        return "approved"
    if status.get("phase") == "AwaitingApproval":
        return "awaiting-approval"
    return "breaching" if "drift" in run.timeline else "observing"


@contextlib.contextmanager
def _kubeconfig(path: Path) -> Iterator[None]:
    saved = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(path)
    kaizen.k8s.client.reset()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = saved
        kaizen.k8s.client.reset()


def send_feedback(collector: Any, namespace: str, count: int = 8) -> None:
    """The users' feedback on the served model's answers: wrong refund answers, with corrections, consented."""
    from tests.collector.harness import call

    traces = [{"id": f"{namespace}-{i}", "model": LOOP, "modelVersion": "v1", "scenario": "refund",
               "cohort": "de", "input": "Where is my refund?", "output": "I don't know.", "subjectId": f"u{i}",
               "consent": {"training": True}} for i in range(count)]
    assert call(collector, "POST", "/v1/traces", {"items": traces}, scope="ingest")[0] == 201
    feedback = [{"traceId": t["id"], "rating": "down", "category": "incorrect", "correction": "Within 5 days.",
                 "subjectId": t["subjectId"], "consent": {"training": True}} for t in traces]
    assert call(collector, "POST", "/v1/feedback", {"items": feedback}, scope="ingest")[0] == 201


# ------------------------------------------------------------------------------------------------ the outcome


def audit_ids(collector: Any, namespace: str) -> list[str]:
    from tests.collector.harness import call

    status, page = call(collector, "GET", f"/v1/audit?loop={namespace}/{LOOP}&limit=500", scope="read")
    assert status == 200, page
    return [entry["id"] for entry in page["items"]]


def events(api: kubernetes.client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    listed = kubernetes.client.CoreV1Api(api).list_namespaced_event(namespace)
    return [api.sanitize_for_serialization(e) for e in listed.items]


def record(run: Run, seen: Seen) -> dict[str, Any]:
    """The run's outcome, normalised to compare with another run's: the decision log (oldest first), the children,
    the final states, the requests' outcomes, and what is left over."""
    rj, rollout = seen.retrainjob, seen.rollout
    names = _names(run, seen)
    loop = seen.status
    decisions = [{"action": d["action"], "code": (d.get("evidence") or {}).get("code"), "child": d.get("child"),
                  "outcome": d.get("outcome"), "approvedBy": (d.get("evidence") or {}).get("approvedBy")}
                 for d in reversed(seen.decisions)]
    rj_status = (rj or {}).get("status") or {}
    rollout_status = (rollout or {}).get("status") or {}
    stable = seen.deployments.get(LOOP)
    outcome = {
        "decisions": decisions,
        "loop": {"phase": loop.get("phase"), "model": _pick(loop.get("model"), "version", "uri"),
                 "previousModel": _pick(loop.get("previousModel"), "version", "uri"),
                 "candidate": loop.get("candidate"), "consecutiveFailures": loop.get("consecutiveFailures"),
                 "budget": (loop.get("budget") or {}).get("retrains"),
                 "lastAction": _pick(loop.get("lastAction"), "action", "by", "outcome"),
                 "signals": [(s["name"], s["state"]) for s in loop.get("signals") or []]},
        "children": {
            "RetrainJob": [o["metadata"]["name"] for o in seen.retrainjobs],
            "Rollout": [o["metadata"]["name"] for o in seen.rollouts],
            "Job": sorted(j["metadata"]["name"] for j in seen.jobs),
            "ConfigMap": sorted(seen.config_maps),
            "Deployment": sorted(seen.deployments),
            "trainer pods": sorted(p["metadata"]["name"] for p in seen.pods),
        },
        "retrainjob": {**_pick(rj_status, "phase", "verdict", "attempts", "failedAttempts", "message"),
                       "candidate": rj_status.get("candidate"),
                       "gates": [(g["metric"], g["passed"]) for g in rj_status.get("gates") or []]},
        "rollout": {**_pick(rollout_status, "phase", "currentStep", "canaryWeight", "canaryReplicas", "message",
                            "awaitingApproval"),
                    "lastAction": _pick(rollout_status.get("lastAction"), "action", "by", "outcome")},
        "stable": {"MODEL_URI": model_uri(stable), "promotions": stable["metadata"]["generation"] - run.generation
                   if stable and run.generation else None, "served": run.served},
        "requests left on": [f"{o['kind']}/{o['metadata']['name']}" for o in (seen.loop, rollout)
                             if o and set(REQUEST_KEYS) & set(o["metadata"].get("annotations") or {})],
    }
    return _normalised(outcome, names)


def _names(run: Run, seen: Seen) -> dict[str, str]:
    """The run's own names, and the role each stands for in a normalised outcome."""
    names = {run.namespace: "<namespace>"}
    for objects, role in ((seen.retrainjobs, "<retrainjob>"), (seen.rollouts, "<rollout>"),
                          (seen.pods, "<trainer-pod>")):
        names.update({o["metadata"]["name"]: role for o in objects})
    return names


def _normalised(value: Any, names: dict[str, str]) -> Any:
    text = json.dumps(value, sort_keys=True)
    for name, role in sorted(names.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(name, role)
    return json.loads(text)


def announcements(run: Run, seen: Seen) -> dict[str, dict[str, int]]:
    """How many times each Kaizen object's Events announced each reason, normalised. Not the analysis looks' Events
    (as many as there were looks, which timing decides), nor the loop's decisions' (:func:`check_events`)."""
    reasons: dict[str, Counter] = {}
    for event in events(run.api, run.namespace):
        obj = event["involvedObject"]
        if obj.get("apiVersion", "").startswith(GROUP) and not event["reason"].startswith("Analysis") \
                and DECISION.search(event.get("message") or "") is None:
            reasons.setdefault(f"{obj['kind']}/{obj['name']}", Counter())[event["reason"]] += event.get("count") or 1
    return _normalised({name: dict(sorted(c.items())) for name, c in sorted(reasons.items())}, _names(run, seen))


def check_announcements(run: Run, seen: Seen, reference: dict[str, dict[str, int]]) -> list[str]:
    """Nothing is announced more often than in the fault-free run (an Event is posted once the status recording
    what it announces is written, so a look done again after a crash does not announce twice). Returns what the
    run did not announce: an operator stopped between writing a status and kopf posting its Events loses them."""
    seen_now = announcements(run, seen)
    twice = {f"{o}: {r} {n} times, not {reference.get(o, {}).get(r, 0)}" for o, counts in seen_now.items()
             for r, n in counts.items() if n > reference.get(o, {}).get(r, 0)}
    assert not twice, f"announced more often than without faults: {sorted(twice)}"
    return sorted(f"{o}: {r} {seen_now.get(o, {}).get(r, 0)} of {n}" for o, counts in reference.items()
                  for r, n in counts.items() if seen_now.get(o, {}).get(r, 0) < n)


def _pick(obj: dict[str, Any] | None, *keys: str) -> dict[str, Any]:
    return {k: (obj or {}).get(k) for k in keys}


def without_outages(outcome: dict[str, Any]) -> dict[str, Any]:
    """The outcome with the transient waits that outages cause taken out of the decision log (and the decisions
    they interrupted, made again after them, folded back into one), to compare with a run without outages."""
    outcome = copy.deepcopy(outcome)
    kept: list[dict[str, Any]] = []
    for decision in outcome["decisions"]:
        if decision["code"] in OUTAGE_CODES:
            continue
        if kept and (kept[-1]["action"], kept[-1]["code"]) == (decision["action"], decision["code"]) \
                and decision["child"] is None:
            continue
        kept.append(decision)
    outcome["decisions"] = kept
    return outcome


def check_decision_log(run: Run, seen: Seen) -> None:
    """The decision log's own guarantees: ids numbered 1..N without gap or repeat, every child's decision in the
    log with the id in its spec.reason, and the audit log holding exactly the status's decisions."""
    decisions = list(reversed(seen.decisions))
    sequence = [int(d["id"].rsplit("-", 1)[1]) for d in decisions]
    assert sequence == list(range(1, len(decisions) + 1)), f"decision ids {[d['id'] for d in decisions]}"
    by_child = {d.get("child"): d for d in decisions if d.get("child")}
    for kind, children in (("RetrainJob", seen.retrainjobs), ("Rollout", seen.rollouts)):
        for child in children:
            decision = by_child.get(f"{kind}/{child['metadata']['name']}")
            assert decision is not None, f"{kind}/{child['metadata']['name']} has no decision in the log"
            assert child["spec"]["reason"]["decisionId"] == decision["id"], (child["spec"]["reason"], decision)
    audited = audit_ids(run.collector, run.namespace)
    assert len(audited) == len(set(audited))
    logged = [d["id"] for d in decisions]
    missing, ghosts = [i for i in logged if i not in audited], [i for i in audited if i not in logged]
    assert not missing and not ghosts, (f"audit log and status disagree: missing from the audit log {missing}, "
                                        f"in the audit log but not in status {ghosts}")


def check_events(run: Run, seen: Seen) -> list[str]:
    """The loop's Events announce decisions of its log, each once: none for a decision the log does not hold (a look
    whose status was never written), none twice. Returns the decisions announced by no Event (an operator stopped
    between writing a status and posting its Events loses them: Events are announcements, the log is the record)."""
    logged = {d["id"] for d in seen.decisions}
    announced: Counter = Counter()
    for event in events(run.api, run.namespace):
        match = DECISION.search(event.get("message") or "")
        if event["involvedObject"].get("kind") == "ImprovementLoop" and match:
            announced[match.group(1)] += event.get("count") or 1
    ghosts = sorted(i for i in announced if i not in logged)
    twice = sorted(i for i, n in announced.items() if n > 1)
    assert not ghosts and not twice, (f"Events announce decisions the log does not hold: {ghosts}; announced more "
                                      f"than once: {twice}")
    return sorted(logged - set(announced))


def _observed_running(outcome: dict[str, Any]) -> dict[str, Any]:
    """The outcome without the loop's waits on a running child: a loop whose operator was killed before each of its
    looks while a child ran (a RetrainJob, a Rollout of a few seconds) never saw it running, and rightly logged no
    wait for it. Such waits may be missing, never added (:func:`assert_same`)."""
    outcome = copy.deepcopy(outcome)
    outcome["decisions"] = [d for d in outcome["decisions"] if d["code"] != "ChildRunning"]
    return outcome


def assert_same(outcome: dict[str, Any], reference: dict[str, Any], run: Run) -> None:
    """``outcome`` equals the fault-free run's (but for waits on a running child the loop never saw running); else
    the difference, the kills, and the operators' logs."""
    running = [d for d in outcome["decisions"] if d["code"] == "ChildRunning"]
    if len(running) <= len([d for d in reference["decisions"] if d["code"] == "ChildRunning"]) \
            and _observed_running(outcome) == _observed_running(reference):
        return
    diff = "\n".join(difflib.unified_diff(json.dumps(reference, indent=1, sort_keys=True).splitlines(),
                                          json.dumps(outcome, indent=1, sort_keys=True).splitlines(),
                                          "fault-free run", "this run", lineterm="", n=2))
    run.fail(f"the run's outcome differs from the fault-free run's:\n{diff}")
