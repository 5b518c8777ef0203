"""The preference objectives end to end on a tiny causal LM trained on CPU: DPO on corrections paired with the
answers served, KTO on thumbs up and down, both through trl's losses in the trainer's own loop (checkpoints and
resume included), judged against the baseline on the same holdout."""

from __future__ import annotations

import json

import pytest

from kaizen_trainer import synthetic
from tests.trainer.conftest import config, run_trainer, write_jsonl

TASK = "causal-lm"
OTHERS = [s for s in synthetic.SCENARIOS if s != synthetic.DRIFTED]
#: Steps and rates that fix the slice in these tests; KTO's signal per row is weaker, so it takes more of both.
SETTINGS = {"dpo": {"maxSteps": 80, "learningRate": 3e-4}, "kto": {"maxSteps": 150, "learningRate": 3e-3}}


def thumbs_down(rows: list[dict]) -> list[dict]:
    """Feedback on the stale refund answers without a correction: only the rating says they were wrong."""
    return [{**r, "id": f"down-{r['id']}", "target": None, "category": None} for r in rows]


def preference_config(tmp_path, baselines, objective, feedback, **hyperparameters):
    tmp_path.mkdir(parents=True, exist_ok=True)
    replay = write_jsonl(tmp_path / "replay.jsonl", synthetic.dataset(800, seed=2, task=TASK, prefix="rp"))
    return config(tmp_path, TASK, baselines[TASK], feedback={"url": str(feedback)}, objective=objective,
                  targets={"scenarios": ["refund"]}, data={"replay": [{"uri": str(replay)}], "targetedRatio": 0.5},
                  gates=[{"metric": "exactMatch", "cohort": "refund", "minDelta": 0.3}],
                  hyperparameters={**SETTINGS[objective], "beta": 0.1, **hyperparameters})


@pytest.mark.parametrize("objective", ["dpo", "kto"])
def test_preference_objectives_fix_the_drifted_slice(tmp_path, baselines, objective):
    corrections = synthetic.feedback(240, seed=7, task=TASK)
    # DPO learns from the pairs; KTO here from a few corrections among many thumbs down.
    rows = corrections if objective == "dpo" else corrections[:40] + thumbs_down(corrections[40:])
    feedback = write_jsonl(tmp_path / "feedback.jsonl", rows)
    code, result = run_trainer(tmp_path, preference_config(tmp_path, baselines, objective, feedback))

    assert code == 0, result.message
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())  # all of them; the result holds the gated
    candidate, baseline = metrics["candidate"], metrics["baseline"]
    assert candidate["holdout.exactMatch.refund"] - baseline["holdout.exactMatch.refund"] >= 0.5, (candidate, baseline)
    for scenario in OTHERS:
        key = f"holdout.exactMatch.{scenario}"
        assert candidate[key] >= baseline[key] - 0.05, (key, candidate[key], baseline[key])
    assert result.gates[0].passed
    manifest = json.loads((tmp_path / "out" / "dataset-manifest.json").read_text())
    assert manifest["objective"] == objective
    card = (tmp_path / "out" / "MODEL_CARD.md").read_text()
    assert f"Objective: {objective} (trl's loss against the baseline" in card
    if objective == "dpo":
        assert manifest["rows"]["pairs"] == manifest["rows"]["train"] > 0
    else:
        assert manifest["rows"]["undesirable"] > manifest["rows"]["pairs"] == 0
        assert manifest["rows"]["desirable"] > 0


def test_a_preference_run_resumes_from_its_checkpoint_to_the_same_model(tmp_path, baselines):
    feedback = write_jsonl(tmp_path / "feedback.jsonl", synthetic.feedback(120, seed=8, task=TASK))

    def run(work):
        code, result = run_trainer(work, preference_config(work, baselines, "dpo", feedback, maxSteps=12,
                                                           checkpointEverySteps=6))
        assert code == 0, result.message
        return result

    run(tmp_path / "whole")
    cut = tmp_path / "cut"
    run(cut)
    checkpoints = sorted((cut / "ckpt").glob("step-*.pt"), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name.split("-")[1] for p in checkpoints] == ["6", "12"]
    checkpoints[-1].unlink()  # as if the pod died after step 6
    resumed = run(cut)
    assert resumed.steps == 12
    assert json.loads((cut / "out" / "metrics.json").read_text())["training"]["resumedFrom"] == 6
    losses = [json.loads((work / "out" / "metrics.json").read_text())["candidate"]["holdout.loss"]
              for work in (tmp_path / "whole", cut)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


def test_a_preference_objective_trains_a_lora_adapter(tmp_path, baselines):
    """Objective and method compose: trl's loss with the baseline as reference, on a LoRA adapter of it."""
    corrections = synthetic.feedback(120, seed=9, task=TASK)
    feedback = write_jsonl(tmp_path / "feedback.jsonl", corrections[:20] + thumbs_down(corrections[20:]))
    cfg = preference_config(tmp_path, baselines, "kto", feedback, maxSteps=40)
    code, result = run_trainer(tmp_path, {**cfg, "method": "lora"})
    assert code == 0, result.message
    assert (tmp_path / "out" / "model" / "adapter_config.json").is_file()
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    training = metrics["training"]
    assert training["method"] == "lora" and 0 < training["trainableParameters"] < training["parameters"] / 10
    # The adapter was trained through trl's loss (gradients reached it): the candidate's answers' likelihoods moved.
    # Whether LoRA fixes the slice at these few steps and this rate is not claimed here.
    assert abs(metrics["candidate"]["holdout.loss"] - metrics["baseline"]["holdout.loss"]) > 1e-3, metrics
    assert json.loads((tmp_path / "out" / "dataset-manifest.json").read_text())["objective"] == "kto"
