"""End to end: the README's main command, `kaizen dev demo`, takes a machine from nothing through the whole loop on
live telemetry and feedback -- a healthy loop that does nothing, a sustained breach that starts a retrain targeted at
what users corrected, the trainer run for real by the dev node agent and gated against the baseline on the same
holdout, a canary judged on live telemetry and promoted, and the loop serving the new model -- and cleans up after
itself.

The training pod runs only on the local stack (kwok's node `kaizen-gpu-0` and the dev node agent), so with
KAIZEN_TEST_KUBECONFIG (kind, any cluster) the test is skipped. What needs only a kubeconfig -- the CRDs, `kaizen
operator` out-of-cluster, a canary Rollout promoted and another aborted on pods that really run, an ImprovementLoop
without Prometheus -- is tested by test_release.py, which runs on both: `make e2e` (the local stack) and
`make e2e-kind`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().split(") ", 1)[1].split()[0]
        except (OSError, IndexError):  # the process ended while we looked
            continue
        if text in cmdline and state != "Z":
            found.append(f"{proc.name}: {cmdline}")
    return found


def gate(output: str, metric: str) -> tuple[float, float, str]:
    """Candidate, baseline and outcome of a gate line of the demo's output."""
    match = re.search(rf"gate {re.escape(metric)} \([^)]*\): candidate ([0-9.]+), baseline ([0-9.]+): (\w+)", output)
    assert match, output
    return float(match.group(1)), float(match.group(2)), match.group(3)


@pytest.mark.skipif(bool(os.environ.get("KAIZEN_TEST_KUBECONFIG")),
                    reason="training pods run only on the local stack's kwok node, through the dev node agent")
def test_demo_closes_the_loop_and_leaves_nothing_running(tmp_path):
    argv = [sys.executable, "-m", "kaizen", "dev", "demo", "--dir", str(tmp_path / "demo")]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Installing the Kaizen CRDs: done" in output
    healthy = re.search(r"Signals: error-rate=([0-9.]+) \(Healthy\); decision: All 1 signals are healthy\.", output)
    assert healthy and float(healthy.group(1)) < 0.05, output
    assert "(Breached)" in output
    assert 'targets {"categories": ["incorrect"], "scenarios": ["refund"]}' in output
    assert "Retraining: error-rate breached since" in output and "60 new consented feedback items" in output

    # The trainer ran for real: the candidate fixed refunds without losing the rest, on the same holdout.
    [job] = re.findall(r"RetrainJob (support-bot-retrain-[0-9a-f]+): Succeeded, verdict Passed", output)
    candidate, baseline, outcome = gate(output, "holdout.accuracy.refund")
    assert outcome == "passed" and candidate - baseline >= 0.5
    candidate, baseline, outcome = gate(output, "holdout.accuracy")
    assert outcome == "passed" and candidate >= baseline
    assert gate(output, "holdout.cohortGap")[2] == "passed"

    # The canary was judged on live telemetry and promoted; the loop serves the candidate.
    analysis = re.search(r"Analysis: step \d at \d+%: success-rate canary \d+/\d+ = ([0-9.]+) vs stable \d+/\d+ = "
                         r"([0-9.]+): Pass", output)
    assert analysis and float(analysis.group(1)) >= 0.95 > float(analysis.group(2)), output  # v1 fails 20 %
    assert re.search(rf"Rollout support-bot-rollout-[0-9a-f]+: Promoted: Promoted {job}: the stable Deployment "
                     rf"serves /models/support-bot/kaizen-demo/{job}/model\.", output), output
    served = re.search(rf"Serving {job} \(/models/support-bot/kaizen-demo/{job}/model\); signals: "
                       r"error-rate=([0-9.]+) \(Healthy\)", output)
    assert served and float(served.group(1)) < 0.05, output
    assert re.search(rf"improvementloop.kaizen.dev/support-bot +Observing +{job}", output), output
    assert re.search(rf"rollout.kaizen.dev/support-bot-rollout-[0-9a-f]+ +Promoted +v1 +{job}", output), output

    # The decision log tells the story, with each child's outcome.
    assert f"outcome: RetrainJob {job} passed its gates: candidate {job}" in output
    assert re.search(r"RollOut +support-bot-\S+\n +Candidate ", output), output
    assert re.search(r"outcome: Rollout support-bot-rollout-[0-9a-f]+ promoted", output), output
    assert "The loop closed in" in output
    assert processes_mentioning(str(tmp_path)) == []
