"""Semantic validation: what the CRD schema cannot check, judged before a spec is acted on.

The API server already enforces types, bounds, enums and the CEL rules, so a spec that reaches the operator is
usually well-formed; what is left is meaning. A problem found here becomes the ``InvalidSpec`` condition with a
message naming the field, never an exception that kopf would retry forever.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from kaizen.api import ResourceKind
from kaizen.api.common import parse_duration
from kaizen.api.improvementloop import ImprovementLoopSpec
from kaizen.api.retrainjob import RetrainJobSpec
from kaizen.api.rollout import RolloutSpec, RolloutTemplate
from kaizen.logic.conditions import Event, remove_condition, set_condition
from kaizen.logic.effects import Effects

PLACEHOLDER = re.compile(r"\{\{\s*([^}]*?)\s*\}\}")
#: Placeholders a signal query may use (filled in by the loop).
SIGNAL_PLACEHOLDERS = frozenset({"namespace", "target", "version"})
#: Placeholders an analysis query may use (filled in per track, per interval).
ANALYSIS_PLACEHOLDERS = SIGNAL_PLACEHOLDERS | {"track", "window"}


class InvalidSpec(ValueError):
    """A spec that cannot be acted on; ``problems`` are ``field: what is wrong`` lines."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def parse_spec(resource: ResourceKind, spec: dict[str, Any], name: str | None = None) -> BaseModel:
    """Parse and judge a spec (and the object's ``name``, when given), raising :class:`InvalidSpec` with every
    problem found.

    The API server checks the name's length at admission (a CEL rule); an object created before that rule existed
    may still have a longer one, and pass it here so that it is reported instead of failing every child create.
    """
    name_problems = []
    if name is not None and len(name) > resource.max_name_length:
        name_problems.append(f"metadata.name: {len(name)} characters, but {resource.name_message}; recreate it "
                             "under a shorter name")
    try:
        model = resource.spec.model_validate(spec)
    except ValidationError as error:
        raise InvalidSpec(name_problems + [_describe(e) for e in error.errors()]) from None
    problems = name_problems + list(semantic_problems(model))
    if problems:
        raise InvalidSpec(problems)
    return model


def judge(resource: ResourceKind, spec: dict[str, Any], *, name: str | None, status: dict[str, Any],
          generation: int | None, now: datetime) -> tuple[BaseModel | None, Effects]:
    """The spec handler's judgement of an object: the parsed spec (None when it cannot be acted on), and its effects:
    ``observedGeneration`` and the ``Ready`` / ``InvalidSpec`` conditions, and a Warning Event naming every problem
    when it is invalid."""
    conditions = list(status.get("conditions") or [])
    events: tuple[Event, ...] = ()
    parsed: BaseModel | None
    try:
        parsed = parse_spec(resource, spec, name)
    except InvalidSpec as invalid:
        message = "; ".join(invalid.problems)
        conditions = set_condition(conditions, type="InvalidSpec", status="True", reason="SpecInvalid",
                                   message=message, now=now, generation=generation)
        conditions = set_condition(conditions, type="Ready", status="False", reason="InvalidSpec",
                                   message="The spec cannot be acted on; see the InvalidSpec condition.",
                                   now=now, generation=generation)
        events, parsed = (Event("Warning", "InvalidSpec", message),), None
    else:
        conditions = remove_condition(conditions, "InvalidSpec")
        conditions = set_condition(conditions, type="Ready", status="True", reason="SpecAccepted",
                                   message=f"The {resource.kind} spec is valid.", now=now, generation=generation)
    return parsed, Effects(status={"observedGeneration": generation, "conditions": conditions}, events=events)


def _describe(error: Any) -> str:
    location = "spec" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
    return f"{location}: {error['msg']}"


def semantic_problems(spec: BaseModel) -> Iterator[str]:
    """Every meaning-level problem of a spec, as ``field: message``."""
    if isinstance(spec, ImprovementLoopSpec):
        for i, signal in enumerate(spec.signals):
            yield from _placeholders(signal.query, f"spec.signals[{i}].query", SIGNAL_PLACEHOLDERS)
        if spec.model is None and spec.retrain.base_model is None:
            yield ("spec.model: neither spec.model nor spec.retrain.baseModel is set, so there is no baseline to "
                   "retrain from or compare against; set the model served now")
        yield from _gate_problems(spec.gates, "spec.gates")
        yield from _rollout_problems(spec.rollout, "spec.rollout")
    elif isinstance(spec, RetrainJobSpec):
        yield from _gate_problems(spec.gates, "spec.gates")
        targeted = spec.data.targeted_ratio > 0
        if targeted and spec.feedback is None and not any(spec.targets.model_dump().values()):
            yield (f"spec.feedback: data.targetedRatio is {spec.data.targeted_ratio:g}, but with neither "
                   "spec.feedback nor spec.targets there can be no targeted rows; set one, or data.targetedRatio: 0")
    elif isinstance(spec, RolloutSpec):
        yield from _rollout_problems(spec, "spec")


def _placeholders(query: str, field: str, allowed: frozenset[str]) -> Iterator[str]:
    for name in PLACEHOLDER.findall(query):
        if name not in allowed:
            yield f"{field}: unknown placeholder {{{{{name}}}}}; known: {', '.join(sorted(allowed))}"


def _gate_problems(gates: list, field: str) -> Iterator[str]:
    for i, gate in enumerate(gates):
        if gate.metric == "cohortGap" and gate.cohort:
            yield (f"{field}[{i}].cohort: cohortGap is the largest gap between cohorts and cannot be restricted to "
                   f"one cohort; remove cohort or use another metric")


def _rollout_problems(rollout: RolloutTemplate, field: str) -> Iterator[str]:
    analysis = rollout.analysis
    interval = parse_duration(analysis.interval)
    analysed = [i for i, step in enumerate(rollout.steps) if step.analysis]
    if analysed and not analysis.metrics:
        yield f"{field}.analysis.metrics: steps {analysed} analyse the canary, but no analysis metric is defined"
    for i, step in enumerate(rollout.steps):
        if step.analysis and parse_duration(step.analysis.duration) < interval:
            yield (f"{field}.steps[{i}].analysis.duration: {step.analysis.duration} is shorter than the "
                   f"analysis interval {analysis.interval}, so the canary would never be looked at")
    for i, metric in enumerate(analysis.metrics):
        if metric.ratio:
            queries = [metric.ratio.good, metric.ratio.total]
        elif metric.threshold:
            queries = [metric.threshold.query]
        else:  # the API server's CEL rule says so too; a spec that bypassed it must not raise here
            yield f"{field}.analysis.metrics[{i}]: exactly one of ratio, threshold must be set"
            continue
        for query in queries:
            yield from _placeholders(query, f"{field}.analysis.metrics[{i}]", ANALYSIS_PLACEHOLDERS)
        if "track" not in {name for query in queries for name in PLACEHOLDER.findall(query)}:
            yield (f"{field}.analysis.metrics[{i}]: the queries do not use {{{{track}}}}, so stable and canary would "
                   "read the same numbers")
