"""Scale benchmark: what one ``kaizen operator`` costs with N ImprovementLoops and N Rollouts, and how late it acts.

For each N (``--n 10,100,1000``), on a fresh local control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kwok with enough fake nodes) and a real Prometheus scraping one bench exporter:

1. N minimal ImprovementLoops (interval 30s, one signal ``max(bench_signal{deployment="{{target}}"})``, max 0.5,
   for 0s) and N/2 Rollouts at rest on a ``pause: {}`` step (no metrics) are created concurrently, then the
   operator starts (``kaizen operator --all-namespaces`` in a child process, as the chart runs it) and catches up;
   once it has posted its start-up's Events (the namespace's count of Events still for 6 s), a window at rest is
   measured.
2. N/2 Rollouts progressing (setWeight 20, then a 24h analysis step judged every ``--analysis-interval`` on a
   success-rate ratio read from Prometheus, both tracks emitting 100 requests/s, no errors) are added; once each has
   looked once, a steady window is measured.
3. Causes, spread over one loop interval: a breach made visible in Prometheus (``bench_signal`` set to 1) → the
   loop's RetrainJob; a failing look (the canary answering half its requests with 500) → canary weight 0; an
   ``approve`` annotation on a paused Rollout → its next step. Each latency is counted beyond the time the
   operator was due to act: the loop's first scheduled look after the breach became visible (its last look before
   plus the interval), the failing look's time (when it read the metrics: when looks are scheduled is the
   operator's rule, an interval apart), the annotation's write. The bench sees actions through its own
   watches, at the time the event arrives.

Measured per window: operator CPU (share of one core, utime + stime from /proc/PID/stat), RSS (largest VmRSS,
sampled every second), API requests/s made by the operator (it runs as its own user, which a FlowSchema of its own
classifies: ``apiserver_flowcontrol_dispatched_requests_total{flow_schema="kaizen-bench-operator"}``; the bench is
an administrator, exempt, so never counted) and by every client, and Prometheus queries/s (``/api/v1/query`` and
``query_range``, from Prometheus' own /metrics; the bench queries nothing during a window). Prints a table with the
machine (its load included: a loaded machine slows every number) and writes ``bench/results/scale.json``.

    PYTHONPATH=operator .venv/bin/python bench/scale/run.py [--n 10,100] [--window 60] [--samples 10] [--out FILE]
        [--logs DIR] [--baseline REF [--baseline-n 10,100]]   # also the operator of commit REF, in the same run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for path in (ROOT / "operator", HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
# The operator runs in a child process (python -m kaizen): it must import this checkout too.
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "operator"), *filter(None, [os.environ.get("PYTHONPATH")])])

import kubernetes.client  # noqa: E402
import kubernetes.config  # noqa: E402
import kubernetes.watch  # noqa: E402
import yaml  # noqa: E402

import measure  # noqa: E402
from kaizen.api import KINDS  # noqa: E402
from kaizen.api.actions import action_annotations  # noqa: E402
from kaizen.dev.cluster import KWOK_NODE_ANNOTATION, ClusterAccess, LocalCluster, free_ports  # noqa: E402
from kaizen.dev.demo import operator_process  # noqa: E402
from kaizen.dev.emitter import Stream  # noqa: E402
from kaizen.dev.prometheus import LocalPrometheus, Target, queries_answered  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "scale.json"
NAMESPACE = "bench"
GROUP, VERSION = "kaizen.dev", "v1alpha1"
OPERATOR_USER = "kaizen-bench-operator"
OPERATOR_GROUP = "kaizen-bench-operators"
FLOW_SCHEMA = "kaizen-bench-operator"
LOOP_LABEL = "kaizen.dev/loop"
REQUESTS_PER_SECOND = 100
FAILING_ERROR_RATE = 0.5
PODS_PER_NODE = 250
CAUSES = ("breachToRetrainJob", "failingLookToCanaryWeight0", "annotationToEffect")


# --- telemetry --------------------------------------------------------------------------------------------------

class Exporter:
    """One /metrics for every served model of the bench: ``http_requests_total{namespace, deployment, track, code}``
    of each progressing Rollout's two tracks (:class:`kaizen.dev.emitter.Stream`, advanced at each scrape) and the
    loops' ``bench_signal{namespace, deployment}``. One target, so Prometheus' cost stays that of the series, not
    of N scrapes a second."""

    def __init__(self) -> None:
        self.streams: dict[tuple[str, str], Stream] = {}
        self.signals: dict[str, float] = {}
        self._lock = threading.Lock()
        self._last = time.monotonic()
        port = free_ports(1)[0]
        self.address = f"127.0.0.1:{port}"
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.exposition().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def add_model(self, deployment: str) -> None:
        with self._lock:
            for track in ("stable", "canary"):
                self.streams[(deployment, track)] = Stream(REQUESTS_PER_SECOND, 0.0)

    def exposition(self) -> str:
        with self._lock:
            now = time.monotonic()
            elapsed, self._last = now - self._last, now
            lines = ["# TYPE http_requests_total counter"]
            for (deployment, track), stream in self.streams.items():
                stream.advance(elapsed)
                counts = stream.snapshot()
                labels = f'namespace="{NAMESPACE}",deployment="{deployment}",track="{track}"'
                lines.append(f'http_requests_total{{{labels},code="200"}} {counts["requests"] - counts["errors"]}')
                lines.append(f'http_requests_total{{{labels},code="500"}} {counts["errors"]}')
            lines.append("# TYPE bench_signal gauge")
            lines += [f'bench_signal{{namespace="{NAMESPACE}",deployment="{d}"}} {v}' for d, v in self.signals.items()]
        return "\n".join(lines) + "\n"

    def stop(self) -> None:
        self._server.shutdown()


def prometheus_query(url: str, promql: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}",
                                timeout=5) as response:
        return json.load(response)["data"]["result"]


# --- objects ----------------------------------------------------------------------------------------------------

def deployment(name: str, replicas: int) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "server", "image": "example.com/bot-server:1"}]}}}}


def loop(name: str, target: str, prometheus_url: str, interval: str) -> dict[str, Any]:
    """examples/improvementloop-minimal.yaml, with a signal the bench sets and no delay before it counts."""
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ImprovementLoop", "metadata": {"name": name}, "spec": {
        "target": {"deployment": target}, "model": {"version": "v1", "uri": f"/models/{target}/v1"},
        "prometheus": {"url": prometheus_url}, "interval": interval,
        "signals": [{"name": "quality", "query": 'max(bench_signal{deployment="{{target}}"})', "max": 0.5,
                     "for": "0s"}],
        "retrain": {"image": "ghcr.io/kaizen-dev/kaizen-trainer:0.1.0", "task": "sequence-classification",
                    "baseModel": {"version": "v1", "uri": f"/models/{target}/v1"},
                    "data": {"replay": [{"uri": f"/data/{target}/train.jsonl"}]}, "outputURI": f"/models/{target}"},
        "gates": [{"metric": "accuracy", "minDelta": 0}],
    }}


def rollout(name: str, target: str, prometheus_url: str, progressing: bool, interval: str) -> dict[str, Any]:
    """At rest: 10 %, then paused until approved (three pauses, so an approval leaves it paused again). Progressing:
    20 %, then a day of analysis on the success rate, looked at every ``interval``."""
    if progressing:
        steps = [{"setWeight": 20}, {"analysis": {"duration": "24h"}}, {"setWeight": 100}]
        selector = 'namespace="{{namespace}}",deployment="{{target}}",track="{{track}}"'
        analysis = {"interval": interval, "alpha": 0.05, "metrics": [{
            "name": "success-rate", "maxRegression": 0.05, "minSamples": 50,
            "ratio": {"good": f'sum(increase(http_requests_total{{{selector},code!~"5.."}}[{{{{window}}}}]))',
                      "total": f"sum(increase(http_requests_total{{{selector}}}[{{{{window}}}}]))"}}],
            "failurePolicy": {"inconclusiveLimit": 1000}}
    else:
        steps = [{"setWeight": 10}, {"pause": {}}, {"pause": {}}, {"pause": {}}, {"setWeight": 100}]
        analysis = {"interval": interval}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Rollout", "metadata": {"name": name}, "spec": {
        "target": {"deployment": target, "container": "server"},
        "stableModel": {"version": "v1", "uri": f"s3://models/{target}/v1"},
        "canaryModel": {"version": "v2", "uri": f"s3://models/{target}/v2"},
        "steps": steps, "analysis": analysis, "prometheus": {"url": prometheus_url}}}


def kwok_node(name: str) -> dict[str, Any]:
    resources = {"cpu": "1000", "memory": "4Ti", "pods": str(PODS_PER_NODE)}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": name, "annotations": {KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1]},
        "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "type": "kwok"}},
        "status": {"capacity": resources, "allocatable": resources}}


def operator_identity(cluster: LocalCluster) -> Path:
    """A kubeconfig for the operator as a user of its own (cluster-admin, not system:masters, which APF exempts and
    does not count) and a FlowSchema that classifies its requests alone, so they can be counted."""
    kubeconfig = cluster.kubeconfig_for(OPERATOR_USER, [OPERATOR_GROUP])
    versions = cluster.kubectl("api-versions").stdout.split()
    flowcontrol = next(v for v in ("flowcontrol.apiserver.k8s.io/v1", "flowcontrol.apiserver.k8s.io/v1beta3")
                       if v in versions)
    documents = [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": OPERATOR_USER},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": OPERATOR_GROUP}]},
        {"apiVersion": flowcontrol, "kind": "FlowSchema", "metadata": {"name": FLOW_SCHEMA}, "spec": {
            "priorityLevelConfiguration": {"name": "workload-high"}, "matchingPrecedence": 500,
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [{"subjects": [{"kind": "User", "user": {"name": OPERATOR_USER}}],
                       "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                                          "clusterScope": True, "namespaces": ["*"]}],
                       "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]}]}},
    ]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(documents))
    return kubeconfig


def api_requests(cluster: LocalCluster) -> tuple[float, float, dict[str, float]]:
    """(requests the operator has made, requests every client has made, every client's by verb, resource and
    subresource) so far, from the API server's /metrics."""
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    return (measure.counter_sum(text, "apiserver_flowcontrol_dispatched_requests_total", {"flow_schema": FLOW_SCHEMA}),
            measure.counter_sum(text, "apiserver_request_total"),
            measure.counters_by(text, "apiserver_request_total", ("verb", "resource", "subresource")))


