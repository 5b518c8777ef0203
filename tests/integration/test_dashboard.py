"""Every query of the chart's Grafana dashboard returns data from a real loop: the operator as the chart runs it
(``kaizen operator --metrics-bind-address``, a process, all controllers) on a real API server with
kube-controller-manager and kwok, the collector as a process, and a real Prometheus scraping both, and the stable
and canary emitters the loop and its Rollout judge. One loop run: a breach, a retrain (the test plays the training
pod's kubelet, as test_retrainjob does), a canary analysed and paused for approval, approved and promoted, and
the loop paused.

Each query runs as Grafana runs it (over the run's time range, or instant for tables and stats), with the
template variables set to the test's namespace, loop and model, and must return at least one series. Then the
Rollout is deleted, and its series leave with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
from collections import Counter
from datetime import timedelta

import pytest

from kaizen.dev import processes
from kaizen.dev.cluster import free_ports
from kaizen.dev.collector import LocalCollector
from kaizen.dev.prometheus import LocalPrometheus
from tests.fixtures.dashboard import load, queries, substitute
from tests.fixtures.prometheus import emit  # noqa: F401
from tests.integration.kube import apply, get, wait_for
from tests.integration.test_cli_get import eventually, loop, serve
from tests.integration.test_retrainjob import result, running_pods, terminate

pytestmark = pytest.mark.integration

MODEL = "bot"


@pytest.fixture
def prometheus(tmp_path):
    """Prometheus for the test (the ``emit`` fixture adds the emitters), also scraping Kaizen's own processes as a
    ServiceMonitor with honorLabels would: the series keep their namespace label (the loop's)."""
    with LocalPrometheus(tmp_path / "prometheus", pod_targets=[tmp_path / "kaizen-targets.json"]) as local:
        yield local


@pytest.fixture
def collector(tmp_path):
    service = LocalCollector(f"sqlite:///{tmp_path / 'collector.db'}", tmp_path / "collector").start()
    yield service
    service.stop()


@pytest.fixture
def operator(crds, tmp_path):
    """`kaizen operator -A --metrics-bind-address 127.0.0.1:PORT`, as the chart's Deployment runs it."""
    port = free_ports(1)[0]
    process = processes.spawn("operator", [
        sys.executable, "-m", "kaizen", "operator", "--all-namespaces", f"--metrics-bind-address=127.0.0.1:{port}",
    ], tmp_path / "operator.log", detach=False, env={**os.environ, "KUBECONFIG": str(crds.kubeconfig)})
    yield f"127.0.0.1:{port}"
    processes.stop([process])


def ingest(collector, namespace: str) -> None:
    """A model server's traces and its users' feedback, up and down, as the collector receives them."""
    from tests.collector.harness import call

    traces = [{"id": f"{namespace}-{i}", "model": MODEL, "modelVersion": "v1", "track": "stable",
               "scenario": "refund", "input": "Where is my refund? Mail me at jane@example.com",
               "output": "Within 5 days.", "subjectId": f"u{i}", "consent": {"training": True}} for i in range(6)]
    assert call(collector, "POST", "/v1/traces", {"items": traces}, scope="ingest")[0] == 201
    feedback = [{"traceId": t["id"], "rating": "up" if i % 3 else "down", "category": None if i % 3 else "incorrect",
                 "subjectId": t["subjectId"], "consent": {"training": True}} for i, t in enumerate(traces)]
    assert call(collector, "POST", "/v1/feedback", {"items": feedback}, scope="ingest")[0] == 201


def train(cluster, namespace: str) -> None:
    """Play the kubelet of the loop's training pod: it ran ten minutes on its GPU and passed the gates."""
    job = eventually(lambda: next((d["child"].split("/")[1] for d in get(
        cluster, "improvementloop", "bot", namespace).get("status", {}).get("decisions", [])
        if d.get("child", "").startswith("RetrainJob/")), None))
    training = wait_for(cluster, "retrainjob", job, namespace, lambda o: o.get("status", {}).get("jobName"))
    (pod,) = running_pods(cluster, namespace, training["status"]["jobName"])
    terminate(cluster, pod, exit_code=0, reason="Completed", message=result(refund_candidate=0.95),
              ran_for=timedelta(minutes=10))


def kaizen(cluster, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "kaizen", *args], check=True, capture_output=True,
                   env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)})


def run(prometheus: LocalPrometheus, expr: str, instant: bool, start: float) -> list[dict]:
    if instant:
        return prometheus.query(expr)
    return prometheus.query_range(expr, start, time.time(), step=1)


