"""``kaizen report``'s page from objects the real operator wrote (the Argo CD testdata): figures as embedded PNGs,
the gate and decision tables, the marks of the history, and the fallback without Prometheus."""

from __future__ import annotations

import base64
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml

from kaizen.cli.get import Tree
from kaizen.cli.report import History, marks, render

TESTDATA = Path(__file__).parents[2] / "argocd" / "resource_customizations" / "kaizen.dev"
PNG = b"\x89PNG\r\n\x1a\n"


def recorded(kind: str, name: str) -> dict:
    return yaml.safe_load((TESTDATA / kind / "testdata" / f"{name}.yaml").read_text())


def tree() -> Tree:
    return Tree(recorded("ImprovementLoop", "degraded_tooManyFailures"),
                [recorded("RetrainJob", "degraded_gatesFailed"), recorded("RetrainJob", "healthy_gatesPassed")],
                [recorded("Rollout", "degraded_rolledBack"), recorded("Rollout", "healthy_promoted")])


def images(page: str) -> dict[str, bytes]:
    return {alt: base64.b64decode(data)
            for alt, data in re.findall(r"<img alt='([^']+)' src='data:image/png;base64,([A-Za-z0-9+/=]+)'>", page)}


def test_the_page_embeds_png_figures_and_has_the_gate_and_decision_tables():
    page = render(History(tree(), signals_source="test"))
    figures = images(page)
    assert set(figures) == {"signals over time", "analysis of no-metrics"}  # the promoted one had no metrics
    assert all(data.startswith(PNG) and len(data) > 5000 for data in figures.values())
    assert not re.search(r"src='(?!data:)|<link|<script|@import|url\(", page)  # nothing fetched from anywhere
    assert "<td>holdout</td><td>refund</td><td class='num'>0.15</td><td class='num'>0.1</td>" in page
    assert "<td class='fail'>FAILED</td>" in page and "<td class='pass'>passed</td>" in page
    decisions = recorded("ImprovementLoop", "degraded_tooManyFailures")["status"]["decisions"]
    assert f"Decision log ({len(decisions)}, newest first)" in page
    assert all(d["id"] in page for d in decisions)
    assert "<td class='fail'>Error</td>" in page  # the rolled-back rollout's look


def test_marks_are_the_breach_the_retrain_the_canaries_and_their_ends():
    found = [(m.kind, m.label) for m in marks(tree())]
    assert ("breach", "error-rate breached") in found and ("retrain", "retrain") in found
    assert ("canary", "canary v4") in found and ("rolled back", "rolled back v4") in found
    assert ("promoted", "promoted v2") in found
    times = [m.time for m in marks(tree())]
    assert times == sorted(times)


def test_prometheus_series_are_drawn_when_there_are_some():
    start = datetime(2026, 12, 1, 13, 0, tzinfo=timezone.utc)
    series = {"error-rate": [(start + timedelta(seconds=10 * i), 0.01 * i) for i in range(30)]}
    with_series = images(render(History(tree(), signals=series, signals_source="Prometheus")))["signals over time"]
    without = images(render(History(tree(), signals_source="none")))["signals over time"]
    assert with_series != without


def test_text_from_the_objects_is_escaped():
    loop = recorded("ImprovementLoop", "healthy_observing")
    loop["status"]["decisions"][0]["reason"] = "<script>alert(1)</script>"
    page = render(History(Tree(loop), signals_source="none"))
    assert "<script>" not in page and "&lt;script&gt;" in page
