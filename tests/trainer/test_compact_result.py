"""The pod's result is cut to the termination-message limit without losing the verdict's message."""

from __future__ import annotations

from types import SimpleNamespace

from kaizen.api.trainer import TERMINATION_MESSAGE_LIMIT, TrainerResult
from kaizen_trainer.report import compact


def test_a_result_with_too_many_metrics_keeps_its_verdict_message_first() -> None:
    many = {f"holdout.rougeL.scenario-{i}": 0.5 for i in range(200)}
    gates = [SimpleNamespace(dataset="holdout", metric="rougeL", cohort=f"scenario-{i}") for i in range(200)]
    result = TrainerResult(phase="Succeeded", reason="Completed", message="Passed: 13/13 gates passed",
                           metrics={"candidate": many, "baseline": many})

    # Even the gated metrics alone overflow, so the last resort applies: no metrics in the result.
    trimmed = compact(result, SimpleNamespace(gates=gates))

    assert trimmed.metrics == {"candidate": {}, "baseline": {}} or trimmed.metrics == {}
    assert trimmed.message.startswith("Passed: 13/13 gates passed")
    assert "metrics.json" in trimmed.message
    assert len(trimmed.to_termination_message().encode()) <= TERMINATION_MESSAGE_LIMIT
