"""A look's reading of signals on the collector's drift and evaluation metrics, against a real Prometheus: the
controller's read_signals gives each such signal its companions (every drift method of its window, the evaluators'
good and total verdicts), and a signal on anything else none."""

from __future__ import annotations

import copy
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from kaizen.api.improvementloop import ImprovementLoopSpec
from kaizen.controllers.improvementloop import read_signals
from kaizen.dev.prometheus import Target
from tests.fixtures.prometheus import prometheus  # noqa: F401
from tests.unit.test_loop_decide import DRIFT_QUERY, EVAL_QUERY, EXAMPLE

pytestmark = pytest.mark.integration


@pytest.fixture
def exporter():
    """The collector's two metrics, as its service declares them, on /metrics: the drift gauges of one window, and
    the judge's verdicts growing by 3 good and 1 bad at every scrape."""
    registry = CollectorRegistry()
    drift = Gauge("kaizen_input_drift", "drift", ["model", "cohort", "method"], registry=registry)
    for method, value in (("mmd2", 0.0061), ("mmd_p_value", 0.002), ("novelty_p_value", 0.001),
                          ("novel_share", 0.08), ("drifted", 1.0)):
        drift.labels("support-bot", "", method).set(value)
    drift.labels("support-bot", "pro", "mmd2").set(0.001)  # another window: not the signal's
    verdicts = Counter("kaizen_eval", "verdicts", ["model", "model_version", "track", "evaluator", "verdict"],
                       registry=registry)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            verdicts.labels("support-bot", "v1", "stable", "judge", "good").inc(3)
            verdicts.labels("support-bot", "v1", "stable", "judge", "bad").inc(1)
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_drift_and_evaluation_signals_are_read_with_their_companions(prometheus, exporter):  # noqa: F811
    prometheus.set_targets([Target(exporter)])
    prometheus.wait_for_data('increase(kaizen_eval_total{verdict="bad"}[30m]) > 0')
    spec = copy.deepcopy(EXAMPLE)
    spec["prometheus"] = {"url": prometheus.url}
    spec["signals"] = [{"name": "input-drift", "query": DRIFT_QUERY, "max": 0.004},
                       {"name": "judged-good", "query": EVAL_QUERY, "min": 0.7},
                       {"name": "up", "query": "sum(up)", "min": 1}]
    readings = read_signals(ImprovementLoopSpec.model_validate(spec), "demo", "v1", logging.getLogger("test"))

    drift = readings["input-drift"]
    assert drift.value == pytest.approx(0.0061) and drift.error is None
    assert drift.detail == {"drift": [{"model": "support-bot", "cohort": "", "mmd2": 0.0061, "mmd_p_value": 0.002,
                                       "novelty_p_value": 0.001, "novel_share": 0.08, "drifted": 1.0}]}
    judged = readings["judged-good"]
    assert judged.value == pytest.approx(0.75)
    judge = judged.detail["evaluation"]["judge"]
    assert judge["total"] > 0 and judge["good"] == pytest.approx(0.75 * judge["total"], rel=0.05)
    assert judge["goodShare"] == pytest.approx(0.75, abs=0.03)
    assert readings["up"].value == 1.0 and readings["up"].detail == {}
