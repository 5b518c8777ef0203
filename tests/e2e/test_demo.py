"""End to end: the README's main command, `kaizen dev demo`, takes a machine from nothing to a decision made on
live telemetry and feedback — a healthy loop that does nothing, then a sustained breach that starts a retrain
targeted at what users complained about — and cleans up after itself. Runs against KAIZEN_TEST_KUBECONFIG when set
(kind, any cluster)."""

from __future__ import annotations

import os
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


def test_demo_reconciles_the_example_loop_and_leaves_nothing_running(tmp_path):
    argv = [sys.executable, "-m", "kaizen", "dev", "demo", "--dir", str(tmp_path / "demo")]
    if os.environ.get("KAIZEN_TEST_KUBECONFIG"):
        argv += ["--kubeconfig", os.environ["KAIZEN_TEST_KUBECONFIG"]]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Installing the Kaizen CRDs: done" in output
    assert "Signals: error-rate=0.0" in output and "decision: All 1 signals are healthy." in output
    assert "(Breached)" in output
    assert 'targets {"categories": ["incorrect"], "cohorts": ["de", "fr"], "scenarios": ["refund"]}' in output
    assert "Retraining: error-rate breached since" in output and "30 new consented feedback items" in output
    assert "improvementloop.kaizen.dev/support-bot   Retraining   v1" in output
    assert processes_mentioning(str(tmp_path)) == []
