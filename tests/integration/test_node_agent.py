"""The dev node agent as the kubelet of kwok's GPU node, on the real control plane.

With the operator, it runs a RetrainJob's training pod as a local process and reports how the container ended, so
the operator classifies it as it would a real pod's (the whole successful run is the demo's, tests/e2e; here, the
failures). Without it, it runs the pods of a Deployment of the real model server (kaizen-server) as a kubelet would:
kube-controller-manager publishes the ready ones in their Service's EndpointSlice, the Service proxy spreads
requests over them, Prometheus scrapes them, and pods that are deleted, fail their probe or crash behave as in a
cluster.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
import urllib.request

import pytest
import yaml

from kaizen.dev import node_agent, processes
from kaizen.dev.collector import LocalCollector
from kaizen.dev.prometheus import LocalPrometheus, Target
from kaizen.dev.service_proxy import ServiceProxy
from kaizen.dev.serving import POD_CIDR, local_address
from tests.integration.kube import apply, wait_for
from tests.integration.rollouts import running_operator

pytestmark = pytest.mark.integration

SERVER_IMAGE = "ghcr.io/kaizen-dev/kaizen-server:test"
MODEL = "/models/bot/v1/model"  # a pod path: the agent maps it under its --root


@pytest.fixture(scope="module")
def operator(crds):
    with running_operator(crds):
        yield crds


class Node:
    """The agent's process, its storage (``root``) and the Prometheus targets file it keeps."""

    def __init__(self, cluster, workdir):
        self.workdir, self.root, self.targets = workdir, workdir / "node", workdir / "targets.json"
        self.process = node_agent.spawn(cluster.kubeconfig, workdir, self.root, prometheus_targets=self.targets)


@pytest.fixture(scope="module")
def agent(cluster, tmp_path_factory):
    node = Node(cluster, tmp_path_factory.mktemp("node-agent"))
    yield node
    processes.stop([node.process])


def retrain_job(name, image="ghcr.io/kaizen-dev/kaizen-trainer:test", **spec):
    return {
        "apiVersion": "kaizen.dev/v1alpha1", "kind": "RetrainJob", "metadata": {"name": name},
        "spec": {
            "reason": {"decisionId": f"d-{name}", "summary": "Refund answers regressed."},
            "baseline": {"version": "v1", "uri": "/models/bot/v1"}, "image": image,
            "task": "sequence-classification", "data": {"replay": [{"uri": "/data/bot/missing.jsonl"}]},
            "targets": {"scenarios": ["refund"]},
            "outputURI": "/models/bot", "backoffLimit": 0, **spec,
        },
    }


def failed(obj):
    return obj.get("status", {}).get("phase") == "Failed"


def test_a_trainer_failing_on_its_data_fails_the_job_at_once_with_the_message_in_pod_paths(operator, agent,
                                                                                           namespace):
    apply(operator, namespace, retrain_job("bad-data", backoffLimit=3))
    status = wait_for(operator, "retrainjob", "bad-data", namespace, failed, timeout=90)["status"]
    assert status["attempts"] == 1  # a permanent failure (exit code 2) is not retried
    [failure] = status["failures"]
    assert failure["reason"] == "InvalidData" and failure["retried"] is False
    # The agent ran it on local folders, and reported what a pod would: the path as the pod sees it.
    assert failure["message"].startswith("cannot read /data/bot/missing.jsonl: No such file")
    assert "the trainer reported a failure retrying cannot fix" in status["message"]


def test_an_image_without_a_local_entry_point_fails_its_pod(operator, agent, namespace):
    apply(operator, namespace, retrain_job("unknown-image", image="example.com/other-trainer:1"))
    status = wait_for(operator, "retrainjob", "unknown-image", namespace, failed, timeout=60)["status"]
    [failure] = status["failures"]
    assert failure["reason"] == "Error"
    assert failure["message"].startswith("exit code 128: the dev node agent has no local entry point for image "
                                         "example.com/other-trainer:1")


# --- serving pods ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(agent):
    """A tiny random-initialised causal LM on the node's storage, at the pod path :data:`MODEL`: it answers."""
    from kaizen_trainer.synthetic import save_model

    save_model("causal-lm", agent.root / MODEL.lstrip("/"))
    return MODEL


