"""The trainer end to end on tiny models trained on CPU: targeted retraining repairs the drifted slice without
regressing the others, candidate and baseline are judged on the same data, and privacy rules hold in what is
trained on."""

from __future__ import annotations

import json

import pytest

from kaizen_trainer import synthetic
from tests.trainer.conftest import TASKS, config, run_trainer, write_jsonl

OTHERS = [s for s in synthetic.SCENARIOS if s != synthetic.DRIFTED]


@pytest.mark.parametrize("task", TASKS)
def test_targeted_retrain_lifts_the_drifted_slice_without_regressing_the_others(tmp_path, baselines, task):
    feedback = write_jsonl(tmp_path / "feedback.jsonl", synthetic.feedback(240, seed=7, task=task))
    replay = write_jsonl(tmp_path / "replay.jsonl", synthetic.dataset(800, seed=2, task=task, prefix="rp"))
    primary = "accuracy" if task == "sequence-classification" else "exactMatch"
    gates = [{"metric": primary, "cohort": "refund", "minDelta": 0.3},
             *({"metric": primary, "cohort": s, "minDelta": -0.005} for s in OTHERS)]
    # Targets as the loop's backlog gives them: the complaining cohorts too, here every cohort of the data. Only the
    # refund replay is superseded; the other scenarios are still replayed.
    code, result = run_trainer(tmp_path, config(
        tmp_path, task, baselines[task], feedback={"url": str(feedback)}, gates=gates,
        targets={"categories": ["incorrect"], "scenarios": ["refund"], "cohorts": list(synthetic.COHORTS)},
        data={"replay": [{"uri": str(replay)}], "targetedRatio": 0.5},
        hyperparameters={"maxSteps": 80 if task == "sequence-classification" else 120}))

    assert code == 0, result.message
    candidate, baseline = result.metrics["candidate"], result.metrics["baseline"]
    lift = candidate[f"holdout.{primary}.refund"] - baseline[f"holdout.{primary}.refund"]
    assert lift >= 0.5, (candidate, baseline)
    for scenario in OTHERS:
        key = f"holdout.{primary}.{scenario}"
        assert candidate[key] >= baseline[key] - 0.005, (key, candidate[key], baseline[key])
    assert all(g.passed for g in result.gates), result.gates
    refund_gate = result.gates[0]
    assert refund_gate.cohort == "refund" and refund_gate.candidate - refund_gate.baseline >= 0.5

    # Targeted and replay rows were mixed half and half; stale refund answers in the replay were superseded.
    rows = result.dataset.rows
    assert rows["targeted"] == rows["replay"] and rows["train"] == rows["targeted"] + rows["replay"]
    assert result.dataset.excluded["supersededByFeedback"] > 0
    out = tmp_path / "out"
    manifest = json.loads((out / "dataset-manifest.json").read_text())
    assert set(manifest["slices"]["train"]) == set(synthetic.SCENARIOS)
    card = (out / "MODEL_CARD.md").read_text()
    assert "## Gates: Passed" in card and f"holdout.{primary}.refund" in card
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["candidate"][f"holdout.{primary}.refund"] == pytest.approx(candidate[f"holdout.{primary}.refund"],
                                                                             abs=1e-6)
    assert (out / "model" / "config.json").is_file()


def test_failing_gates_are_reported_with_their_numbers(tmp_path, baselines):
    task = "sequence-classification"
    feedback = write_jsonl(tmp_path / "feedback.jsonl", synthetic.feedback(120, seed=8, task=task))
    replay = write_jsonl(tmp_path / "replay.jsonl", synthetic.dataset(400, seed=3, task=task, prefix="rp"))
    code, result = run_trainer(tmp_path, config(
        tmp_path, task, baselines[task], feedback={"url": str(feedback)},
        gates=[{"metric": "accuracy", "min": 1.01}, {"metric": "latencyP95Ms", "max": 1e6}],
        data={"replay": [{"uri": str(replay)}]}, hyperparameters={"maxSteps": 5}))
    assert code == 0  # a candidate that fails its gates is still a completed run; the verdict is the operator's
    failed, passed = result.gates
    assert not failed.passed and failed.threshold == "candidate >= 1.01" and failed.candidate <= 1
    assert passed.passed and passed.metric == "latencyP95Ms"
    assert result.message == "Failed: 1/2 gates passed"