def client_for(kubeconfig: Path, pool: int = 64) -> kubernetes.client.ApiClient:
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    configuration.connection_pool_maxsize = pool
    return kubernetes.client.ApiClient(configuration)


def create_all(api: kubernetes.client.ApiClient, documents: list[dict[str, Any]], workers: int = 32) -> float:
    """Create every document at once (``workers`` requests in flight); returns the seconds it took."""
    apps, custom = kubernetes.client.AppsV1Api(api), kubernetes.client.CustomObjectsApi(api)
    plurals = {kind.kind: kind.plural for kind in KINDS}

    def create(doc: dict[str, Any]) -> None:
        if doc["kind"] == "Deployment":
            apps.create_namespaced_deployment(NAMESPACE, doc)
        else:
            custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plurals[doc["kind"]], doc)

    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(create, documents))
    return time.monotonic() - started


# --- what the bench sees ----------------------------------------------------------------------------------------

class Observed:
    """Every loop, Rollout and RetrainJob of the bench as its watches last saw them, with the times of what matters:
    each loop's looks (status.lastObserved), each loop's first RetrainJob, a watched Rollout's canary weight reaching
    0 and its step advancing."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loops: dict[str, dict[str, Any]] = {}
        self.rollouts: dict[str, dict[str, Any]] = {}
        self.looks: dict[str, list[float]] = {}
        self.retrained: dict[str, float] = {}
        self.failing: set[str] = set()
        self.weight0: dict[str, float] = {}
        self.steps: dict[str, int] = {}
        self.stepped: dict[str, float] = {}

    def on_loop(self, obj: dict[str, Any], seen: float) -> None:
        name, status = obj["metadata"]["name"], obj.get("status") or {}
        with self.lock:
            self.loops[name] = status
            observed = measure.parse_time(status.get("lastObserved"))
            looks = self.looks.setdefault(name, [])
            if observed is not None and (not looks or observed > looks[-1]):
                looks.append(observed)

    def on_rollout(self, obj: dict[str, Any], seen: float) -> None:
        name, status = obj["metadata"]["name"], obj.get("status") or {}
        with self.lock:
            self.rollouts[name] = status
            # Weight 0 written as 0 or left out (a status written without its zero values): the canary serves nothing.
            if name in self.failing and not status.get("canaryWeight"):
                self.weight0.setdefault(name, seen)
            if name in self.steps and (status.get("currentStep") or 0) > self.steps[name]:
                self.stepped.setdefault(name, seen)

    def on_retrainjob(self, obj: dict[str, Any], seen: float) -> None:
        owner = (obj["metadata"].get("labels") or {}).get(LOOP_LABEL)
        if owner:
            with self.lock:
                self.retrained.setdefault(owner, seen)

    def count(self, predicate: Callable[[str, dict[str, Any]], bool], kind: str) -> int:
        with self.lock:
            return sum(1 for name, status in getattr(self, kind).items() if predicate(name, status))


def watch(api: kubernetes.client.ApiClient, plural: str, handle: Callable[[dict[str, Any], float], None],
          stop: threading.Event) -> None:
    """Follow one kind in the bench namespace until ``stop``. A watch that ends resumes from the last version it
    saw, so no event arrives late as a re-listed ADDED; only when that version is gone (410) does it list again."""
    custom = kubernetes.client.CustomObjectsApi(api)
    version: str | None = None
    while not stop.is_set():
        stream = kubernetes.watch.Watch()
        try:
            for event in stream.stream(custom.list_namespaced_custom_object, GROUP, VERSION, NAMESPACE, plural,
                                       timeout_seconds=60, **({"resource_version": version} if version else {})):
                handle(event["object"], time.time())
                if stop.is_set():
                    return
            version = stream.resource_version
        except kubernetes.client.ApiException as error:
            version = None if error.status == 410 else stream.resource_version
            time.sleep(0.5)
        except Exception:  # noqa: BLE001 -- the API server busy or gone for a moment; the bench carries on
            version = stream.resource_version
            time.sleep(0.5)


# --- measuring --------------------------------------------------------------------------------------------------

def window(seconds: float, pid: int, cluster: LocalCluster, prometheus_url: str) -> dict[str, Any]:
    """The operator's cost over ``seconds``, the bench doing nothing meanwhile."""
    ticks = os.sysconf("SC_CLK_TCK")
    stat = Path(f"/proc/{pid}/stat")
    status = Path(f"/proc/{pid}/status")
    load0 = os.getloadavg()[0]
    start, cpu0 = time.monotonic(), measure.cpu_seconds(stat.read_text(), ticks)
    (operator0, all0, by0), queries0 = api_requests(cluster), queries_answered(prometheus_url)
    rss = []
    while time.monotonic() - start < seconds:
        rss.append(measure.rss_mib(status.read_text()))
        time.sleep(1.0)
    elapsed = time.monotonic() - start
    cpu = measure.cpu_seconds(stat.read_text(), ticks) - cpu0
    (operator1, all1, by1), queries1 = api_requests(cluster), queries_answered(prometheus_url)
    return {"seconds": round(elapsed, 1), "operatorCpuCores": round(cpu / elapsed, 3),
            "operatorRssMiB": round(max(rss), 1),
            "apiRequestsPerSecond": round((operator1 - operator0) / elapsed, 2),
            # Everyone's: kube-controller-manager, the scheduler, kwok, the bench's watches and these reads too.
            "apiRequestsPerSecondAllClients": round((all1 - all0) / elapsed, 2),
            # Where they come from (every client's: the kaizen.dev kinds are the operator's alone, but for the
            # bench's own watches, one WATCH a minute per kind).
            "apiRequestsPerSecondByVerbResource": measure.rates(by0, by1, elapsed),
            "prometheusQueriesPerSecond": round((queries1 - queries0) / elapsed, 2),
            "loadAverage1mAtStart": round(load0, 2), "loadAverage1m": round(os.getloadavg()[0], 2)}