def server(name, *, replicas=1, variant="good", model=MODEL, probe="/health"):
    """A Deployment of the model server, as examples/demo has it: the model version and track from the pod's labels."""
    labels = {"app": "bot", "variant": variant, "kaizen.dev/track": "stable", "kaizen.dev/model-version": "v1"}
    label = "metadata.labels['{}']".format
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": {
        "replicas": replicas, "selector": {"matchLabels": {"app": "bot", "variant": variant}},
        "template": {"metadata": {"labels": labels}, "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "server", "image": SERVER_IMAGE, "ports": [{"name": "http", "containerPort": 8080}],
                "env": [{"name": "MODEL_URI", "value": model}, {"name": "KAIZEN_MODEL_NAME", "value": "bot"},
                        {"name": "KAIZEN_MODEL_VERSION",
                         "valueFrom": {"fieldRef": {"fieldPath": label("kaizen.dev/model-version")}}},
                        {"name": "KAIZEN_TRACK", "valueFrom": {"fieldRef": {"fieldPath": label("kaizen.dev/track")}}}],
                "readinessProbe": {"httpGet": {"path": probe, "port": "http"}, "periodSeconds": 1,
                                   "failureThreshold": 1}}]}}}}


SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bot"},
           "spec": {"selector": {"app": "bot"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


def create(cluster, namespace, *docs):
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(docs))


def eventually(check, what, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.3)
    return result


def pods(cluster, namespace, selector):
    listed = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout)
    return [p for p in listed["items"] if not p["metadata"].get("deletionTimestamp")]


def ready(pod):
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def running_pods(cluster, namespace, selector, count, *, want_ready=True):
    found = [p for p in pods(cluster, namespace, selector)
             if p["status"].get("podIP") and ready(p) == want_ready
             and "running" in (p["status"].get("containerStatuses") or [{}])[0].get("state", {})]
    return found if len(found) == count else None


def endpoints(cluster, namespace, service):
    """The Service's EndpointSlice endpoints: pod IP -> ready."""
    listed = json.loads(cluster.kubectl("get", "endpointslices", "-n", namespace, "-l",
                                        f"kubernetes.io/service-name={service}", "-o", "json").stdout)
    return {address: endpoint["conditions"].get("ready") for s in listed["items"] for endpoint in s["endpoints"] or []
            for address in endpoint["addresses"]}


def completions_served(pod):
    """How many completions the pod's server counted (its own /metrics, read at the pod's local address)."""
    with urllib.request.urlopen(f"http://{local_address(pod['status']['podIP'])}:8080/metrics", timeout=5) as r:
        lines = r.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines
               if line.startswith("kaizen_server_requests_total{") and 'route="/v1/completions"' in line)


def listening(pod):
    try:
        socket.create_connection((local_address(pod["status"]["podIP"]), 8080), timeout=1).close()
        return True
    except OSError:
        return False


