"""Adapter canaries on one server, end to end on real parts: a LoRA candidate is loaded on the stable Deployment's
own kaizen_server pods (run by the dev node agent) from the Rollout's ConfigMap, which the pods mount and the agent
updates in place, as a kubelet does. Real requests by model name are split within a chi-square bound through the
real Traefik gateway (HTTPRoute rules on X-Gateway-Model-Name) and through the servers' own alias; pinned sessions
never switch; promotion serves the adapter under the served name, rollback unloads it, and there is never a second
Deployment."""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from collections import Counter

import pytest

from kaizen.cli import main as kaizen_cli
from kaizen.dev import node_agent, processes
from kaizen.dev.gateway import LocalGateway, install_gateway_api
from kaizen.dev.serving import local_address
from tests.integration.gateway import CHI2_Q, chi_square, create, gateway_service, serving_deployment
from tests.integration.kube import apply, wait_for
from tests.integration.rollouts import running_operator

pytestmark = pytest.mark.integration
BASE, ADAPTER = "/models/bot/v1/model", "/models/bot/v2/adapter"
PIN = "X-Kaizen-Version"
MODEL_HEADER = "X-Gateway-Model-Name"
REQUESTS = 300
PROMPT = "where is my refund"


@pytest.fixture(scope="module")
def operator(crds):
    install_gateway_api(crds)
    with running_operator(crds):
        yield crds


@pytest.fixture(scope="module")
def agent(cluster, tmp_path_factory):
    """The node agent, with the node's storage holding a tiny base model and a LoRA adapter on it (its B matrices
    drawn away from zero, so that its answers differ from the base's), saved as the trainer saves them."""
    import torch

    from kaizen.api.retrainjob import LoraSettings
    from kaizen_trainer import adapters, modeling, synthetic
    workdir = tmp_path_factory.mktemp("node-agent")
    root = workdir / "node"
    base = synthetic.save_model("causal-lm", root / BASE.lstrip("/"))
    model, tokenizer = modeling.load("causal-lm", str(base))
    lora = adapters.attach(model, "causal-lm", LoraSettings(rank=4, alpha=8, dropout=0.0, targetModules=["c_attn"]),
                           "lora", seed=3)
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    adapters.save(lora, tokenizer, root / ADAPTER.lstrip("/"), BASE)
    process = node_agent.spawn(cluster.kubeconfig, workdir, root)
    yield
    processes.stop([process])


def stable_deployment():
    deployment = serving_deployment("bot", track="stable", version="v1", model=BASE)
    # Test pods start and stop in seconds; a rolling update that surges no pod keeps one pod, as one GPU would.
    deployment["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    return deployment


def adapter_rollout(routing, steps):
    return {"apiVersion": "kaizen.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "bot-v2"}, "spec": {
        "target": {"deployment": "bot", "container": "server"},
        "stableModel": {"version": "v1", "uri": BASE},
        "canaryModel": {"version": "v2", "uri": ADAPTER, "baseURI": BASE},
        "trafficRouting": routing, "steps": steps}}


def complete(url, headers=None):
    """POST /v1/completions for the served name: (the answering version, the response)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("POST", "/v1/completions", json.dumps({"model": "bot", "prompt": PROMPT, "max_tokens": 1}),
                           {"Content-Type": "application/json", MODEL_HEADER: "bot", **(headers or {})})
        response = connection.getresponse()
        body = json.loads(response.read())
        assert response.status == 200, body
        return response.getheader("X-Kaizen-Model-Version"), response
    finally:
        connection.close()


def split(url, count=REQUESTS):
    return Counter(complete(url)[0] for _ in range(count))


def wait_for_share(url, weight, timeout=90.0):
    """Until the requests' split is near ``weight`` (the route, or the alias, reached every hop)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = split(url, 60)
        if abs(100 * seen["v2"] / 60 - weight) <= 15:
            return
        assert time.monotonic() < deadline, f"the split never came near {weight}% (last: {dict(seen)})"
        time.sleep(0.5)


def pinned_sessions_stay(url, starts=30, turns=3):
    """Conversations whose first turn took the split, then echoed the marker of the first answer: every turn of
    each stays on the version that first answered it. Returns the versions first turns saw."""
    first = Counter()
    for _ in range(starts):
        version, response = complete(url)
        marker = response.getheader(PIN)
        first[version] += 1
        if marker is None:
            continue  # the gateway marks only the canary's answers; the stable's take the split again
        assert marker == version
        assert {complete(url, {PIN: marker})[0] for _ in range(turns)} == {version}
    return first


def pods(cluster, namespace):
    listed = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", "app=bot", "-o", "json").stdout)
    return listed["items"]


def deployments(cluster, namespace):
    listed = json.loads(cluster.kubectl("get", "deployments", "-n", namespace, "-o", "json").stdout)
    return sorted(d["metadata"]["name"] for d in listed["items"])


def adapters_file(cluster, namespace):
    configmap = json.loads(cluster.kubectl("get", "configmap", "bot-adapters", "-n", namespace, "-o", "json").stdout)
    return json.loads(configmap["data"]["adapters.json"])


