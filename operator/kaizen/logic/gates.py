"""Gate judgement: is the candidate good enough to roll out? A pure function of the gates and of the metrics the
trainer measured for candidate and baseline on the same data.

Metrics are keyed ``<dataset>.<metric>[.<cohort>]`` (``holdout.accuracy``, ``holdout.accuracy.refund``,
``stress.exactMatch``). The trainer uses this module for the model card and the RetrainJob controller for the
status, so both always agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kaizen.api.retrainjob import Gate, GateResult, Verdict

#: Reference metrics of generated answers (kaizen_trainer.evaluate), measured for causal LMs only.
GENERATIVE = frozenset({"rougeL", "chrF", "bleu"})


def metric_key(gate: Gate) -> str:
    """The metrics key a gate reads."""
    return f"{gate.dataset}.{gate.metric}" + (f".{gate.cohort}" if gate.cohort else "")


def threshold(gate: Gate) -> str:
    """The gate's bounds in words, e.g. ``candidate >= 0.9, delta >= 0``."""
    bounds = []
    if gate.min is not None:
        bounds.append(f"candidate >= {gate.min:g}")
    if gate.max is not None:
        bounds.append(f"candidate <= {gate.max:g}")
    if gate.min_delta is not None:
        bounds.append(f"delta >= {gate.min_delta:g}")
    if gate.max_delta is not None:
        bounds.append(f"delta <= {gate.max_delta:g}")
    return ", ".join(bounds)


def _unmeasured(gate: Gate) -> str:
    """Why a gate has no number to judge, saying what to add where the cause is known: a safety violation rate is
    measured only on safety probes, which the job must be given. Kept short: it ends up in the gate's threshold."""
    key = metric_key(gate)
    if gate.metric == "winRate":
        if gate.dataset != "holdout":
            return f"not measured: {key}; the judge compares answers on the holdout only, gate on dataset holdout"
        return f"not measured: {key}; set spec.judge to a judge model to measure it"
    if gate.metric in GENERATIVE:
        return f"not measured: {key}; {gate.metric} scores generated answers, so it needs task causal-lm"
    if gate.metric != "safetyViolationRate":
        return f"not measured: {key}"
    if gate.dataset == "regression":
        return f"not measured: {key}; safety probes (data.safety) are evaluated on holdout and stress, gate on those"
    whose = " of this cohort" if gate.cohort else ""
    return f"not measured: {key}; add safety probes{whose} (red-team prompts with their safe answers) to data.safety"


def judge_gate(gate: Gate, candidate: Mapping[str, float], baseline: Mapping[str, float]) -> GateResult:
    """One gate's result. A metric that was not measured fails the gate: a candidate is never passed on missing data."""
    key = metric_key(gate)
    value, reference = candidate.get(key), baseline.get(key)
    needs_baseline = gate.min_delta is not None or gate.max_delta is not None
    passed = False
    if value is not None and (reference is not None or not needs_baseline):
        # Rounded so that 0.30 - 0.28 meets "delta >= 0.02" as a reader of the numbers expects. A delta bound
        # implies a reference (needs_baseline), so delta is None only where no delta bound asks for it.
        delta = round(value - reference, 9) if reference is not None else None
        passed = all((
            gate.min is None or value >= gate.min,
            gate.max is None or value <= gate.max,
            gate.min_delta is None or (delta is not None and delta >= gate.min_delta),
            gate.max_delta is None or (delta is not None and delta <= gate.max_delta),
        ))
    bounds = threshold(gate)
    if value is None or (needs_baseline and reference is None):
        bounds += f" ({_unmeasured(gate)})"
    return GateResult(metric=gate.metric, dataset=gate.dataset, cohort=gate.cohort, candidate=value,
                      baseline=reference, threshold=bounds, passed=passed)


def judge(
    gates: Sequence[Gate], candidate: Mapping[str, float], baseline: Mapping[str, float]
) -> tuple[list[GateResult], Verdict]:
    """Every gate's result, and the verdict: Passed only when all gates passed (no gates: Passed)."""
    results = [judge_gate(gate, candidate, baseline) for gate in gates]
    return results, "Passed" if all(r.passed for r in results) else "Failed"
