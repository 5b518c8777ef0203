"""``kaizen dev demo``: Kaizen's main job on the local stack, the whole loop from nothing to a better model served.

It builds the demo's data and trains a tiny baseline (:mod:`kaizen.dev.demo_data`, in the background), starts a
local control plane (kube-apiserver, controller-manager, scheduler, kwok's GPU node), a real Prometheus, the
feedback collector, the operator as ``kaizen operator`` runs in the cluster, and the dev node agent
(:mod:`kaizen.dev.node_agent`) that runs training pods as local processes; then it applies ``examples/demo/`` (the
served Deployment and its ImprovementLoop, pointed at the local Prometheus and collector). It plays the model
server's pods (:class:`Telemetry`: an emitter per Deployment, labelled as its pods) and the users: the model serves
healthily and the loop does nothing; users report wrong actions on refund requests, with the right ones, and the
error rate climbs; the loop sees the breach sustained and retrains on the corrections; the candidate is trained and
gated against the baseline on the same holdout; the loop rolls it out as a canary, judged on live telemetry
against the stable, and promotes it; the loop serves it. Each stage prints what happened and how long it took, and
``kaizen history`` closes with the decision log. It exits 1 when the loop did not close.

With ``--kubeconfig`` it uses an existing cluster (Prometheus, the collector and the node agent still run locally;
training pods run only where a node named ``kaizen-gpu-0`` holds them, as kwok's does); with ``--keep`` everything
stays up until Ctrl-C.
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
from typing import TYPE_CHECKING, Any

import yaml

from kaizen.api import KINDS
from kaizen.dev.cluster import ClusterAccess, LocalCluster

if TYPE_CHECKING:
    from kaizen.dev.emitter import Emitter
    from kaizen.dev.processes import ManagedProcess
    from kaizen.dev.prometheus import LocalPrometheus

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
def operator_process(cluster: ClusterAccess, log: Path, *scope: str) -> Iterator[subprocess.Popen[bytes]]:
    """``kaizen operator`` in a child process, as the chart's Deployment runs it: ``scope`` is its namespace options
    (default ``--all-namespaces``). Stopped with SIGTERM on the way out."""
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "kaizen", "operator", *(scope or ["--all-namespaces"])],
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
    return kaizen_object(cluster, "improvementloop", LOOP).get("status", {})


def signal_line(status: dict[str, Any]) -> str:
    return ", ".join(f"{s['name']}={s.get('value', 'no data') if s.get('value') is None else round(s['value'], 3)}"
                     f" ({s['state']})" for s in status.get("signals", []))


class Telemetry:
    """The served model's telemetry as its pods would report it: one emitter per Deployment of the target (the
    stable one, and the canary while a Rollout runs), labelled as the Deployment's pods, sending 50 requests/s per
    replica with the error rate of the model version it serves. Kept in step with the Deployments by :meth:`sync`."""

    RATE_PER_REPLICA = 50

    def __init__(self, workdir: Path, prometheus: LocalPrometheus, default_error_rate: float) -> None:
        self.workdir, self.prometheus = workdir, prometheus
        self.error_rates: dict[str, float] = {}  # model version -> error rate, where not the default
        self.default_error_rate = default_error_rate
        self.emitters: dict[str, tuple[Emitter, dict[str, str], int]] = {}  # Deployment -> emitter, labels, replicas

    def error_rate(self, labels: dict[str, str]) -> float:
        return self.error_rates.get(labels.get("kaizen.dev/model-version", ""), self.default_error_rate)

    def set_error_rate(self, version: str, error_rate: float) -> None:
        """From now on, pods serving ``version`` fail ``error_rate`` of their requests."""
        self.error_rates[version] = error_rate
        for emitter, labels, _ in self.emitters.values():
            emitter.set(error_rate=self.error_rate(labels))

    def sync(self, cluster: ClusterAccess) -> None:
        """Start, change or stop emitters to match the target's Deployments now."""
        from kaizen.dev.emitter import Emitter
        from kaizen.dev.prometheus import pod_target

        listed = json.loads(cluster.kubectl("get", "deployments", "-n", NAMESPACE, "-o", "json").stdout)["items"]
        templates = {d["metadata"]["name"]: (d["spec"]["template"]["metadata"].get("labels", {}),
                                             d["spec"].get("replicas") or 0) for d in listed}
        wanted = {name: (labels, replicas) for name, (labels, replicas) in templates.items()
                  if labels.get("app") == LOOP and replicas}
        if {name: (labels, replicas) for name, (_, labels, replicas) in self.emitters.items()} == wanted:
            return
        for name in set(self.emitters) - set(wanted):
            self.emitters.pop(name)[0].stop()
        for name, (labels, replicas) in wanted.items():
            rate = self.RATE_PER_REPLICA * replicas
            if name in self.emitters:
                emitter = self.emitters[name][0]
                emitter.set(rate=rate, error_rate=self.error_rate(labels))
            else:
                emitter = Emitter(self.workdir, name=f"{name}-telemetry", rate=rate, error_rate=self.error_rate(labels))
            self.emitters[name] = (emitter, labels, replicas)
        self.prometheus.set_targets([pod_target(emitter.address, namespace=NAMESPACE, pod=f"{name}-0", labels=labels)
                                     for name, (emitter, labels, _) in sorted(self.emitters.items())])

    def stop(self) -> None:
        for emitter, _, _ in self.emitters.values():
            emitter.stop()
        self.emitters.clear()


