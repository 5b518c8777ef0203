"""The operator's own Prometheus metrics, derived from the status its looks write. Pure, no I/O.

:mod:`kaizen.metrics.exporter` calls these at one place, after every look of every kind: status is observed state,
rebuilt each look and written once, so what the metrics say is what ``kubectl get`` says, and a restarted operator
says the same. Two halves:

- :func:`gauges`: the samples of one object as it stands (a loop's phase, signals, budgets and models; a RetrainJob's
  phase and GPU time; a Rollout's phase, step, weights and its newest analysis, canary against stable). They exist
  while the object does.
- :func:`progress` and :func:`increments`: what a look added (decisions, a finished retrain and its GPU-seconds,
  analysis verdicts, a finished rollout), counted once per object however often a look sees it, and never again
  for what the object held before the operator first saw it (a restart does not count history twice).

Labels stay bounded (argo-rollouts#3929 is what unbounded ones cost): per-object gauges carry the object's name and
leave with it; counters carry the namespace and the loop, never a RetrainJob's or Rollout's name (one per retrain),
a decision id or a message; every other label takes its values from an enumeration of the API (phases, actions,
verdicts) or from the spec (signal and metric names, bounded by the schema).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, get_args

from kaizen.api.common import API_GROUP
from kaizen.api.improvementloop import LoopPhase, Policy, SignalState
from kaizen.api.retrainjob import RetrainPhase
from kaizen.api.rollout import AnalysisVerdict, RolloutPhase
from kaizen.logic.loop import Action

LOOP_PHASES: tuple[str, ...] = get_args(LoopPhase)
SIGNAL_STATES: tuple[str, ...] = get_args(SignalState)
RETRAIN_PHASES: tuple[str, ...] = get_args(RetrainPhase)
ROLLOUT_PHASES: tuple[str, ...] = get_args(RolloutPhase)
VERDICTS: tuple[str, ...] = get_args(AnalysisVerdict)
ACTIONS: tuple[str, ...] = get_args(Action)
#: How a RetrainJob ended: its gates passed, its gates failed (the candidate is not rolled out), or training failed.
RETRAIN_OUTCOMES = ("Passed", "GatesFailed", "Failed")
ROLLOUT_ENDS = ("Promoted", "RolledBack", "Aborted")
TRACKS = ("stable", "canary")
LOOP_LABEL = f"{API_GROUP}/loop"

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Sample:
    """One value of a metric family: ``name`` (without ``_total`` for counters), sorted ``labels``, ``value``."""

    name: str
    labels: Labels
    value: float


def sample(name: str, value: float, **labels: str) -> Sample:
    return Sample(name, tuple(sorted(labels.items())), float(value))


def loop_of(kind: str, meta: dict[str, Any]) -> str:
    """The loop an object belongs to: a loop itself, or its children's ``kaizen.dev/loop`` label ("" by hand)."""
    if kind == "ImprovementLoop":
        return str(meta.get("name") or "")
    return str((meta.get("labels") or {}).get(LOOP_LABEL) or "")


# ------------------------------------------------------------------------------------------------ gauges


def gauges(kind: str, meta: dict[str, Any], spec: dict[str, Any], status: dict[str, Any]) -> list[Sample]:
    """The samples of one object as it stands."""
    namespace, name, loop = str(meta.get("namespace") or ""), str(meta.get("name") or ""), loop_of(kind, meta)
    if kind == "ImprovementLoop":
        return _loop_gauges(namespace, loop, spec, status)
    if kind == "RetrainJob":
        ids = {"namespace": namespace, "retrainjob": name, "loop": loop}
        samples = _one_of("kaizen_retrainjob_phase", RETRAIN_PHASES, status.get("phase"), ids)
        samples.append(sample("kaizen_retrainjob_gpu_seconds", float(status.get("gpuSeconds") or 0), **ids))
        return samples
    if kind == "Rollout":
        return _rollout_gauges({"namespace": namespace, "rollout": name, "loop": loop}, spec, status)
    return []


def _one_of(name: str, values: tuple[str, ...], current: Any, labels: dict[str, str],
            key: str = "phase") -> list[Sample]:
    """Every value of an enumeration, 1 for the current one (as kube-state-metrics does): a panel or an alert
    selects ``== 1``, and a state that ends goes to 0 rather than vanishing."""
    return [sample(name, 1 if value == current else 0, **labels, **{key: value}) for value in values]


