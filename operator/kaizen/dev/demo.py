"""``kaizen dev demo``: Kaizen's main job on the local stack, the whole loop through a served model, from nothing to
a better model that users measure as better.

It builds the demo's data and trains the baseline v1, a small causal LM of a shop's support bot
(:mod:`kaizen.dev.demo_data`, in the background), starts a local control plane (kube-apiserver, controller-manager,
scheduler, kwok's GPU node), a real Prometheus, the feedback collector, the operator as ``kaizen operator`` runs in
the cluster, and the dev node agent (:mod:`kaizen.dev.node_agent`), which runs the model-server pods
(``kaizen_server``) and the training pods as local processes; then it applies ``examples/demo/`` (the served
Deployment, its Service and its ImprovementLoop, pointed at the local Prometheus and collector).

Simulated users (:mod:`kaizen.dev.users`, :mod:`kaizen.dev.traffic`) send real requests to the Service (through
:class:`~kaizen.dev.service_proxy.ServiceProxy`, spread over its ready pods as kube-proxy spreads them), judge each
answer against what they know is right, and rate some answers on their trace in the collector. Then the world
changes (:data:`SCENARIOS`): a policy change makes one of the model's answers wrong. Nothing here sets a quality:
the loop sees what users see, in Prometheus (the collector's feedback counters, the servers' request metrics).

* ``drift`` (scenario (a), the default): the users' dissatisfaction breaches; the loop retrains targeted at their
  corrections; the candidate is gated against the baseline on the same holdout; the canary is judged on the users'
  live feedback and promoted; the users' measured quality recovers, and the demo prints it before and after.
* ``cohort-regression`` (scenario (b)): the change applies to two cohorts only, and the team's data holds no
  requests of the third; the candidate passes its offline gates but answers the third cohort wrongly, and the
  canary's per-cohort analysis rolls it back, naming the metric and its numbers.

Each stage prints what happened and how long it took, and ``kaizen history`` closes with the decision log. It exits
1 when the story did not end as it should. With ``--kubeconfig`` it uses an existing cluster (Prometheus, the
collector and the node agent still run locally; pods run only where a node named ``kaizen-gpu-0`` holds them, as
kwok's does); with ``--keep`` everything stays up until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kaizen.api import KINDS
from kaizen.dev.cluster import ClusterAccess, LocalCluster

if TYPE_CHECKING:
    from kaizen.dev.processes import ManagedProcess

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


def eventually(check: Callable[[], Any], what: str, timeout: float = 90.0,
               explain: Callable[[], str] | None = None) -> Any:
    """Poll ``check`` until it returns something true; on time-out, say what was awaited (and ``explain()``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f": {explain()}" if explain else ""
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
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
        value = f"{sample.get('value') or 0:.3f}"
        # A threshold metric has a value only; a ratio metric its counts too.
        return f"{sample.get('good', 0):.0f}/{sample.get('total', 0):.0f} = {value}" if "total" in sample else value

    parts = [f"{m['name']} canary {track(m.get('canary'))} vs stable {track(m.get('stable'))}: {m['verdict']}"
             for m in record["metrics"]]
    return f"step {record['step']} at {record['weight']}%: " + "; ".join(parts)


def spawn_python(name: str, module: str, args: list[str], log: Path, **env: str) -> ManagedProcess:
    """``python -m module`` as a child that dies with the demo, running this checkout's code (and the trainer's)."""
    from kaizen.dev import processes
    from kaizen.dev.node_agent import IMAGE_PYTHONPATH

    return processes.spawn(name, [sys.executable, "-m", module, *args], log, detach=False,
                           env={**os.environ, "PYTHONPATH": IMAGE_PYTHONPATH, **env})




@dataclass(frozen=True)
class Scenario:
    """One story the demo tells on the same manifests; only the world differs (what the users hold right)."""

    name: str
    title: str
    #: The cohorts the policy change applies to (None: everyone).
    policy_cohorts: tuple[str, ...] | None
    #: How the story ends when it goes as it should: the candidate promoted, or rolled back by the canary.
    ending: str


SCENARIOS = {
    "drift": Scenario("drift", "the return window shrinks from 30 to 14 days for everyone", None, "Promoted"),
    "cohort-regression": Scenario(
        "cohort-regression", "the return window shrinks to 14 days for free and pro customers; business customers "
        "keep 30 days by contract (and the team's replay and holdout hold no business requests)",
        ("free", "pro"), "RolledBack"),
}


def pin_model(cluster: ClusterAccess, deployment: str, container: str, model: dict[str, str]) -> None:
    """Point the Deployment at ``model`` the way a promotion does: only the model variable and the track and version
    labels, server-side applied under Kaizen's field manager (the manifest in git leaves them out)."""
    from kaizen.api.common import ModelRef
    from kaizen.k8s.client import FIELD_MANAGER
    from kaizen.logic.deployments import model_patch

    stable = {"metadata": {"name": deployment, "namespace": NAMESPACE}}
    patch = model_patch(stable, container=container, model_env="MODEL_URI", model=ModelRef(**model))
    cluster.kubectl("apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "--force-conflicts", "-f", "-",
                    input=json.dumps(patch))


def quality_line(snapshot: Any, version: str) -> str:
    counts = snapshot.counts(version, window=True)
    cohorts = ", ".join(f"{c} {snapshot.counts(version, c, window=True).quality:.0%}"
                        for c in ("free", "pro", "business") if snapshot.counts(version, c, window=True).requests)
    return (f"{version} answered {counts.quality:.1%} of {counts.requests} requests right in the last "
            f"{snapshot.window_seconds:.0f}s ({cohorts})" if counts.requests else f"{version} answered nothing")


def run(kubeconfig: Path | None = None, workdir: Path = Path(".kaizen/demo"), keep: bool = False,
        scenario: str = "drift") -> int:
    from kaizen.dev import node_agent, processes, support_domain
    from kaizen.dev.collector import LocalCollector
    from kaizen.dev.prometheus import LocalPrometheus, Target
    from kaizen.dev.service_proxy import ServiceProxy
    from kaizen.dev.traffic import Traffic
    from kaizen.dev.users import Population

    story = SCENARIOS[scenario]
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    node_root = workdir / "node"
    # Each run starts from no feedback: what an earlier run's users said would count as new again.
    (workdir / "collector.db").unlink(missing_ok=True)
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        say(f"Building the demo's data and training the baseline v1, a small causal LM, in the background "
            f"(log: {workdir / 'data.log'})")
        # One thread: the control plane starts on the other cores meanwhile.
        data_args = ["--root", str(node_root)]
        if story.policy_cohorts:
            data_args += ["--policy-cohorts", ",".join(story.policy_cohorts)]
        data = spawn_python("demo-data", "kaizen.dev.demo_data", data_args, workdir / "data.log", OMP_NUM_THREADS="1")
        stack.callback(processes.stop, [data])
        cluster = stack.enter_context(cluster_for(kubeconfig, workdir))
        pod_targets = workdir / "node-agent" / "prometheus-targets.json"
        with stage("Starting Prometheus and the feedback collector"):
            prometheus = stack.enter_context(LocalPrometheus(workdir / "prometheus", pod_targets=[pod_targets]))
            collector = LocalCollector(f"sqlite:///{workdir / 'collector.db'}", workdir / "collector").start()
            stack.callback(collector.stop)
            prometheus.set_targets([Target(collector.url.removeprefix("http://"))])
        with stage("Installing the Kaizen CRDs"):
            cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
            cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                            *(f"crd/{kind.crd_name}" for kind in KINDS))
        log = workdir / "operator.log"
        with stage(f"Starting the operator (kaizen operator --all-namespaces; log: {log})"):
            stack.enter_context(operator_process(cluster, log))
        agent_log = workdir / "node-agent.log"
        with stage("Starting the dev node agent, which runs model-server and training pods as local processes "
                   f"(log: {agent_log})"):
            agent = node_agent.spawn(cluster.kubeconfig, workdir / "node-agent", node_root,
                                     prometheus_targets=pod_targets, log=agent_log)
            stack.callback(processes.stop, [agent])
        with stage("Waiting for the demo's data and the baseline model"):
            eventually(lambda: not data.alive(), "the demo's data", timeout=180)
            if data.exit_code() != 0:
                raise RuntimeError(f"building the demo's data failed:\n{data.log_tail()}")
        say(data.log_tail(1).strip())
        with stage(f"Applying examples/demo/ (the support-bot Deployment, its Service and its ImprovementLoop) in "
                   f"{NAMESPACE}"):
            cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}))
            for secret, scopes in (("collector-token", "read,audit"), ("collector-ingest-token", "ingest")):
                cluster.kubectl("apply", "--server-side", "-n", NAMESPACE, "-f", "-", input=cluster.kubectl(
                    "create", "secret", "generic", secret, "-n", NAMESPACE,
                    f"--from-literal=token={collector.tokens[scopes]}", "--dry-run=client", "-o", "yaml").stdout)
            documents = manifests(prometheus.url, collector.url)
            cluster.kubectl("apply", "--server-side", "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump_all(documents))
            loop = next(d for d in documents if d["kind"] == "ImprovementLoop")
            pin_model(cluster, loop["spec"]["target"]["deployment"], loop["spec"]["target"]["container"],
                      loop["spec"]["model"])
        proxy = stack.enter_context(ServiceProxy(cluster, NAMESPACE, LOOP))
        with stage(f"Waiting for the model servers behind Service {LOOP} (the dev node agent runs them)"):
            eventually(lambda: len(proxy.endpoints()) >= 2, "two ready endpoints", timeout=120)

        # The users: the world as they know it, before the policy change; it changes when the story says so.
        # They rate often (the demo has minutes, not days, to gather feedback), wrong answers more often than right.
        population = Population(support_domain.Domain(support_domain.drift(policy_at=None)), size=300, seed=7,
                                cohorts={"free": 0.35, "pro": 0.25, "business": 0.4}, feedback_right=0.5,
                                feedback_wrong=0.8, noise=0.03)
        traffic = Traffic(population, proxy.url, collector.url, collector.tokens["ingest"], collector.tokens["admin"],
                          model=LOOP, rate=20, duration=900, threads=4, window=20)
        stack.enter_context(traffic)
        say(f"300 simulated users send {traffic.rate:g} requests/s to Service {LOOP} ({proxy.url}), judge each "
            "answer against what they know is right, and rate some of them on the answer's trace")
        with stage("Serving: waiting for the loop to observe its signals"):
            status = eventually(lambda: (s := loop_status(cluster)).get("phase") == "Observing"
                                and s.get("signals") and all(x["state"] == "Healthy" for x in s["signals"]) and s,
                                "healthy signals", timeout=120, explain=lambda: signal_line(loop_status(cluster)))
        say(f"Signals: {signal_line(status)}; decision: {status['decisions'][0]['reason']}")
        say(f"Measured: {quality_line(traffic.snapshot(), 'v1')}")

        # The drift: the world changes under the served model; nothing touches the model or its numbers.
        population.domain = support_domain.Domain(support_domain.drift(
            policy_at=traffic.now(), policy_cohorts=story.policy_cohorts))
        with stage(f"The policy changes: {story.title}. Waiting for the users' verdict and the loop's decision"):
            jobs = eventually(lambda: children(cluster, "retrainjob"), "a RetrainJob", timeout=180,
                              explain=lambda: f"{signal_line(s := loop_status(cluster))}; "
                              f"{(s.get('decisions') or [{}])[0].get('reason')}")
        status = loop_status(cluster)
        job = jobs[0]
        name = job["metadata"]["name"]
        say(f"Signals: {signal_line(status)}")
        say(f"Created RetrainJob {name}: baseline {job['spec']['baseline']['version']}, "
            f"targets {json.dumps(job['spec'].get('targets', {}))}")

        with stage(f"Training: the dev node agent runs {name}'s trainer pod (log: "
                   f"{workdir / 'node-agent' / 'pods'}/{NAMESPACE}_{name}-trainer-*/container.log)"):
            job = eventually(lambda: (j := kaizen_object(cluster, "retrainjob", name)).get("status", {})
                             .get("phase") in ("Succeeded", "Failed") and j, f"RetrainJob {name}", timeout=240)
        job_status = job["status"]
        # v1 has served on through the training: the window now holds its answers since the change.
        before = traffic.snapshot()
        say(f"Measured: {quality_line(before, 'v1')}")
        say(f"RetrainJob {name}: {job_status['phase']}, verdict {job_status.get('verdict')}: "
            f"{job_status.get('message')}")
        for gate in job_status.get("gates", []):
            say(f"  {gate_line(gate)}")
        ended = None
        if job_status.get("verdict") == "Passed":
            candidate = job_status["candidate"]["version"]
            with stage(f"Rolling out {candidate}: a canary judged on the users' live feedback against the stable v1"):
                rollout = eventually(lambda: [r for r in children(cluster, "rollout")
                                              if r.get("status", {}).get("phase") in
                                              ("Promoted", "RolledBack", "Aborted")], "the Rollout to end",
                                     timeout=420)[0]
            for record in rollout["status"].get("analysis", [])[:1]:
                say(f"Analysis: {analysis_line(record)}")
            ended = rollout["status"]["phase"]
            say(f"Rollout {rollout['metadata']['name']}: {ended}: {rollout['status'].get('message')}")
            if ended == "Promoted":
                with stage(f"Waiting for the loop to serve {candidate} and its signals to clear"):
                    status = eventually(lambda: (s := loop_status(cluster)).get("model", {}).get("version")
                                        == candidate and s.get("phase") == "Observing" and s,
                                        f"the loop to serve {candidate}", timeout=120)
                    # A full window of answers from the promoted model alone.
                    eventually(lambda: (snap := traffic.snapshot()).counts(candidate, window=True).requests > 0
                               and snap.counts(window=True).requests == snap.counts(candidate, window=True).requests,
                               f"a window of answers from {candidate} alone", timeout=120)
                say(f"Serving {status['model']['version']} ({status['model']['uri']}); signals: "
                    f"{signal_line(status)}")
                after = traffic.snapshot()
                say(f"Measured: {quality_line(after, candidate)}")
                say(f"Quality the users measured: {before.quality('v1', window=True):.1%} right with v1 after the "
                    f"change, {after.quality(candidate, window=True):.1%} with {candidate}")
            else:
                say(f"Still serving v1: {quality_line(traffic.snapshot(), 'v1')}")
        final = traffic.snapshot()
        say(f"Traffic: {final.sent} requests, {final.errors} failed, {final.feedback} feedback items, "
            f"{final.opt_outs} opt-outs")
        print(subprocess.run([sys.executable, "-m", "kaizen", "history", LOOP, "-n", NAMESPACE], capture_output=True,
                             text=True, env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}).stdout, flush=True)
        print(cluster.kubectl("get", "kaizen", "-n", NAMESPACE).stdout, flush=True)
        report = subprocess.run([sys.executable, "-m", "kaizen", "report", LOOP, "-n", NAMESPACE, "-o",
                                 str(workdir / "report.html"), "--prometheus", prometheus.url], capture_output=True,
                                text=True, env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)})
        say(f"Report: {report.stdout.strip()}" if report.returncode == 0 else f"No report: {report.stderr.strip()}")
        told = ended == story.ending
        say(f"The story ended as it should ({story.ending}) in {time.monotonic() - began:.0f}s" if told else
            f"The story did not end as it should (wanted {story.ending}, got {ended}; see the decision log); "
            f"{time.monotonic() - began:.0f}s")
        if keep:
            say(f"Kaizen is running. export KUBECONFIG={cluster.kubeconfig}; Prometheus at {prometheus.url}, "
                f"collector at {collector.url}, the model at {proxy.url}. Ctrl-C stops everything.")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
    return 0 if told else 1