def test_through_the_gateway_the_adapter_gets_its_exact_share_by_model_name_and_promotion_serves_it(
        operator, agent, namespace):
    cluster = operator
    create(cluster, namespace, stable_deployment(), gateway_service("bot-stable", track="stable"),
           # Both backends reach the stable's pods: the model-name header picks the adapter there.
           gateway_service("bot-canary", track="stable"))
    with LocalGateway(cluster, namespace) as gateway:
        route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "bot"},
                 "spec": {"parentRefs": [gateway.parent_ref], "rules": [
                     {"name": "api", "backendRefs": [{"name": "bot-stable", "port": 80}]}]}}
        create(cluster, namespace, route)
        before = json.loads(cluster.kubectl("get", "httproute", "bot", "-n", namespace, "-o", "json").stdout)
        apply(cluster, namespace, adapter_rollout({
            "gatewayAPI": {"httpRoute": "bot", "stableBackend": {"name": "bot-stable", "port": 80},
                           "canaryBackend": {"name": "bot-canary", "port": 80}, "sessionAffinity": {"header": PIN}},
            "adapter": {"servedModelName": "bot", "syncPeriod": "2s"}},
            [{"setWeight": 20}, {"pause": {}}, {"setWeight": 100}]))
        status = wait_for(cluster, "rollout", "bot-v2", namespace,
                          lambda o: o.get("status", {}).get("awaitingApproval"), timeout=240)["status"]
        assert (status["canaryWeight"], status["achievedWeight"], status["canaryReplicas"]) == (20, 20, 0)
        assert deployments(cluster, namespace) == ["bot"]
        wait_for_share(gateway.url, 20)
        seen = split(gateway.url)
        assert chi_square(seen["v2"], REQUESTS, 20) < CHI2_Q[1], dict(seen)
        first = pinned_sessions_stay(gateway.url)
        assert first["v2"] and first["v1"]

        assert kaizen_cli(["approve", "bot-v2", "-n", namespace]) == 0
        wait_for(cluster, "rollout", "bot-v2", namespace, lambda o: o.get("status", {}).get("phase") == "Promoted",
                 timeout=240)
        assert deployments(cluster, namespace) == ["bot"]
        # The route is as it was, and the served name is the adapter, from the Deployment's own model now.
        rules = json.loads(cluster.kubectl("get", "httproute", "bot", "-n", namespace, "-o", "json").stdout)
        assert rules["spec"]["rules"] == before["spec"]["rules"]
        assert adapters_file(cluster, namespace) == {"adapters": [], "aliases": []}
        env = {e["name"]: e.get("value") for e in json.loads(cluster.kubectl(
            "get", "deployment", "bot", "-n", namespace, "-o", "json").stdout)["spec"]["template"]["spec"][
            "containers"][0]["env"]}
        assert (env["MODEL_URI"], env["BASE_MODEL_URI"]) == (ADAPTER, BASE)
        deadline = time.monotonic() + 60
        while (seen := split(gateway.url, 30)) != {"v2": 30}:
            assert time.monotonic() < deadline, dict(seen)
            time.sleep(0.5)


def test_without_a_gateway_the_servers_alias_splits_and_pins_and_a_rollback_unloads_the_adapter(
        operator, agent, namespace):
    cluster = operator
    create(cluster, namespace, stable_deployment())
    apply(cluster, namespace, adapter_rollout(
        {"adapter": {"servedModelName": "bot", "sessionAffinity": {"header": PIN}, "syncPeriod": "2s"}},
        [{"setWeight": 30}, {"pause": {}}, {"setWeight": 100}]))
    wait_for(cluster, "rollout", "bot-v2", namespace, lambda o: o.get("status", {}).get("awaitingApproval"),
             timeout=240)
    (pod,) = [p for p in pods(cluster, namespace) if not p["metadata"].get("deletionTimestamp")]
    url = f"http://{local_address(pod['status']['podIP'])}:8080"
    models = json.loads(http_get(url + "/v1/models"))["data"]
    assert {(m["id"], m["version"]) for m in models} == {("bot", "v1"), ("bot-v2", "v2")}
    assert deployments(cluster, namespace) == ["bot"]
    seen = split(url)
    assert chi_square(seen["v2"], REQUESTS, 30) < CHI2_Q[1], dict(seen)
    first = pinned_sessions_stay(url)  # the alias marks both versions' answers: each pin holds
    assert first["v1"] and first["v2"]
    # The adapter answers differently from the base: it is really applied.
    texts = {v: complete_text(url, v) for v in ("v1", "v2")}
    assert texts["v1"] != texts["v2"]

    assert kaizen_cli(["abort", "bot-v2", "-n", namespace]) == 0
    wait_for(cluster, "rollout", "bot-v2", namespace, lambda o: o.get("status", {}).get("phase") == "Aborted",
             timeout=60)
    deadline = time.monotonic() + 60
    while len(json.loads(http_get(url + "/v1/models"))["data"]) != 1:
        assert time.monotonic() < deadline, "the server never unloaded the adapter"
        time.sleep(0.3)
    assert split(url, 40) == {"v1": 40}
    assert {complete(url, {PIN: "v2"})[0] for _ in range(5)} == {"v1"}
    assert deployments(cluster, namespace) == ["bot"]


def http_get(url):
    import urllib.request
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def complete_text(url, version):
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("POST", "/v1/completions", json.dumps({"model": "bot", "prompt": PROMPT, "max_tokens": 8}),
                           {"Content-Type": "application/json", PIN: version})
        response = connection.getresponse()
        assert response.getheader("X-Kaizen-Model-Version") == version
        return json.loads(response.read())["choices"][0]["text"]
    finally:
        connection.close()


