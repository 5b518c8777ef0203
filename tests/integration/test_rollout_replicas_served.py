"""A Rollout routed by replicas (the default), on real model servers: kaizen_server pods run by the dev node agent
behind one Service, requests spread over the Service's ready pods as kube-proxy spreads them
(kaizen.dev.service_proxy). The split follows the pods, not the weight asked: with one stable replica, 10 % asked is
one canary pod, and half the requests, which status.achievedWeight says. Promotion then serves the candidate from
the stable Deployment alone.

The demo (tests/e2e) routes its loop's canary through Gateway API; this is where replica routing meets real served
models."""

from __future__ import annotations

import time

import pytest

from kaizen.cli import main as kaizen_cli
from kaizen.dev import node_agent, processes
from kaizen.dev.service_proxy import ServiceProxy
from tests.integration.gateway import (
    CHI2_Q, chi_square, create, serving_deployment, versions_seen, wait_until_served,
)
from tests.integration.kube import apply, wait_for
from tests.integration.rollouts import running_operator

pytestmark = pytest.mark.integration
MODELS = {"v1": "/models/bot/v1/model", "v2": "/models/bot/v2/model"}
REQUESTS = 400
SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bot"},
           "spec": {"selector": {"app": "bot"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


@pytest.fixture(scope="module")
def operator(crds):
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


def test_a_replica_routed_canary_gets_its_pods_share_of_the_services_requests_and_is_promoted(operator, agent,
                                                                                               namespace):
    cluster = operator
    create(cluster, namespace, serving_deployment("bot", track="stable", version="v1", model=MODELS["v1"]), SERVICE)
    apply(cluster, namespace, {"apiVersion": "kaizen.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "bot-v2"},
                               "spec": {"target": {"deployment": "bot", "container": "server"},
                                        "stableModel": {"version": "v1", "uri": MODELS["v1"]},
                                        "canaryModel": {"version": "v2", "uri": MODELS["v2"]},
                                        "steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 100}]}})
    status = wait_for(cluster, "rollout", "bot-v2", namespace, lambda o: o.get("status", {}).get("awaitingApproval"),
                      timeout=120)["status"]
    assert (status["canaryWeight"], status["achievedWeight"], status["canaryReplicas"]) == (10, 50, 1)
    with ServiceProxy(cluster, namespace, "bot") as proxy:
        deadline = time.monotonic() + 90
        while len(proxy.endpoints()) < 2:  # the canary's pod loads its model, then kube-controller-manager lists it
            assert time.monotonic() < deadline, f"the Service never listed both pods: {proxy.endpoints()}"
            time.sleep(0.2)
        seen = versions_seen(proxy.url, REQUESTS)
        assert set(seen) == {"v1", "v2"} and chi_square(seen["v2"], REQUESTS, status["achievedWeight"]) < CHI2_Q[1], \
            dict(seen)

        assert kaizen_cli(["approve", "bot-v2", "-n", namespace]) == 0
        promoted = wait_for(cluster, "rollout", "bot-v2", namespace,
                            lambda o: o.get("status", {}).get("phase") == "Promoted", timeout=180)
        assert promoted["status"]["achievedWeight"] == 0
        # The stable Deployment serves the candidate now, and the canary is gone from the Service.
        wait_until_served(proxy.url, {"v2"}, timeout=120)
        deadline = time.monotonic() + 90
        while (seen := versions_seen(proxy.url, 50)) != {"v2": 50}:
            assert time.monotonic() < deadline, f"the stable never served v2 alone: {dict(seen)}"
            time.sleep(0.5)
    cluster.kubectl("wait", "--for=delete", "deployment/bot-canary", "-n", namespace, "--timeout=60s")