def _loop_gauges(namespace: str, loop: str, spec: dict[str, Any], status: dict[str, Any]) -> list[Sample]:
    ids = {"namespace": namespace, "loop": loop}
    samples = _one_of("kaizen_loop_phase", LOOP_PHASES, status.get("phase"), ids)
    for signal in status.get("signals") or []:
        labels = {**ids, "signal": str(signal.get("name"))}
        if signal.get("value") is not None:
            samples.append(sample("kaizen_loop_signal_value", signal["value"], **labels))
        samples += _one_of("kaizen_loop_signal_state", SIGNAL_STATES, signal.get("state"), labels, key="state")
    for signal in spec.get("signals") or []:
        for bound in ("min", "max"):
            if signal.get(bound) is not None:
                samples.append(sample("kaizen_loop_signal_threshold", signal[bound], **ids,
                                      signal=str(signal.get("name")), bound=bound))
    budget = status.get("budget") or {}
    samples.append(sample("kaizen_loop_budget_used", budget.get("retrains") or 0, **ids, budget="retrains"))
    samples.append(sample("kaizen_loop_budget_used", budget.get("gpuHours") or 0, **ids, budget="gpu_hours"))
    policy = _policy(spec)
    if policy is not None:
        samples.append(sample("kaizen_loop_budget_limit", policy.max_retrains_per_week, **ids, budget="retrains"))
        samples.append(sample("kaizen_loop_budget_limit", policy.gpu_hours_per_week, **ids, budget="gpu_hours"))
    for role, model in (("served", status.get("model")), ("candidate", status.get("candidate"))):
        if model and model.get("version"):
            samples.append(sample("kaizen_loop_model_info", 1, **ids, role=role, version=str(model["version"])))
    return samples


def _policy(spec: dict[str, Any]) -> Policy | None:
    """The spec's policy with its defaults, or None when it is invalid (the InvalidSpec condition says why)."""
    try:
        return Policy.model_validate(spec.get("policy") or {})
    except ValueError:
        return None


def _rollout_gauges(ids: dict[str, str], spec: dict[str, Any], status: dict[str, Any]) -> list[Sample]:
    samples = _one_of("kaizen_rollout_phase", ROLLOUT_PHASES, status.get("phase"), ids)
    samples.append(sample("kaizen_rollout_steps", len(spec.get("steps") or []), **ids))
    for name, key in (("kaizen_rollout_step", "currentStep"), ("kaizen_rollout_canary_weight", "canaryWeight"),
                      ("kaizen_rollout_achieved_weight", "achievedWeight")):
        if status.get(key) is not None:
            samples.append(sample(name, status[key], **ids))
    records = status.get("analysis") or []
    for result in (records[0].get("metrics") or []) if records else []:
        labels = {**ids, "metric": str(result.get("name"))}
        for track in TRACKS:
            value = (result.get(track) or {}).get("value")
            if value is not None:
                samples.append(sample("kaizen_rollout_analysis_value", value, **labels, track=track))
        for name, key in (("kaizen_rollout_analysis_delta", "delta"), ("kaizen_rollout_analysis_ci_low", "ciLow"),
                          ("kaizen_rollout_analysis_ci_high", "ciHigh")):
            if result.get(key) is not None:
                samples.append(sample(name, result[key], **labels))
    return samples


# ------------------------------------------------------------------------------------------------ counters


@dataclass(frozen=True)
class Progress:
    """What of one object has been counted: the decisions (id and time), the GPU-seconds, whether its end was
    counted (a RetrainJob's outcome, a Rollout's end), and the time of the newest analysis record counted."""

    decisions: frozenset[tuple[str, datetime | None]] = frozenset()
    gpu_seconds: float = 0.0
    ended: bool = False
    analysed: datetime | None = None


def progress(kind: str, status: dict[str, Any]) -> Progress:
    """All that ``status`` holds, as counted: the starting point for an object seen for the first time."""
    records = status.get("analysis") or []
    return Progress(
        decisions=_decisions(status),
        gpu_seconds=float(status.get("gpuSeconds") or 0),
        ended=_end(kind, status) is not None,
        analysed=max((t for t in (_time(r.get("time")) for r in records) if t), default=None),
    )