def settle(what: str, ready: Callable[[], int], total: int, timeout: float) -> dict[str, Any]:
    started = time.monotonic()
    while (done := ready()) < total and time.monotonic() - started < timeout:
        time.sleep(0.5)
    seconds = round(time.monotonic() - started, 1)
    print(f"  {what}: {done}/{total} in {seconds}s", file=sys.stderr, flush=True)
    return {"ready": done, "of": total, "seconds": seconds}


def events_posted(core: kubernetes.client.CoreV1Api, timeout: float, quiet: float = 6.0) -> dict[str, Any]:
    """Wait until the operator has posted the Events of its start-up (kopf posts a few at a time, so at N = 1,000
    they take a minute or two after every object has settled): until the namespace's count of Events has not grown
    for ``quiet`` seconds. So the window at rest measures the operator at rest, not its start-up's tail."""
    started, last, still_since = time.monotonic(), -1, time.monotonic()
    while time.monotonic() - started < timeout:
        response: Any = core.list_namespaced_event(NAMESPACE, _preload_content=False)
        count = len(json.loads(response.data).get("items") or [])
        if count != last:
            last, still_since = count, time.monotonic()
        elif time.monotonic() - still_since >= quiet:
            break
        time.sleep(1.0)
    seconds = round(time.monotonic() - started, 1)
    print(f"  start-up Events posted: {last} in {seconds}s", file=sys.stderr, flush=True)
    return {"events": last, "seconds": seconds}


