"""bench/loop in quick mode, end to end: a 24-hour period with both drift events, real models answering, real trainer
runs. Checks the results file's shape and what must hold whatever the numbers: the static model never trains and
never recovers, every policy served the same requests, and Kaizen's loop retrained and promoted through a canary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("badAnswers", "badAnswersByCohort", "trainingSeconds", "worsePromotions", "rollbacks", "recoverySeconds",
        "canaryBadAnswers")


def test_quick_run_writes_every_policy_with_its_measurements(tmp_path):
    out = tmp_path / "loop.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "loop" / "run.py"), "--quick", "--quiet",
                          "--out", str(out)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    policies = report["policies"]
    assert set(policies) == {"static", "scheduled", "kaizen", "oracle"}
    for name, policy in policies.items():
        assert all(key in policy for key in KEYS), name
        assert sum(policy["badAnswersByCohort"].values()) == policy["badAnswers"]
    assert len({p["served"] for p in policies.values()}) == 1  # the same users, the same requests
    static, kaizen, scheduled = policies["static"], policies["kaizen"], policies["scheduled"]
    assert static["trainingSeconds"] == 0 and static["promotions"] == [] and static["recoverySeconds"] == [None, None]
    assert scheduled["trainingRuns"] >= 1 and scheduled["trainingSeconds"] > 0
    assert kaizen["trainingRuns"] >= 1 and any(p["how"] == "canary" for p in kaizen["promotions"])
    assert kaizen["badAnswers"] < static["badAnswers"]
    assert set(report["targets"]) == {"badAnswersAtMostHalfOfScheduled", "trainingComputeAtMost30PercentOfScheduled",
                                      "badAnswersAtMost1.5xOracle", "neverPromotesAWorseModel"}
    assert report["machine"]["cores"] >= 1 and report["machine"]["torch"]
    assert "policy" in run.stdout and "kaizen" in run.stdout  # the table