def test_unconsented_opted_out_and_pii_rows_never_reach_training(tmp_path, baselines):
    task = "sequence-classification"
    good = synthetic.feedback(200, seed=9, task=task)
    for row in good:
        row["subjectId"] = f"ok-{row['id']}"
    withheld = [
        {**good[0], "id": "no-consent", "consent": False},
        {**good[1], "id": "consent-unknown", "consent": None},
        {**good[2], "id": "pii", "pii": True},
        {**good[3], "id": "opted-out-feedback", "subjectId": "gone"},
        {"id": "tombstone", "subjectId": "gone", "optedOut": True},
    ]
    replay_rows = synthetic.dataset(300, seed=4, task=task, prefix="rp")
    replay_rows[5] = {**replay_rows[5], "id": "opted-out-replay", "subjectId": "gone", "scenario": "billing"}
    feedback = write_jsonl(tmp_path / "feedback.jsonl", good + withheld)
    replay = write_jsonl(tmp_path / "replay.jsonl", replay_rows)
    code, result = run_trainer(tmp_path, config(
        tmp_path, task, baselines[task], feedback={"url": str(feedback)}, targets={"scenarios": ["refund"]},
        data={"replay": [{"uri": str(replay)}]}, hyperparameters={"maxSteps": 5}))
    assert code == 0, result.message

    manifest = json.loads((tmp_path / "out" / "dataset-manifest.json").read_text())
    used = set(manifest["trainIds"]) | set(manifest["holdoutIds"])
    assert not used & {"no-consent", "consent-unknown", "pii", "opted-out-feedback", "opted-out-replay", "tombstone"}
    assert manifest["excluded"]["noConsent"] == 2
    assert manifest["excluded"]["pii"] == 1
    assert manifest["excluded"]["optedOut"] == 3  # the tombstone, the subject's feedback and their replay row
    assert manifest["subjectsOptedOut"] == 1
    assert result.dataset.excluded == manifest["excluded"]


def test_holdout_rows_never_reach_training_across_successive_retrains(tmp_path, baselines):
    task = "sequence-classification"
    replay = write_jsonl(tmp_path / "replay.jsonl", synthetic.dataset(400, seed=5, task=task, prefix="rp"))
    first_batch = synthetic.feedback(150, seed=10, task=task, prefix="week1")
    manifests, baseline = [], baselines[task]
    for week, rows in enumerate([first_batch, first_batch + synthetic.feedback(150, seed=11, task=task,
                                                                               prefix="week2")], start=1):
        work = tmp_path / f"retrain-{week}"
        feedback = write_jsonl(tmp_path / f"feedback-{week}.jsonl", rows)
        code, result = run_trainer(work, config(
            work, task, baseline, feedback={"url": str(feedback)}, targets={"scenarios": ["refund"]},
            data={"replay": [{"uri": str(replay)}], "holdoutFraction": 0.2},
            # A different seed reshuffles everything that may be reshuffled; holdout membership must not move.
            hyperparameters={"maxSteps": 5, "seed": week}))
        assert code == 0, result.message
        manifests.append(json.loads((work / "out" / "dataset-manifest.json").read_text()))
        baseline = result.candidate.uri

    trained = set(manifests[0]["trainIds"]) | set(manifests[1]["trainIds"])
    held = set(manifests[0]["holdoutIds"]) | set(manifests[1]["holdoutIds"])
    assert held and not trained & held
    assert set(manifests[0]["holdoutIds"]) <= set(manifests[1]["holdoutIds"])
    assert any(i.startswith("week2-") for i in manifests[1]["holdoutIds"])
