"""Crash consistency of the operator under chaos (issue 13): one whole loop -- breach, approval, retrain, gates, a
canary with a timed pause, analysis and an approval, promotion, cooldown -- run without faults, then again with
the operator SIGKILLed throughout (at 33 points, as ``make test`` and CI run it; ``KAIZEN_CHAOS=quick`` kills it at
the 13 riskiest only, for a quicker run), with Prometheus, the collector and the API server taken away, and with two
replicas whose leader is killed mid-step. Each faulty run must end as the fault-free one: the same decision log (in
status and in the collector's audit log, each decision once), the same children (no duplicate), each request acted
on once and consumed, nothing announced twice, and never a promotion or a rollback on missing data. See
:mod:`tests.chaos.harness` for the run and how the world around it is played.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import NamedTuple

import pytest

from kaizen.dev.cluster import LocalCluster
from kaizen.dev.collector import LocalCollector
from tests.chaos.harness import (
    OUTAGE_CODES, Kill, Run, Seen, Telemetry, announcements, assert_same, check_announcements, check_decision_log,
    check_events, model_uri, record, without_outages,
)
from tests.integration.conftest import crds  # noqa: F401

pytestmark = pytest.mark.integration

#: The decisions of the loop, oldest first, as (action, reason code).
DECISIONS = [("Nothing", "Healthy"), ("AwaitApproval", "RetrainApproval"), ("Retrain", "Retrain"),
             ("Wait", "ChildRunning"), ("RollOut", "CandidatePassed"), ("Wait", "ChildRunning"),
             ("Wait", "Cooldown"), ("Nothing", "Healthy")]

#: Where the operator is killed: at every stage of the loop, on the log line of an action (written once its children
#: exist and before the status that records it) or after a time (during start-up, mid-look, between looks). The
#: quick ones are the windows between an action and its record, the requests, and the timed pause.
PLAN = (
    Kill("observing", after=0.3), Kill("observing", after=1.0), Kill("observing", after=2.0),
    Kill("breaching", after=0.7), Kill("breaching", "Decided action=AwaitApproval", quick=True),
    Kill("awaiting-approval", after=0.4),
    # The user's approval: on the loop, acted on (the RetrainJob, then its Job), recorded.
    Kill("approved", after=0.2, quick=True), Kill("approved", "Decided action=Retrain", quick=True),
    Kill("approved", "Created training Job", quick=True), Kill("approved", "Decided action=Wait"),
    Kill("training", after=0.5),
    # The trainer's pod ended: its result read, the gates judged, the candidate rolled out, its first weight.
    Kill("trained", after=0.1), Kill("trained", "Finished retrain", quick=True),
    Kill("trained", "Decided action=RollOut", quick=True), Kill("trained", "Scaled canary", quick=True),
    Kill("step-0", after=0.3),
    # The timed pause (once down past its end: it must end on time), the second weight, analysis.
    Kill("step-1", after=0.5), Kill("step-1", after=0.3, down=3.5, quick=True), Kill("step-1", "Scaled canary"),
    Kill("step-2", "Analysed"), Kill("step-3", "Analysed"), Kill("step-3", "Rollout phase=Paused", quick=True),
    # The untimed pause and the user's approval of the Rollout; the last weight and the promotion gate.
    Kill("step-4", after=0.5), Kill("step-4-approved", after=0.15),
    Kill("step-4-approved", "Rollout phase=Progressing", quick=True),
    Kill("step-5", "Analysed"), Kill("step-5", "Promoted deployment", quick=True),
    Kill("promoting", after=0.3), Kill("promoting", "Removed canary", quick=True),
    # The loop folds the promotion in, cools down, and sees the candidate healthy; then nothing may change.
    Kill("promoted", "Decided action=Wait", quick=True), Kill("cooling", after=0.5),
    Kill("cooling", "Decided action=Nothing", after=15), Kill("done", after=0.5),
)
FULL = os.environ.get("KAIZEN_CHAOS") != "quick"
KILLS = PLAN if FULL else tuple(k for k in PLAN if k.quick)


class Reference(NamedTuple):
    """The fault-free run: its end, its outcome, and what it announced."""

    run: Run
    seen: Seen
    outcome: dict
    announced: dict


def new_namespace(cluster, prefix: str) -> str:
    name = f"chaos-{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("wait", "--for=create", "serviceaccount/default", f"--namespace={name}", "--timeout=30s")
    return name


@pytest.fixture(scope="module")
def telemetry(tmp_path_factory) -> Iterator[Telemetry]:
    telemetry = Telemetry(tmp_path_factory.mktemp("telemetry"))
    yield telemetry
    telemetry.stop()


@pytest.fixture(scope="module")
def collector(tmp_path_factory) -> Iterator[LocalCollector]:
    workdir = tmp_path_factory.mktemp("collector")
    service = LocalCollector(f"sqlite:///{workdir / 'feedback.db'}", workdir).start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def start_run(crds, telemetry, collector, tmp_path_factory):  # noqa: F811
    """Start a run of the loop in a namespace of its own: ``start_run(name, **options)``."""
    namespaces: list[str] = []

    def start(name: str, **options) -> Run:
        namespace = new_namespace(crds, name)
        namespaces.append(namespace)
        return Run(crds, namespace, telemetry, collector, tmp_path_factory.mktemp(name), **options).start()

    yield start
    for namespace in namespaces:
        crds.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture
def world(start_run):
    """A test's runs, whose operators stop when the test ends."""
    runs: list[Run] = []

    def start(name: str, **options) -> Run:
        runs.append(start_run(name, **options))
        return runs[-1]

    yield start
    for run in runs:
        run.stop()


