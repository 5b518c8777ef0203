"""The preference benchmark's pure parts: the ground-truth win rate and the merge into the shared results file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "retrain"))

from kaizen_trainer import synthetic  # noqa: E402
from kaizen_trainer.curate import Row  # noqa: E402
from preferences import merge, simulated_feedback, win_rate  # noqa: E402


def test_win_rate_scores_answers_by_the_ground_truth_ties_half():
    rows = [Row(str(i), "q", "refund needs a ticket", "holdout") for i in range(4)]
    candidate = ["refund needs a ticket", "refund needs a", "refund goes to your card", "x"]
    baseline = ["refund goes to your card", "refund needs a ticket", "refund goes to your card", "y"]
    assert win_rate(candidate, baseline, rows) == (1 + 0 + 0.5 + 0.5) / 4


def test_merge_keeps_the_other_sections(tmp_path):
    path = tmp_path / "retrain.json"
    path.write_text(json.dumps({"compute": {"computeRatio": 0.1}, "lora": {"wallTimeRatio": 0.5},
                                "preferences": {"old": True}}))
    merge(path, {"met": True})
    assert json.loads(path.read_text()) == {"compute": {"computeRatio": 0.1}, "lora": {"wallTimeRatio": 0.5},
                                            "preferences": {"met": True}}


def test_simulated_users_rate_by_the_ground_truth_and_rarely_correct():
    rows = simulated_feedback(seed=7, correction_rate=0.05)
    new = {answer for _, answer, _ in synthetic.DRIFTED_INTENTS}
    assert all((r["rating"] == "up") == (r["output"] in new) for r in rows)
    corrections = [r for r in rows if r["target"]]
    assert 0 < len(corrections) < 0.1 * len(rows) and all(r["rating"] == "down" for r in corrections)
