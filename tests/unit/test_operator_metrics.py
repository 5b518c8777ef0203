"""The operator's metrics: the pure derivation from status (kaizen.logic.operator_metrics), and the exporter that
keeps them per object and drops them with it (kaizen.metrics.exporter, on a registry of the test's own)."""

from __future__ import annotations

import kopf
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kaizen.logic import operator_metrics as om
from kaizen.metrics import exporter as exporter_module
from kaizen.metrics.exporter import Exporter, bind_address


def meta(kind, name, loop="bot", namespace="team-a", uid="u1"):
    labels = {} if kind == "ImprovementLoop" else {"kaizen.dev/loop": loop}
    return {"namespace": namespace, "name": name, "uid": uid, "labels": labels}


def values(samples):
    return {(s.name, s.labels): s.value for s in samples}


def labels(**items):
    return tuple(sorted(items.items()))


LOOP_SPEC = {"signals": [{"name": "error-rate", "query": "q", "max": 0.05}], "policy": {"gpuHoursPerWeek": 8}}
LOOP_STATUS = {
    "phase": "Retraining",
    "signals": [{"name": "error-rate", "value": 0.3, "state": "Breached"}],
    "budget": {"retrains": 1, "gpuHours": 0.5},
    "model": {"version": "v1", "uri": "s3://m/v1"},
    "candidate": {"version": "v2", "uri": "s3://m/v2", "retrainJob": "bot-retrain-abc"},
    "decisions": [
        {"id": "bot-20261201T100005-2", "time": "2026-12-01T10:00:05Z", "action": "Retrain", "reason": "breached"},
        {"id": "bot-20261201T100000-1", "time": "2026-12-01T10:00:00Z", "action": "Wait", "reason": "no data"},
    ],
}


def test_a_loop_shows_its_phase_signals_budgets_and_models():
    got = values(om.gauges("ImprovementLoop", meta("ImprovementLoop", "bot"), LOOP_SPEC, LOOP_STATUS))
    ids = {"namespace": "team-a", "loop": "bot"}
    phases = {dict(k[1])["phase"]: v for k, v in got.items() if k[0] == "kaizen_loop_phase"}
    assert phases == {p: (1.0 if p == "Retraining" else 0.0) for p in om.LOOP_PHASES}
    assert got[("kaizen_loop_signal_value", labels(**ids, signal="error-rate"))] == 0.3
    assert got[("kaizen_loop_signal_state", labels(**ids, signal="error-rate", state="Breached"))] == 1
    assert got[("kaizen_loop_signal_state", labels(**ids, signal="error-rate", state="Healthy"))] == 0
    assert got[("kaizen_loop_signal_threshold", labels(**ids, signal="error-rate", bound="max"))] == 0.05
    assert ("kaizen_loop_signal_threshold", labels(**ids, signal="error-rate", bound="min")) not in got
    # Used against the limits; the retrain limit is the policy's default (3) where the spec leaves it out.
    assert got[("kaizen_loop_budget_used", labels(**ids, budget="gpu_hours"))] == 0.5
    assert got[("kaizen_loop_budget_limit", labels(**ids, budget="gpu_hours"))] == 8
    assert got[("kaizen_loop_budget_used", labels(**ids, budget="retrains"))] == 1
    assert got[("kaizen_loop_budget_limit", labels(**ids, budget="retrains"))] == 3
    assert got[("kaizen_loop_model_info", labels(**ids, role="served", version="v1"))] == 1
    assert got[("kaizen_loop_model_info", labels(**ids, role="candidate", version="v2"))] == 1


def test_a_signal_without_data_has_no_value_but_its_state():
    status = {"signals": [{"name": "error-rate", "state": "Unknown"}]}
    got = values(om.gauges("ImprovementLoop", meta("ImprovementLoop", "bot"), LOOP_SPEC, status))
    assert not [k for k in got if k[0] == "kaizen_loop_signal_value"]
    assert got[("kaizen_loop_signal_state", labels(namespace="team-a", loop="bot", signal="error-rate",
                                                  state="Unknown"))] == 1


