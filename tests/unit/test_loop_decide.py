"""The loop's decision engine, branch by branch: signals with hysteresis, outcomes, and decide()."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from kaizen.api.common import ModelRef
from kaizen.api.improvementloop import (
    Decision, ImprovementLoopSpec, ImprovementLoopStatus, ServedModel, SignalStatus,
)
from kaizen.logic.loop import (
    BacklogItem, Child, Feedback, Gathered, Observed, Reading, Request, answer, beyond_history_limits, child_name,
    companion_evidence, companion_queries, decide, fold_outcomes, look, observe_signals, record, target_slices,
    unaudited,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
EXAMPLE = yaml.safe_load((Path(__file__).parents[2] / "examples" / "improvementloop.yaml").read_text())["spec"]
V1 = ServedModel(version="v1", uri="/models/v1", since=NOW - timedelta(days=10))
V2 = ServedModel(version="v2", uri="/models/v2", since=NOW - timedelta(minutes=20))


def loop_spec(**policy) -> ImprovementLoopSpec:
    spec = copy.deepcopy(EXAMPLE)
    spec["policy"].update(policy)
    return ImprovementLoopSpec.model_validate(spec)


def status(name="error-rate", state="Healthy", value=0.01, since=NOW - timedelta(hours=1)) -> SignalStatus:
    return SignalStatus(name=name, value=value, state=state, since=since)


HEALTHY = (status(), status("satisfaction", value=0.9))
BREACHED = (status(state="Breached", value=0.08, since=NOW - timedelta(minutes=12)), status("satisfaction", value=0.9))
ENOUGH_FEEDBACK = Feedback(new_items=500, backlog=(BacklogItem("incorrect", "refund", "de", 300),
                                                   BacklogItem("unhelpful", "shipping", None, 50)))


def run(observed: Observed, spec: ImprovementLoopSpec | None = None, model=V1, previous=None, failures=0):
    return decide(spec or loop_spec(approval={"retrain": "Automatic", "promote": "Automatic"}), observed, model,
                  previous, failures, NOW, loop="support-bot", uid="uid-1", generation=1)


def job(name="rj-1", phase="Training", verdict=None, created=NOW - timedelta(days=3), **kw) -> Child:
    return Child("RetrainJob", name, created, phase=phase, verdict=verdict, **kw)


# ------------------------------------------------------------------------------------------------ signals

SIGNALS = loop_spec().signals  # error-rate: max 0.02 for 10m; satisfaction: min 0.8 for 30m


def observe(value, previous, at):
    return observe_signals(SIGNALS[:1], {"error-rate": Reading("error-rate", value)}, list(previous), at)[0]


def test_a_breach_counts_only_once_sustained_for_its_window():
    healthy = observe(0.01, [], NOW)
    assert healthy.state == "Healthy"
    first = observe(0.05, [healthy], NOW + timedelta(minutes=1))
    assert first.state == "Healthy" and first.pending_since == NOW + timedelta(minutes=1)
    still = observe(0.05, [first], NOW + timedelta(minutes=10))
    assert still.state == "Healthy"
    breached = observe(0.05, [still], NOW + timedelta(minutes=11))
    assert breached.state == "Breached" and breached.since == NOW + timedelta(minutes=1)


def test_a_short_blip_never_breaches():
    healthy = observe(0.01, [], NOW)
    blip = observe(0.5, [healthy], NOW + timedelta(minutes=1))
    back = observe(0.01, [blip], NOW + timedelta(minutes=2))
    later = observe(0.5, [back], NOW + timedelta(minutes=12))
    assert (back.state, back.pending_since) == ("Healthy", None)
    assert later.state == "Healthy"  # the window restarted with the second excursion


def test_a_breach_clears_only_after_its_window_within_bounds():
    breached = SignalStatus(name="error-rate", value=0.05, state="Breached", since=NOW)
    recovering = observe(0.01, [breached], NOW + timedelta(minutes=1))
    assert recovering.state == "Breached"
    cleared = observe(0.01, [recovering], NOW + timedelta(minutes=11))
    assert cleared.state == "Healthy"


def test_no_data_is_unknown_never_healthy():
    unknown = observe(None, [status()], NOW)
    assert unknown.state == "Unknown" and unknown.value is None
    assert observe(0.01, [unknown], NOW + timedelta(seconds=1)).state == "Healthy"


# --------------------------------------------------------------------------------------------- decisions


def test_paused_loop_does_nothing():
    plan = run(Observed(BREACHED, paused=True))
    assert (plan.action, plan.phase, plan.create) == ("Paused", "Paused", None)


def test_repeated_failures_degrade_the_loop():
    plan = run(Observed(BREACHED, feedback=ENOUGH_FEEDBACK), failures=3)
    assert (plan.action, plan.phase) == ("Degraded", "Degraded")
    assert "3 retrains or rollouts failed in a row" in plan.reason


def test_a_manual_retrain_request_gets_past_degraded():
    request = Request("retrain", "alice", NOW)
    plan = run(Observed(HEALTHY, feedback=ENOUGH_FEEDBACK, request=request), failures=3)
    assert plan.action == "Retrain" and plan.evidence["requestedBy"] == "alice"


@pytest.mark.parametrize("failures, request_, children, expected", [
    # Degraded, nothing running: stopped.
    (3, None, (job(phase="Failed"),), ("Degraded", "TooManyFailures", "Degraded")),
    # `kaizen retrain` from Degraded: the request gets past Degraded and starts a retrain...
    (3, Request("retrain", "alice", NOW), (job(phase="Failed"),), ("Retrain", "Retrain", "Retraining")),
    # ...and while that retrain runs, the loop shows Retraining, not Degraded.
    (3, None, (job(phase="Failed"), job("rj-manual", phase="Training", created=NOW)),
     ("Wait", "ChildRunning", "Retraining")),
    (3, None, (job(phase="Failed"), job("rj-manual", phase=None, created=NOW)), ("Wait", "ChildRunning", "Retraining")),
    # Once it has ended (failed again), Degraded is back.
    (4, None, (job(phase="Failed"), job("rj-manual", phase="Failed", created=NOW)),
     ("Degraded", "TooManyFailures", "Degraded")),
])
def test_a_running_child_shows_over_degraded(failures, request_, children, expected):
    plan = run(Observed(BREACHED, children=children, feedback=ENOUGH_FEEDBACK, request=request_), failures=failures)
    assert (plan.action, plan.code, plan.phase) == expected


def test_paused_comes_before_a_running_child():
    plan = run(Observed(BREACHED, children=(job(),), paused=True), failures=3)
    assert (plan.action, plan.phase) == ("Paused", "Paused")


@pytest.mark.parametrize("child, phase", [(job(), "Retraining"),
                                          (Child("Rollout", "ro-1", NOW, phase="Progressing"), "RollingOut")])
def test_a_running_child_means_wait(child, phase):
    plan = run(Observed(BREACHED, children=(child,), feedback=ENOUGH_FEEDBACK))
    assert (plan.action, plan.code, plan.phase, plan.create) == ("Wait", "ChildRunning", phase, None)


def test_healthy_signals_mean_nothing():
    plan = run(Observed(HEALTHY))
    assert (plan.action, plan.code, plan.phase) == ("Nothing", "Healthy", "Observing")
    assert plan.evidence["signals"][0] == {"name": "error-rate", "value": 0.01, "state": "Healthy", "min": None,
                                           "max": 0.02, "for": "10m", "since": "2026-11-28T11:00:00Z"}


def test_unknown_signals_mean_wait_not_healthy():
    plan = run(Observed((status(state="Unknown", value=None), status("satisfaction"))))
    assert (plan.action, plan.code) == ("Wait", "NoData")
    assert "error-rate" in plan.reason


def test_sustained_breach_with_enough_feedback_retrains_on_the_backlog():
    plan = run(Observed(BREACHED, feedback=ENOUGH_FEEDBACK))
    assert (plan.action, plan.phase) == ("Retrain", "Retraining")
    assert plan.create.kind == "RetrainJob"
    assert plan.create.spec["baseline"] == {"version": "v1", "uri": "/models/v1"}
    assert plan.create.spec["targets"] == {
        "categories": ["incorrect", "unhelpful"], "scenarios": ["refund", "shipping"], "cohorts": ["de"],
    }
    assert plan.create.spec["image"] == EXAMPLE["retrain"]["image"]
    assert [g["metric"] for g in plan.create.spec["gates"]][:2] == ["accuracy", "accuracy"]
    assert plan.evidence["breached"] == ["error-rate"] and plan.evidence["newFeedback"] == 500
    assert "error-rate breached since 2026-11-28T11:48:00Z (value 0.08)" in plan.reason


def test_the_retrain_template_carries_objective_judge_and_generative_gates_to_the_retrainjob():
    spec = copy.deepcopy(EXAMPLE)
    spec["retrain"].update(objective="kto", judge={"uri": "pvc://judges/pairwise"})
    spec["retrain"]["hyperparameters"] = {**spec["retrain"].get("hyperparameters", {}), "beta": 0.2}
    spec["gates"] = [{"metric": "winRate", "min": 0.55}, {"metric": "rougeL", "cohort": "refund", "minDelta": 0.1}]
    plan = run(Observed(BREACHED, feedback=ENOUGH_FEEDBACK), spec=ImprovementLoopSpec.model_validate(spec))
    assert plan.create.kind == "RetrainJob"
    assert plan.create.spec["objective"] == "kto" and plan.create.spec["judge"] == {"uri": "pvc://judges/pairwise"}
    assert plan.create.spec["hyperparameters"]["beta"] == 0.2
    assert [g["metric"] for g in plan.create.spec["gates"]] == ["winRate", "rougeL"]


def test_the_same_breach_names_the_same_child():
    first = run(Observed(BREACHED, feedback=ENOUGH_FEEDBACK))
    again = run(Observed(BREACHED, feedback=ENOUGH_FEEDBACK))
    assert first.create.name == again.create.name
    assert len(first.create.name) <= 63
    assert child_name("x" * 80, "retrain", "u", "k") != child_name("x" * 80, "retrain", "u", "other")


def test_breach_right_after_a_promotion_rolls_back_instead_of_retraining():
    plan = run(Observed(BREACHED, feedback=ENOUGH_FEEDBACK), model=V2, previous=V1)
    assert (plan.action, plan.code) == ("Rollback", "BreachAfterPromotion")
    assert plan.create.kind == "Rollout"
    assert plan.create.spec["stableModel"]["version"] == "v2" and plan.create.spec["canaryModel"]["version"] == "v1"
    assert plan.create.spec["steps"] == [{"setWeight": 100}]
    assert "rolling back to v1" in plan.reason


def test_breach_long_after_a_promotion_retrains():
    old_promotion = ServedModel(version="v2", uri="/models/v2", since=NOW - timedelta(days=2))
    plan = run(Observed(BREACHED, feedback=ENOUGH_FEEDBACK), model=old_promotion, previous=V1)
    assert plan.action == "Retrain"


def test_a_rollback_is_tried_once_then_the_loop_retrains():
    tried = Child("Rollout", "rb", NOW - timedelta(minutes=5), phase="RolledBack", rollback=True,
                  candidate=ModelRef(version="v1", uri="/models/v1"))
    plan = run(Observed(BREACHED, children=(tried,), feedback=ENOUGH_FEEDBACK), model=V2, previous=V1)
    assert plan.action == "Retrain"


def test_cooldown_holds():
    recent = job(phase="Succeeded", verdict="Failed", created=NOW - timedelta(hours=2))
    plan = run(Observed(BREACHED, children=(recent,), feedback=ENOUGH_FEEDBACK))
    assert (plan.action, plan.code, plan.phase) == ("Wait", "Cooldown", "CoolingDown")
    assert "after 2026-11-29T10:00:00Z (cooldown 24h)" in plan.reason


def test_weekly_retrain_limit_holds():
    jobs = tuple(job(f"rj-{i}", "Succeeded", "Passed", created=NOW - timedelta(days=i + 2)) for i in range(2))
    plan = run(Observed(BREACHED, children=jobs, feedback=ENOUGH_FEEDBACK))
    assert (plan.action, plan.code) == ("Wait", "WeeklyLimit")


def test_gpu_budget_holds():
    spent = job("rj-gpu", "Succeeded", "Passed", gpu_seconds=17 * 3600)
    plan = run(Observed(BREACHED, children=(spent,), feedback=ENOUGH_FEEDBACK))
    assert (plan.action, plan.code) == ("Wait", "GPUBudget")
    assert "17.00 GPU hours" in plan.reason


def test_too_little_new_feedback_waits():
    plan = run(Observed(BREACHED, feedback=Feedback(new_items=12)))
    assert (plan.action, plan.code) == ("Wait", "TooLittleFeedback")
    assert "12 new consented feedback items" in plan.reason and "200 are needed" in plan.reason


def test_an_unreachable_collector_waits():
    plan = run(Observed(BREACHED, feedback=Feedback(error="connection refused")))
    assert (plan.action, plan.code) == ("Wait", "CollectorUnavailable")


def test_no_retrain_on_the_same_data_after_a_failure():
    spec = copy.deepcopy(EXAMPLE)
    del spec["feedback"]
    spec["policy"].update(cooldown="1h", approval={"retrain": "Automatic", "promote": "Automatic"})
    failed = job("rj-failed", "Failed", created=NOW - timedelta(hours=3), loop_generation=1)
    plan = run(Observed(BREACHED, children=(failed,)), spec=ImprovementLoopSpec.model_validate(spec))
    assert (plan.action, plan.code) == ("Wait", "SameData")


def test_manual_retrain_approval_waits_then_records_the_approver():
    spec = loop_spec(approval={"retrain": "Manual", "promote": "Automatic"})
    waiting = run(Observed(BREACHED, feedback=ENOUGH_FEEDBACK), spec=spec)
    assert (waiting.action, waiting.phase, waiting.create) == ("AwaitApproval", "AwaitingApproval", None)
    approved = run(Observed(BREACHED, feedback=ENOUGH_FEEDBACK, request=Request("approve", "bob", NOW)), spec=spec)
    assert approved.action == "Retrain" and approved.consumes_request
    assert approved.evidence["approvedBy"] == "bob"


def test_a_passed_candidate_is_rolled_out():
    passed = job("rj-ok", "Succeeded", "Passed", candidate=ModelRef(version="v2", uri="/models/v2"),
                 evidence={"gates": "5/5"})
    plan = run(Observed(HEALTHY, children=(passed,)))
    assert (plan.action, plan.phase) == ("RollOut", "RollingOut")
    assert plan.create.kind == "Rollout"
    assert plan.create.spec["canaryModel"] == {"version": "v2", "uri": "/models/v2"}
    assert plan.create.spec["stableModel"] == {"version": "v1", "uri": "/models/v1"}
    assert plan.create.spec["retrainJobRef"] == "rj-ok"
    assert plan.create.spec["steps"][0] == {"setWeight": 10}


def test_promotion_approval_waits_for_kaizen_approve():
    passed = job("rj-ok", "Succeeded", "Passed", candidate=ModelRef(version="v2", uri="/models/v2"))
    spec = loop_spec(approval={"retrain": "Automatic", "promote": "Manual"})
    assert run(Observed(HEALTHY, children=(passed,)), spec=spec).action == "AwaitApproval"
    approved = run(Observed(HEALTHY, children=(passed,), request=Request("approve", "carol", NOW)), spec=spec)
    assert approved.action == "RollOut" and approved.evidence["approvedBy"] == "carol"


def test_a_rolled_back_candidate_is_not_rolled_out_again():
    passed = job("rj-ok", "Succeeded", "Passed", candidate=ModelRef(version="v2", uri="/models/v2"),
                 created=NOW - timedelta(hours=5))
    rolled_back = Child("Rollout", "ro", NOW - timedelta(hours=4), phase="RolledBack", retrain_job="rj-ok",
                        finished=NOW - timedelta(hours=3))
    plan = run(Observed(BREACHED, children=(passed, rolled_back), feedback=ENOUGH_FEEDBACK))
    assert (plan.action, plan.code) == ("Wait", "Cooldown")


# ----------------------------------------------------------------------------------------------- outcomes


def test_a_promoted_rollout_becomes_the_served_model_and_the_next_baseline():
    promoted = Child("Rollout", "ro", NOW - timedelta(hours=1), phase="Promoted", finished=NOW - timedelta(minutes=5),
                     candidate=ModelRef(version="v2", uri="/models/v2"), retrain_job="rj")
    before = ImprovementLoopStatus(model=V1)
    outcome = fold_outcomes(before, loop_spec(), (promoted,), None)
    assert outcome.model.version == "v2" and outcome.model.since == NOW - timedelta(minutes=5)
    assert outcome.previous_model.version == "v1"
    assert outcome.promoted is promoted
    # Folding again changes nothing (the operator observes the same world every interval).
    again = fold_outcomes(ImprovementLoopStatus(model=outcome.model, previous_model=outcome.previous_model),
                          loop_spec(), (promoted,), None)
    assert (again.model, again.previous_model, again.promoted) == (outcome.model, outcome.previous_model, None)


def test_outcomes_are_written_into_the_decisions_that_made_the_children():
    plan = run(Observed(BREACHED, feedback=ENOUGH_FEEDBACK))
    decisions = record([], plan, NOW, loop="support-bot")
    finished = job(plan.create.name, "Succeeded", "Failed", message="gate accuracy: delta -0.02 < 0")
    outcome = fold_outcomes(ImprovementLoopStatus(model=V1, decisions=decisions), loop_spec(), (finished,), None)
    assert outcome.decisions[0].outcome == f"RetrainJob {plan.create.name} Succeeded: gate accuracy: delta -0.02 < 0"
    assert outcome.consecutive_failures == 1


def test_failures_count_in_a_row_until_acknowledged():
    children = tuple(job(f"rj-{i}", "Failed", created=NOW - timedelta(days=i + 1), finished=NOW - timedelta(days=i))
                     for i in range(3))
    assert fold_outcomes(ImprovementLoopStatus(), loop_spec(), children, None).consecutive_failures == 3
    acknowledged = NOW - timedelta(hours=12)
    assert fold_outcomes(ImprovementLoopStatus(), loop_spec(), children, acknowledged).consecutive_failures == 1


def test_the_log_records_changes_newest_first_and_stays_bounded():
    decisions = []
    for minute in range(3):
        decisions = record(decisions, run(Observed(HEALTHY)), NOW + timedelta(minutes=minute), loop="l")
    assert len(decisions) == 1  # "healthy" three times is one decision
    decisions = record(decisions, run(Observed(BREACHED, feedback=ENOUGH_FEEDBACK)), NOW, loop="l")
    assert [d.action for d in decisions] == ["Retrain", "Nothing"]
    assert decisions[0].child.startswith("RetrainJob/support-bot-retrain-")
    for i in range(60):
        decisions = record(decisions, run(Observed(BREACHED, feedback=Feedback(new_items=i))), NOW, loop="l")
        decisions = record(decisions, run(Observed(HEALTHY)), NOW, loop="l")
    assert len(decisions) == 50
    assert len({d.id for d in decisions}) == 50


def test_target_slices_respect_the_configured_categories():
    backlog = (BacklogItem("unsafe", "x", None, 5), BacklogItem("tone", "y", "fr", 100))
    assert target_slices(backlog, ["unsafe"]) == {"categories": ["unsafe"], "scenarios": ["x"], "cohorts": []}


def test_the_retrainjob_reads_the_loops_feedback_or_refreshes_on_replay_without_it():
    with_feedback = run(Observed(BREACHED, feedback=ENOUGH_FEEDBACK)).create.spec
    assert with_feedback["feedback"] == {"collectorURL": "http://kaizen-collector.kaizen:8090", "model": "support-bot",
                                         "tokenSecretRef": {"name": "kaizen-collector-token", "key": "token"}}
    spec = copy.deepcopy(EXAMPLE)
    del spec["feedback"]
    spec["policy"]["approval"] = {"retrain": "Automatic", "promote": "Automatic"}
    without = run(Observed(BREACHED), spec=ImprovementLoopSpec.model_validate(spec)).create.spec
    assert "feedback" not in without
    assert without["data"]["targetedRatio"] == 0 and without["data"]["useFeedback"] is False


def test_history_limits_prune_the_oldest_finished_children_but_keep_the_budget_window():
    spec = loop_spec(successfulHistoryLimit=1, failedHistoryLimit=0)
    old = [job(f"ok-{i}", "Succeeded", "Passed", created=NOW - timedelta(days=10 + i)) for i in range(3)]
    failed_old = job("failed-old", "Failed", created=NOW - timedelta(days=9))
    failed_recent = job("failed-recent", "Failed", created=NOW - timedelta(days=1))
    running = job("running", "Training", created=NOW - timedelta(days=30))
    pruned = beyond_history_limits(
        (*old, failed_old, failed_recent, running), spec.policy, NOW)
    assert [c.name for c in pruned] == ["ok-2", "ok-1", "failed-old"]


def test_a_breach_that_outlives_a_retrain_can_start_another_after_the_cooldown():
    first = run(Observed(BREACHED, feedback=ENOUGH_FEEDBACK))
    failed = job(first.create.name, "Failed", created=NOW - timedelta(days=2))
    second = run(Observed(BREACHED, children=(failed,), feedback=ENOUGH_FEEDBACK))
    assert second.action == "Retrain" and second.create.name != first.create.name


def test_an_overlong_reason_is_cut_to_what_the_status_accepts():
    long_backlog = Feedback(new_items=500, backlog=tuple(
        BacklogItem("incorrect", f"scenario-{'x' * 100}-{i}", f"cohort-{'y' * 100}-{i}", 10) for i in range(5)))
    plan = run(Observed(BREACHED, feedback=long_backlog))
    assert len(plan.reason) > 1024
    [decision] = record([], plan, NOW, loop="l")
    assert len(decision.reason) == 1024


def test_a_loop_that_names_only_a_base_model_serves_it_until_a_promotion():
    spec = copy.deepcopy(EXAMPLE)
    del spec["model"]
    spec["retrain"]["baseModel"] = {"version": "base", "uri": "/models/base"}
    outcome = fold_outcomes(ImprovementLoopStatus(), ImprovementLoopSpec.model_validate(spec), (), None)
    assert (outcome.model.version, outcome.model.uri) == ("base", "/models/base")


def test_a_gap_in_the_data_keeps_the_onset_of_a_breach():
    onset = NOW - timedelta(hours=3)
    breached = SignalStatus(name="error-rate", value=0.05, state="Breached", since=onset)
    gap = observe(None, [breached], NOW)
    assert gap.state == "Unknown" and gap.pending_since == onset
    still_gap = observe(None, [gap], NOW + timedelta(minutes=5))
    back = observe(0.05, [still_gap], NOW + timedelta(minutes=6))
    assert back.state == "Breached" and back.since == onset


def test_a_breach_that_went_into_a_gap_clears_only_after_its_window_within_bounds():
    # A Prometheus restart must not cut the hysteresis short: the breach clears as it would have without the gap.
    onset = NOW - timedelta(hours=3)
    gap = observe(None, [SignalStatus(name="error-rate", value=0.05, state="Breached", since=onset)], NOW)
    back = observe(0.01, [gap], NOW + timedelta(minutes=1))
    assert (back.state, back.since, back.pending_since) == ("Breached", onset, NOW + timedelta(minutes=1))
    still = observe(0.01, [back], NOW + timedelta(minutes=10))
    cleared = observe(0.01, [still], NOW + timedelta(minutes=11))
    assert still.state == "Breached" and (cleared.state, cleared.since) == ("Healthy", NOW + timedelta(minutes=1))


def test_no_data_then_data_within_bounds_is_healthy_at_once():
    assert observe(0.01, [observe(None, [], NOW)], NOW + timedelta(minutes=1)).state == "Healthy"


def test_a_candidate_older_than_the_served_model_is_not_rolled_out_again():
    passed = job("rj-v2", "Succeeded", "Passed", candidate=ModelRef(version="v2", uri="/models/v2"),
                 created=NOW - timedelta(days=9))
    rolled_back_to = ServedModel(version="v1", uri="/models/v1", since=NOW - timedelta(days=8))
    plan = run(Observed(HEALTHY, children=(passed,)), model=rolled_back_to)
    assert plan.action == "Nothing"


def test_pruning_a_rollout_prunes_the_retrainjob_it_released():
    spec = loop_spec(successfulHistoryLimit=5, failedHistoryLimit=0)
    passed = job("rj", "Succeeded", "Passed", created=NOW - timedelta(days=12))
    released = Child("Rollout", "ro", NOW - timedelta(days=11), phase="RolledBack", retrain_job="rj")
    assert {c.name for c in beyond_history_limits((passed, released), spec.policy, NOW)} == {"rj", "ro"}


# ------------------------------------------------------------------------------------------------ requests


def test_a_request_is_answered_unless_a_transient_wait_keeps_it():
    request = Request("retrain", "alice", NOW)
    plan = run(Observed(HEALTHY, feedback=ENOUGH_FEEDBACK, request=request))
    assert answer(plan, request, ()) == f"retrain: created RetrainJob/{plan.create.name}"
    assert plan.evidence["requestedAt"] == "2026-11-28T12:00:00Z"  # the child records which request it answers
    no_data = run(Observed((status(state="Unknown", value=None),), request=Request("approve", "bob", NOW)))
    assert (no_data.code, answer(no_data, Request("approve", "bob", NOW), ())) == ("NoData", None)
    healthy = run(Observed(HEALTHY, request=Request("approve", "bob", NOW)))
    assert answer(healthy, Request("approve", "bob", NOW), ()) == "not needed: All 2 signals are healthy."


def test_a_request_acted_on_before_a_restart_is_answered_by_its_child():
    """The operator created the child and stopped before the status recorded the request: the request is still on
    the loop, and the child it created answers it (the loop now only waits for that child)."""
    request = Request("retrain", "alice", NOW)
    plan = run(Observed(HEALTHY, feedback=ENOUGH_FEEDBACK, request=request))
    created = job(plan.create.name, phase=None, created=NOW, reason_evidence=plan.evidence)
    after = run(Observed(HEALTHY, children=(created,), feedback=ENOUGH_FEEDBACK, request=request))
    assert after.code == "ChildRunning"
    assert answer(after, request, (created,)) == f"retrain: created RetrainJob/{plan.create.name}"
    assert answer(after, Request("retrain", "alice", NOW + timedelta(seconds=1)), (created,)).startswith("not needed")


def test_a_decision_the_status_lost_is_rebuilt_from_its_childs_reason():
    spec = loop_spec()
    logged = record([], run(Observed(HEALTHY)), NOW - timedelta(minutes=1), loop="support-bot")
    plan = run(Observed(BREACHED, feedback=ENOUGH_FEEDBACK))
    decision = record(logged, plan, NOW, loop="support-bot")[0]
    child = job(plan.create.name, phase=None, created=NOW, decision_id=decision.id, summary=decision.reason,
                reason_evidence=decision.evidence)
    older = job("rj-0", phase="Succeeded", verdict="Passed", created=NOW - timedelta(days=2),
                decision_id="support-bot-20261126T120000-0", summary="an old retrain, pruned from the log")
    folded = fold_outcomes(ImprovementLoopStatus(decisions=logged), spec, (older, child), None)
    assert [d.id for d in folded.decisions] == [decision.id, logged[0].id]  # the old child's decision stays pruned
    rebuilt = folded.decisions[0]
    assert (rebuilt.action, rebuilt.reason, rebuilt.evidence, rebuilt.child) == (
        "Retrain", decision.reason, decision.evidence, f"RetrainJob/{plan.create.name}")
    # Once the status has it, it is not rebuilt again.
    again = fold_outcomes(ImprovementLoopStatus(decisions=folded.decisions), spec, (older, child), None)
    assert [d.id for d in again.decisions] == [decision.id, logged[0].id]


# ---------------------------------------------------------------------------------------------------- look


def test_one_look_returns_every_effect_and_when_to_look_next():
    from kaizen.logic.loop import Gathered, look, next_look

    spec = loop_spec(approval={"retrain": "Automatic", "promote": "Automatic"})
    current = ImprovementLoopStatus(signals=list(BREACHED), last_observed=NOW - timedelta(minutes=1))
    old = job("rj-old", phase="Failed", created=NOW - timedelta(days=30), gpu_seconds=3600)
    recent = job("rj-recent", phase="Failed", created=NOW - timedelta(days=2), gpu_seconds=1800)
    children = (old, recent, *(job(f"rj-f{i}", phase="Failed", created=NOW - timedelta(days=20 + i))
                               for i in range(5)))
    request = Request("retrain", "alice", NOW - timedelta(seconds=5))
    readings = {"error-rate": Reading("error-rate", 0.08), "satisfaction": Reading("satisfaction", 0.9)}
    gathered = Gathered(readings=readings, children=children, feedback=ENOUGH_FEEDBACK, request=request)
    outcomes = fold_outcomes(current, spec, children, None)
    effects = look(spec, current, outcomes, gathered, NOW, loop="support-bot", uid="uid-1", generation=1)

    assert effects.plan.action == "Retrain" and effects.create.kind == "RetrainJob"
    assert effects.decision is effects.status.decisions[0] and effects.decision.child == effects.create.kind + \
        "/" + effects.create.name
    assert [(e.type, e.reason) for e in effects.events] == [("Normal", "Retrain")]
    assert effects.status.last_action.outcome == f"retrain: created RetrainJob/{effects.create.name}"
    assert effects.status.budget.retrains == 1 and effects.status.budget.gpu_hours == 0.5  # the week's, once
    assert effects.status.phase == "Retraining" and effects.status.last_observed == NOW
    assert old in effects.delete and recent not in effects.delete  # past the history limit and older than a week
    assert effects.next_look == NOW + timedelta(minutes=1) == next_look(spec, effects.status)
    assert next_look(spec, ImprovementLoopStatus()) is None  # never looked: due now

    # The next look, one interval later, finds the child running: a Wait is logged, nothing is created, and the
    # request stays answered; the look after that changes nothing in the log.
    created = job(effects.create.name, phase="Training", created=NOW)
    later = Gathered(readings=readings, children=(*children, created), feedback=ENOUGH_FEEDBACK)
    at = NOW + timedelta(minutes=1)
    wait = look(spec, effects.status, fold_outcomes(effects.status, spec, later.children, None), later, at,
                loop="support-bot", uid="uid-1", generation=1)
    assert (wait.plan.code, wait.create, wait.status.last_action) == ("ChildRunning", None, effects.status.last_action)
    assert [d.action for d in wait.status.decisions] == ["Wait", "Retrain"]
    same = look(spec, wait.status, fold_outcomes(wait.status, spec, later.children, None), later,
                at + timedelta(minutes=1), loop="support-bot", uid="uid-1", generation=1)
    assert same.decision is None and same.events == () and same.status.decisions == wait.status.decisions


def test_a_look_that_changes_nothing_records_no_time_and_keeps_to_the_grid_until_the_fifth():
    from kaizen.logic.loop import RECORD_EVERY_LOOKS, Gathered, look, next_look

    spec = loop_spec()  # interval 1m
    readings = {"error-rate": Reading("error-rate", 0.01), "satisfaction": Reading("satisfaction", 0.9)}
    gathered = Gathered(readings=readings, feedback=ENOUGH_FEEDBACK)

    def look_at(current, when):
        return look(spec, current, fold_outcomes(current, spec, (), None), gathered, when, loop="support-bot",
                    uid="uid-1", generation=1)

    first = look_at(ImprovementLoopStatus(signals=list(HEALTHY)), NOW)
    assert first.status.last_observed == NOW and first.next_look == NOW + timedelta(minutes=1)
    # Seven seconds late and nothing new: the stored time stays (so the controller's patch is empty), and the next
    # look is due on the grid of the recorded one, not seven seconds later.
    quiet = look_at(first.status, NOW + timedelta(minutes=1, seconds=7))
    assert quiet.status == first.status and quiet.changes.status["lastObserved"] == "2026-11-28T12:00:00Z"
    assert quiet.next_look == NOW + timedelta(minutes=2) and next_look(spec, quiet.status) == NOW + timedelta(minutes=1)
    # Every fifth interval the time is recorded anyway (a loop that looks is seen to), and the grid moves with it.
    at = NOW + timedelta(minutes=RECORD_EVERY_LOOKS, seconds=1)
    recorded = look_at(quiet.status, at)
    assert recorded.status.last_observed == at and recorded.next_look == at + timedelta(minutes=1)
    # A change is written at once, with its time.
    changed = look(spec, first.status, fold_outcomes(first.status, spec, (), None),
                   Gathered(readings={**readings, "error-rate": Reading("error-rate", 0.02)}, feedback=ENOUGH_FEEDBACK),
                   NOW + timedelta(minutes=1), loop="support-bot", uid="uid-1", generation=1)
    assert changed.status.last_observed == NOW + timedelta(minutes=1)
def test_a_decision_the_status_lost_is_announced_by_the_look_that_rebuilds_it():
    from kaizen.logic.loop import Gathered, look

    spec = loop_spec(approval={"retrain": "Automatic", "promote": "Automatic"})
    current = ImprovementLoopStatus(signals=list(BREACHED), last_observed=NOW - timedelta(minutes=1))
    readings = {"error-rate": Reading("error-rate", 0.08), "satisfaction": Reading("satisfaction", 0.9)}
    first = look(spec, current, fold_outcomes(current, spec, (), None),
                 Gathered(readings=readings, feedback=ENOUGH_FEEDBACK), NOW, loop="support-bot", uid="uid-1",
                 generation=1)
    # The operator stopped after creating the child and before writing the status (and posting the Events).
    retrain = first.decision
    child = job(first.create.name, phase="Training", created=NOW, decision_id=retrain.id, summary=retrain.reason,
                reason_evidence=retrain.evidence)
    gathered = Gathered(readings=readings, children=(child,), feedback=ENOUGH_FEEDBACK)
    at = NOW + timedelta(minutes=1)
    again = look(spec, current, fold_outcomes(current, spec, (child,), None), gathered, at, loop="support-bot",
                 uid="uid-1", generation=1)
    assert [d.action for d in again.status.decisions] == ["Wait", "Retrain"] and again.create is None
    assert [(e.reason, e.message.endswith(f"[decision {d.id}]")) for e, d in
            zip(again.events, reversed(again.status.decisions))] == [("Retrain", True), ("Wait", True)]


# ------------------------------------------------------------------------------------------------ audit log


def logged(*sequences: int) -> list[Decision]:
    """A stored decision log, newest first."""
    return [Decision(id=f"support-bot-20261128T1200{n:02d}-{n}", time=NOW + timedelta(seconds=n), action="Wait",
                     reason="r") for n in sorted(sequences, reverse=True)]


def test_the_audit_log_is_sent_the_stored_decisions_after_the_last_it_acknowledged_oldest_first():
    log = logged(1, 2, 3, 4)
    assert [d.id for d in unaudited(log, None)] == [d.id for d in reversed(log)]
    assert [d.id for d in unaudited(log, log[2].id)] == [log[1].id, log[0].id]
    assert unaudited(log, log[0].id) == []
    # A decision the status lost and rebuilt from its child's spec.reason numbers after the acknowledged ones.
    assert [d.id for d in unaudited(logged(5, 6, 7), "support-bot-20261128T120005-5")] == [
        "support-bot-20261128T120006-6", "support-bot-20261128T120007-7"]


def test_a_request_a_child_answers_is_recorded_and_not_acted_on_again():
    """The look that acted on `kaizen approve` (a retrain) stopped before its status was written; the RetrainJob then
    passed before the next look. That look records the approval as answered by the RetrainJob, and does not take
    it as approval of the candidate's rollout too (promotion needs its own approval here)."""
    from kaizen.logic.loop import Gathered, look

    spec = loop_spec(approval={"retrain": "Manual", "promote": "Manual"})
    current = ImprovementLoopStatus(signals=list(BREACHED), last_observed=NOW - timedelta(minutes=1))
    readings = {"error-rate": Reading("error-rate", 0.08), "satisfaction": Reading("satisfaction", 0.9)}
    approve = Request("approve", "alice", NOW - timedelta(minutes=5))
    first = look(spec, current, fold_outcomes(current, spec, (), None),
                 Gathered(readings=readings, feedback=ENOUGH_FEEDBACK, request=approve), NOW - timedelta(minutes=4),
                 loop="support-bot", uid="uid-1", generation=1)
    assert first.plan.action == "Retrain" and first.decision.evidence["approvedBy"] == "alice"
    passed = job(first.create.name, phase="Succeeded", verdict="Passed", created=NOW - timedelta(minutes=4),
                 decision_id=first.decision.id, summary=first.decision.reason,
                 reason_evidence=first.decision.evidence, candidate=ModelRef(version="v2", uri="/models/v2"))
    later = look(spec, current, fold_outcomes(current, spec, (passed,), None),
                 Gathered(readings=readings, children=(passed,), feedback=ENOUGH_FEEDBACK, request=approve), NOW,
                 loop="support-bot", uid="uid-1", generation=1)
    assert later.plan.action == "AwaitApproval" and later.create is None
    assert later.status.last_action.outcome == f"approve: created RetrainJob/{first.create.name}"


