"""``kaizen get``'s tree, rendered from objects the real operator wrote (the Argo CD testdata), and its watch loop:
in place on a terminal, each change once when piped."""

from __future__ import annotations

import io
from pathlib import Path

import yaml

from kaizen.cli import get
from kaizen.cli.get import CLEAR_BELOW, HOME, Tree, render, watch

TESTDATA = Path(__file__).parents[2] / "argocd" / "resource_customizations" / "kaizen.dev"


def recorded(kind: str, name: str) -> dict:
    return yaml.safe_load((TESTDATA / kind / "testdata" / f"{name}.yaml").read_text())


def test_the_tree_nests_rollouts_under_their_retrainjob_and_shows_numbers_gates_and_decisions():
    job = recorded("RetrainJob", "degraded_gatesFailed")
    child = recorded("Rollout", "suspended_pauseStep")
    child["spec"]["retrainJobRef"] = job["metadata"]["name"]
    orphan = recorded("Rollout", "degraded_rolledBack")
    lines = render(Tree(recorded("ImprovementLoop", "progressing_retraining"), [job], [child, orphan]))
    text = "\n".join(lines)
    assert lines[0].endswith("/breached  Retraining  serving v1")
    assert "├─ signals: error-rate 0.2 (max 0.05) Breached" in lines
    assert "gate holdout.accuracy[refund]: candidate 0.15 vs baseline 0.1 (delta >= 0.1) FAILED" in text
    nested = next(i for i, line in enumerate(lines) if "Rollout paused" in line)
    assert lines[nested].startswith("│  └─ Rollout paused  Paused  v1 -> v2  step 2/3 pause (until approved)  "
                                    "weight 10%  awaiting approval")
    assert any(line.startswith("├─ Rollout no-metrics  RolledBack") for line in lines)
    assert "success-rate: Error  canary - vs stable -" in text
    assert lines[-1].startswith("   └─ ") and "AwaitApproval: A retrain is warranted" in lines[-1]


def test_a_loop_without_status_says_so():
    assert render(Tree(recorded("ImprovementLoop", "progressing_noStatus"))) == [
        f"ImprovementLoop {recorded('ImprovementLoop', 'progressing_noStatus')['metadata']['namespace']}/calm  "
        "Pending  serving nothing yet"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_watch_redraws_in_place_on_a_terminal_and_prints_changes_once_when_piped(monkeypatch):
    monkeypatch.setattr(get.time, "sleep", lambda _: None)
    monkeypatch.setattr(get, "terminal_width", lambda out: 40)
    states = iter(["healthy_observing", "healthy_observing", "suspended_paused"])
    piped = io.StringIO()
    watch(lambda: Tree(recorded("ImprovementLoop", next(states))), 1, piped, rounds=3)
    assert "\x1b" not in piped.getvalue()
    assert piped.getvalue().count("ImprovementLoop ") == 2  # the unchanged second read printed nothing

    states = iter(["healthy_observing", "suspended_paused"])
    screen = Terminal()
    watch(lambda: Tree(recorded("ImprovementLoop", next(states))), 1, screen, rounds=2)
    frames = screen.getvalue().split(HOME)[1:]
    assert len(frames) == 2 and all(f.endswith(CLEAR_BELOW) for f in frames)
    assert all(len(line) <= 40 + 3 for f in frames for line in f.split("\n"))  # cut to the width: no wrapping