def run_causes(n: int, samples: int, observed: Observed, exporter: Exporter, api: kubernetes.client.ApiClient,
               prometheus_url: str, loop_interval: float, analysis_interval: float) -> dict[str, Any]:
    """Inject ``samples`` of each cause, spread over one loop interval, and measure each action beyond its due
    time."""
    half = n // 2
    k = max(1, min(samples, half))
    chosen = [round(i * half / k) for i in range(k)]
    loops = [f"loop-{i:04d}" for i in chosen]
    failing = [f"progressing-{i:04d}" for i in chosen]
    paused = [f"rest-{i:04d}" for i in chosen]
    custom = kubernetes.client.CustomObjectsApi(api)
    visible: dict[str, float] = {}
    approved: dict[str, float] = {}

    def breach(name: str) -> None:
        target = f"loop-target-{name.split('-')[-1]}"
        exporter.signals[target] = 1.0
        while not prometheus_query(prometheus_url, f'bench_signal{{deployment="{target}"}} > 0.5'):
            time.sleep(0.05)
        visible[name] = time.time()

    def fail(name: str) -> None:
        with observed.lock:
            observed.failing.add(name)
        exporter.streams[(f"progressing-target-{name.split('-')[-1]}", "canary")].set(error_rate=FAILING_ERROR_RATE)

    def approve(name: str) -> None:
        with observed.lock:
            observed.steps[name] = observed.rollouts.get(name, {}).get("currentStep") or 0
        at = time.time()
        custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "rollouts", name, {"metadata": {
            "annotations": action_annotations("approve", "kaizen-bench", datetime.now(timezone.utc))}})
        approved[name] = at

    plan = sorted([(i * loop_interval / k, fn, name) for fns in ((breach, loops), (fail, failing), (approve, paused))
                   for i, name in enumerate(fns[1]) for fn in [fns[0]]], key=lambda p: p[0])
    started = time.monotonic()
    with ThreadPoolExecutor(3 * k) as pool:
        futures = []
        for offset, fn, name in plan:
            time.sleep(max(0.0, started + offset - time.monotonic()))
            futures.append(pool.submit(fn, name))
        for future in futures:
            future.result()
    deadline = time.monotonic() + 2 * loop_interval + 3 * analysis_interval + 60

    def complete() -> bool:
        with observed.lock:
            return (all(n in observed.retrained for n in loops) and all(n in observed.weight0 for n in failing)
                    and all(n in observed.stepped for n in paused))

    while not complete() and time.monotonic() < deadline:
        time.sleep(0.5)

    with observed.lock:
        breaches = [observed.retrained[n] - measure.breach_due(observed.looks.get(n, []), visible[n], loop_interval)
                    for n in loops if n in observed.retrained]
        looks = []
        for n in failing:
            due = measure.failing_look([(measure.parse_time(r["time"]), r["verdict"])
                                        for r in observed.rollouts.get(n, {}).get("analysis") or []])
            if n in observed.weight0 and due is not None:
                looks.append(observed.weight0[n] - due)
        effects = [observed.stepped[n] - approved[n] for n in paused if n in observed.stepped]
        # What a Rollout that never acted was doing at the end, so that a miss can be told from a bench fault.
        unacted = {n: {k: observed.rollouts.get(n, {}).get(k) for k in ("phase", "currentStep", "canaryWeight",
                                                                        "awaitingApproval", "message")}
                   | {"verdicts": [r.get("verdict") for r in observed.rollouts.get(n, {}).get("analysis") or []][:5]}
                   for n in failing + paused if n not in observed.weight0 and n not in observed.stepped}
    return {"breachToRetrainJob": measure.latency_summary(breaches, len(loops) - len(breaches)),
            "failingLookToCanaryWeight0": measure.latency_summary(looks, len(failing) - len(looks)),
            "annotationToEffect": measure.latency_summary(effects, len(paused) - len(effects)),
            "unacted": unacted, "_all": breaches + looks + effects}


