"""Preference benchmark (issue 11): SFT on corrections against DPO and KTO, on feedback where most users rate an
answer with a thumb and few write a correction, with a known ground truth.

The task is :mod:`kaizen_trainer.synthetic` as a causal LM: a baseline trained before the drift answers refunds the
old way. Feedback on refunds after the drift is simulated from the ground truth: part of the traffic was answered by
a canary that already gives the new answer (``CANARY_SHARE``), the rest by the baseline with the old one; every user
rates the answer served (up when it is the right answer, down otherwise) and only a few of the users who rate down
also write the right answer (``CORRECTION_RATES``: 1 %, then 5 %). Each arm runs the trainer itself
(:func:`kaizen_trainer.pipeline.run`: curation with its consent and holdout rules, trl's losses for dpo and kto) from
the same baseline, for the same number of steps, at the learning rate its trainer test uses:

* ``sftCorrectionsOnly`` -- SFT on the corrections (the rated answers withheld), mixed with replay;
* ``sft`` -- Kaizen's SFT on the whole export: corrections and well-rated answers, mixed with replay;
* ``dpo`` -- the corrections paired with the answers served (rejected);
* ``kto`` -- every rated answer, desirable or not, with replay as desirable.

The win rate against the baseline is measured on a post-drift holdout of every scenario by the ground truth: the
candidate's and the baseline's greedy answers to each prompt are scored (1 for the right answer, else its ROUGE-L F1
against it) and the higher wins, ties counting half; the refund quarter of the holdout is all that can change, so a
candidate that fixes refunds and keeps the rest scores 0.625. Target: DPO or KTO beats SFT on corrections only at 1 %
corrections; the 5 % run shows where that advantage goes.

    .venv/bin/python bench/retrain/preferences.py [--out FILE]   (also run by bench/retrain/run.py)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "trainer-image"))

import torch  # noqa: E402
from rouge_score import rouge_scorer  # noqa: E402

from kaizen.api.retrainjob import Hyperparameters  # noqa: E402
from kaizen.api.trainer import TrainerConfig  # noqa: E402
from kaizen_trainer import curate, evaluate, modeling, pipeline, synthetic, train  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "retrain.json"
TASK = "causal-lm"
FEEDBACK = 400
CANARY_SHARE = 0.3
#: Shares of thumbs-down users who also write a correction: the first is the regime the target is judged in.
CORRECTION_RATES = (0.01, 0.05)
STEPS = 150
#: Learning rates of the trainer tests (tests/trainer/test_preferences.py, test_retrain.py).
RATES = {"sftCorrectionsOnly": 1e-3, "sft": 1e-3, "dpo": 3e-4, "kto": 3e-3}


def simulated_feedback(seed: int, correction_rate: float) -> list[dict]:
    """Refund feedback after the drift, rated by the ground truth (see the module docstring)."""
    rng = random.Random(seed)
    rows = []
    for row in synthetic.dataset(FEEDBACK, seed, TASK, drifted=True, prefix="fb", scenarios=[synthetic.DRIFTED]):
        truth = row["output"]
        keyword = next(k for k, _, _ in synthetic.DRIFTED_INTENTS if k in row["input"].split())
        stale = next(a for k, a, _ in synthetic.INTENTS[synthetic.DRIFTED] if k == keyword)
        served = truth if rng.random() < CANARY_SHARE else stale
        good = served == truth
        correction = None if good or rng.random() >= correction_rate else truth
        rows.append({**row, "output": served, "target": correction, "rating": "up" if good else "down",
                     "sentiment": "positive" if good else "negative", "consent": True,
                     "traceId": f"trace-{row['id']}", "modelVersion": "v1"})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def trained_baseline(work: Path, device: modeling.Device) -> Path:
    """A tiny causal LM trained on pre-drift data: right everywhere until refunds drift."""
    tok = synthetic.tokenizer()
    model = synthetic.model(TASK, tok, seed=0)
    encoder = modeling.Encoder(TASK, model, tok, max_length=32)
    rows = [curate.Row(d["id"], d["input"], d["output"], "replay", d["cohort"], d["scenario"])
            for d in synthetic.dataset(1200, seed=1, task=TASK)]
    hp = Hyperparameters(max_steps=250, learning_rate=2e-3, batch_size=32, max_length=32, checkpoint_every_steps=10**6)
    train.train(model, encoder, encoder.encode_all(rows), hp, device, work / "ckpt-base", "base")
    modeling.save(model.cpu(), tok, work / "baseline")
    return work / "baseline"


def win_rate(candidate: list[str], baseline: list[str], rows: list[curate.Row]) -> float:
    scorer = rouge_scorer.RougeScorer(["rougeL"])

    def score(answer: str, truth: str) -> float:
        return 1.0 if answer == truth else scorer.score(truth, answer)["rougeL"].fmeasure

    outcomes = []
    for c, b, row in zip(candidate, baseline, rows, strict=True):
        sc, sb = score(c, row.target), score(b, row.target)
        outcomes.append(0.5 if sc == sb else float(sc > sb))
    return round(sum(outcomes) / len(outcomes), 4)


def run(device: modeling.Device | None = None) -> dict[str, Any]:
    device = device or modeling.pick_device()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kaizen-bench-preferences-") as tmp:
        work = Path(tmp)
        baseline_uri = trained_baseline(work, device)
        replay = write_jsonl(work / "replay.jsonl", synthetic.dataset(800, seed=2, task=TASK, prefix="rp"))
        holdout_rows = synthetic.dataset(200, seed=99, task=TASK, drifted=True, prefix="ho")
        holdout = write_jsonl(work / "holdout.jsonl", holdout_rows)
        evaluation = [curate.Row(d["id"], d["input"], d["output"], "holdout", d["cohort"], d["scenario"])
                      for d in holdout_rows]
        base_model, tok = modeling.load(TASK, str(baseline_uri))
        encoder = modeling.Encoder(TASK, base_model, tok, max_length=32)
        base_answers = evaluate.generate(base_model, encoder, evaluation, device)
        regimes = {}
        for rate in CORRECTION_RATES:
            regime = work / f"corrections-{rate:g}"
            regime.mkdir()
            feedback = simulated_feedback(seed=7, correction_rate=rate)
            arms = {arm: _arm(arm, regime, feedback, baseline_uri, replay, holdout, evaluation, encoder,
                              base_answers, device) for arm in RATES}
            best = max(("dpo", "kto"), key=lambda a: arms[a]["winRate"])
            regimes[f"{rate:.0%}"] = {
                "correctionRate": rate,
                "feedback": {"items": len(feedback), "corrections": sum(1 for r in feedback if r["target"]),
                             "thumbsUp": sum(r["rating"] == "up" for r in feedback),
                             "thumbsDownOnly": sum(r["rating"] == "down" and not r["target"] for r in feedback)},
                "arms": arms, "bestPreference": best,
                "preferenceBeatsSftCorrectionsOnly": arms[best]["winRate"] > arms["sftCorrectionsOnly"]["winRate"],
            }
    primary = regimes[f"{CORRECTION_RATES[0]:.0%}"]
    return {
        "task": f"synthetic support bot, causal LM, refunds drifted; {FEEDBACK} refund feedback items, "
                f"{CANARY_SHARE:.0%} served the new answer by a canary, users rate by the ground truth",
        "steps": STEPS, "regimes": regimes,
        "target": f"dpo or kto winRate > sftCorrectionsOnly winRate at {CORRECTION_RATES[0]:.0%} corrections",
        "met": primary["preferenceBeatsSftCorrectionsOnly"],
        "seconds": round(time.perf_counter() - began, 1),
    }


def _arm(arm: str, work: Path, feedback: list[dict], baseline_uri: Path, replay: Path, holdout: Path,
         evaluation: list[curate.Row], encoder: modeling.Encoder, base_answers: list[str],
         device: modeling.Device) -> dict[str, Any]:
    """One arm: the trainer run on its share of the feedback, and its answers judged against the baseline's."""
    objective = arm if arm in ("dpo", "kto") else "sft"
    rows = [r for r in feedback if r["target"]] if arm == "sftCorrectionsOnly" else feedback
    out = work / arm
    out.mkdir()
    config = TrainerConfig.model_validate({
        "job": "bench/preferences", "decisionId": "bench", "task": TASK, "candidateVersion": arm,
        "baseline": {"version": "v1", "uri": str(baseline_uri)}, "objective": objective,
        "feedback": {"url": str(write_jsonl(out / "feedback.jsonl", rows))},
        "targets": {"scenarios": [synthetic.DRIFTED]},
        "data": {"replay": [{"uri": str(replay)}], "holdout": {"uri": str(holdout)}, "targetedRatio": 0.5,
                 "minRows": 1, "holdoutFraction": 0.01},
        "hyperparameters": {"maxSteps": STEPS, "learningRate": RATES[arm], "batchSize": 32, "maxLength": 32,
                            "checkpointEverySteps": 10**6, "beta": 0.1},
        "outputDir": str(out / "out"), "checkpointDir": str(out / "ckpt"),
    })
    started = time.perf_counter()
    result = pipeline.run(config)
    seconds = time.perf_counter() - started
    model, _ = modeling.load(TASK, result.candidate.uri)
    answers = evaluate.generate(model, encoder, evaluation, device)
    refund = [i for i, r in enumerate(evaluation) if r.scenario == synthetic.DRIFTED]
    metrics = json.loads((out / "out" / "metrics.json").read_text())["candidate"]
    return {
        "objective": objective, "learningRate": RATES[arm], "trainRows": result.dataset.rows,
        "winRate": win_rate(answers, base_answers, evaluation),
        "winRateRefund": win_rate([answers[i] for i in refund], [base_answers[i] for i in refund],
                                  [evaluation[i] for i in refund]),
        "exactMatch": round(metrics["holdout.exactMatch"], 4),
        "exactMatchRefund": round(metrics["holdout.exactMatch.refund"], 4),
        "rougeLRefund": round(metrics["holdout.rougeL.refund"], 4),
        "seconds": round(seconds, 1),
    }


def merge(path: Path, section: dict[str, Any]) -> None:
    """Write ``section`` under ``preferences`` in the results file, keeping every other key."""
    report = json.loads(path.read_text()) if path.exists() else {}
    report["preferences"] = section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def show(section: dict[str, Any]) -> None:
    for name, regime in section["regimes"].items():
        print(f"Preferences at {name} corrections: {regime['feedback']}")
        print(f"  {'':22}{'winRate':>9}{'refund':>9}{'exact':>8}{'exact refund':>14}")
        for arm, r in regime["arms"].items():
            print(f"  {arm:22}{r['winRate']:>9.3f}{r['winRateRefund']:>9.3f}{r['exactMatch']:>8.3f}"
                  f"{r['exactMatchRefund']:>14.3f}")
    print(f"{section['target']}: {'met' if section['met'] else 'NOT met'}")


def report(path: Path, device: modeling.Device | None = None) -> dict[str, Any]:
    """Run the benchmark, merge it into ``path`` under ``preferences`` and print its table."""
    section = run(device)
    merge(path, section)
    show(section)
    print(f"wrote preferences to {path}")
    return section


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results file (default {RESULTS})")
    args = parser.parse_args()
    torch.set_num_threads(1)
    report(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
