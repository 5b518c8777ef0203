"""kaizen.k8s.deployments.Watched on the real API server: a namespace is listed in pages at its first read, then
followed by a watch, so a Rollout's look reads the Deployments it needs without a request to the API server."""

from __future__ import annotations

import json
import time

import pytest

import kaizen.k8s.client
from kaizen.k8s import deployments
from kaizen.k8s.errors import ApiError

pytestmark = pytest.mark.integration


def manifest(name: str, replicas: int = 1) -> str:
    return json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "annotations": {"team": "assistants"}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "server", "image": "bot:1"}]}}},
    })


def eventually(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            pytest.fail("the watch never delivered the change")
        time.sleep(0.05)
    return found


@pytest.fixture
def watched(cluster, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    kaizen.k8s.client.reset()
    monkeypatch.setattr(kaizen.k8s.client, "LIST_PAGE", 2)  # five Deployments: three pages
    return deployments.Watched()


def test_a_namespace_is_listed_in_pages_then_followed_by_its_watch(cluster, namespace, watched):
    for i in range(5):
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(f"bot-{i}"))
    first = watched.get(namespace, "bot-4")
    assert first is not None and first["spec"]["replicas"] == 1
    assert "managedFields" not in first["metadata"] and "annotations" not in first["metadata"]
    assert all(watched.get(namespace, f"bot-{i}") is not None for i in range(5))
    assert watched.get(namespace, "absent") is None

    cluster.kubectl("scale", "deployment/bot-1", "--replicas=3", "-n", namespace)
    eventually(lambda: watched.get(namespace, "bot-1")["spec"]["replicas"] == 3)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("bot-new", replicas=2))
    assert eventually(lambda: watched.get(namespace, "bot-new"))["spec"]["replicas"] == 2
    cluster.kubectl("delete", "deployment/bot-0", "-n", namespace, "--wait=false")
    eventually(lambda: watched.get(namespace, "bot-0") is None)
    assert watched._followed == {namespace}  # one listing and one watch for the namespace, whatever was read


def test_a_read_when_the_api_server_cannot_be_reached_is_a_transient_error(namespace, watched, monkeypatch, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": "https://127.0.0.1:9"}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}],
        "users": [{"name": "u", "user": {}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    with pytest.raises(ApiError) as raised:
        watched.get(namespace, "bot")
    assert raised.value.transient
    assert namespace not in watched._followed  # the next look lists again
