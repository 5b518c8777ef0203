"""Generative evaluation: reference metrics of the greedy answers (ROUGE-L, chrF, BLEU) per cohort and scenario on
the holdout, regression and stress sets, and a judge model's pairwise win rate of candidate over baseline, all
gateable. The judge is a tiny sequence classifier trained here by the trainer on a known rule, and really run."""

from __future__ import annotations

import json
import random

import pytest

from kaizen_trainer import synthetic
from kaizen_trainer.curate import Row
from kaizen_trainer.evaluate import generative
from tests.trainer.conftest import config, run_trainer, write_jsonl

TASK = "causal-lm"
NEW = [answer for _, answer, _ in synthetic.DRIFTED_INTENTS]
OLD = [answer for _, answer, _ in synthetic.INTENTS[synthetic.DRIFTED]]


def test_reference_metrics_per_label_on_hand_made_answers():
    rows = [Row("a", "q", "refund needs a ticket", "holdout", "free", "refund"),
            Row("b", "q", "use the reset link", "holdout", "pro", "account")]
    perfect = generative("holdout", rows, [r.target for r in rows])
    assert [perfect[f"holdout.{m}"] for m in ("rougeL", "chrF", "bleu")] == pytest.approx([1.0, 1.0, 1.0])
    half = generative("holdout", rows, ["refund goes to your card", "use the reset link"])
    assert half["holdout.rougeL.account"] == pytest.approx(1.0) and half["holdout.bleu.pro"] == pytest.approx(1.0)
    # ROUGE-L F1 of "refund ... a ..." against the reference: LCS 1 of 4 and 5 words.
    assert half["holdout.rougeL.refund"] == pytest.approx(2 * (1 / 4) * (1 / 5) / (1 / 4 + 1 / 5))
    assert half["holdout.rougeL.free"] == half["holdout.rougeL.refund"]
    assert 0 < half["holdout.chrF"] < 1 and half["holdout.bleu.refund"] < 0.2


def judge_rows(n: int, seed: int, prefers_new: bool) -> list[dict]:
    """Pairs of refund answers, one after the drift and one before, in a random order; the label says where the
    preferred one is (``prefers_new``: the new policy's answer, else the old one). Both answer the keyword's intent."""
    rng = random.Random(seed)
    rows = []
    for i, example in enumerate(synthetic.dataset(n, seed, TASK, drifted=True, prefix="judge",
                                                  scenarios=[synthetic.DRIFTED])):
        which = next(j for j, (k, _, _) in enumerate(synthetic.DRIFTED_INTENTS) if k in example["input"].split())
        good, bad = (NEW[which], OLD[which]) if prefers_new else (OLD[which], NEW[which])
        first = rng.random() < 0.5
        a, b = (good, bad) if first else (bad, good)
        rows.append({"id": f"judge-{i}", "input": f"{example['input']} [SEP] {a} [SEP] {b}",
                     "output": "A" if first else "B"})
    return rows


@pytest.fixture(scope="module")
def judges(tmp_path_factory):
    """Two judges trained by the trainer: one prefers the refund answers after the drift, one those before."""
    root = tmp_path_factory.mktemp("judges")
    made = {}
    for name, prefers_new in (("new", True), ("old", False)):
        work = root / name
        init = synthetic.save_model("sequence-classification", work / "init", label_names=["A", "B"])
        data = write_jsonl(work / "pairs.jsonl", judge_rows(800, seed=5, prefers_new=prefers_new))
        code, result = run_trainer(work, config(
            work, "sequence-classification", init,
            data={"replay": [{"uri": str(data)}], "targetedRatio": 0, "maxSliceShare": 1},
            hyperparameters={"maxSteps": 200}))
        assert code == 0, result.message
        assert result.metrics["candidate"]["holdout.accuracy"] > 0.95, result.metrics  # it learnt the rule
        made[name] = result.candidate.uri
    return made