def test_new_decisions_are_counted_once_by_action_and_history_never():
    loop = meta("ImprovementLoop", "bot")
    counted = om.progress("ImprovementLoop", {"decisions": LOOP_STATUS["decisions"][1:]})  # seen: the Wait
    added, counted = om.increments("ImprovementLoop", loop, counted, LOOP_STATUS)
    assert [(s.name, dict(s.labels)["action"], s.value) for s in added] == [("kaizen_loop_decisions", "Retrain", 1)]
    assert om.increments("ImprovementLoop", loop, counted, LOOP_STATUS)[0] == []
    # The log is bounded: the oldest entry falls out as a new one comes in; only the new one counts.
    newer = {"decisions": [{"id": "bot-20261201T100010-3", "action": "RollOut"}, LOOP_STATUS["decisions"][0]]}
    added, _ = om.increments("ImprovementLoop", loop, counted, newer)
    assert [dict(s.labels)["action"] for s in added] == ["RollOut"]


def test_a_look_on_a_cached_status_older_than_the_last_write_counts_nothing_twice():
    loop = meta("ImprovementLoop", "bot")
    older = {"decisions": LOOP_STATUS["decisions"][1:]}
    counted = om.progress("ImprovementLoop", older)
    added, counted = om.increments("ImprovementLoop", loop, counted, LOOP_STATUS)  # the look that wrote Retrain
    assert len(added) == 1
    _, counted = om.increments("ImprovementLoop", loop, counted, older)  # the cache has not seen that write yet
    assert om.increments("ImprovementLoop", loop, counted, LOOP_STATUS)[0] == []  # now it has: nothing new


def test_a_retrain_counts_its_gpu_seconds_as_they_grow_and_its_outcome_once():
    job = meta("RetrainJob", "bot-retrain-abc")
    counted = om.progress("RetrainJob", {"phase": "Pending"})
    added, counted = om.increments("RetrainJob", job, counted, {"phase": "Training", "gpuSeconds": 30})
    assert values(added) == {("kaizen_retrain_gpu_seconds", labels(namespace="team-a", loop="bot")): 30}
    done = {"phase": "Succeeded", "verdict": "Passed", "gpuSeconds": 45}
    added, counted = om.increments("RetrainJob", job, counted, done)
    assert values(added) == {("kaizen_retrain_gpu_seconds", labels(namespace="team-a", loop="bot")): 15,
                             ("kaizen_retrains", labels(namespace="team-a", loop="bot", outcome="Passed")): 1}
    assert om.increments("RetrainJob", job, counted, done)[0] == []
    # A job the operator first sees finished (after a restart) counts nothing again.
    assert om.increments("RetrainJob", job, om.progress("RetrainJob", done), done)[0] == []


@pytest.mark.parametrize(("status", "outcome"), [
    ({"phase": "Succeeded", "verdict": "Failed"}, "GatesFailed"), ({"phase": "Failed"}, "Failed"),
])
def test_a_retrain_that_fails_is_counted_by_how(status, outcome):
    added, _ = om.increments("RetrainJob", meta("RetrainJob", "j"), om.progress("RetrainJob", {}), status)
    assert [dict(s.labels)["outcome"] for s in added if s.name == "kaizen_retrains"] == [outcome]


def test_a_retrainjob_shows_its_phase_and_gpu_time():
    got = values(om.gauges("RetrainJob", meta("RetrainJob", "bot-retrain-abc"), {},
                           {"phase": "Training", "gpuSeconds": 12}))
    ids = {"namespace": "team-a", "retrainjob": "bot-retrain-abc", "loop": "bot"}
    assert got[("kaizen_retrainjob_phase", labels(**ids, phase="Training"))] == 1
    assert got[("kaizen_retrainjob_phase", labels(**ids, phase="Pending"))] == 0
    assert got[("kaizen_retrainjob_gpu_seconds", labels(**ids))] == 12


def record(time, verdict, stable, canary):
    return {"time": time, "step": 1, "weight": 50, "verdict": verdict, "metrics": [
        {"name": "success-rate", "verdict": verdict, "stable": {"value": stable}, "canary": {"value": canary},
         "delta": canary - stable, "ciLow": -0.02, "ciHigh": 0.01}]}


ROLLOUT_SPEC = {"steps": [{"setWeight": 50}, {"analysis": {"duration": "2s"}}, {"setWeight": 100}],
                "analysis": {"metrics": [{"name": "success-rate"}]}}