def checkout(ref: str, into: Path) -> tuple[str, Path]:
    """The operator package of ``ref`` (a commit of this repository) extracted under ``into``: (its commit, the
    directory to put first on the operator's PYTHONPATH)."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"], check=True,
                            capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "operator"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return commit, into / "operator"


def this_commit() -> str:
    """HEAD of this checkout, marked ``-dirty`` when the operator's files differ from it."""
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "operator", "crds"],
                           capture_output=True, text=True).stdout.strip()
    return head + ("-dirty" if dirty else "")


def run_one(n: int, args: argparse.Namespace, work: Path, operator_path: Path = ROOT / "operator") -> dict[str, Any]:
    loop_interval = measure_seconds(args.loop_interval)
    analysis_interval = measure_seconds(args.analysis_interval)
    half = n // 2
    print(f"N = {n}: {n} loops, {half} rollouts at rest, {n - half} progressing", file=sys.stderr, flush=True)
    with ExitStack() as stack:
        cluster = stack.enter_context(LocalCluster(work / "cluster", controllers=True, kwok=True))
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                        *(f"crd/{kind.crd_name}" for kind in KINDS))
        operator_kubeconfig = operator_identity(cluster)
        api = client_for(cluster.kubeconfig)
        core = kubernetes.client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        for i in range(math.ceil((2 * n + args.samples) / PODS_PER_NODE)):
            core.create_node(kwok_node(f"kaizen-bench-{i}"))

        exporter = Exporter()
        stack.callback(exporter.stop)
        prometheus = stack.enter_context(LocalPrometheus(work / "prometheus"))
        prometheus.set_targets([Target(exporter.address, {})])
        url = prometheus.url

        observed, stop = Observed(), threading.Event()
        stack.callback(stop.set)
        watcher = client_for(cluster.kubeconfig, pool=8)
        for plural, handle in (("improvementloops", observed.on_loop), ("rollouts", observed.on_rollout),
                               ("retrainjobs", observed.on_retrainjob)):
            threading.Thread(target=watch, args=(watcher, plural, handle, stop), daemon=True).start()

        resting = [f"rest-{i:04d}" for i in range(half)]
        progressing = [f"progressing-{i:04d}" for i in range(n - half)]
        for i in range(n):
            exporter.signals[f"loop-target-{i:04d}"] = 0.0
        for name in progressing:
            exporter.add_model(f"progressing-target-{name.split('-')[-1]}")
        prometheus.wait_for_data(f'count(bench_signal) >= {n}')
        phase_a = ([deployment(f"loop-target-{i:04d}", 0) for i in range(n)]
                   + [deployment(f"rest-target-{name.split('-')[-1]}", 1) for name in resting]
                   + [deployment(f"progressing-target-{name.split('-')[-1]}", 1) for name in progressing])
        phase_a_seconds = create_all(api, phase_a)
        crs = ([loop(f"loop-{i:04d}", f"loop-target-{i:04d}", url, args.loop_interval) for i in range(n)]
               + [rollout(name, f"rest-target-{name.split('-')[-1]}", url, False, args.analysis_interval)
                  for name in resting])
        created = len(phase_a) + len(crs)
        create_seconds = phase_a_seconds + create_all(api, crs)
        print(f"  created {created} objects in {create_seconds:.1f}s", file=sys.stderr, flush=True)

        log = work / "operator.log"
        # The operator's own package first (the baseline's, when measuring one); the child copies the environment.
        rest = os.environ["PYTHONPATH"].split(os.pathsep)[1:]
        os.environ["PYTHONPATH"] = os.pathsep.join([str(operator_path), *rest])
        process = stack.enter_context(operator_process(ClusterAccess(operator_kubeconfig), log))
        timeout = 120 + n * 0.5
        settled = {
            "loops": settle("loops observing", lambda: observed.count(lambda _, s: bool(s.get("lastObserved")),
                                                                      "loops"), n, timeout),
            "atRest": settle("rollouts paused", lambda: observed.count(
                lambda name, s: name.startswith("rest-") and bool(s.get("awaitingApproval")), "rollouts"),
                half, timeout),
        }
        settled["events"] = events_posted(core, timeout)
        rest = window(args.window, process.pid, cluster, url)
        print(f"  at rest: {rest}", file=sys.stderr, flush=True)

        create_seconds += create_all(api, [rollout(name, f"progressing-target-{name.split('-')[-1]}", url, True,
                                                   args.analysis_interval) for name in progressing])
        settled["progressing"] = settle("rollouts analysing", lambda: observed.count(
            lambda name, s: name.startswith("progressing-") and bool(s.get("analysis")), "rollouts"),
            n - half, timeout)
        steady = window(args.window, process.pid, cluster, url)
        print(f"  steady: {steady}", file=sys.stderr, flush=True)
        causes = run_causes(n, args.samples, observed, exporter, api, url, loop_interval, analysis_interval)
        latencies, unacted = causes.pop("_all"), causes.pop("unacted")
        print(f"  causes: {causes}", file=sys.stderr, flush=True)
        if process.poll() is not None:
            raise RuntimeError(f"the operator exited with status {process.returncode}:\n{log.read_text()[-4000:]}")
    # The work directory goes with the run; what went wrong in the operator stays in the result.
    text = log.read_text(errors="replace")
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
        (args.logs / f"operator-{n}.log").write_text(text)
    summary = measure.latency_summary(latencies)
    return {"N": n, "objects": {"improvementLoops": n, "rolloutsAtRest": half, "rolloutsProgressing": n - half,
                                "deployments": len(phase_a), "created": created + len(progressing)},
            "createSeconds": round(create_seconds, 1), "settled": settled,
            "operatorCpuCores": steady["operatorCpuCores"], "operatorCpuCoresAtRest": rest["operatorCpuCores"],
            "operatorRssMiB": max(rest["operatorRssMiB"], steady["operatorRssMiB"]),
            "apiRequestsPerSecond": steady["apiRequestsPerSecond"],
            "apiRequestsPerSecondAtRest": rest["apiRequestsPerSecond"],
            "prometheusQueriesPerSecond": steady["prometheusQueriesPerSecond"],
            "p50CauseToActionSeconds": summary["p50"], "p99CauseToActionSeconds": summary["p99"],
            "causes": causes, "windows": {"atRest": rest, "steady": steady},
            "operatorTracebacks": text.count("Traceback (most recent call last)"),
            "operatorErrors": measure.log_errors(text),
            "unactedRollouts": unacted}