def test_every_dashboard_query_returns_data_from_a_real_loop(crds, namespace, prometheus, emit, collector, operator,
                                                             tmp_path):
    (tmp_path / "kaizen-targets.json").write_text(json.dumps([{"targets": [operator, collector.url[7:]]}]))
    start = time.time()
    serve(crds, namespace, emit)
    ingest(collector, namespace)
    manifest = loop(prometheus.url)
    # The canary's judgement is not what this test is about: a starved emitter on a loaded machine must not roll
    # it back (the analysis, its verdicts and its numbers are exported all the same).
    analysis = manifest["spec"]["rollout"]["analysis"]
    analysis["metrics"] = [{**metric, "maxRegression": 0.5} for metric in analysis["metrics"]]  # copies: shared
    apply(crds, namespace, manifest)
    train(crds, namespace)
    rollout = wait_for(crds, "rollout", eventually(lambda: next(
        (d["child"].split("/")[1] for d in get(crds, "improvementloop", "bot", namespace)["status"]["decisions"]
         if d.get("child", "").startswith("Rollout/")), None)), namespace,
        lambda o: o.get("status", {}).get("awaitingApproval") and o["status"].get("analysis"), timeout=90)
    name = rollout["metadata"]["name"]
    kaizen(crds, "approve", f"rollout/{name}", "-n", namespace)
    wait_for(crds, "rollout", name, namespace, lambda o: o.get("status", {}).get("phase") == "Promoted", timeout=60)
    # Paused, the loop decides nothing more (the stable emitter still breaches): its decisions hold still.
    kaizen(crds, "pause", "bot", "-n", namespace)
    ids = f'namespace="{namespace}", loop="bot"'
    prometheus.wait_for_data(f'kaizen_loop_phase{{{ids}, phase="Paused"}} == 1', timeout=30)
    prometheus.wait_for_data(f'kaizen_rollouts_total{{{ids}, outcome="Promoted"}} > 0', timeout=30)

    # What the loop did, as the operator's metrics say it (and Prometheus scraped it): each decision once.
    def value(expr: str) -> float:
        return float(prometheus.query(expr)[0]["value"][1])

    decisions = Counter(d["action"] for d in get(crds, "improvementloop", "bot", namespace)["status"]["decisions"])
    assert decisions["Retrain"] >= 1 and decisions["RollOut"] >= 1
    counted = {series["metric"]["action"]: float(series["value"][1])
               for series in prometheus.query(f'kaizen_loop_decisions_total{{{ids}}} > 0')}
    assert counted == decisions
    assert value(f'kaizen_retrains_total{{{ids}, outcome="Passed"}}') >= 1
    assert value(f'kaizen_retrain_gpu_seconds_total{{{ids}}}') >= 600
    assert value(f'sum(kaizen_rollout_analysis_verdicts_total{{{ids}, metric="success-rate"}})') >= 1
    assert value(f'kaizen_rollout_phase{{{ids}, rollout="{name}", phase="Promoted"}}') == 1
    tracks = prometheus.query(f'kaizen_rollout_analysis_value{{{ids}, rollout="{name}"}}')
    assert {series["metric"]["track"] for series in tracks} == {"stable", "canary"}

    values = {"datasource": "prometheus", "namespace": namespace, "loop": "bot", "model": MODEL,
              "__interval": "1s", "__rate_interval": "4s", "__range": f"{int(time.time() - start) + 5}s"}
    empty, failed = [], []
    for query in queries(load()):
        expr = substitute(query.expr, values)
        try:
            if not run(prometheus, expr, query.instant, start):
                empty.append(f"{query.panel}: {expr}")
        except urllib.error.HTTPError as error:
            failed.append(f"{query.panel}: {expr}: {error.read().decode()}")
    assert not failed, "queries Prometheus refused:\n" + "\n".join(failed)
    assert not empty, "queries that returned nothing:\n" + "\n".join(empty)

    # A deleted object's series go with it (once its scheduler let it go); the loop's counters stay.
    crds.kubectl("delete", "rollout.kaizen.dev", name, "-n", namespace, "--wait=true", "--timeout=60s")
    eventually(lambda: not prometheus.query(f'kaizen_rollout_phase{{{ids}, rollout="{name}"}}'), timeout=30)
    assert prometheus.query(f'kaizen_rollouts_total{{{ids}, outcome="Promoted"}}')