def test_a_rollout_shows_its_step_weights_and_newest_analysis_canary_against_stable():
    status = {"phase": "Progressing", "currentStep": 1, "canaryWeight": 50, "achievedWeight": 50.0,
              "analysis": [record("2026-12-01T10:00:02Z", "Pass", 0.99, 0.98),
                           record("2026-12-01T10:00:01Z", "Inconclusive", 0.5, 0.4)]}
    got = values(om.gauges("Rollout", meta("Rollout", "bot-rollout-abc"), ROLLOUT_SPEC, status))
    ids = {"namespace": "team-a", "rollout": "bot-rollout-abc", "loop": "bot"}
    assert got[("kaizen_rollout_phase", labels(**ids, phase="Progressing"))] == 1
    assert (got[("kaizen_rollout_step", labels(**ids))], got[("kaizen_rollout_steps", labels(**ids))]) == (1, 3)
    assert got[("kaizen_rollout_canary_weight", labels(**ids))] == 50
    assert got[("kaizen_rollout_achieved_weight", labels(**ids))] == 50
    metric = {**ids, "metric": "success-rate"}
    assert got[("kaizen_rollout_analysis_value", labels(**metric, track="stable"))] == 0.99
    assert got[("kaizen_rollout_analysis_value", labels(**metric, track="canary"))] == 0.98
    assert got[("kaizen_rollout_analysis_delta", labels(**metric))] == pytest.approx(-0.01)
    assert got[("kaizen_rollout_analysis_ci_low", labels(**metric))] == -0.02
    assert got[("kaizen_rollout_analysis_ci_high", labels(**metric))] == 0.01


def test_analysis_verdicts_are_counted_per_metric_once_and_the_end_once():
    rollout = meta("Rollout", "bot-rollout-abc")
    first = {"phase": "Progressing", "analysis": [record("2026-12-01T10:00:01Z", "Inconclusive", 0.5, 0.4)]}
    counted = om.progress("Rollout", first)
    later = {"phase": "Promoted", "analysis": [record("2026-12-01T10:00:03Z", "Pass", 0.99, 0.99),
                                               record("2026-12-01T10:00:02Z", "Pass", 0.99, 0.98), *first["analysis"]]}
    added, counted = om.increments("Rollout", rollout, counted, later)
    ids = {"namespace": "team-a", "loop": "bot"}
    assert values(added) == {("kaizen_rollout_analysis_verdicts", labels(**ids, metric="success-rate",
                                                                         verdict="Pass")): 1,
                             ("kaizen_rollouts", labels(**ids, outcome="Promoted")): 1}
    assert [s.name for s in added].count("kaizen_rollout_analysis_verdicts") == 2
    assert om.increments("Rollout", rollout, counted, later)[0] == []


def test_counters_never_carry_a_childs_name_a_decision_id_or_a_message():
    samples = [*om.zeros("ImprovementLoop", meta("ImprovementLoop", "bot"), LOOP_SPEC),
               *om.zeros("RetrainJob", meta("RetrainJob", "bot-retrain-abc"), {}),
               *om.zeros("Rollout", meta("Rollout", "bot-rollout-abc"), ROLLOUT_SPEC),
               *om.increments("ImprovementLoop", meta("ImprovementLoop", "bot"), om.Progress(), LOOP_STATUS)[0]]
    keys = {k for s in samples for k, _ in s.labels}
    assert keys == {"namespace", "loop", "action", "outcome", "metric", "verdict"}
    every = {v for s in samples for _, v in s.labels}
    assert not every & {"bot-retrain-abc", "bot-rollout-abc", "bot-20261201T100005-2", "breached"}
    # Every counter exists at 0 from the start, over enumerations of the API, so increase() sees the first event.
    assert len([s for s in samples if s.name == "kaizen_loop_decisions" and s.value == 0]) == len(om.ACTIONS)
    assert len([s for s in samples if s.name == "kaizen_rollout_analysis_verdicts"]) == len(om.VERDICTS)


# ------------------------------------------------------------------------------------------------ the exporter


def scrape(registry):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(generate_latest(registry).decode())
            for s in family.samples}


def loop_body(status=None, uid="u1"):
    return {"metadata": meta("ImprovementLoop", "bot", uid=uid), "spec": LOOP_SPEC, "status": status or {}}