@pytest.fixture(scope="module")
def reference(start_run) -> Reference:
    """The fault-free run: what every run with faults must end as."""
    run = start_run("reference")
    try:
        seen = run.finish()
    finally:
        run.stop()
    return Reference(run, seen, record(run, seen), announcements(run, seen))


def ends_as_without(run: Run, seen: Seen, reference: Reference, outcome: dict | None = None) -> None:
    """What every run with faults must show once it is done; prints what Events it did not announce."""
    assert_same(record(run, seen) if outcome is None else outcome, reference.outcome, run)
    check_decision_log(run, seen)
    unannounced = check_events(run, seen) + check_announcements(run, seen, reference.announced)
    if unannounced:
        print(f"\nNot announced (an operator stopped between a status write and its Events): {unannounced}")


def test_the_fault_free_loop_closes_once(reference):
    run, seen, outcome, announced = reference
    assert [(d["action"], d["code"]) for d in outcome["decisions"]] == DECISIONS
    children = outcome["children"]
    assert children["RetrainJob"] == ["<retrainjob>"] and children["Rollout"] == ["<rollout>"]
    assert children["Job"] == ["<retrainjob>-trainer"] and children["ConfigMap"] == ["<retrainjob>-trainer"]
    assert children["Deployment"] == ["support-bot"] and children["trainer pods"] == ["<trainer-pod>"]
    assert outcome["loop"]["model"]["version"] == "<retrainjob>" and outcome["loop"]["previousModel"]["version"] == "v1"
    assert outcome["loop"]["lastAction"]["outcome"] == "approve: created RetrainJob/<retrainjob>"
    assert outcome["rollout"]["phase"] == "Promoted" and outcome["rollout"]["lastAction"]["action"] == "approve"
    assert outcome["stable"]["promotions"] == 1 and outcome["stable"]["served"] == [
        None, "s3://models/support-bot/<namespace>/<retrainjob>/model"]
    assert outcome["requests left on"] == []
    check_decision_log(run, seen)
    assert check_events(run, seen) == []  # without faults every decision is announced
    assert announced["Rollout/<rollout>"] == {"AwaitingApproval": 1, "Promoted": 1, "Promoting": 1, "Started": 1,
                                              "UserAction": 1, "WeightSet": 3}
    assert announced["RetrainJob/<retrainjob>"] == {"GatesPassed": 1, "JobCreated": 1}


def test_the_operator_sigkilled_throughout_the_loop_ends_as_without(world, reference):
    run = world("sigkill")
    killer = run.kill(KILLS)
    seen = run.finish(timeout=480)
    print("\n" + "\n".join(str(k) for k in killer.killed))
    assert len(killer.killed) == len(KILLS) >= (30 if FULL else 13)
    landed = {k.landed for k in killer.killed}  # spread over the whole loop
    assert len(landed) >= (12 if FULL else 8), landed
    assert len({s for s in landed if s.startswith("step-") or s == "promoting"}) >= (4 if FULL else 2), landed
    ends_as_without(run, seen, reference)


def newest_code(seen: Seen) -> str | None:
    return (seen.decisions[0].get("evidence") or {}).get("code") if seen.decisions else None


def looks_later(run: Run, count: int):
    """A predicate: the loop has looked ``count`` more times since now (its status.lastObserved moved)."""
    seen_times = {run.seen.status.get("lastObserved")}
    return lambda s: seen_times.add(s.status.get("lastObserved")) or len(seen_times) > count


