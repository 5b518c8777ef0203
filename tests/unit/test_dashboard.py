"""The Grafana dashboard's queries name only series the operator and the collector export, and only variables the
dashboard defines. (That each returns data from a real loop is tests/integration/test_dashboard.py.)"""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kaizen.collector.service import Metrics
from kaizen.metrics.exporter import Exporter
from tests.fixtures.dashboard import BUILTINS, load, panels, queries, substitute, variables
from tests.unit.test_operator_metrics import LOOP_SPEC, LOOP_STATUS, ROLLOUT_SPEC, meta, record

SERIES = re.compile(r"\b(kaizen_[a-z_]+)\b")


def exported() -> set[str]:
    """The sample names the operator exports about a loop, a RetrainJob and a Rollout, and the collector's."""
    registry = CollectorRegistry()
    exporter = Exporter(registry)
    live = lambda ns, name: True  # noqa: E731
    exporter.instrumented("ImprovementLoop", lambda *_: None, live)  # the reconcile series
    exporter.wrote("ImprovementLoop", {"metadata": meta("ImprovementLoop", "bot"), "spec": LOOP_SPEC}, LOOP_STATUS,
                   live)
    exporter.wrote("RetrainJob", {"metadata": meta("RetrainJob", "j")}, {"phase": "Training", "gpuSeconds": 1}, live)
    exporter.wrote("Rollout", {"metadata": meta("Rollout", "r"), "spec": ROLLOUT_SPEC},
                   {"phase": "Progressing", "currentStep": 1, "canaryWeight": 50, "achievedWeight": 50,
                    "analysis": [record("2026-12-01T10:00:02Z", "Pass", 0.99, 0.98)]}, live)
    names = {s.name for family in text_string_to_metric_families(generate_latest(registry).decode())
             for s in family.samples}
    # The collector's labelled series exist once something was counted: their names from the families' types.
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return names | {family.name + suffix for family in Metrics().registry.collect()
                    for suffix in suffixes[family.type]}


def test_every_panel_has_a_query_on_the_dashboards_data_source():
    dashboard = load()
    for panel in panels(dashboard):
        assert panel.get("targets"), f"panel {panel.get('title')!r} has no query"
        for target in panel["targets"]:
            assert target.get("expr"), f"panel {panel.get('title')!r} has a target without expr"
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_every_query_names_exported_series_and_defined_variables():
    dashboard = load()
    names = exported()
    defined = {variable["name"] for variable in dashboard["templating"]["list"]} | set(BUILTINS)
    found = queries(dashboard)
    assert len(found) >= 25
    for query in found:
        unknown = set(SERIES.findall(query.expr)) - names
        assert not unknown, f"{query.panel}: {sorted(unknown)} are not exported: {query.expr}"
        assert variables(query.expr) <= defined, f"{query.panel}: undefined variables in {query.expr}"
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert set(SERIES.findall(variable["definition"])) <= names, variable


def test_substitution_leaves_no_variable_and_names_a_missing_one():
    expr = 'sum(rate(kaizen_reconcile_total{kind=~"${kind:regex}", ns="$namespace"}[$__rate_interval]))'
    assert substitute(expr, {"kind": "Rollout", "namespace": "a", "__rate_interval": "4s"}) == (
        'sum(rate(kaizen_reconcile_total{kind=~"Rollout", ns="a"}[4s]))')
    with pytest.raises(KeyError, match="__rate_interval"):
        substitute(expr, {"kind": "Rollout", "namespace": "a"})
