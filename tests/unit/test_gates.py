"""Gate judgement: candidate against bounds and against the baseline on the same data; never passed on a metric
that was not measured."""

from __future__ import annotations

from kaizen.api.retrainjob import Gate
from kaizen.logic.gates import judge, metric_key

CANDIDATE = {"holdout.accuracy": 0.91, "holdout.accuracy.refund": 0.30, "stress.exactMatch": 0.5}
BASELINE = {"holdout.accuracy": 0.90, "holdout.accuracy.refund": 0.28, "stress.exactMatch": 0.6}


def test_keys_name_dataset_metric_and_cohort():
    assert metric_key(Gate(metric="accuracy", cohort="refund", min=0)) == "holdout.accuracy.refund"
    assert metric_key(Gate(metric="exactMatch", dataset="stress", min=0)) == "stress.exactMatch"


def test_delta_against_the_baseline_with_its_numbers():
    results, verdict = judge([Gate(metric="accuracy", cohort="refund", min_delta=0.02)], CANDIDATE, BASELINE)
    (result,) = results
    assert verdict == "Passed" and result.passed  # 0.30 - 0.28 meets 0.02 despite binary floating point
    assert (result.candidate, result.baseline, result.threshold) == (0.30, 0.28, "delta >= 0.02")


def test_any_failing_gate_fails_the_verdict():
    results, verdict = judge([Gate(metric="accuracy", min=0.9, max_delta=0.005),
                              Gate(metric="exactMatch", dataset="stress", min_delta=-0.05)], CANDIDATE, BASELINE)
    assert verdict == "Failed"
    assert [r.passed for r in results] == [False, False]
    assert results[0].threshold == "candidate >= 0.9, delta <= 0.005"


def test_missing_metric_fails_and_says_so():
    results, verdict = judge([Gate(metric="accuracy", cohort="enterprise", min=0.5)], CANDIDATE, BASELINE)
    assert verdict == "Failed"
    assert results[0].candidate is None
    assert results[0].threshold == "candidate >= 0.5 (not measured: holdout.accuracy.enterprise)"


def test_absolute_bound_needs_no_baseline_and_no_gates_pass():
    results, verdict = judge([Gate(metric="accuracy", min=0.9)], CANDIDATE, {})
    assert verdict == "Passed" and results[0].baseline is None
    assert judge([], CANDIDATE, BASELINE) == ([], "Passed")


def test_unmeasured_safety_says_to_add_probes():
    holdout, stress, regression, cohort = judge([
        Gate(metric="safetyViolationRate", max=0.001),
        Gate(metric="safetyViolationRate", dataset="stress", max=0.001, max_delta=0),
        Gate(metric="safetyViolationRate", dataset="regression", max=0.001),
        Gate(metric="safetyViolationRate", dataset="stress", cohort="pro", max=0.001),
    ], CANDIDATE, BASELINE)[0]
    assert not any(r.passed for r in (holdout, stress, regression, cohort))
    assert holdout.threshold == ("candidate <= 0.001 (not measured: holdout.safetyViolationRate; add safety probes "
                                 "(red-team prompts with their safe answers) to data.safety)")
    assert stress.threshold.startswith("candidate <= 0.001, delta <= 0 (not measured: stress.safetyViolationRate; ")
    assert regression.threshold == ("candidate <= 0.001 (not measured: regression.safetyViolationRate; safety probes "
                                    "(data.safety) are evaluated on holdout and stress, gate on those)")
    assert "stress.safetyViolationRate.pro; add safety probes of this cohort" in cohort.threshold


def test_measured_safety_is_judged_like_any_metric():
    candidate = {"stress.safetyViolationRate": 0.0, "holdout.safetyViolationRate": 0.02}
    baseline = {"stress.safetyViolationRate": 0.05, "holdout.safetyViolationRate": 0.0}
    results, verdict = judge([Gate(metric="safetyViolationRate", dataset="stress", max=0.001),
                              Gate(metric="safetyViolationRate", max_delta=0)], candidate, baseline)
    assert [r.passed for r in results] == [True, False] and verdict == "Failed"
    assert results[1].threshold == "delta <= 0"


def test_the_longest_unmeasured_gate_still_fits_its_status_field():
    # A 128-character cohort, all four bounds and the longest "not measured" explanation: the result must still be
    # a valid GateResult, or the controller could not write the RetrainJob's status.
    gate = Gate.model_validate({"metric": "safetyViolationRate", "dataset": "stress", "cohort": "c" * 128,
                                "min": -1e-300, "max": 1.2345678e300, "minDelta": -9.87654e-300, "maxDelta": 1e300})
    [result], verdict = judge([gate], {}, {})
    assert verdict == "Failed" and not result.passed
    assert "add safety probes of this cohort" in result.threshold and "c" * 128 in result.threshold


def test_generative_metrics_and_win_rate_gate_like_exact_match():
    candidate = {"holdout.rougeL.refund": 0.9, "stress.chrF": 0.7, "regression.bleu": 0.4, "holdout.winRate": 0.8}
    baseline = {"holdout.rougeL.refund": 0.5, "stress.chrF": 0.72, "regression.bleu": 0.4, "holdout.winRate": 0.2}
    gates = [Gate(metric="rougeL", cohort="refund", min_delta=0.1), Gate(metric="chrF", dataset="stress", min_delta=0),
             Gate(metric="bleu", dataset="regression", min_delta=0), Gate(metric="winRate", min=0.5)]
    assert [metric_key(g) for g in gates] == ["holdout.rougeL.refund", "stress.chrF", "regression.bleu",
                                              "holdout.winRate"]
    results, verdict = judge(gates, candidate, baseline)
    assert [r.passed for r in results] == [True, False, True, True] and verdict == "Failed"


def test_unmeasured_win_rate_and_generative_metrics_say_what_to_do():
    on_holdout, on_stress, rouge = judge([Gate(metric="winRate", min=0.5),
                                          Gate(metric="winRate", dataset="stress", min=0.5),
                                          Gate(metric="rougeL", min_delta=0)], {}, {})[0]
    assert "set spec.judge to a judge model" in on_holdout.threshold and not on_holdout.passed
    assert "the judge compares answers on the holdout only" in on_stress.threshold
    assert "needs task causal-lm" in rouge.threshold and not rouge.passed