def kaizen_object(cluster: ClusterAccess, kind: str, name: str) -> dict[str, Any]:
    return json.loads(cluster.kubectl("get", f"{kind}.kaizen.dev", name, "-n", NAMESPACE, "-o", "json").stdout)


def children(cluster: ClusterAccess, kind: str) -> list[dict[str, Any]]:
    return json.loads(cluster.kubectl("get", f"{kind}.kaizen.dev", "-n", NAMESPACE, "-o", "json").stdout)["items"]


def gate_line(gate: dict[str, Any]) -> str:
    metric = ".".join(p for p in (gate["dataset"], gate["metric"], gate.get("cohort")) if p)
    numbers = f"candidate {gate['candidate']:.3f}" if gate.get("candidate") is not None else "not measured"
    if gate.get("baseline") is not None:
        numbers += f", baseline {gate['baseline']:.3f}"
    return f"gate {metric} ({gate['threshold']}): {numbers}: {'passed' if gate['passed'] else 'FAILED'}"


def analysis_line(record: dict[str, Any]) -> str:
    def track(sample: dict[str, Any] | None) -> str:
        sample = sample or {}
        return f"{sample.get('good', 0):.0f}/{sample.get('total', 0):.0f} = {sample.get('value') or 0:.3f}"

    parts = [f"{m['name']} canary {track(m.get('canary'))} vs stable {track(m.get('stable'))}: {m['verdict']}"
             for m in record["metrics"]]
    return f"step {record['step']} at {record['weight']}%: " + "; ".join(parts)


def spawn_python(name: str, module: str, args: list[str], log: Path, **env: str) -> ManagedProcess:
    """``python -m module`` as a child that dies with the demo, running this checkout's code (and the trainer's)."""
    from kaizen.dev import processes
    from kaizen.dev.node_agent import IMAGE_PYTHONPATH

    return processes.spawn(name, [sys.executable, "-m", module, *args], log, detach=False,
                           env={**os.environ, "PYTHONPATH": IMAGE_PYTHONPATH, **env})