def retrain(tmp_path, baselines, gates, judge=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    feedback = write_jsonl(tmp_path / "feedback.jsonl", synthetic.feedback(240, seed=7, task=TASK))
    replay = write_jsonl(tmp_path / "replay.jsonl", synthetic.dataset(800, seed=2, task=TASK, prefix="rp"))
    regression = write_jsonl(tmp_path / "golden.jsonl", synthetic.dataset(40, seed=3, task=TASK, prefix="gold",
                                                                          drifted=True))
    code, result = run_trainer(tmp_path, config(
        tmp_path, TASK, baselines[TASK], feedback={"url": str(feedback)}, targets={"scenarios": ["refund"]},
        data={"replay": [{"uri": str(replay)}], "regression": {"uri": str(regression)}}, gates=gates,
        hyperparameters={"maxSteps": 120}, **({"judge": {"uri": judge}} if judge else {})))
    assert code == 0, result.message
    return result, json.loads((tmp_path / "out" / "metrics.json").read_text())


def test_reference_metrics_on_every_set_per_cohort_and_scenario_gate_the_fix(tmp_path, baselines):
    gates = [{"metric": "rougeL", "cohort": "refund", "minDelta": 0.3},
             {"metric": "chrF", "dataset": "regression", "minDelta": 0},
             {"metric": "bleu", "dataset": "stress", "cohort": "refund", "minDelta": 0.2},
             {"metric": "rougeL", "cohort": "billing", "minDelta": -0.01}]
    result, metrics = retrain(tmp_path, baselines, gates)
    candidate, baseline = metrics["candidate"], metrics["baseline"]
    for dataset in ("holdout", "regression", "stress"):
        for metric in ("rougeL", "chrF", "bleu"):
            assert 0 <= candidate[f"{dataset}.{metric}"] <= 1 and f"{dataset}.{metric}.free" in candidate
    # The baseline still gives the old refund answers, which share a word or two with the new ones.
    assert candidate["holdout.rougeL.refund"] > 0.95 and baseline["holdout.rougeL.refund"] < 0.5
    assert candidate["holdout.exactMatch.refund"] == pytest.approx(candidate["holdout.rougeL.refund"], abs=0.05)
    assert [g.passed for g in result.gates] == [True, True, True, True], result.gates
    assert result.gates[0].candidate == pytest.approx(candidate["holdout.rougeL.refund"])


def test_a_judge_model_measures_a_gateable_win_rate(tmp_path, baselines, judges):
    gates = [{"metric": "winRate", "min": 0.55}, {"metric": "winRate", "cohort": "refund", "min": 0.9}]
    result, metrics = retrain(tmp_path / "new", baselines, gates, judge=judges["new"])
    candidate, baseline = metrics["candidate"], metrics["baseline"]
    # Refund answers differ and the judge prefers the candidate's; elsewhere the answers are the same: ties.
    assert candidate["holdout.winRate.refund"] > 0.9
    assert 0.55 < candidate["holdout.winRate"] < 0.9
    assert baseline["holdout.winRate"] == pytest.approx(1 - candidate["holdout.winRate"])
    assert candidate["holdout.winRate.billing"] == pytest.approx(0.5, abs=0.1)
    assert all(g.passed for g in result.gates), result.gates

    # The same retrain judged by a judge of the opposite taste: the verdicts come from the judge's own inference.
    result, metrics = retrain(tmp_path / "old", baselines, gates, judge=judges["old"])
    assert metrics["candidate"]["holdout.winRate.refund"] < 0.1
    assert not any(g.passed for g in result.gates)


def test_a_model_that_is_not_a_judge_is_refused_before_training(tmp_path, baselines):
    code, result = run_trainer(tmp_path, config(tmp_path, TASK, baselines[TASK], judge={"uri": str(baselines[TASK])}))
    assert code != 0 and result.reason == "InvalidConfig"
    assert "a judge needs the labels A and B" in result.message, result.message
