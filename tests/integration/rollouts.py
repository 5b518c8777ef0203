"""Helpers of the Rollout integration tests: the operator in a thread, a served model's Deployment, a Rollout."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import kubernetes.config
import pytest
import yaml
from kopf.testing import KopfRunner

import kaizen.k8s.client

SUCCESS_RATE = {
    "name": "success-rate",
    "maxRegression": 0.05,
    "minSamples": 50,
    "ratio": {
        "good": 'sum(increase(http_requests_total{namespace="{{namespace}}",track="{{track}}",code!~"5.."}'
                "[{{window}}]))",
        "total": 'sum(increase(http_requests_total{namespace="{{namespace}}",track="{{track}}"}[{{window}}]))',
    },
}


@contextmanager
def running_operator(cluster) -> Iterator[KopfRunner]:
    """The kopf operator in a thread (kopf.testing.KopfRunner), as `kaizen operator -A` runs it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KUBECONFIG", str(cluster.kubeconfig))
        # kopf logs in through the official client, which read $KUBECONFIG once, when this process imported it;
        # Kaizen's own client is cached per process.
        patch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(cluster.kubeconfig))
        kaizen.k8s.client.reset()
        try:
            with KopfRunner(["run", "--standalone", "--all-namespaces", "-m", "kaizen.controllers"],
                            timeout=60) as runner:
                yield runner
        finally:
            kaizen.k8s.client.reset()
    assert runner.exception is None, runner.output


def stable_manifest(name: str = "bot", replicas: int = 4, extra_env: str = "hello") -> dict:
    """The served model's Deployment as a team keeps it in git: it leaves the model variable to Kaizen."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "server", "image": "example.com/bot-server:1",
                                         "env": [{"name": "GREETING", "value": extra_env}]}]},
            },
        },
    }


def kubectl_apply(cluster, namespace: str, doc: dict) -> None:
    """Client-side `kubectl apply`, as a user or Argo CD applies a manifest."""
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))


def deployment(cluster, namespace: str, name: str) -> dict | None:
    result = cluster.kubectl("get", "deployment", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def env(deployment: dict, container: str = "server") -> dict[str, str]:
    for c in deployment["spec"]["template"]["spec"]["containers"]:
        if c["name"] == container:
            return {e["name"]: e.get("value") for e in c.get("env", [])}
    raise AssertionError(f"no container {container}")


def rollout(name: str, steps: list[dict], *, prometheus_url: str | None = None, metrics: list[dict] = (),
            interval: str = "1s", policy: dict | None = None) -> dict:
    spec = {
        "target": {"deployment": "bot", "container": "server"},
        "stableModel": {"version": "v1", "uri": "s3://models/bot/v1"},
        "canaryModel": {"version": "v2", "uri": "s3://models/bot/v2"},
        "steps": steps,
        # At 1 s intervals an analysis step of a few seconds may end before the interval is narrow enough to pass;
        # 20 more inconclusive looks give it the sample it needs before the failure policy steps in.
        "analysis": {"interval": interval, "alpha": 0.05, "metrics": list(metrics),
                     "failurePolicy": {"inconclusiveLimit": 20, **(policy or {})}},
    }
    if prometheus_url:
        spec["prometheus"] = {"url": prometheus_url}
    return {"apiVersion": "kaizen.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": name}, "spec": spec}


def events(cluster, namespace: str, name: str) -> list[dict]:
    listed = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json",
                                        "--field-selector", f"involvedObject.name={name}").stdout)
    return listed["items"]


def reasons(cluster, namespace: str, name: str) -> list[str]:
    """Event reasons, each repeated by its count (the API server folds repeats of one Event)."""
    return [e["reason"] for e in events(cluster, namespace, name) for _ in range(e.get("count") or 1)]