def measure_seconds(duration: str) -> float:
    from kaizen.api.common import parse_duration

    return parse_duration(duration).total_seconds()


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "platform": platform.platform(), "loadAverage": [round(x, 2) for x in os.getloadavg()]}


def fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def window_loads(result: dict[str, Any]) -> list[float]:
    """The 1-minute load averages at the start and end of a result's windows."""
    return [w[key] for w in result["windows"].values() for key in ("loadAverage1mAtStart", "loadAverage1m")
            if key in w]


def table(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"machine: {m['cores']} cores, {m['cpu']}, load average {m['loadAverage']} at start, "
             f"{m.get('loadAverageEnd')} at end, 1-minute load in the windows {m.get('loadAverage1mDuringWindows')}"
             + (" (LOADED: more runnable processes than cores; not a final measurement)" if m.get("loaded") else ""),
             f"operator: {report['operator']['commit']}"
             + (f"; baseline: {report['baseline']['commit']} ({report['baseline']['ref']})"
                if report.get("baseline") else ""),
             f"{'run':>9}{'N':>6}{'CPU':>7}{'CPU rest':>9}{'RSS MiB':>9}{'API/s':>8}{'API/s rest':>11}{'PromQ/s':>9}"
             f"{'p50 s':>8}{'p99 s':>8}{'load 1m':>12}  per cause p50/p99 (missed): breach, failing look, annotation"]
    rows = [("operator", r) for r in report["results"]]
    rows += [("baseline", r) for r in (report.get("baseline") or {}).get("results", [])]
    for run, r in rows:
        causes = "  ".join(f"{fmt(c['p50'])}/{fmt(c['p99'])} ({c['missed']})" for c in r["causes"].values())
        loads = window_loads(r)
        load = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "-"
        lines.append(f"{run:>9}{r['N']:>6}{fmt(r['operatorCpuCores']):>7}{fmt(r['operatorCpuCoresAtRest']):>9}"
                     f"{fmt(r['operatorRssMiB'], 0):>9}{fmt(r['apiRequestsPerSecond'], 1):>8}"
                     f"{fmt(r['apiRequestsPerSecondAtRest'], 1):>11}{fmt(r['prometheusQueriesPerSecond'], 1):>9}"
                     f"{fmt(r['p50CauseToActionSeconds']):>8}{fmt(r['p99CauseToActionSeconds']):>8}{load:>12}"
                     f"  {causes}")
    lines.append(f"growth with N (cost ~ N^exponent): {json.dumps(report['growth'])}")
    lines.append(f"targets at N={measure.TARGET_N}: {report['targets']}; met: {report['met']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="10,100,1000", help="comma-separated numbers of loops (default 10,100,1000)")
    parser.add_argument("--window", type=float, default=90.0, help="seconds of each measured window (default 90)")
    parser.add_argument("--samples", type=int, default=10, help="injections of each cause per N (default 10)")
    parser.add_argument("--loop-interval", default="30s", help="the loops' interval (default 30s)")
    parser.add_argument("--analysis-interval", default="10s", help="the progressing Rollouts' (default 10s)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results file (default {RESULTS})")
    parser.add_argument("--logs", type=Path, help="keep each operator's log in this directory (operator-N.log)")
    parser.add_argument("--note", default="", help="a note stored in the machine block (e.g. what else ran)")
    parser.add_argument("--baseline", metavar="REF", help="also measure the operator of this commit (e.g. main), in "
                        "the same run, on the same machine, right after this checkout's at each --baseline-n")
    parser.add_argument("--baseline-n", default="10,100", help="the Ns of the baseline (default 10,100)")
    args = parser.parse_args(argv)
    try:
        ns = [int(n) for n in args.n.split(",")]
        baseline_ns = [int(n) for n in args.baseline_n.split(",")] if args.baseline else []
        if any(n < 2 for n in ns + baseline_ns):
            raise ValueError
        measure_seconds(args.loop_interval), measure_seconds(args.analysis_interval)
    except ValueError:
        parser.error("--n takes numbers of at least 2 separated by commas, e.g. --n 10,100; the intervals take "
                     "durations such as 30s")
    report: dict[str, Any] = {"machine": {**machine(), "note": args.note}, "operator": {"commit": this_commit()},
                              "results": [], "targets": {**measure.TARGETS, "atN": measure.TARGET_N}}
    stack = ExitStack()
    baseline_path = None
    if args.baseline:
        commit, baseline_path = checkout(args.baseline, Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="kaizen-bench-scale-baseline-"))))
        report["baseline"] = {"ref": args.baseline, "commit": commit, "results": []}
    for n in [*ns, *(n for n in baseline_ns if n not in ns)]:
        runs = ([("results", ROOT / "operator")] if n in ns else []) + (
            [("baseline", baseline_path)] if n in baseline_ns and baseline_path else [])
        for key, operator_path in runs:
            with tempfile.TemporaryDirectory(prefix=f"kaizen-bench-scale-{n}-") as work:
                result = run_one(n, args, Path(work), operator_path)
            (report["results"] if key == "results" else report["baseline"]["results"]).append(result)
        report["machine"]["loadAverageEnd"] = [round(x, 2) for x in os.getloadavg()]
        loads = [w["loadAverage1m"] for r in report["results"] + (report.get("baseline") or {}).get("results", [])
                 for w in r["windows"].values()]
        report["machine"]["loadAverage1mDuringWindows"] = loads
        # More runnable processes than cores: every process waited for a CPU, the operator included, and the
        # numbers above are not the machine's but the queue's. A final result needs a quiet machine.
        report["machine"]["loaded"] = max(loads) > report["machine"]["cores"]
        report["growth"] = {key: measure.growth([(r["N"], r[key]) for r in report["results"]]) for key in (
            "operatorCpuCores", "operatorRssMiB", "apiRequestsPerSecond", "apiRequestsPerSecondAtRest",
            "prometheusQueriesPerSecond", "p99CauseToActionSeconds")}
        report["met"] = measure.judge(report["results"])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")  # after every N, so a long run keeps what it has
    stack.close()
    print(table(report))
    print(f"Wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
