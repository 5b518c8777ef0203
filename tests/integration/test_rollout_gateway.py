"""A Rollout with Gateway API routing, end to end on real parts: the operator sets each step's exact weight on an
HTTPRoute, Traefik (kaizen.dev.gateway) routes real requests by it to real model servers (kaizen_server pods run
by the dev node agent), the split seen matches the weight within a chi-square bound, conversations the canary
answered stay on it, and promotion restores the route to 100/0 with its foreign parts as they were."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from kaizen.cli import main as kaizen_cli
from kaizen.dev import node_agent, processes
from kaizen.dev.gateway import LocalGateway, install_gateway_api
from tests.integration.gateway import (
    CHI2_Q, chi_square, create, gateway_service, get_models, serving_deployment, versions_seen, wait_until_served,
)
from tests.integration.kube import apply, condition, wait_for
from tests.integration.rollouts import deployment, running_operator

pytestmark = pytest.mark.integration
MODELS = {"v1": "/models/bot/v1/model", "v2": "/models/bot/v2/model"}
REQUESTS = 400  # per step
PIN = "X-Kaizen-Version"
TEAM_FILTER = {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "X-Team",
                                                                                    "value": "assistants"}]}}


@pytest.fixture(scope="module")
def operator(crds):
    install_gateway_api(crds)
    with running_operator(crds):
        yield crds


@pytest.fixture(scope="module")
def agent(cluster, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("node-agent")
    from kaizen_trainer.synthetic import save_model
    for path in MODELS.values():
        save_model("causal-lm", workdir / "node" / path.lstrip("/"))
    process = node_agent.spawn(cluster.kubeconfig, workdir, workdir / "node")
    yield
    processes.stop([process])


def route_manifest(gateway):
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "bot"},
            "spec": {"parentRefs": [gateway.parent_ref], "rules": [
                {"name": "api", "filters": [TEAM_FILTER],
                 "backendRefs": [{"name": "bot-stable", "port": 80}]}]}}


def gateway_rollout(steps, **routing):
    return {"apiVersion": "kaizen.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "bot-v2"}, "spec": {
        "target": {"deployment": "bot", "container": "server"},
        "stableModel": {"version": "v1", "uri": MODELS["v1"]},
        "canaryModel": {"version": "v2", "uri": MODELS["v2"]},
        "trafficRouting": {"gatewayAPI": {
            "httpRoute": "bot", "stableBackend": {"name": "bot-stable", "port": 80},
            "canaryBackend": {"name": "bot-canary", "port": 80}, "sessionAffinity": {"header": PIN}, **routing}},
        "steps": steps,
    }}


def get_route(cluster, namespace):
    return json.loads(cluster.kubectl("get", "httproute", "bot", "-n", namespace, "-o", "json").stdout)


def wait_for_route_weight(url, weight, timeout=60.0):
    """Wait until Traefik serves the route at ``weight``. It reloads a changed route within a second or so, and
    until the canary's endpoints reach it (kube-controller-manager in a cluster, kaizen.dev.gateway here, a moment
    after the canary Deployment is available) its share is answered 503; the samples judged later must have none."""
    deadline = time.monotonic() + timeout
    while True:
        answers = [get_models(url)[:2] for _ in range(100)]
        seen = Counter(version if status == 200 else "error" for status, version in answers)
        if abs(seen["v2"] - weight) <= 2 and not seen["error"]:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"the gateway never served the canary at {weight}% (last 100 requests: {dict(seen)})")
        time.sleep(0.5)


class Conversations:
    """Simulated conversations: the first turn takes the weighted split; a client echoes the marker it was given,
    as a chat client sends back the header of the first answer."""

    def __init__(self, url):
        self.url, self.pinned, self.unpinned = url, 0, 0
        self.turns: list[list[str]] = []  # the versions that answered each pinned conversation

    def start(self, count):
        for _ in range(count):
            status, version, response = get_models(self.url)
            assert status == 200
            marker = response.getheader(PIN)
            assert (marker == "v2") == (version == "v2"), "only the canary's answers carry the marker"
            if marker:
                self.turns.append([version])
            else:
                self.unpinned += 1

    def follow_up(self, turns=3):
        for conversation in self.turns:
            for _ in range(turns):
                _status, version, _ = get_models(self.url, {PIN: "v2"})
                conversation.append(version)


def test_each_step_routes_its_exact_share_through_the_gateway_and_pinned_conversations_never_switch(
        operator, agent, namespace):
    cluster = operator
    create(cluster, namespace, serving_deployment("bot", track="stable", version="v1", model=MODELS["v1"]),
           gateway_service("bot-stable", track="stable"), gateway_service("bot-canary", track="canary"))
    with LocalGateway(cluster, namespace) as gateway:
        create(cluster, namespace, route_manifest(gateway))
        wait_until_served(gateway.url, {"v1"})
        before = get_route(cluster, namespace)["spec"]["rules"]
        apply(cluster, namespace, gateway_rollout([{"setWeight": 10}, {"pause": {}}, {"setWeight": 50},
                                                   {"pause": {}}, {"setWeight": 100}]))
        conversations = Conversations(gateway.url)
        for step, weight in ((1, 10), (3, 50)):
            status = wait_for(cluster, "rollout", "bot-v2", namespace,
                              lambda o, s=step: o.get("status", {}).get("currentStep") == s
                              and o["status"].get("awaitingApproval"), timeout=120)["status"]
            assert (status["canaryWeight"], status["achievedWeight"], status["canaryReplicas"]) == (weight, weight, 1)
            wait_for_route_weight(gateway.url, weight)
            seen = versions_seen(gateway.url, REQUESTS)
            assert chi_square(seen["v2"], REQUESTS, weight) < CHI2_Q[1], (weight, dict(seen))
            conversations.start(40)
            conversations.follow_up()
            assert kaizen_cli(["approve", "bot-v2", "-n", namespace]) == 0
        assert conversations.turns and conversations.unpinned  # both kinds of first turn happened
        assert all(v == "v2" for turns in conversations.turns for v in turns), conversations.turns

        promoted = wait_for(cluster, "rollout", "bot-v2", namespace,
                            lambda o: o.get("status", {}).get("phase") == "Promoted", timeout=180)
        assert promoted["status"]["achievedWeight"] == 0 and condition(promoted, "InvalidSpec") is None
        rules = get_route(cluster, namespace)["spec"]["rules"]
        assert [r["name"] for r in rules] == ["api"]  # Kaizen's pin rule is gone
        assert rules[0]["filters"] == before[0]["filters"] == [TEAM_FILTER]
        assert [(b["name"], b["weight"]) for b in rules[0]["backendRefs"]] == [("bot-stable", 100),
                                                                              ("bot-canary", 0)]
        # The stable Deployment serves the candidate now, through the route's stable backend alone.
        wait_until_served(gateway.url, {"v2"}, timeout=120)
        deadline = time.monotonic() + 60
        while (seen := versions_seen(gateway.url, 50)) != {"v2": 50} and time.monotonic() < deadline:
            time.sleep(0.5)
        assert seen == {"v2": 50}
        conversations.follow_up(1)
        assert all(v == "v2" for turns in conversations.turns for v in turns)


def test_a_missing_route_is_an_invalid_spec_until_it_exists(operator, agent, namespace):
    cluster = operator
    create(cluster, namespace, serving_deployment("bot", track="stable", version="v1", model=MODELS["v1"]))
    apply(cluster, namespace, gateway_rollout([{"setWeight": 10}, {"pause": {}}, {"setWeight": 100}]))
    invalid = wait_for(cluster, "rollout", "bot-v2", namespace,
                       lambda o: (condition(o, "InvalidSpec") or {}).get("reason") == "InvalidRoute", timeout=60)
    assert condition(invalid, "InvalidSpec")["message"].startswith(
        f"HTTPRoute {namespace}/bot (spec.trafficRouting.gatewayAPI.httpRoute) does not exist: create it")
    assert cluster.kubectl("get", "deployment", "bot-canary", "-n", namespace, check=False).returncode != 0
    create(cluster, namespace, {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                                "metadata": {"name": "bot"},
                                "spec": {"rules": [{"backendRefs": [{"name": "bot-stable", "port": 80}]}]}})
    ready = wait_for(cluster, "rollout", "bot-v2", namespace, lambda o: condition(o, "InvalidSpec") is None
                     and o.get("status", {}).get("canaryReplicas") == 1, timeout=60)
    assert condition(ready, "Ready")["status"] == "True"


def test_an_aborted_rollout_restores_the_route_and_the_stable_alone_answers(operator, agent, namespace):
    cluster = operator
    create(cluster, namespace, serving_deployment("bot", track="stable", version="v1", model=MODELS["v1"]),
           gateway_service("bot-stable", track="stable"), gateway_service("bot-canary", track="canary"))
    # Traefik as deployed, loading a changed configuration 2 s after the change (its default throttle).
    with LocalGateway(cluster, namespace, throttle="2s") as gateway:
        create(cluster, namespace, route_manifest(gateway))
        wait_until_served(gateway.url, {"v1"})
        apply(cluster, namespace, gateway_rollout([{"setWeight": 50}, {"pause": {}}, {"setWeight": 100}],
                                                  scaleDownDelay="10s"))
        wait_for(cluster, "rollout", "bot-v2", namespace,
                 lambda o: o.get("status", {}).get("awaitingApproval"), timeout=120)
        wait_for_route_weight(gateway.url, 50)
        assert kaizen_cli(["abort", "bot-v2", "-n", namespace]) == 0
        aborted = wait_for(cluster, "rollout", "bot-v2", namespace,
                           lambda o: o.get("status", {}).get("phase") == "Aborted", timeout=60)
        backends = get_route(cluster, namespace)["spec"]["rules"][0]["backendRefs"]
        assert [(b["name"], b["weight"]) for b in backends] == [("bot-stable", 100), ("bot-canary", 0)]
        assert aborted["status"]["canaryRemovalAt"] and deployment(cluster, namespace, "bot-canary") is not None
        # Traefik loads the restored route a moment later, and until then sends the canary its half: the canary
        # stays for scaleDownDelay, so every request is answered (versions_seen fails on any other status; with
        # the canary deleted at the abort, CI saw a 502), and soon the stable alone answers.
        deadline = time.monotonic() + 9
        while (seen := versions_seen(gateway.url, 100)) != {"v1": 100}:
            assert time.monotonic() < deadline, f"the canary still answers after the abort: {dict(seen)}"
        cluster.kubectl("wait", "--for=delete", "deployment/bot-canary", "-n", namespace, "--timeout=60s",
                        timeout=70)
        ended = wait_for(cluster, "rollout", "bot-v2", namespace,
                         lambda o: o["status"].get("canaryRemovalAt") is None, timeout=30)
        assert ended["status"]["phase"] == "Aborted"
        assert versions_seen(gateway.url, 50) == {"v1": 50}


def test_cohorts_and_a_cookie_pin_route_through_the_real_gateway(operator, agent, namespace):
    """Kaizen's cohort rule and cookie pin rule as Traefik serves them: the cohort always reaches the canary, a
    cookie the canary set keeps its conversation there, and everyone else takes the 1% split."""
    from kaizen.api.rollout import GatewayAPIRouting
    from kaizen.k8s import httproutes
    cluster = operator
    create(cluster, namespace, serving_deployment("bot", track="stable", version="v1", model=MODELS["v1"]),
           serving_deployment("bot-canary", track="canary", version="v2", model=MODELS["v2"]),
           gateway_service("bot-stable", track="stable"), gateway_service("bot-canary", track="canary"))
    with LocalGateway(cluster, namespace) as gateway:
        create(cluster, namespace, route_manifest(gateway))
        wait_until_served(gateway.url, {"v1"})
        routing = GatewayAPIRouting.model_validate({
            "httpRoute": "bot", "stableBackend": {"name": "bot-stable", "port": 80},
            "canaryBackend": {"name": "bot-canary", "port": 80}, "sessionAffinity": {"cookie": "kaizen-canary"},
            "cohorts": {"header": "X-Cohort", "values": ["beta"]}})
        httproutes.set_weight(namespace, routing, rollout="bot-v2", weight=1, canary_version="v2")
        deadline = time.monotonic() + 60  # until Traefik has loaded the new rules (100/0 looks like 99/1)
        while get_models(gateway.url, {"X-Cohort": "beta"})[1] != "v2":
            assert time.monotonic() < deadline, "the cohort rule never reached the canary"
            time.sleep(0.2)
        assert versions_seen(gateway.url, 50, {"X-Cohort": "beta"}) == {"v2": 50}
        assert versions_seen(gateway.url, 50, {"X-Cohort": "alpha"})["v1"] >= 48
        # The canary's answer sets the cookie; a client that sends it back stays on the canary.
        cookie = None
        for _ in range(300):
            status, version, response = get_models(gateway.url)
            if version == "v2":
                cookie = response.getheader("Set-Cookie")
                break
        assert cookie is not None and cookie.startswith("kaizen-canary=v2;")
        jar = "theme=dark; " + cookie.split(";")[0]
        assert versions_seen(gateway.url, 50, {"Cookie": jar}) == {"v2": 50}
        assert versions_seen(gateway.url, 50, {"Cookie": "theme=dark; kaizen-canary=v3"})["v1"] >= 48


def test_a_rollout_deleted_under_way_restores_its_route_first(operator, agent, namespace):
    cluster = operator
    create(cluster, namespace, serving_deployment("bot", track="stable", version="v1", model=MODELS["v1"]),
           {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "bot"},
            "spec": {"rules": [{"name": "api", "filters": [TEAM_FILTER],
                                "backendRefs": [{"name": "bot-stable", "port": 80}]}]}})
    apply(cluster, namespace, gateway_rollout([{"setWeight": 20}, {"pause": {}}, {"setWeight": 100}],
                                              scaleDownDelay="5s"))
    wait_for(cluster, "rollout", "bot-v2", namespace, lambda o: o.get("status", {}).get("awaitingApproval"),
             timeout=120)
    routed = get_route(cluster, namespace)["spec"]["rules"]
    assert [r["name"] for r in routed] == ["kaizen-bot-v2-api-pin", "api"]
    started = time.monotonic()
    cluster.kubectl("delete", "rollout.kaizen.dev", "bot-v2", "-n", namespace, "--timeout=60s")
    assert time.monotonic() - started >= 5  # the Rollout, and so its canary, stayed for scaleDownDelay
    rules = get_route(cluster, namespace)["spec"]["rules"]
    assert [r["name"] for r in rules] == ["api"] and rules[0]["filters"] == [TEAM_FILTER]
    assert [(b["name"], b["weight"]) for b in rules[0]["backendRefs"]] == [("bot-stable", 100), ("bot-canary", 0)]