def increments(kind: str, meta: dict[str, Any], counted: Progress,
               status: dict[str, Any]) -> tuple[list[Sample], Progress]:
    """What ``status`` adds to what was ``counted``: the counter increments, and the progress counted now."""
    ids = {"namespace": str(meta.get("namespace") or ""), "loop": loop_of(kind, meta)}
    added: list[Sample] = []
    now = counted
    if kind == "ImprovementLoop":
        known = {decision_id for decision_id, _ in counted.decisions}
        new = [d for d in status.get("decisions") or [] if str(d.get("id")) not in known]
        added += [sample("kaizen_loop_decisions", 1, **ids, action=str(d.get("action"))) for d in reversed(new)]
        now = replace(now, decisions=_remembered(counted.decisions, _decisions(status)))
    gpu = float(status.get("gpuSeconds") or 0)
    if kind == "RetrainJob" and gpu > counted.gpu_seconds:
        added.append(sample("kaizen_retrain_gpu_seconds", gpu - counted.gpu_seconds, **ids))
        now = replace(now, gpu_seconds=gpu)
    end = _end(kind, status)
    if end is not None and not counted.ended:
        family = "kaizen_retrains" if kind == "RetrainJob" else "kaizen_rollouts"
        added.append(sample(family, 1, **ids, outcome=end))
        now = replace(now, ended=True)
    if kind == "Rollout":
        fresh = [(t, r) for r in status.get("analysis") or [] if (t := _time(r.get("time")))
                 and (counted.analysed is None or t > counted.analysed)]
        for _, record in sorted(fresh, key=lambda pair: pair[0]):
            added += [sample("kaizen_rollout_analysis_verdicts", 1, **ids, metric=str(m.get("name")),
                             verdict=str(m.get("verdict"))) for m in record.get("metrics") or []]
        if fresh:
            now = replace(now, analysed=max(t for t, _ in fresh))
    return added, now


def zeros(kind: str, meta: dict[str, Any], spec: dict[str, Any]) -> list[Sample]:
    """The counters an object can move, at 0: a series that appears already at 1 hides its first increase from
    ``increase()`` and ``rate()``, so each exists from the moment its object is first seen."""
    ids = {"namespace": str(meta.get("namespace") or ""), "loop": loop_of(kind, meta)}
    if kind == "ImprovementLoop":
        return [sample("kaizen_loop_decisions", 0, **ids, action=action) for action in ACTIONS]
    if kind == "RetrainJob":
        return [sample("kaizen_retrain_gpu_seconds", 0, **ids),
                *(sample("kaizen_retrains", 0, **ids, outcome=outcome) for outcome in RETRAIN_OUTCOMES)]
    if kind == "Rollout":
        metrics = [str(m.get("name")) for m in (spec.get("analysis") or {}).get("metrics") or []]
        return [*(sample("kaizen_rollouts", 0, **ids, outcome=end) for end in ROLLOUT_ENDS),
                *(sample("kaizen_rollout_analysis_verdicts", 0, **ids, metric=metric, verdict=verdict)
                  for metric in metrics for verdict in VERDICTS)]
    return []


def _decisions(status: dict[str, Any]) -> frozenset[tuple[str, datetime | None]]:
    return frozenset((str(d.get("id")), _time(d.get("time"))) for d in status.get("decisions") or [])


def _remembered(counted: frozenset[tuple[str, datetime | None]],
                seen: frozenset[tuple[str, datetime | None]]) -> frozenset[tuple[str, datetime | None]]:
    """The decisions to remember as counted: those seen now and those counted before, down to the oldest seen now.
    The log is bounded, so older ones cannot come back; a look on a cached status older than the last one written
    (which lacks the newest decisions) must not make them count again."""
    times = [t for _, t in seen if t is not None]
    oldest = min(times) if times else None
    return frozenset(d for d in counted | seen if oldest is None or d[1] is None or d[1] >= oldest)


def _end(kind: str, status: dict[str, Any]) -> str | None:
    phase = status.get("phase")
    if kind == "RetrainJob" and phase in ("Succeeded", "Failed"):
        if phase == "Failed":
            return "Failed"
        return "Passed" if status.get("verdict") == "Passed" else "GatesFailed"
    if kind == "Rollout" and phase in ROLLOUT_ENDS:
        return str(phase)
    return None


def _time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None
    except ValueError:
        return None
