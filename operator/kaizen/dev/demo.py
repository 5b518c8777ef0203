"""``kaizen dev demo``: Kaizen's main job on the local stack, the whole loop through a served model, from nothing to
a better model that users measure as better.

It builds the demo's data and trains the baseline v1, a small causal LM of a shop's support bot
(:mod:`kaizen.dev.demo_data`, in the background), starts a local control plane (kube-apiserver, controller-manager,
scheduler, kwok's GPU node), a real Prometheus, the feedback collector, the operator as ``kaizen operator`` runs in
the cluster, and the dev node agent (:mod:`kaizen.dev.node_agent`), which runs the model-server pods
(``kaizen_server``) and the training pods as local processes, and a Gateway API gateway
(:class:`~kaizen.dev.gateway.LocalGateway`: Traefik, routing by the cluster's HTTPRoutes); then it applies
``examples/demo/`` (the served Deployment, its Services, the HTTPRoute users reach it by, and its ImprovementLoop,
pointed at the local Prometheus and collector).

Simulated users (:mod:`kaizen.dev.users`, :mod:`kaizen.dev.traffic`) send real requests through the gateway, judge
each answer against what they know is right, and rate some answers on their trace in the collector. Then the world
changes (:data:`SCENARIOS`): a policy change makes one of the model's answers wrong, and in the ``drift`` story the
users also start asking something new. Nothing here sets a quality: the loop sees what users see, in Prometheus (the
collector's feedback counters, the servers' request metrics), and the collector's drift pass sees the requests
themselves change (``kaizen_input_drift``), which the demo prints beside the feedback signal's breach
(:func:`drift_line`).

The loop's canary gets its share on the HTTPRoute (``trafficRouting.gatewayAPI``): the demo follows the Rollout and
the route look by look (:func:`follow_rollout`), prints each step's weight as the status and the route hold it, the
requests the servers counted per track in Prometheus at each weight (:func:`served_by_track`), and the route after
the rollout, back to 100/0 on the stable. With ``--routing replicas`` the canary is pods beside the stable ones
behind the Service ``support-bot``, and the users reach it through
:class:`~kaizen.dev.service_proxy.ServiceProxy` (spread over its ready pods as kube-proxy spreads them).

* ``drift`` (scenario (a), the default): customers start asking to pause their plan, which v1 never saw, and 20 s
  later the return policy changes; the input drift (the requests themselves) rises first, then the users'
  dissatisfaction breaches (only feedback can show that a right answer became wrong); the loop retrains
  targeted at their corrections; the candidate is gated against the baseline on the same holdout; the canary is
  judged on the users' live feedback and promoted; the users' measured quality recovers, and the demo prints it
  before and after, and the input drift against the promoted version clears.
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
from kaizen.api.actions import parse_timestamp
from kaizen.dev.cluster import ClusterAccess, LocalCluster

if TYPE_CHECKING:
    from kaizen.dev.processes import ManagedProcess

REPO_ROOT = Path(__file__).resolve().parents[3]
DEMO = REPO_ROOT / "examples" / "demo"
NAMESPACE = "kaizen-demo"
LOOP = "support-bot"
#: How the canary's share is routed: the HTTPRoute of examples/demo/gateway.yaml (the default), or replicas.
ROUTINGS = ("gatewayAPI", "replicas")
#: The Gateway the demo runs (examples/demo/gateway.yaml's route attaches to it).
GATEWAY = "demo-gateway"
TERMINAL = ("Promoted", "RolledBack", "Aborted")
#: Seconds from the first look that saw a weight to the start of the servers' counts at it: Traefik serves a
#: changed route within a second, and Prometheus scrapes every second.
SETTLE = 2.0
#: Seconds a routing state must hold to count as one: the operator writes the route, then the Rollout's status, and
#: on a loaded machine a second or more can pass between the two.
HOLD = 2.0


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


def manifests(prometheus_url: str, collector_url: str, routing: str = "gatewayAPI") -> list[dict[str, Any]]:
    """examples/demo/*.yaml with the local Prometheus and collector filled in. With ``routing`` replicas, without
    gateway.yaml (the HTTPRoute and its Services), and the loop's canary routed by replicas."""
    if routing not in ROUTINGS:
        raise ValueError(f"unknown routing {routing!r}: expected one of {', '.join(ROUTINGS)}")
    documents = []
    for path in sorted(DEMO.glob("*.yaml")):
        if routing == "replicas" and path.name == "gateway.yaml":
            continue
        text = path.read_text().replace("http://prometheus.local", prometheus_url)
        documents.extend(yaml.safe_load_all(text.replace("http://collector.local", collector_url)))
    if routing == "replicas":
        loop = next(d for d in documents if d["kind"] == "ImprovementLoop")
        loop["spec"]["rollout"]["trafficRouting"] = {"replicas": {}}
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


@dataclass(frozen=True)
class Routed:
    """The canary's routing as one look saw it: the Rollout's step and phase, the weight it asks and the share it
    achieves, its canary's size, and (gatewayAPI routing) the weights of the backendRefs of the HTTPRoute's rule."""

    step: int | None
    phase: str | None
    asked: int | None
    achieved: float | None
    canary_replicas: int | None
    route: tuple[tuple[str, int], ...] = ()

    def backends(self, route: str) -> str:
        return f"HTTPRoute {route}: " + ", ".join(f"{name}={weight}" for name, weight in self.route)

    def line(self, route: str | None) -> str:
        return (f"Routing: step {self.step} {self.phase}: canary weight {self.asked}% asked, {self.achieved or 0:g}% "
                f"achieved, {self.canary_replicas or 0} canary pod(s)" + (f"; {self.backends(route)}" if route else ""))


@dataclass
class Held:
    """A routing state that held for :data:`HOLD` seconds or more, and from when to when (Unix seconds)."""

    routed: Routed
    since: float
    until: float


def route_weights(objects: Any, name: str) -> tuple[tuple[str, int], ...]:
    """(backend, weight) of the route's rule, in order: its first rule that is not one of Kaizen's own."""
    route = objects.get_namespaced_custom_object("gateway.networking.k8s.io", "v1", NAMESPACE, "httproutes", name)
    rule: dict[str, Any]
    rule = next((r for r in route["spec"].get("rules") or [] if not (r.get("name") or "").startswith("kaizen-")), {})
    return tuple((b["name"], b.get("weight", 1)) for b in rule.get("backendRefs") or [])


def follow_rollout(cluster: ClusterAccess, route: str | None, timeout: float) -> tuple[dict[str, Any], list[Held]]:
    """Follow the loop's Rollout to its end, with its route: every routing state that held for :data:`HOLD` seconds
    (so never the moment between the operator's write of the route and its write of the status), as it comes."""
    import kubernetes.client

    objects: Any = kubernetes.client.CustomObjectsApi(cluster.api_client())  # its custom objects are the API's JSON
    held: list[Held] = []
    previous: tuple[Routed, float] | None = None
    deadline = time.monotonic() + timeout
    while True:
        now = time.time()
        rollouts = sorted(objects.list_namespaced_custom_object("kaizen.dev", "v1alpha1", NAMESPACE, "rollouts")
                          ["items"], key=lambda r: r["metadata"]["creationTimestamp"])
        if rollouts:
            rollout = rollouts[0]
            status = rollout.get("status") or {}
            routed = Routed(status.get("currentStep"), status.get("phase"), status.get("canaryWeight"),
                            status.get("achievedWeight"), status.get("canaryReplicas"),
                            route_weights(objects, route) if route else ())
            if previous is not None and previous[0] == routed and now - previous[1] >= HOLD:
                if held and held[-1].routed == routed:
                    held[-1].until = now
                else:
                    held.append(Held(routed, previous[1], now))
                    say(routed.line(route))
                if routed.phase in TERMINAL:
                    return rollout, held
            if previous is None or previous[0] != routed:
                previous = (routed, now)
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for the Rollout to end"
                               + (f" (last: {held[-1].routed.line(route)})" if held else ""))
        time.sleep(0.5)


def served_by_track(prometheus: Any, held: list[Held]) -> list[tuple[float | None, int, int, float]]:
    """For each span of looks at one reached weight (asked and achieved alike) while the Rollout was under way: the
    weight, the requests the servers counted for the stable and the canary track (Prometheus's
    ``kaizen_server_requests_total``, per pod, from :data:`SETTLE` seconds into the span to its last look), and the
    seconds counted."""
    spans: list[list[Held]] = []
    for state, before in zip(held, [None, *held]):
        routed = state.routed
        # Paused (holding for metrics or approval) serves at its weight as Progressing does.
        if routed.phase not in ("Progressing", "Paused") or routed.asked is None or routed.achieved != routed.asked:
            continue
        if spans and spans[-1][-1] is before and before.routed.achieved == routed.achieved:
            spans[-1].append(state)
        else:
            spans.append([state])
    query = f'sum by (pod, track) (kaizen_server_requests_total{{namespace="{NAMESPACE}",app="{LOOP}"}})'
    counted = []
    for span in spans:
        start, end = span[0].since + SETTLE, span[-1].until
        if end - start < 2:
            continue
        counts = [{(r["metric"].get("pod"), r["metric"].get("track")): float(r["value"][1])
                   for r in prometheus.query(query, at=at)} for at in (start, end)]
        tracks = {"stable": 0.0, "canary": 0.0}
        for (pod, track), value in counts[1].items():
            first = counts[0].get((pod, track), 0.0)
            # A pod that restarted counts from zero again.
            tracks[track] = tracks.get(track, 0.0) + (value - first if value >= first else value)
        counted.append((span[0].routed.achieved, round(tracks["stable"]), round(tracks["canary"]), end - start))
    return counted


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
    #: Whether the users also start asking something new (pausing a plan), :data:`NEW_INTENT_LEAD` before the
    #: policy change: an input drift, which the requests show, before a change of the right answer, which only the
    #: users' feedback can.
    new_intent: bool = False


#: Seconds between the new intent's first requests and the policy change in the ``drift`` story.
NEW_INTENT_LEAD = 20.0

SCENARIOS = {
    "drift": Scenario("drift", f"customers start asking to pause their plan, and {NEW_INTENT_LEAD:g} s later the "
                      "return window shrinks from 30 to 14 days for everyone", None, "Promoted", new_intent=True),
    "cohort-regression": Scenario(
        "cohort-regression", "the return window shrinks to 14 days for free and pro customers; business customers "
        "keep 30 days by contract (and the team's replay and holdout hold no business requests)",
        ("free", "pro"), "RolledBack"),
}


#: The collector's drift pass in the demo: every 5 s, the newest 200 requests of the last 15 s against the first 200
#: the served version answered. Only the model's whole traffic is tested (a cohort has fewer than 200 requests in
#: 15 s). 200 a side, as bench/drift measured its lead with: at 100, a new intent asked by one request in twelve is
#: found in a few passes only (one new category in a chi-square of ten).
DRIFT_PASS = ("--drift-every", "5", "--drift-window", "15", "--drift-sample", "200", "--drift-min-traces", "200")
DRIFT_QUERY = f'kaizen_input_drift{{model="{LOOP}",cohort=""}}'


class DriftWatch:
    """The collector's input-drift gauges of the demo's model, as Prometheus scraped them: :meth:`look` notes the
    first time they say ``drifted`` (and the gauges then), :meth:`now` reads the flag."""

    def __init__(self, prometheus: Any) -> None:
        self.prometheus = prometheus
        self.first: float | None = None
        self.gauges: dict[str, float] = {}

    def read(self) -> dict[str, float]:
        return {r["metric"]["method"]: float(r["value"][1]) for r in self.prometheus.query(DRIFT_QUERY)}

    def look(self) -> None:
        if self.first is None:
            gauges = self.read()
            if gauges.get("drifted") == 1.0:
                self.first, self.gauges = time.time(), gauges

    def now(self) -> float | None:
        return self.read().get("drifted")


def drift_line(drift: DriftWatch, status: dict[str, Any], changed_at: float) -> str:
    """When the requests themselves were seen to change, against when the users' verdict breached."""
    breached = [s for s in status.get("signals", []) if s["state"] == "Breached" and s.get("since")]
    verdict = "no feedback signal had breached"
    if breached:
        after = parse_timestamp(breached[0]["since"]).timestamp() - changed_at
        verdict = f"the users' {breached[0]['name']} breached {after:.0f}s after it"
    if drift.first is None:
        return f"Input drift: none seen by the collector; {verdict}"
    g = drift.gauges
    return (f"Input drift: the collector saw the requests change {drift.first - changed_at:.0f}s after the change "
            f"(novel share {g.get('novel_share', float('nan')):.2f}, novelty p {g.get('novelty_p_value', 1):.3g}; "
            f"request mix PSI {g.get('scenario_psi', float('nan')):.2f}, chi-square p "
            f"{g.get('scenario_chi2_p_value', 1):.3g}); {verdict}")


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


def gateway_api_served(cluster: ClusterAccess) -> bool:
    """Whether the cluster serves Gateway API's HTTPRoutes already (a cluster given with --kubeconfig may)."""
    return cluster.kubectl("get", "crd", "httproutes.gateway.networking.k8s.io", check=False).returncode == 0


def ready_endpoints(cluster: ClusterAccess, service: str) -> int:
    """Ready endpoints in the EndpointSlices of ``service``."""
    slices = json.loads(cluster.kubectl("get", "endpointslices", "-n", NAMESPACE, "-l",
                                        f"kubernetes.io/service-name={service}", "-o", "json").stdout)["items"]
    return sum(1 for s in slices for e in s.get("endpoints") or [] if (e.get("conditions") or {}).get("ready"))


def answers(url: str) -> bool:
    """Whether ``url`` (the gateway) answers ``GET /v1/models``: its route is programmed and a server behind it."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def run(kubeconfig: Path | None = None, workdir: Path = Path(".kaizen/demo"), keep: bool = False,
        scenario: str = "drift", routing: str = "gatewayAPI") -> int:
    from kaizen.dev import node_agent, processes, support_domain
    from kaizen.dev.collector import LocalCollector
    from kaizen.dev.gateway import LocalGateway, install_gateway_api, local_service
    from kaizen.dev.prometheus import LocalPrometheus, Target
    from kaizen.dev.service_proxy import ServiceProxy
    from kaizen.dev.traffic import Traffic
    from kaizen.dev.users import Population

    story = SCENARIOS[scenario]
    if routing not in ROUTINGS:
        raise ValueError(f"unknown routing {routing!r}: expected one of {', '.join(ROUTINGS)}")
    by_gateway = routing == "gatewayAPI"
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
        if story.new_intent:
            data_args += ["--new-intent"]  # the team's holdout holds the new requests too, to gate on them
        data = spawn_python("demo-data", "kaizen.dev.demo_data", data_args, workdir / "data.log", OMP_NUM_THREADS="1")
        stack.callback(processes.stop, [data])
        cluster = stack.enter_context(cluster_for(kubeconfig, workdir))
        pod_targets = workdir / "node-agent" / "prometheus-targets.json"
        with stage("Starting Prometheus and the feedback collector"):
            prometheus = stack.enter_context(LocalPrometheus(workdir / "prometheus", pod_targets=[pod_targets]))
            collector = LocalCollector(f"sqlite:///{workdir / 'collector.db'}", workdir / "collector",
                                       *DRIFT_PASS).start()
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
        cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}))
        if by_gateway:
            # While the baseline trains on its one thread.
            gateway_log = workdir / "gateway" / "traefik.log"
            with stage(f"Starting the Gateway {GATEWAY}: Traefik, a Gateway API implementation, routing by the "
                       f"cluster's HTTPRoutes (log: {gateway_log})"):
                # A cluster of one's own keeps the Gateway API release it has; the local one gets the pinned one.
                if not (kubeconfig and gateway_api_served(cluster)):
                    install_gateway_api(cluster)
                gateway = stack.enter_context(LocalGateway(cluster, NAMESPACE, GATEWAY, workdir / "gateway"))
        with stage("Waiting for the demo's data and the baseline model"):
            eventually(lambda: not data.alive(), "the demo's data", timeout=180)
            if data.exit_code() != 0:
                raise RuntimeError(f"building the demo's data failed:\n{data.log_tail()}")
        say(data.log_tail(1).strip())
        documents = manifests(prometheus.url, collector.url, routing)
        loop = next(d for d in documents if d["kind"] == "ImprovementLoop")
        route = loop["spec"]["rollout"]["trafficRouting"].get("gatewayAPI")
        what = ("the support-bot Deployment, its Services, its HTTPRoute and its ImprovementLoop" if by_gateway else
                "the support-bot Deployment, its Service and its ImprovementLoop")
        with stage(f"Applying examples/demo/ ({what}) in {NAMESPACE}"):
            for secret, scopes in (("collector-token", "read,audit"), ("collector-ingest-token", "ingest")):
                cluster.kubectl("apply", "--server-side", "-n", NAMESPACE, "-f", "-", input=cluster.kubectl(
                    "create", "secret", "generic", secret, "-n", NAMESPACE,
                    f"--from-literal=token={collector.tokens[scopes]}", "--dry-run=client", "-o", "yaml").stdout)
            if route:
                # The route's Services reach the agent's pods by the local gateway's endpoints (kaizen.dev.gateway).
                backends = {route["stableBackend"]["name"], route["canaryBackend"]["name"]}
                documents = [local_service(d) if d["kind"] == "Service" and d["metadata"]["name"] in backends else d
                             for d in documents]
            cluster.kubectl("apply", "--server-side", "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump_all(documents))
            pin_model(cluster, loop["spec"]["target"]["deployment"], loop["spec"]["target"]["container"],
                      loop["spec"]["model"])
        if route:
            url, through = gateway.url, f"Gateway {GATEWAY}'s HTTPRoute {route['httpRoute']}"
            stable_service = route["stableBackend"]["name"]
            with stage(f"Waiting for the model servers behind Service {stable_service} and the route to them (the dev "
                       "node agent runs them)"):
                eventually(lambda: ready_endpoints(cluster, stable_service) >= 2 and answers(url),
                           "two ready endpoints, answering through the gateway", timeout=120,
                           explain=lambda: gateway.log_tail(5))
        else:
            proxy = stack.enter_context(ServiceProxy(cluster, NAMESPACE, LOOP))
            url, through = proxy.url, f"Service {LOOP}"
            with stage(f"Waiting for the model servers behind Service {LOOP} (the dev node agent runs them)"):
                eventually(lambda: len(proxy.endpoints()) >= 2, "two ready endpoints", timeout=120)

        # The users: the world as they know it, before the policy change; it changes when the story says so.
        # They rate often (the demo has minutes, not days, to gather feedback), wrong answers more often than right.
        population = Population(support_domain.Domain(support_domain.drift(policy_at=None)), size=300, seed=7,
                                cohorts={"free": 0.35, "pro": 0.25, "business": 0.4}, feedback_right=0.5,
                                feedback_wrong=0.8, noise=0.03)
        traffic = Traffic(population, url, collector.url, collector.tokens["ingest"], collector.tokens["admin"],
                          model=LOOP, rate=20, duration=900, threads=4, window=20)
        stack.enter_context(traffic)
        say(f"300 simulated users send {traffic.rate:g} requests/s through {through} ({url}), judge each answer "
            "against what they know is right, and rate some of them on the answer's trace")
        with stage("Serving: waiting for the loop to observe its signals"):
            status = eventually(lambda: (s := loop_status(cluster)).get("phase") == "Observing"
                                and s.get("signals") and all(x["state"] == "Healthy" for x in s["signals"]) and s,
                                "healthy signals", timeout=120, explain=lambda: signal_line(loop_status(cluster)))
        say(f"Signals: {signal_line(status)}; decision: {status['decisions'][0]['reason']}")
        drift = DriftWatch(prometheus)
        if story.new_intent:
            # The drift's reference is the first requests v1 served: they must come before the world changes.
            with stage("Waiting for the collector's drift pass to judge the requests against v1's first ones"):
                eventually(lambda: drift.now() == 0.0, "a drift pass with a reference", timeout=90,
                           explain=lambda: f"drifted={drift.now()}")
        say(f"Measured: {quality_line(traffic.snapshot(), 'v1')}")

        # The drift: the world changes under the served model; nothing touches the model or its numbers.
        changed_at, start = time.time(), traffic.now()
        population.domain = support_domain.Domain(support_domain.drift(
            policy_at=start + (NEW_INTENT_LEAD if story.new_intent else 0.0), policy_cohorts=story.policy_cohorts,
            new_intent_at=start if story.new_intent else None))

        def retrain_jobs() -> list[dict[str, Any]]:
            drift.look()  # the requests' drift is noted while the users' verdict gathers
            return children(cluster, "retrainjob")

        with stage(f"The world changes: {story.title}. Waiting for the users' verdict and the loop's decision"):
            jobs = eventually(retrain_jobs, "a RetrainJob", timeout=180,
                              explain=lambda: f"{signal_line(s := loop_status(cluster))}; "
                              f"{(s.get('decisions') or [{}])[0].get('reason')}")
        status = loop_status(cluster)
        job = jobs[0]
        name = job["metadata"]["name"]
        say(f"Signals: {signal_line(status)}")
        say(drift_line(drift, status, changed_at))
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
            how = f"its share set on HTTPRoute {route['httpRoute']}" if route else "its share set by replicas"
            with stage(f"Rolling out {candidate}: a canary judged on the users' live feedback against the stable v1, "
                       f"{how}"):
                rollout, held = follow_rollout(cluster, route["httpRoute"] if route else None, timeout=420)
            for weight, stable, canary, seconds in served_by_track(prometheus, held):
                say(f"Served at {weight:g}% canary: the servers counted {stable} stable and {canary} canary requests "
                    f"in {seconds:.0f}s ({canary / max(1, stable + canary):.1%} canary; Prometheus, "
                    "kaizen_server_requests_total by track)")
            if route:
                say(f"Route after the rollout: {held[-1].routed.backends(route['httpRoute'])}")
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
                if drift.first is not None:
                    # The reference follows the served version: the new one is judged on what it first served.
                    eventually(lambda: drift.now() == 0.0, "the input drift against the new version to clear",
                               timeout=60, explain=lambda: f"drifted={drift.now()}")
                    say(f"Input drift against {candidate}'s first answers (the collector's reference follows the "
                        "served version): none")
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
                f"collector at {collector.url}, the model at {url}. Ctrl-C stops everything.")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
    return 0 if told else 1
