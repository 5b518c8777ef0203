"""The Rollout step machine: every transition, driven with an injected clock and hand-made observations."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from kaizen.api.rollout import (
    AnalysisRecord, MetricResult, ReplicasRouting, RolloutSpec, RolloutStatus, TrafficRouting,
)
from kaizen.logic.rollout import (
    Action, Contender, Look, MetricSample, Observation, analysis_window, judge_look, judge_metric,
    look_due, next_action, target_holder, wait_for_target,
)
from kaizen.logic.routing import canary_size

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
RATIO = {"name": "success", "ratio": {"good": 'sum(ok{track="{{track}}"})', "total": 'sum(all{track="{{track}}"})'}}


def spec(steps, *, metrics=(RATIO,), policy=None, max_canary=10):
    return RolloutSpec.model_validate({
        "target": {"deployment": "bot"},
        "stableModel": {"version": "v1", "uri": "s3://m/v1"},
        "canaryModel": {"version": "v2", "uri": "s3://m/v2"},
        "prometheus": {"url": "http://prometheus:9090"},
        "trafficRouting": {"replicas": {"maxCanaryReplicas": max_canary}},
        "steps": steps,
        "analysis": {"interval": "10s", "metrics": list(metrics), "failurePolicy": policy or {}},
    })


def look(verdict, *, step, at, weight=10, name="success", message="numbers"):
    return Look(AnalysisRecord(time=at, step=step, weight=weight, verdict=verdict,
                               metrics=[MetricResult(name=name, verdict=verdict, message=message)]))


def run(s, status, now, **observed):
    observed.setdefault("stable_replicas", 4)
    return next_action(s, status, Observation(**observed), now)


STEPS = [{"setWeight": 10}, {"analysis": {"duration": "30s"}}, {"setWeight": 50}, {"pause": {"duration": "20s"}},
         {"setWeight": 100}]


def started(s=None, **observed):
    """A rollout whose first setWeight has been applied and whose canary is available."""
    s = s or spec(STEPS)
    first = run(s, RolloutStatus(), T0, **observed)
    return s, run(s, first.status, T0 + timedelta(seconds=1), canary_available=first.canary_replicas, **observed)


@pytest.mark.parametrize("stable, weight, expected", [
    (4, 10, 1), (9, 10, 1), (10, 10, 2), (4, 50, 4), (4, 100, 4), (0, 10, 1), (4, 0, 0), (100, 50, 10),
])
def test_replica_routing(stable, weight, expected):
    routing = TrafficRouting(replicas=ReplicasRouting(max_canary_replicas=10))
    assert canary_size(routing, stable, weight) == expected


def test_replica_routing_reports_the_share_the_replicas_achieve_beside_the_weight_asked():
    # One stable replica: a 10% step runs one canary pod, which is half the pods.
    decision = run(spec(STEPS), RolloutStatus(), T0, stable_replicas=1)
    s = decision.status
    assert (s.canary_weight, s.canary_replicas, s.achieved_weight) == (10, 1, 50.0)
    weight_set = next(e for e in decision.events if e.reason == "WeightSet")
    assert weight_set.message == "Step 0: canary weight 10% asked; 50% achieved: 1 canary replica beside 1 stable."
    assert run(spec(STEPS), RolloutStatus(), T0, stable_replicas=2).status.achieved_weight == 33.33


def test_gateway_api_routing_sizes_the_canary_for_its_share_and_achieves_the_exact_weight():
    s = spec([{"setWeight": 5}, {"setWeight": 50}, {"setWeight": 100}]).model_copy(update={
        "traffic_routing": TrafficRouting.model_validate({"gatewayAPI": {
            "httpRoute": "bot", "stableBackend": {"name": "bot"}, "canaryBackend": {"name": "bot-canary"}}})})
    decision = run(s, RolloutStatus(), T0, stable_replicas=4)
    assert (decision.status.achieved_weight, decision.canary_replicas) == (5.0, 1)
    assert next(e for e in decision.events if e.reason == "WeightSet").message == (
        "Step 0: canary weight 5% set on HTTPRoute bot (1 canary replica sized for it).")
    routing = s.traffic_routing
    assert [canary_size(routing, 4, w) for w in (0, 1, 5, 25, 26, 50, 100)] == [0, 1, 1, 1, 2, 2, 4]
    assert canary_size(routing, 40, 5) == 2  # a replica ratio would run 3 beside 40 for 5%


def test_first_tick_starts_at_step_zero_and_sizes_the_canary():
    decision = run(spec(STEPS), RolloutStatus(), T0)
    s = decision.status
    assert (s.phase, s.current_step, s.step_started_at, s.canary_weight, s.canary_replicas) == (
        "Progressing", 0, T0, 10, 1)
    assert decision.canary_replicas == 1 and not decision.promote
    assert [e.reason for e in decision.events] == ["Started", "WeightSet"]


def test_set_weight_waits_for_the_canary_to_be_available():
    s = spec(STEPS)
    first = run(s, RolloutStatus(), T0)
    waiting = run(s, first.status, T0 + timedelta(seconds=5), canary_available=0)
    assert waiting.status.current_step == 0 and waiting.events == ()
    ready = run(s, first.status, T0 + timedelta(seconds=5), canary_available=1)
    assert ready.status.current_step == 1 and ready.status.analysis_started_at == T0 + timedelta(seconds=5)
    assert ready.status.step_started_at == T0 + timedelta(seconds=5)


def test_a_retried_tick_changes_nothing():
    s, d = started()
    again = run(s, d.status, T0 + timedelta(seconds=2), canary_available=1)
    assert again.status == d.status.model_copy(update={"message": again.status.message})
    assert again.canary_replicas == d.canary_replicas and again.events == ()


def test_analysis_step_needs_its_duration_and_a_pass_at_this_step():
    s, d = started()
    begun = d.status.step_started_at
    early = run(s, d.status, begun + timedelta(seconds=10), look=look("Pass", step=1, at=begun + timedelta(seconds=10)))
    assert early.status.current_step == 1  # duration not over
    inconclusive = run(s, early.status, begun + timedelta(seconds=31),
                       look=look("Inconclusive", step=1, at=begun + timedelta(seconds=31)))
    assert inconclusive.status.current_step == 1 and inconclusive.status.consecutive_inconclusive == 1
    passed = run(s, inconclusive.status, begun + timedelta(seconds=41),
                 look=look("Pass", step=1, at=begun + timedelta(seconds=41)))
    # Step 1 done, step 2 (setWeight 50) begun: 4 canary replicas beside 4 stable.
    assert passed.status.current_step == 2 and passed.canary_replicas == 4 and passed.status.canary_weight == 50
    assert passed.status.consecutive_inconclusive == 0


def test_inconclusive_during_the_duration_does_not_count():
    s, d = started(spec(STEPS, policy={"inconclusiveLimit": 1}))
    begun = d.status.step_started_at
    status = d.status
    for i in range(1, 3):
        status = run(s, status, begun + timedelta(seconds=10 * i),
                     look=look("Inconclusive", step=1, at=begun + timedelta(seconds=10 * i))).status
    assert status.phase == "Progressing" and not status.consecutive_inconclusive


@pytest.mark.parametrize("on_limit, phase", [("Pause", "Paused"), ("Rollback", "RolledBack")])
def test_inconclusive_limit_after_the_duration(on_limit, phase):
    s, d = started(spec(STEPS, policy={"inconclusiveLimit": 2, "onLimit": on_limit}))
    begun, status = d.status.step_started_at, d.status
    for i in (4, 5):
        decision = run(s, status, begun + timedelta(seconds=10 * i),
                       look=look("Inconclusive", step=1, at=begun + timedelta(seconds=10 * i)))
        status = decision.status
    assert status.phase == phase and "2 inconclusive analysis intervals" in status.message
    if phase == "Paused":
        assert status.awaiting_approval and decision.canary_replicas == 1
    else:
        assert decision.canary_replicas is None


def test_fail_rolls_back_with_the_metric_and_its_numbers():
    s, d = started()
    at = d.status.step_started_at + timedelta(seconds=10)
    decision = run(s, d.status, at, look=look("Fail", step=1, at=at, message="canary 0.9000 vs stable 0.9900"))
    assert decision.status.phase == "RolledBack" and decision.canary_replicas is None and not decision.promote
    assert decision.status.message == "Rolled back: metric success failed: canary 0.9000 vs stable 0.9900"
    assert {e.reason for e in decision.events} == {"AnalysisFail", "RolledBack"}
    # Terminal: later ticks change nothing and never promote.
    later = run(s, decision.status, at + timedelta(minutes=5), stable_promoted=True)
    assert later.status == decision.status and later.canary_replicas is None and not later.promote


def test_a_verdict_is_announced_when_it_changes_and_trouble_at_every_look():
    s, d = started()
    status, at = d.status, d.status.step_started_at
    reasons = []
    for i, verdict in enumerate(("Pass", "Pass", "Inconclusive", "Inconclusive", "Pass", "Error", "Error"), 1):
        decision = run(s, status, at + timedelta(seconds=i), look=look(verdict, step=1, at=at + timedelta(seconds=i)))
        status = decision.status
        reasons.append([e.reason for e in decision.events if e.reason.startswith("Analysis")])
        assert status.analysis[0].verdict == verdict  # every look is recorded in the status
    assert reasons == [["AnalysisPass"], [], ["AnalysisInconclusive"], [], ["AnalysisPass"], ["AnalysisError"],
                       ["AnalysisError"]]


def test_errors_hold_then_hit_the_limit():
    s, d = started(spec(STEPS, policy={"consecutiveErrorLimit": 3}))
    status, at = d.status, d.status.step_started_at
    for i in (1, 2):
        decision = run(s, status, at + timedelta(seconds=100 * i), look=look("Error", step=1, at=at))
        status = decision.status
        assert status.phase == "Paused" and not status.awaiting_approval and status.current_step == 1
        assert f"{i} of 3 intervals" in status.message
    # Data back: progressing again, counter reset; the elapsed duration and a Pass end the step.
    back = run(s, status, at + timedelta(seconds=300), look=look("Pass", step=1, at=at + timedelta(seconds=300)))
    assert back.status.phase == "Progressing" and back.status.consecutive_errors == 0
    assert back.status.current_step == 2
    status = back.status
    for i in (1, 2, 3):
        decision = run(s, status, at + timedelta(seconds=300 + 10 * i), canary_available=4,
                       look=look("Error", step=3, at=at))
        status = decision.status
    assert status.phase == "Paused" and status.awaiting_approval
    assert "3 analysis intervals in a row without data" in status.message
    # Still no data: still waiting for a human, said once, not every interval.
    again = run(s, status, at + timedelta(seconds=340), canary_available=4, look=look("Error", step=3, at=at))
    assert again.status.awaiting_approval and [e.reason for e in again.events] == ["AnalysisError"]


def test_a_timed_pause_never_ends_while_metrics_are_missing():
    s = spec([{"setWeight": 10}, {"pause": {"duration": "10s"}}, {"setWeight": 100}])
    s, d = started(s)
    at = d.status.step_started_at
    held = run(s, d.status, at + timedelta(seconds=11), look=look("Error", step=1, at=at + timedelta(seconds=11)))
    assert held.status.current_step == 1 and not held.promote
    resumed = run(s, held.status, at + timedelta(seconds=21), look=look("Inconclusive", step=1, at=at))
    assert resumed.status.current_step == 2


def test_promotion_after_the_last_step_waits_for_the_stable_rollout():
    s = spec([{"setWeight": 10}, {"pause": {"duration": "10s"}}, {"setWeight": 100}], metrics=())
    s, d = started(s)
    at = d.status.step_started_at + timedelta(seconds=10)
    full = run(s, d.status, at)
    assert full.status.current_step == 2 and full.canary_replicas == 4
    promoting = run(s, full.status, at, canary_available=4)
    assert promoting.status.current_step == 3 and promoting.promote and promoting.canary_replicas == 4
    assert promoting.status.phase == "Progressing"
    still = run(s, promoting.status, at + timedelta(seconds=1), canary_available=4)
    assert still.promote and still.status.phase == "Progressing"
    abort = run(s, still.status, at + timedelta(seconds=1), canary_available=4, action=Action("abort", "zoe", at))
    assert abort.promote and abort.status.phase == "Progressing"  # the stable already carries v2: no half-abort
    assert abort.status.last_action.outcome == "ignored: the promotion is already applied to the stable Deployment"
    done = run(s, still.status, at + timedelta(seconds=2), canary_available=4, stable_promoted=True)
    assert done.status.phase == "Promoted" and done.canary_replicas is None and not done.promote
    assert done.status.message == "Promoted v2: the stable Deployment serves s3://m/v2."


def test_pause_without_duration_waits_for_approve():
    s = spec([{"setWeight": 10}, {"pause": {}}, {"setWeight": 100}], metrics=())
    s, d = started(s)
    assert d.status.phase == "Paused" and d.status.awaiting_approval and d.status.current_step == 1
    later = run(s, d.status, T0 + timedelta(hours=5), canary_available=1)
    assert later.status.current_step == 1
    approved = run(s, later.status, T0 + timedelta(hours=5), canary_available=1,
                   action=Action("approve", "alice", T0 + timedelta(hours=5)))
    assert approved.status.phase == "Progressing" and approved.status.current_step == 2
    assert approved.status.last_action.by == "alice" and approved.status.last_action.action == "approve"
    assert "alice" in [e for e in approved.events if e.reason == "UserAction"][0].message


def test_promote_skips_the_remaining_steps():
    s = spec([{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}, {"setWeight": 100}], metrics=())
    s, d = started(s)
    promoted = run(s, d.status, T0 + timedelta(minutes=1), canary_available=1,
                   action=Action("promote", "bob", T0 + timedelta(minutes=1)))
    assert promoted.promote and promoted.status.current_step == 4 and promoted.status.phase == "Progressing"
    assert promoted.status.last_action.outcome == "promoting: remaining steps skipped"


def test_abort_removes_the_canary_and_leaves_stable():
    s, d = started()
    aborted = run(s, d.status, T0 + timedelta(minutes=1), action=Action("abort", "carol", T0))
    assert aborted.status.phase == "Aborted" and aborted.canary_replicas is None and not aborted.promote
    assert "Aborted by carol" in aborted.status.message


def test_approve_when_nothing_waits_and_actions_after_the_end_are_ignored():
    s, d = started()
    ignored = run(s, d.status, T0, action=Action("approve", "dave", T0))
    assert ignored.status.current_step == 1
    assert ignored.status.last_action.outcome == "ignored: the rollout is not waiting for approval"
    aborted = run(s, d.status, T0, action=Action("abort", "dave", T0)).status
    late = run(s, aborted, T0, action=Action("promote", "erin", T0))
    assert late.status.phase == "Aborted" and not late.promote
    assert late.status.last_action.outcome == "ignored: the rollout is already Aborted"


def test_approve_resumes_after_a_limit_pause():
    s, d = started(spec(STEPS, policy={"consecutiveErrorLimit": 1}))
    paused = run(s, d.status, T0 + timedelta(seconds=20), look=look("Error", step=1, at=T0)).status
    assert paused.awaiting_approval
    resumed = run(s, paused, T0 + timedelta(seconds=30), action=Action("approve", "frank", T0))
    assert resumed.status.phase == "Progressing" and resumed.status.current_step == 2
    assert resumed.status.consecutive_errors == 0


def test_records_are_bounded_newest_first():
    s, d = started()
    status = d.status
    for i in range(30):
        status = run(s, status, T0, look=look("Inconclusive", step=1, at=T0 + timedelta(seconds=i))).status
    assert len(status.analysis) == 10 and status.analysis[0].time == T0 + timedelta(seconds=29)


def test_look_due_every_interval_only_while_the_canary_serves():
    s = spec(STEPS)
    assert not look_due(s, RolloutStatus(), T0)
    _, d = started(s)
    serving = d.status.analysis_started_at
    assert not look_due(s, d.status, serving + timedelta(seconds=9))  # Prometheus may not have scraped it yet
    assert look_due(s, d.status, serving + timedelta(seconds=10))
    at = serving + timedelta(seconds=10)
    looked = d.status.model_copy(update={"analysis": [look("Pass", step=1, at=at).record]})
    assert not look_due(s, looked, at + timedelta(seconds=5))  # an interval between looks, not half of one
    assert not look_due(s, looked, at + timedelta(seconds=9.4))
    assert look_due(s, looked, at + timedelta(seconds=9.5))  # a scheduler waking a hair early does not skip it
    assert not look_due(s, looked.model_copy(update={"phase": "RolledBack"}), T0 + timedelta(minutes=1))
    assert not look_due(spec(STEPS, metrics=()), d.status, T0)
    assert analysis_window(d.status, d.status.analysis_started_at + timedelta(seconds=95.5),
                           timedelta(seconds=10)) == "96s"
    assert analysis_window(d.status, d.status.analysis_started_at, timedelta(seconds=10)) == "20s"


def test_judge_metric_ratio_threshold_and_errors():
    s = spec(STEPS, metrics=(RATIO, {"name": "latency", "threshold": {"query": 'p95{track="{{track}}"}', "max": 0.5}}))
    ratio, latency = s.analysis.metrics
    _, first = judge_metric(ratio, MetricSample(good=49_500, total=50_000), MetricSample(good=4_500, total=5_000),
                            0.05)
    failed, evidence = judge_metric(ratio, MetricSample(good=99_000, total=100_000),
                                    MetricSample(good=9_000, total=10_000), 0.05, first)
    assert failed.verdict == "Fail" and failed.stable.total == 100_000 and failed.canary.value == 0.9
    assert failed.ci_high < 0 and failed.delta == pytest.approx(-0.09) and failed.evidence >= 20
    assert evidence.name == "success" and evidence.canary.total == 10_000
    error, kept = judge_metric(ratio, MetricSample(error="connection refused"), MetricSample(), 0.05, evidence)
    assert error.message == "stable query failed: connection refused" and kept == evidence
    assert judge_metric(ratio, MetricSample(good=1, total=1), MetricSample(), 0.05)[0].verdict == "Error"
    breached, state = judge_metric(latency, MetricSample(value=0.2), MetricSample(value=0.7), 0.05)
    assert (breached.verdict, breached.message, state) == ("Fail", "canary 0.7 is above the maximum 0.5", None)
    assert (breached.stable.value, breached.canary.value, breached.delta) == (0.2, 0.7, pytest.approx(0.5))
    assert judge_metric(latency, MetricSample(), MetricSample(value=0.3), 0.05)[0].verdict == "Pass"
    assert judge_metric(latency, MetricSample(value=0.2), MetricSample(), 0.05)[0].verdict == "Error"


def test_judge_look_takes_the_worst_verdict_splits_alpha_and_carries_the_evidence():
    s = spec(STEPS, metrics=(RATIO, {**RATIO, "name": "feedback"}))
    good = (MetricSample(good=99_000, total=100_000), MetricSample(good=9_900, total=10_000))
    first = judge_look(s.analysis, {"success": good, "feedback": good}, step=1, weight=10, now=T0)
    assert [e.name for e in first.evidence] == ["success", "feedback"]
    later = judge_look(s.analysis, {"success": good, "feedback": (MetricSample(error="timeout"), MetricSample())},
                       step=1, weight=10, now=T0, evidence=list(first.evidence))
    assert later.record.verdict == "Error" and [m.verdict for m in later.record.metrics] == ["Pass", "Error"]
    assert "97.5% always-valid CI" in later.record.metrics[0].message  # 0.05 split between two ratio metrics
    assert later.evidence[1] == first.evidence[1]  # an error leaves the test where it was
    status = run(s, RolloutStatus(), T0, look=later).status
    assert status.evidence == list(later.evidence)


def test_a_user_request_is_read_once_and_a_malformed_one_says_what_is_wrong():
    from kaizen.api.rollout import ActionRecord
    from kaizen.logic.rollout import parse_action

    at = "2026-11-28T12:00:00Z"
    request = {"kaizen.dev/action": "approve", "kaizen.dev/action-by": "alice", "kaizen.dev/action-at": at}
    assert parse_action({}, RolloutStatus()) is None
    assert parse_action(request, RolloutStatus()) == Action("approve", "alice", T0)
    handled = RolloutStatus(last_action=ActionRecord(action="approve", by="alice", at=T0, outcome="approved"))
    assert parse_action(request, handled) is None  # recorded in status: acted on already
    with pytest.raises(ValueError, match="'retrain' is not an action on a Rollout: use promote, abort or approve"):
        parse_action({**request, "kaizen.dev/action": "retrain"}, RolloutStatus())
    with pytest.raises(ValueError, match="is not an RFC 3339 time"):
        parse_action({**request, "kaizen.dev/action-at": "yesterday"}, RolloutStatus())


# Metrics, and no analysis step: the promotion gate makes the last step wait for a passing look taken during it.
TIMED = [{"setWeight": 10}, {"pause": {"duration": "10s"}}, {"setWeight": 100}]


def at_last_step(policy=None, **observed):
    """A TIMED rollout whose pause is over: at step 2 (setWeight 100), 4 canary replicas asked for."""
    s, d = started(spec(TIMED, policy=policy), **observed)
    last = run(s, d.status, d.status.step_started_at + timedelta(seconds=10), canary_available=1, **observed)
    assert last.status.current_step == 2 and last.canary_replicas == 4 and not last.promote
    return s, last.status


@pytest.mark.parametrize("verdict, available, phase, step, promote, inconclusive", [
    ("Pass", 4, "Progressing", 3, True, 0),  # the gate opens: promoting
    ("Inconclusive", 4, "Progressing", 2, False, 1),  # held at 100 %, and the look counts towards the limit
    ("Inconclusive", 1, "Progressing", 2, False, 0),  # the canary is still scaling up: not yet waiting for a Pass
    ("Pass", 1, "Progressing", 2, False, 0),  # a Pass does not skip the wait for the weight
    ("Error", 4, "Paused", 2, False, 0),  # no data never promotes
    ("Fail", 4, "RolledBack", 2, False, 0),
])
def test_the_last_step_of_a_timed_rollout_waits_for_a_passing_look(verdict, available, phase, step, promote,
                                                                    inconclusive):
    s, status = at_last_step()
    at = status.step_started_at + timedelta(seconds=5)
    decision = run(s, status, at, canary_available=available, look=look(verdict, step=2, at=at, weight=100))
    assert (decision.status.phase, decision.status.current_step, decision.promote) == (phase, step, promote)
    assert (decision.status.consecutive_inconclusive or 0) == inconclusive
    if phase == "RolledBack":
        assert decision.canary_replicas is None


def test_a_held_last_step_says_why_and_a_later_pass_promotes():
    s, status = at_last_step()
    begun = status.step_started_at
    for i in range(1, 4):
        status = run(s, status, begun + timedelta(seconds=10 * i), canary_available=4,
                     look=look("Inconclusive", step=2, at=begun + timedelta(seconds=10 * i), weight=100)).status
        assert status.current_step == 2 and status.phase == "Progressing"
    assert status.message == ("Step 2 of 3 at canary weight 100%. Holding for a passing analysis look before "
                              "promoting (latest: Inconclusive).")
    assert status.consecutive_inconclusive == 3
    # Nothing promotes by time alone, however long it has waited.
    idle = run(s, status, begun + timedelta(hours=2), canary_available=4)
    assert idle.status.current_step == 2 and not idle.promote
    passed = run(s, status, begun + timedelta(seconds=40), canary_available=4,
                 look=look("Pass", step=2, at=begun + timedelta(seconds=40), weight=100))
    assert passed.promote and passed.status.current_step == 3 and passed.status.consecutive_inconclusive == 0


def test_a_pass_before_the_last_step_does_not_open_the_gate():
    s, d = started(spec(TIMED))
    early = d.status.step_started_at + timedelta(seconds=5)
    passed = run(s, d.status, early, look=look("Pass", step=1, at=early)).status
    last = run(s, passed, early + timedelta(seconds=5), canary_available=4)
    assert last.status.current_step == 2 and not last.promote  # the Pass at 10 % says nothing about 100 %
    later = run(s, last.status, early + timedelta(seconds=6), canary_available=4)
    assert later.status.current_step == 2 and not later.promote
    assert "latest: Pass" in later.status.message  # the latest look passed, but before this step began


@pytest.mark.parametrize("on_limit, phase, canary", [("Pause", "Paused", 4), ("Rollback", "RolledBack", None)])
def test_the_inconclusive_limit_applies_at_the_gate(on_limit, phase, canary):
    s, status = at_last_step(policy={"inconclusiveLimit": 2, "onLimit": on_limit})
    begun = status.step_started_at
    for i in (1, 2):
        decision = run(s, status, begun + timedelta(seconds=10 * i), canary_available=4,
                       look=look("Inconclusive", step=2, at=begun + timedelta(seconds=10 * i), weight=100))
        status = decision.status
    assert status.phase == phase and not decision.promote and decision.canary_replicas == canary
    assert ("2 inconclusive analysis intervals at the last step (2), where promotion needs a passing look"
            in status.message)


def test_approve_overrides_the_gate_after_a_limit_pause():
    s, status = at_last_step(policy={"inconclusiveLimit": 1})
    at = status.step_started_at + timedelta(seconds=10)
    paused = run(s, status, at, canary_available=4, look=look("Inconclusive", step=2, at=at, weight=100)).status
    assert paused.phase == "Paused" and paused.awaiting_approval
    approved = run(s, paused, at + timedelta(seconds=1), canary_available=4,
                   action=Action("approve", "grace", at + timedelta(seconds=1)))
    assert approved.promote and approved.status.current_step == 3
    assert approved.status.last_action.outcome == "approved: step 2 completed"


def test_an_analysis_step_past_its_duration_says_it_holds_for_a_pass():
    s, d = started()
    at = d.status.step_started_at + timedelta(seconds=31)
    held = run(s, d.status, at, look=look("Inconclusive", step=1, at=at)).status
    assert held.current_step == 1
    assert held.message.endswith("Holding for a passing analysis look before the next step (latest: Inconclusive).")


def test_one_rollout_holds_a_target_started_first_then_oldest():
    old, new = Contender("a", T0), Contender("b", T0 + timedelta(seconds=5))
    assert target_holder("a", [old, new]) is None and target_holder("b", [old, new]) == old
    assert target_holder("b", [new, old]) == old  # the order of the listing does not matter
    # A rollout under way keeps its target from an older one that has not started (e.g. a spec fixed just now).
    running = Contender("b", T0 + timedelta(seconds=5), phase="Paused")
    assert target_holder("a", [old, running]) == running and target_holder("b", [old, running]) is None
    # Created in the same second: the name decides, the same way for every reader.
    twin = Contender("c", T0)
    assert target_holder("c", [twin, old]) == old and target_holder("a", [twin, old]) is None
    assert target_holder("a", [old]) is None and target_holder("a", []) is None


def test_a_refused_rollout_says_who_holds_the_target_once_and_touches_nothing():
    s, holder = spec(STEPS), Contender("bot-v1", T0, phase="Progressing")
    first = wait_for_target(s, RolloutStatus(), holder, "ns", None, T0)
    assert not first.owns_target and not first.promote and first.status.phase is None
    assert first.status.message.startswith("Deployment ns/bot is held by Rollout bot-v1, which has not ended; ")
    assert "`kaizen abort bot-v1`" in first.status.message
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "TargetInUse")]
    again = wait_for_target(s, first.status, holder, "ns", None, T0 + timedelta(seconds=30))
    assert again.status == first.status and again.events == ()


def test_a_refused_rollout_can_be_aborted_and_ignores_other_actions():
    s, holder = spec(STEPS), Contender("bot-v1", T0, phase="Progressing")
    waiting = wait_for_target(s, RolloutStatus(), holder, "ns", None, T0).status
    promoted = wait_for_target(s, waiting, holder, "ns", Action("promote", "ann", T0), T0)
    assert promoted.status.phase is None and not promoted.promote
    assert promoted.status.last_action.outcome == "ignored: Rollout bot-v1 holds the target"
    aborted = wait_for_target(s, waiting, holder, "ns", Action("abort", "ann", T0), T0)
    assert aborted.status.phase == "Aborted" and not aborted.owns_target
    assert aborted.status.message.startswith("Aborted by ann at ")
    assert aborted.status.last_action.outcome == "aborted: it never started, nothing was touched"


def test_requests_are_read_the_same_way_for_every_kind():
    from kaizen.api.improvementloop import RequestRecord
    from kaizen.logic.requests import Requested, consumable, pending

    annotations = {"kaizen.dev/action": "retrain", "kaizen.dev/action-by": "alice",
                   "kaizen.dev/action-at": "2026-11-28T12:00:00Z"}
    request = pending(annotations, ("approve", "retrain"), None, "a loop")
    assert request == Requested("retrain", "alice", T0) and not consumable(annotations, request)
    # Recorded in status: handled, and only now may its annotations go.
    recorded = RequestRecord(action="retrain", by="alice", at=T0, outcome="retrain: created RetrainJob/x")
    assert pending(annotations, ("approve", "retrain"), recorded, "a loop") is None
    assert consumable(annotations, None) and not consumable({}, None)


def test_the_next_look_is_due_at_the_next_thing_that_can_change():
    from kaizen.logic.rollout import next_due

    s = spec(STEPS)  # setWeight 10, analysis 30s, setWeight 50, pause 20s, setWeight 100; looks every 10s
    assert next_due(s, RolloutStatus(), T0) == T0  # not started: now
    _, weighted = started(s)
    at_analysis = weighted.status  # step 1 (analysis 30s) since T0+1s, analysis started at T0+1s
    assert at_analysis.current_step == 1
    assert next_due(s, at_analysis, T0 + timedelta(seconds=2)) == T0 + timedelta(seconds=11)  # the first look
    looked = at_analysis.model_copy(update={"analysis": [look("Inconclusive", step=1, at=T0 + timedelta(seconds=11))
                                                         .record]})
    assert next_due(s, looked, T0 + timedelta(seconds=12)) == T0 + timedelta(seconds=21)  # an interval on
    assert next_due(s, looked.model_copy(update={"phase": "RolledBack"}), T0) is None
    # A setWeight step polls its canary; an untimed pause without metrics waits for a user's action alone.
    assert next_due(s, RolloutStatus(phase="Progressing", current_step=0, step_started_at=T0), T0) == \
        T0 + timedelta(seconds=1)
    manual = spec([{"setWeight": 10}, {"pause": {}}, {"setWeight": 100}], metrics=())
    paused = RolloutStatus(phase="Paused", current_step=1, step_started_at=T0, awaiting_approval=True)
    assert next_due(manual, paused, T0 + timedelta(hours=1)) is None
    timed = spec([{"setWeight": 10}, {"pause": {"duration": "20s"}}, {"setWeight": 100}], metrics=())
    assert next_due(timed, paused.model_copy(update={"phase": "Progressing"}), T0 + timedelta(seconds=5)) == \
        T0 + timedelta(seconds=20)  # the pause's end