# ------------------------------------------------------------------------- drift and evaluation as evidence

DRIFT_QUERY = 'max(kaizen_input_drift{model="support-bot",cohort="",method="mmd2"})'
EVAL_QUERY = ('sum(rate(kaizen_eval_total{model="support-bot",evaluator="judge",verdict="good"}[30m]))'
              ' / sum(rate(kaizen_eval_total{model="support-bot",evaluator="judge"}[30m]))')


def traffic_spec() -> ImprovementLoopSpec:
    spec = copy.deepcopy(EXAMPLE)
    spec["signals"] = [{"name": "input-drift", "query": DRIFT_QUERY, "max": 0.004, "for": "0s"},
                       {"name": "judged-good", "query": EVAL_QUERY, "min": 0.7, "for": "0s"}]
    return ImprovementLoopSpec.model_validate(spec)


def test_a_drift_signal_reads_every_method_of_its_window_and_an_evaluation_signal_its_verdicts_by_evaluator():
    assert companion_queries(DRIFT_QUERY) == {"drift": 'kaizen_input_drift{model="support-bot",cohort=""}'}
    assert companion_queries(EVAL_QUERY) == {"evaluation": 'sum by (evaluator, verdict) (increase(kaizen_eval_total'
                                             '{model="support-bot",evaluator="judge"}[30m]))'}
    assert companion_queries(SIGNALS[0].query) == {}  # telemetry: nothing beside its value
    assert companion_queries('sum(kaizen_eval_total{verdict="bad"})') == {
        "evaluation": "sum by (evaluator, verdict) (kaizen_eval_total{})"}