def test_prometheus_the_collector_and_the_api_server_taken_away_end_as_without(world, reference, telemetry,
                                                                                collector, crds):  # noqa: F811
    if not isinstance(crds, LocalCluster):
        pytest.skip("restarting the API server needs the local control plane")
    run = world("outages")
    run.allow_drift = False
    run.until(lambda s: newest_code(s) == "Healthy", "a healthy signal")

    # Observation without Prometheus: the signal is Unknown, never Healthy, and the loop waits.
    telemetry.prometheus.stop()
    try:
        seen = run.until(lambda s: newest_code(s) == "NoData", "the loop to wait for data")
        assert seen.status["signals"][0]["state"] == "Unknown"
    finally:
        telemetry.prometheus.start()
    # A Prometheus just back may answer without data for a moment (its rate window lacks samples): NoData again.
    run.until(lambda s: newest_code(s) == "Healthy", "the signal to be healthy again")
    run.until(looks_later(run, 3), "three more looks")
    run.until(lambda s: newest_code(s) == "Healthy", "the signal to be healthy again")

    # A breach while the collector is away: no retrain without its feedback, nor a request for approval.
    collector.stop()
    try:
        run.allow_drift = True
        run.until(lambda s: newest_code(s) == "CollectorUnavailable", "the loop to wait for the collector")
        seen = run.until(looks_later(run, 3), "three more looks")
        assert newest_code(seen) == "CollectorUnavailable" and seen.status["phase"] == "CoolingDown"
        assert seen.retrainjobs == [] and "approve-loop" not in run.timeline
    finally:
        collector.start()

    # The API server restarted mid-rollout, during the timed pause (the operator rides it out).
    run.until(lambda s: run.stage == "step-1", "the Rollout's timed pause")
    away = crds.restart("kube-apiserver", down=2)
    print(f"\nThe API server was away for {away:.1f}s during step 1")

    # Analysis without Prometheus (and without the collector): the Rollout holds, never promotes nor rolls back.
    run.until(lambda s: run.stage == "step-2", "the second weight")
    telemetry.prometheus.stop()
    collector.stop()
    try:
        run.until(lambda s: "Holding: no usable metrics" in (s.rollout["status"].get("message") or ""),
                  "the Rollout to hold without metrics")
        step = run.seen.rollout["status"]["currentStep"]
        errors = run.seen.rollout["status"]["consecutiveErrors"]
        seen = run.until(lambda s: s.rollout["status"].get("consecutiveErrors", 0) >= errors + 3,
                         "three more looks without metrics")
        status = seen.rollout["status"]
        assert status["phase"] == "Paused" and status["currentStep"] == step in (2, 3), status
        assert model_uri(seen.deployments["support-bot"]) is None, "promoted without metrics"
        assert seen.deployments["support-bot-canary"]["spec"]["replicas"] == 2, "the canary went without metrics"
    finally:
        telemetry.prometheus.start()
        collector.start()

    seen = run.finish()
    outcome = record(run, seen)
    # The transient waits, in order: no data while Prometheus was away, the collector's one outage during
    # observation, and at most no data again once Prometheus is back from the analysis outage (its rate window lacks
    # samples for a moment, and by then the loop looks at its signals again). The rollout's outages happen while its
    # Rollout runs, when the loop only waits for it.
    codes = [(d["action"], d["code"]) for d in outcome["decisions"]]
    waits = [code for _, code in codes if code in OUTAGE_CODES]
    assert waits.count("CollectorUnavailable") == 1, codes
    collector_away = waits.index("CollectorUnavailable")
    assert set(waits[:collector_away]) == {"NoData"} and set(waits[collector_away + 1:]) <= {"NoData"}, codes
    assert outcome["stable"]["served"] == reference.outcome["stable"]["served"]  # promoted once, no rollback
    ends_as_without(run, seen, Reference(*reference[:2], without_outages(reference.outcome), reference.announced),
                    without_outages(outcome))


def test_the_leader_killed_mid_step_hands_over_and_the_loop_ends_as_without(world, reference):
    run = world("leader", leader_elect=True, replicas=2)
    killer = run.kill((Kill("training", after=0.5), Kill("step-1", after=0.5)))
    seen = run.finish()
    print("\n" + "\n".join(str(k) for k in killer.killed))
    assert [k.kill.stage for k in killer.killed] == ["training", "step-1"]
    ends_as_without(run, seen, reference)
