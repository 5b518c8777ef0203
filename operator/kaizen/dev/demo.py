"""``kaizen dev demo``: Kaizen's main job on the local stack, from nothing to a decision made on live telemetry.

It starts a local control plane (kube-apiserver, controller-manager, scheduler, kwok's GPU node), a real Prometheus
scraping a stand-in for the model server's telemetry, and the feedback collector; installs the CRDs, runs the
operator as ``kaizen operator`` runs in the cluster, and applies ``examples/demo/`` (the served Deployment and
its ImprovementLoop, pointed at the local Prometheus and collector). Then it plays the users: the model serves
healthily and the loop does nothing; users report wrong answers about refunds and the error rate climbs; the loop
sees the breach sustained, and retrains on what users complained about. Each stage prints what happened and how long
it took, and ``kaizen history`` closes with the decision log. With ``--kubeconfig`` it uses an existing cluster
(Prometheus and the collector still run locally); with ``--keep`` everything stays up until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from kaizen.api import KINDS
from kaizen.dev.cluster import ClusterAccess, LocalCluster

REPO_ROOT = Path(__file__).resolve().parents[3]
DEMO = REPO_ROOT / "examples" / "demo"
NAMESPACE = "kaizen-demo"
LOOP = "support-bot"


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


@contextlib.contextmanager
def stage(title: str) -> Iterator[None]:
    started = time.monotonic()
    say(f"{title} ...")
    yield
    say(f"{title}: done in {time.monotonic() - started:.1f}s")


def eventually(check: Callable[[], Any], what: str, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)


@contextlib.contextmanager
def cluster_for(kubeconfig: Path | None, workdir: Path) -> Iterator[ClusterAccess]:
    if kubeconfig:
        say(f"Using the cluster of {kubeconfig}")
        yield ClusterAccess(kubeconfig)
        return
    with stage("Starting the local control plane"):
        local = LocalCluster(workdir / "cluster", controllers=True, kwok=True).start()
    try:
        yield local
    finally:
        local.stop()


@contextlib.contextmanager
def operator_process(cluster: ClusterAccess, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``kaizen operator -A`` in a child process, as the chart's Deployment runs it."""
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "kaizen", "operator", "--all-namespaces"],
                                   env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def manifests(prometheus_url: str, collector_url: str) -> list[dict[str, Any]]:
    """examples/demo/*.yaml with the local Prometheus and collector filled in."""
    documents = []
    for path in sorted(DEMO.glob("*.yaml")):
        text = path.read_text().replace("http://prometheus.local", prometheus_url)
        documents.extend(yaml.safe_load_all(text.replace("http://collector.local", collector_url)))
    return documents


def loop_status(cluster: ClusterAccess) -> dict[str, Any]:
    obj = json.loads(cluster.kubectl("get", "improvementloop.kaizen.dev", LOOP, "-n", NAMESPACE, "-o", "json").stdout)
    return obj.get("status", {})


def retrainjobs(cluster: ClusterAccess) -> list[dict[str, Any]]:
    listed = json.loads(cluster.kubectl("get", "retrainjob.kaizen.dev", "-n", NAMESPACE, "-o", "json").stdout)
    return listed["items"]


def signal_line(status: dict[str, Any]) -> str:
    return ", ".join(f"{s['name']}={s.get('value', 'no data') if s.get('value') is None else round(s['value'], 3)}"
                     f" ({s['state']})" for s in status.get("signals", []))


def run(kubeconfig: Path | None = None, workdir: Path = Path(".kaizen/demo"), keep: bool = False) -> int:
    from kaizen.dev.collector import LocalCollector
    from kaizen.dev.emitter import Emitter
    from kaizen.dev.prometheus import LocalPrometheus, pod_target
    from kaizen.sdk import FeedbackRecorder

    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(cluster_for(kubeconfig, workdir))
        with stage("Starting Prometheus, the model server's telemetry and the feedback collector"):
            prometheus = stack.enter_context(LocalPrometheus(workdir / "prometheus"))
            telemetry = Emitter(workdir, name="support-bot-telemetry", rate=100, error_rate=0.005)
            stack.callback(telemetry.stop)
            prometheus.set_targets([pod_target(telemetry.address, namespace=NAMESPACE, pod="support-bot-0",
                                               labels={"app": LOOP, "kaizen.dev/track": "stable",
                                                       "kaizen.dev/model-version": "v1"})])
            collector = LocalCollector(f"sqlite:///{workdir / 'collector.db'}", workdir / "collector").start()
            stack.callback(collector.stop)
        with stage("Installing the Kaizen CRDs"):
            cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
            cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                            *(f"crd/{kind.crd_name}" for kind in KINDS))
        log = workdir / "operator.log"
        with stage(f"Starting the operator (kaizen operator --all-namespaces; log: {log})"):
            stack.enter_context(operator_process(cluster, log))
        with stage(f"Applying examples/demo/ (the support-bot Deployment and its ImprovementLoop) in {NAMESPACE}"):
            cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}))
            cluster.kubectl("apply", "--server-side", "-n", NAMESPACE, "-f", "-", input=cluster.kubectl(
                "create", "secret", "generic", "collector-token", "-n", NAMESPACE,
                f"--from-literal=token={collector.tokens['read,audit']}", "--dry-run=client", "-o", "yaml").stdout)
            documents = manifests(prometheus.url, collector.url)
            cluster.kubectl("apply", "--server-side", "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump_all(documents))
        with stage("Serving healthily: waiting for the loop to observe its signals"):
            status = eventually(lambda: (s := loop_status(cluster)).get("phase") == "Observing"
                                and all(x["state"] == "Healthy" for x in s.get("signals", [{"state": "?"}])) and s,
                                "healthy signals")
        say(f"Signals: {signal_line(status)}; decision: {status['decisions'][0]['reason']}")

        with stage("Users report wrong answers about refunds; the error rate climbs to 20 %"):
            users = FeedbackRecorder(collector.url, collector.tokens["ingest"], model=LOOP, model_version="v1",
                                     track="stable")
            for i in range(30):
                trace = users.trace("How long does a refund take?", "Refunds are not possible.", scenario="refund",
                                    cohort="de" if i % 3 else "fr", subject_id=f"user-{i}", consent_training=True)
                users.feedback(trace, "down", category="incorrect", correction="Refunds take 5 working days.",
                               subject_id=f"user-{i}", consent_training=True)
            telemetry.set(error_rate=0.2)
        with stage("Waiting for the loop to see the breach sustained and decide"):
            jobs = eventually(lambda: retrainjobs(cluster), "a RetrainJob")
        status = loop_status(cluster)
        job = jobs[0]
        say(f"Signals: {signal_line(status)}")
        say(f"Created RetrainJob {job['metadata']['name']}: baseline {job['spec']['baseline']['version']}, "
            f"targets {json.dumps(job['spec'].get('targets', {}))}")
        print(subprocess.run([sys.executable, "-m", "kaizen", "history", LOOP, "-n", NAMESPACE], capture_output=True,
                             text=True, env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}).stdout, flush=True)
        print(cluster.kubectl("get", "kaizen", "-n", NAMESPACE).stdout, flush=True)
        if keep:
            say(f"Kaizen is running. export KUBECONFIG={cluster.kubeconfig}; Prometheus at {prometheus.url}, "
                f"collector at {collector.url}. Ctrl-C stops everything.")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
    return 0