def run(kubeconfig: Path | None = None, workdir: Path = Path(".kaizen/demo"), keep: bool = False) -> int:
    from kaizen.dev import processes
    from kaizen.dev.collector import LocalCollector
    from kaizen.dev.prometheus import LocalPrometheus
    from kaizen.sdk import FeedbackRecorder

    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    node_root, users_file = workdir / "node", workdir / "users.jsonl"
    # Each run starts from no feedback: what an earlier run's users said would count as new again.
    (workdir / "collector.db").unlink(missing_ok=True)
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        say(f"Building the demo's data and training the baseline v1 in the background (log: {workdir / 'data.log'})")
        # One thread: the control plane starts on the other cores meanwhile.
        data = spawn_python("demo-data", "kaizen.dev.demo_data", ["--root", str(node_root), "--users",
                            str(users_file)], workdir / "data.log", OMP_NUM_THREADS="1")
        stack.callback(processes.stop, [data])
        cluster = stack.enter_context(cluster_for(kubeconfig, workdir))
        with stage("Starting Prometheus and the feedback collector"):
            prometheus = stack.enter_context(LocalPrometheus(workdir / "prometheus"))
            collector = LocalCollector(f"sqlite:///{workdir / 'collector.db'}", workdir / "collector").start()
            stack.callback(collector.stop)
        # The model server's pods: every version fails 0.5 % of requests, until refund requests make v1 fail more.
        telemetry = Telemetry(workdir, prometheus, default_error_rate=0.005)
        stack.callback(telemetry.stop)
        with stage("Installing the Kaizen CRDs"):
            cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
            cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                            *(f"crd/{kind.crd_name}" for kind in KINDS))
        log = workdir / "operator.log"
        with stage(f"Starting the operator (kaizen operator --all-namespaces; log: {log})"):
            stack.enter_context(operator_process(cluster, log))
        agent_log = workdir / "node-agent.log"
        with stage(f"Starting the dev node agent, which runs training pods as local processes (log: {agent_log})"):
            agent = spawn_python("node-agent", "kaizen.dev.node_agent", [
                "--kubeconfig", str(cluster.kubeconfig), "--dir", str(workdir / "node-agent"),
                "--root", str(node_root)], agent_log)
            stack.callback(processes.stop, [agent])
        with stage("Waiting for the demo's data and the baseline model"):
            eventually(lambda: not data.alive(), "the demo's data", timeout=120)
            if data.exit_code() != 0:
                raise RuntimeError(f"building the demo's data failed:\n{data.log_tail()}")
        with stage(f"Applying examples/demo/ (the support-bot Deployment and its ImprovementLoop) in {NAMESPACE}"):
            cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}))
            cluster.kubectl("apply", "--server-side", "-n", NAMESPACE, "-f", "-", input=cluster.kubectl(
                "create", "secret", "generic", "collector-token", "-n", NAMESPACE,
                f"--from-literal=token={collector.tokens['read,audit']}", "--dry-run=client", "-o", "yaml").stdout)
            documents = manifests(prometheus.url, collector.url)
            cluster.kubectl("apply", "--server-side", "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump_all(documents))
            telemetry.sync(cluster)

        def observed(check: Callable[[], Any]) -> Callable[[], Any]:
            """``check``, with the telemetry following the Deployments first, as pods would."""
            def synced() -> Any:
                telemetry.sync(cluster)
                return check()
            return synced

        with stage("Serving healthily: waiting for the loop to observe its signals"):
            status = eventually(observed(lambda: (s := loop_status(cluster)).get("phase") == "Observing"
                                and all(x["state"] == "Healthy" for x in s.get("signals", [{"state": "?"}])) and s),
                                "healthy signals")
        say(f"Signals: {signal_line(status)}; decision: {status['decisions'][0]['reason']}")

        conversations = [json.loads(line) for line in users_file.read_text().splitlines()]
        with stage(f"{len(conversations)} users report wrong actions on refund requests (with the right one); "
                   "the error rate climbs to 20 %"):
            users = FeedbackRecorder(collector.url, collector.tokens["ingest"], model=LOOP, model_version="v1",
                                     track="stable")
            for row in conversations:
                trace = users.trace(row["input"], row["output"], scenario=row["scenario"],
                                    subject_id=row["subjectId"], consent_training=True)
                users.feedback(trace, "down", category="incorrect", correction=row["target"],
                               subject_id=row["subjectId"], consent_training=True)
            telemetry.set_error_rate("v1", 0.2)
        with stage("Waiting for the loop to see the breach sustained and decide"):
            jobs = eventually(observed(lambda: children(cluster, "retrainjob")), "a RetrainJob")
        status = loop_status(cluster)
        job = jobs[0]
        name = job["metadata"]["name"]
        say(f"Signals: {signal_line(status)}")
        say(f"Created RetrainJob {name}: baseline {job['spec']['baseline']['version']}, "
            f"targets {json.dumps(job['spec'].get('targets', {}))}")

        with stage(f"Training: the dev node agent runs {name}'s trainer pod (log: "
                   f"{workdir / 'node-agent' / 'pods'}/{NAMESPACE}_{name}-trainer-*/container.log)"):
            job = eventually(observed(lambda: (j := kaizen_object(cluster, "retrainjob", name)).get("status", {})
                                      .get("phase") in ("Succeeded", "Failed") and j), f"RetrainJob {name}",
                             timeout=180)
        job_status = job["status"]
        say(f"RetrainJob {name}: {job_status['phase']}, verdict {job_status.get('verdict')}: "
            f"{job_status.get('message')}")
        for gate in job_status.get("gates", []):
            say(f"  {gate_line(gate)}")
        closed = False
        if job_status.get("verdict") == "Passed":
            candidate = job_status["candidate"]["version"]
            with stage(f"Rolling out {candidate}: a canary judged on live telemetry against the stable v1"):
                rollout = eventually(observed(lambda: [r for r in children(cluster, "rollout")
                                                       if r.get("status", {}).get("phase") in
                                                       ("Promoted", "RolledBack", "Aborted")]),
                                     "the Rollout to end", timeout=180)[0]
            passed = [r for r in rollout["status"].get("analysis", []) if r["verdict"] == "Pass"]
            if passed:
                say(f"Analysis: {analysis_line(passed[0])}")
            say(f"Rollout {rollout['metadata']['name']}: {rollout['status']['phase']}: "
                f"{rollout['status'].get('message')}")
            if rollout["status"]["phase"] == "Promoted":
                with stage(f"Waiting for the loop to serve {candidate} and its signals to clear"):
                    status = eventually(observed(lambda: (s := loop_status(cluster)).get("model", {})
                                                 .get("version") == candidate and s.get("phase") == "Observing"
                                                 and s), f"the loop to serve {candidate}", timeout=120)
                say(f"Serving {status['model']['version']} ({status['model']['uri']}); signals: "
                    f"{signal_line(status)}")
                closed = True
        print(subprocess.run([sys.executable, "-m", "kaizen", "history", LOOP, "-n", NAMESPACE], capture_output=True,
                             text=True, env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}).stdout, flush=True)
        print(cluster.kubectl("get", "kaizen", "-n", NAMESPACE).stdout, flush=True)
        say(f"The loop closed in {time.monotonic() - began:.0f}s" if closed else
            f"The loop did not close (see the decision log); {time.monotonic() - began:.0f}s")
        if keep:
            say(f"Kaizen is running. export KUBECONFIG={cluster.kubeconfig}; Prometheus at {prometheus.url}, "
                f"collector at {collector.url}. Ctrl-C stops everything.")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
    return 0 if closed else 1