def test_the_exporter_times_looks_counts_what_they_write_and_forgets_deleted_objects(monkeypatch):
    registry, live = CollectorRegistry(), {("team-a", "bot")}
    exporter = Exporter(registry)

    def look(obj, patch, logger, retry):
        patch.status["phase"] = "Retraining"
        patch.status["decisions"] = LOOP_STATUS["decisions"]
        return None

    instrumented = exporter.instrumented("ImprovementLoop", look, live=lambda ns, name: (ns, name) in live)
    instrumented(loop_body({"phase": "Observing", "decisions": LOOP_STATUS["decisions"][1:]}), kopf.Patch(), None, 0)
    got = scrape(registry)
    ids = {"namespace": "team-a", "loop": "bot"}
    assert got[("kaizen_reconcile_total", labels(kind="ImprovementLoop", result="success"))] == 1
    assert got[("kaizen_reconcile_duration_seconds_count", labels(kind="ImprovementLoop", result="success"))] == 1
    assert got[("kaizen_loop_phase", labels(**ids, phase="Retraining"))] == 1
    assert got[("kaizen_loop_decisions_total", labels(**ids, action="Retrain"))] == 1
    assert got[("kaizen_loop_decisions_total", labels(**ids, action="Wait"))] == 0  # seen before: history

    # Deleted: its scheduler no longer runs it; once the grace for a first look is over, its series go.
    live.clear()
    monkeypatch.setattr(exporter_module, "GRACE_SECONDS", 0.0)
    got = scrape(registry)
    assert not [k for k in got if k[0].startswith("kaizen_loop_")]
    assert got[("kaizen_reconcile_total", labels(kind="ImprovementLoop", result="success"))] == 1


def test_a_failed_look_is_counted_by_the_class_of_its_cause():
    registry = CollectorRegistry()
    exporter = Exporter(registry)

    def look(obj, patch, logger, retry):
        try:
            raise ConnectionResetError("the API server went away")
        except ConnectionResetError as error:
            raise kopf.TemporaryError("retrying", delay=1) from error

    with pytest.raises(kopf.TemporaryError):
        exporter.instrumented("Rollout", look, live=lambda ns, name: True)(
            {"metadata": meta("Rollout", "r"), "spec": {}, "status": {}}, kopf.Patch(), None, 0)
    got = scrape(registry)
    assert got[("kaizen_reconcile_total", labels(kind="Rollout", result="error"))] == 1
    assert got[("kaizen_reconcile_errors_total", labels(kind="Rollout", error="ConnectionResetError"))] == 1


def test_an_object_created_again_under_its_name_starts_afresh():
    registry = CollectorRegistry()
    exporter = Exporter(registry)
    done = {"phase": "Succeeded", "verdict": "Passed", "gpuSeconds": 10}
    body = {"metadata": meta("RetrainJob", "j", uid="first"), "spec": {}, "status": {"phase": "Training"}}
    exporter.wrote("RetrainJob", body, done, live=lambda ns, name: True)
    exporter.wrote("RetrainJob", {**body, "metadata": meta("RetrainJob", "j", uid="second")}, done,
                   live=lambda ns, name: True)
    got = scrape(registry)
    assert got[("kaizen_retrains_total", labels(namespace="team-a", loop="bot", outcome="Passed"))] == 2
    assert got[("kaizen_retrain_gpu_seconds_total", labels(namespace="team-a", loop="bot"))] == 20
    assert len([k for k in got if k[0] == "kaizen_retrainjob_gpu_seconds"]) == 1


@pytest.mark.parametrize(("value", "parsed"), [(":8081", ("0.0.0.0", 8081)), ("127.0.0.1:9", ("127.0.0.1", 9)),
                                               ("[::1]:8081", ("::1", 8081))])
def test_bind_address(value, parsed):
    assert bind_address(value) == parsed


@pytest.mark.parametrize("value", ["8081", "host:", ":0", ":70000", "a:b"])
def test_bad_bind_address_says_what_is_expected(value):
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        bind_address(value)


def test_objects_gone_are_forgotten_by_looks_too_when_nobody_scrapes(monkeypatch):
    exporter = Exporter(CollectorRegistry())
    monkeypatch.setattr(exporter_module, "GRACE_SECONDS", 0.0)
    monkeypatch.setattr(exporter_module, "PRUNE_SECONDS", 0.0)
    for index in range(3):
        body = {"metadata": meta("RetrainJob", f"j{index}", uid=f"u{index}"), "spec": {}, "status": {}}
        exporter.wrote("RetrainJob", body, {"phase": "Training"}, live=lambda ns, name: False)
    assert len(exporter._objects) == 1  # each look forgot the job before it (deleted), none was scraped