def series(value, **labels):
    return {"metric": labels, "value": [1764331200.0, str(value)]}


def test_companion_series_become_p_values_effect_sizes_and_good_total_shares():
    drift = companion_evidence("drift", [
        series(0.0061, model="support-bot", cohort="", method="mmd2"),
        series(0.002, model="support-bot", cohort="", method="mmd_p_value"),
        series(1, model="support-bot", cohort="", method="drifted"),
        series("NaN", model="support-bot", cohort="", method="scenario_psi"),
    ])
    assert drift == {"drift": [{"model": "support-bot", "cohort": "", "mmd2": 0.0061, "mmd_p_value": 0.002,
                                "drifted": 1.0, "scenario_psi": None}]}
    evaluation = companion_evidence("evaluation", [
        series(42, evaluator="judge", verdict="good"), series(18, evaluator="judge", verdict="bad"),
        series(60, evaluator="safety", verdict="good"),
    ])
    assert evaluation == {"evaluation": {"judge": {"good": 42.0, "total": 60.0, "goodShare": 0.7},
                                         "safety": {"good": 60.0, "total": 60.0, "goodShare": 1.0}}}


def test_the_decision_evidence_names_the_drift_and_the_evaluators_numbers_the_look_read():
    spec = traffic_spec()
    drift = {"drift": [{"model": "support-bot", "cohort": "", "mmd2": 0.0061, "mmd_p_value": 0.002}]}
    evaluation = {"evaluation": {"judge": {"good": 30.0, "total": 60.0, "goodShare": 0.5}}}
    gathered = Gathered(readings={"input-drift": Reading("input-drift", 0.0061, detail=drift),
                                  "judged-good": Reading("judged-good", 0.5, detail=evaluation)},
                        feedback=ENOUGH_FEEDBACK)
    current = ImprovementLoopStatus()
    effects = look(spec, current, fold_outcomes(current, spec, (), None), gathered, NOW, loop="support-bot",
                   uid="uid-1", generation=1)
    signals = {s["name"]: s for s in effects.decision.evidence["signals"]}
    assert signals["input-drift"]["state"] == "Breached" and signals["input-drift"]["drift"] == drift["drift"]
    assert signals["judged-good"]["evaluation"] == evaluation["evaluation"]
    assert effects.decision.evidence["breached"] == ["input-drift", "judged-good"]
