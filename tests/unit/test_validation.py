"""Semantic validation: what the schema cannot catch is reported with the field and what to do."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from kaizen.api import IMPROVEMENT_LOOP, RETRAIN_JOB, ROLLOUT
from kaizen.logic.validation import InvalidSpec, parse_spec

EXAMPLES = Path(__file__).parents[2] / "examples"


def example(name):
    return copy.deepcopy(yaml.safe_load((EXAMPLES / name).read_text())["spec"])


def problems(resource, spec):
    with pytest.raises(InvalidSpec) as raised:
        parse_spec(resource, spec)
    return raised.value.problems


def test_valid_examples_have_no_problems():
    parse_spec(IMPROVEMENT_LOOP, example("improvementloop.yaml"))
    parse_spec(IMPROVEMENT_LOOP, example("improvementloop-minimal.yaml"))
    parse_spec(RETRAIN_JOB, example("retrainjob.yaml"))
    parse_spec(ROLLOUT, example("rollout.yaml"))


def test_unknown_placeholder_in_a_signal_names_the_field():
    spec = example("improvementloop.yaml")
    spec["signals"][1]["query"] = 'rate(x{deployment="{{taget}}"}[5m])'
    assert problems(IMPROVEMENT_LOOP, spec) == [
        "spec.signals[1].query: unknown placeholder {{taget}}; known: namespace, target, version"
    ]


def test_track_placeholder_is_for_analysis_only():
    spec = example("improvementloop.yaml")
    spec["signals"][0]["query"] = 'rate(x{track="{{track}}"}[5m])'
    assert "unknown placeholder {{track}}" in problems(IMPROVEMENT_LOOP, spec)[0]


def test_loop_without_any_baseline_is_invalid():
    spec = example("improvementloop.yaml")
    del spec["model"]
    [problem] = problems(IMPROVEMENT_LOOP, spec)
    assert problem.startswith("spec.model: neither spec.model nor spec.retrain.baseModel is set")


def test_cohort_gap_cannot_be_restricted_to_a_cohort():
    spec = example("retrainjob.yaml")
    spec["gates"].append({"metric": "cohortGap", "cohort": "refund", "max": 0.1})
    [problem] = problems(RETRAIN_JOB, spec)
    assert problem.startswith("spec.gates[2].cohort: cohortGap is the largest gap")


def test_analysis_shorter_than_its_interval_is_invalid():
    spec = example("rollout.yaml")
    spec["analysis"]["interval"] = "15m"
    found = problems(ROLLOUT, spec)
    assert found == [
        "spec.steps[1].analysis.duration: 10m is shorter than the analysis interval 15m, so the canary would never "
        "be looked at"
    ]


def test_analysis_steps_need_metrics():
    spec = example("rollout.yaml")
    spec["analysis"]["metrics"] = []
    assert problems(ROLLOUT, spec) == [
        "spec.analysis.metrics: steps [1, 3] analyse the canary, but no analysis metric is defined"
    ]


def test_analysis_queries_must_distinguish_tracks():
    spec = example("rollout.yaml")
    spec["analysis"]["metrics"][0]["ratio"] = {"good": "sum(ok)", "total": "sum(all)"}
    [problem] = problems(ROLLOUT, spec)
    assert problem.startswith("spec.analysis.metrics[0]: the queries do not use {{track}}")


def test_schema_level_errors_name_the_field_when_the_api_server_was_bypassed():
    spec = example("rollout.yaml")
    spec["steps"][0]["setWeight"] = 130
    spec["analysis"]["alpha"] = "often"
    found = problems(ROLLOUT, spec)
    assert any(p.startswith("spec.steps[0].setWeight: Input should be less than or equal to 100") for p in found)
    assert any(p.startswith("spec.analysis.alpha: Input should be a valid number") for p in found)


def test_an_analysis_metric_without_ratio_or_threshold_is_a_problem_when_the_api_server_was_bypassed():
    # The API server's CEL rule (exactly one of ratio, threshold) is the only check of this; without it the
    # semantic pass read metric.threshold.query off None and raised instead of reporting the field.
    spec = example("rollout.yaml")
    spec["analysis"]["metrics"][0] = {"name": "nothing"}
    assert problems(ROLLOUT, spec) == ["spec.analysis.metrics[0]: exactly one of ratio, threshold must be set"]


def test_every_problem_is_reported_at_once():
    spec = example("improvementloop.yaml")
    spec["signals"][0]["query"] = "{{a}}"
    spec["signals"][1]["query"] = "{{b}}"
    assert len(problems(IMPROVEMENT_LOOP, spec)) == 2


def test_a_targeted_mix_needs_something_to_target():
    spec = example("retrainjob.yaml")
    del spec["feedback"]
    del spec["targets"]
    [problem] = problems(RETRAIN_JOB, spec)
    assert problem.startswith("spec.feedback: data.targetedRatio is 0.5, but with neither spec.feedback nor "
                              "spec.targets there can be no targeted rows")
    spec["data"]["targetedRatio"] = 0
    parse_spec(RETRAIN_JOB, spec)


# Issue 13: specs the schema accepted but the operator could not act on. Stored before the schema had these bounds,
# such a spec must become InvalidSpec with a message, never an exception.


def test_a_duration_too_long_to_represent_is_a_problem_not_an_overflow():
    spec = example("rollout.yaml")
    spec["analysis"]["interval"] = "9999999999999999999999999999999h"
    [problem] = problems(ROLLOUT, spec)
    assert problem.startswith("spec.analysis.interval:"), problem


@pytest.mark.parametrize("field, value, message", [
    (("interval",), "0s", "must be at least 1s and at most 24h"),
    (("rollout", "analysis", "interval"), "0ms", "must be at least 1s and at most 24h"),
    (("policy", "cooldown"), "9000h", "must be at most 8760h"),
    (("retrain", "activeDeadline"), "0.5s", "must be at least 1s and at most 720h"),
])
def test_durations_out_of_their_bounds_are_problems(field, value, message):
    spec = example("improvementloop.yaml")
    node = spec
    for key in field[:-1]:
        node = node.setdefault(key, {})
    node[field[-1]] = value
    [problem] = problems(IMPROVEMENT_LOOP, spec)
    assert problem.startswith("spec." + ".".join(field)) and message in problem, problem


@pytest.mark.parametrize("resource, file, limit", [
    (IMPROVEMENT_LOOP, "improvementloop.yaml", 40), (RETRAIN_JOB, "retrainjob.yaml", 55), (ROLLOUT, "rollout.yaml", 63),
])
def test_a_name_too_long_for_its_children_is_a_problem(resource, file, limit):
    parse_spec(resource, example(file), name="n" * limit)
    with pytest.raises(InvalidSpec) as raised:
        parse_spec(resource, example(file), name="n" * (limit + 1))
    [problem] = raised.value.problems
    assert problem.startswith(f"metadata.name: {limit + 1} characters, but the name of a {resource.kind} has at most "
                              f"{limit} characters"), problem


@pytest.mark.parametrize("change, field, message", [
    (lambda s: s.update(tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule",
                                      "tolerationSeconds": 60}]),
     "spec.tolerations[0]", "only be set with effect NoExecute"),
    (lambda s: s.update(tolerations=[{"value": "x"}]), "spec.tolerations[0]", "operator must be Exists"),
    (lambda s: s.update(tolerations=[{"key": "k", "operator": "Exists", "value": "x"}]), "spec.tolerations[0]",
     "value must be empty"),
    (lambda s: s.update(nodeSelector={"zone": "z\u00fcrich"}), "spec.nodeSelector.zone", "should match pattern"),
    (lambda s: s.update(nodeSelector={"z\u00f6ne": "a"}), "spec.nodeSelector", "is not a label key"),
    (lambda s: s.update(nodeSelector={"p" * 254 + "/zone": "a"}), "spec.nodeSelector", "at most 253"),
    (lambda s: s.update(queueName="q" * 64), "spec.queueName", "at most 63 characters"),
    (lambda s: s.update(candidateVersion="v5."), "spec.candidateVersion", "should match pattern"),
])
def test_job_fields_a_job_cannot_have_are_problems(change, field, message):
    spec = example("retrainjob.yaml")
    change(spec)
    [problem] = problems(RETRAIN_JOB, spec)
    assert problem.startswith(field) and message in problem, problem