def test_a_deployment_of_the_model_server_serves_through_its_service_and_is_scraped(cluster, agent, model, namespace,
                                                                                    tmp_path):
    create(cluster, namespace, server("bot", replicas=2),
           server("bot-unready", variant="unready", probe="/v1/not-a-route"), SERVICE)
    serving = eventually(lambda: running_pods(cluster, namespace, "variant=good", 2), "both bot pods to be Ready")
    ips = [p["status"]["podIP"] for p in serving]
    assert len(set(ips)) == 2 and all(ipaddress.ip_address(ip) in POD_CIDR for ip in ips)
    for pod in serving:
        [container] = pod["status"]["containerStatuses"]
        assert (container["ready"], container["restartCount"], container["started"]) == (True, 0, True)
        assert {c["type"] for c in pod["status"]["conditions"]} >= {"Initialized", "ContainersReady", "Ready",
                                                                    "PodScheduled"}
        assert pod["status"]["phase"] == "Running" and pod["status"]["hostIP"]
    # The other pod's server is up and healthy, but its probe asks for a route the server does not have.
    [unready] = eventually(lambda: (found := running_pods(cluster, namespace, "variant=unready", 1, want_ready=False))
                           and healthy(found[0]) and found, "the unready pod's server to load its model")
    time.sleep(2)  # two probe periods
    [unready] = running_pods(cluster, namespace, "variant=unready", 1, want_ready=False)
    assert unready["status"]["containerStatuses"][0]["ready"] is False

    # kube-controller-manager publishes what the agent reported: the ready pods ready, the other not.
    expected = {ips[0]: True, ips[1]: True, unready["status"]["podIP"]: False}
    eventually(lambda: endpoints(cluster, namespace, "bot") == expected, f"the EndpointSlice to list {expected}")

    collector = LocalCollector(f"sqlite:///{tmp_path / 'collector.db'}", tmp_path / "collector").start()
    try:
        with ServiceProxy(cluster, namespace, "bot") as proxy, \
                LocalPrometheus(tmp_path / "prometheus", pod_targets=[agent.targets]) as prometheus:
            prometheus.set_targets([Target(collector.url.removeprefix("http://"))])
            assert sorted(proxy.endpoints()) == sorted((local_address(ip), 8080) for ip in ips)
            for _ in range(20):
                request = urllib.request.Request(f"{proxy.url}/v1/completions", method="POST",
                                                 data=json.dumps({"model": "bot", "prompt": "refund money",
                                                                  "max_tokens": 3}).encode(),
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=30) as response:
                    assert response.headers["X-Kaizen-Model-Version"] == "v1"
                    assert json.load(response)["object"] == "text_completion"
            served = {p["metadata"]["name"]: completions_served(p) for p in serving}
            assert sum(served.values()) == 20 and min(served.values()) > 0, served  # a random pod per connection
            assert completions_served(unready) == 0

            # Prometheus scrapes both pods, labelled as in a cluster, and the collector beside them.
            query = f'kaizen_server_requests_total{{namespace="{namespace}",route="/v1/completions"}}'
            scraped = eventually(lambda: len(result := prometheus.query(query)) == 2 and
                                 sum(float(r["value"][1]) for r in result) == 20 and result, "Prometheus to scrape "
                                 "both pods' completions", timeout=30)
            assert sorted(r["metric"]["pod"] for r in scraped) == sorted(served)
            for series in scraped:
                labels = series["metric"]
                assert (labels["job"], labels["app"], labels["track"], labels["model_version"], labels["model"]) == (
                    "kubernetes-pods", "bot", "stable", "v1", "bot")
                assert not any(name.startswith("exported_") for name in labels)
            collector_up = eventually(lambda: prometheus.query('up{job="kaizen"} == 1'), "the collector's scrape",
                                      timeout=30)
            assert [r["metric"]["instance"] for r in collector_up] == [collector.url.removeprefix("http://")]

            # A deleted pod's process stops; the ReplicaSet's replacement comes up on a new address and takes over.
            victim, survivor = serving
            cluster.kubectl("delete", "pod", victim["metadata"]["name"], "-n", namespace, "--wait=false")
            eventually(lambda: not listening(victim), "the deleted pod's server to stop", timeout=30)
            [replacement] = eventually(lambda: [p for p in running_pods(cluster, namespace, "variant=good", 2) or []
                                                if p["metadata"]["name"] != survivor["metadata"]["name"]],
                                       "the replacement pod to be Ready")
            new_ip = replacement["status"]["podIP"]
            assert new_ip not in ips
            expected = {survivor["status"]["podIP"]: True, new_ip: True, unready["status"]["podIP"]: False}
            eventually(lambda: endpoints(cluster, namespace, "bot") == expected,
                       f"the EndpointSlice to list {expected}")
            eventually(lambda: sorted(proxy.endpoints()) == sorted(
                [(local_address(survivor["status"]["podIP"]), 8080), (local_address(new_ip), 8080)]),
                "the proxy to follow the EndpointSlice", timeout=10)
    finally:
        collector.stop()


def healthy(pod):
    try:
        with urllib.request.urlopen(f"http://{local_address(pod['status']['podIP'])}:8080/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_a_server_that_exits_is_restarted_and_reported_as_crash_looping(cluster, agent, namespace):
    create(cluster, namespace, server("broken", variant="broken", model="/models/missing/model"))

    def crash_looping():
        listed = pods(cluster, namespace, "variant=broken")
        statuses = listed[0]["status"].get("containerStatuses") if listed else None
        waiting = statuses[0]["state"].get("waiting", {}) if statuses else {}
        return waiting.get("reason") == "CrashLoopBackOff" and listed[0]

    pod = eventually(crash_looping, "the broken pod to be crash-looping")
    [container] = pod["status"]["containerStatuses"]
    # First exit: restarted at once; the second: backing off, as a kubelet does.
    assert container["restartCount"] == 2 and container["ready"] is False
    assert container["state"]["waiting"]["message"].startswith("back-off 10s restarting failed container=server")
    assert container["lastState"]["terminated"]["exitCode"] == 2  # the server's "cannot load the model"
    assert pod["status"]["phase"] == "Running" and not ready(pod)
    log = agent.workdir / "pods" / f"{namespace}_{pod['metadata']['name']}" / "container.log"
    # The model path the server was given is the node's (--root), not the pod's.
    assert f"MODEL_URI={agent.root}/models/missing/model" in log.read_text()
