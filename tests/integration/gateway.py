"""Helpers of the tests that route real requests through the dev stack's gateway (Traefik, kaizen.dev.gateway) to
real model servers run by the dev node agent: the serving Deployments and Services, the route, the requests and
the chi-square check of the split they saw."""

from __future__ import annotations

import http.client
import time
import urllib.parse
from collections import Counter

import pytest
import yaml

from kaizen.dev.gateway import LOCAL_SELECTOR

SERVER_IMAGE = "ghcr.io/kaizen-dev/kaizen-server:test"
#: chi-square quantiles at 1 - 1e-4 (a false alarm in one test run of ten thousand), by degrees of freedom.
CHI2_Q = {1: 15.137}


def serving_deployment(name, *, track, version, model, app="bot", replicas=1):
    """A Deployment of the real model server (kaizen_server) with the track and version as pod labels."""
    labels = {"app": app, "kaizen.dev/track": track, "kaizen.dev/model-version": version}
    label = "metadata.labels['{}']".format
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": {
        "replicas": replicas, "selector": {"matchLabels": {"app": app, "kaizen.dev/track": track}},
        "template": {"metadata": {"labels": labels}, "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "server", "image": SERVER_IMAGE, "ports": [{"name": "http", "containerPort": 8080}],
                "env": [{"name": "MODEL_URI", "value": model}, {"name": "KAIZEN_MODEL_NAME", "value": app},
                        {"name": "KAIZEN_MODEL_VERSION",
                         "valueFrom": {"fieldRef": {"fieldPath": label("kaizen.dev/model-version")}}},
                        {"name": "KAIZEN_TRACK", "valueFrom": {"fieldRef": {"fieldPath": label("kaizen.dev/track")}}}],
                "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 1,
                                   "failureThreshold": 1}}]}}}}


def gateway_service(name, *, track, app="bot"):
    """A Service of one track for the gateway: selector-less, its pods named for kaizen.dev.gateway's endpoints."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "annotations": {LOCAL_SELECTOR: f"app={app},kaizen.dev/track={track}"}},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


def create(cluster, namespace, *docs):
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(docs))


def get_models(url, headers=None, timeout=10.0):
    """GET /v1/models through the gateway: (status, the answering server's version, the response headers)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request("GET", "/v1/models", headers=headers or {})
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("X-Kaizen-Model-Version"), response
    finally:
        connection.close()


def versions_seen(url, count, headers=None):
    """How many of ``count`` requests each model version answered."""
    seen = Counter()
    for _ in range(count):
        status, version, _response = get_models(url, headers)
        assert status == 200, f"the gateway answered {status}"
        seen[version] += 1
    return seen


def wait_until_served(url, versions, timeout=90.0):
    """Wait until requests through the gateway reach every version in ``versions`` (routes and endpoints are
    programmed), and return the versions seen."""
    deadline, seen = time.monotonic() + timeout, Counter()
    while not set(versions) <= set(seen):
        try:
            status, version, _ = get_models(url, timeout=2)
            if status == 200:
                seen[version] += 1
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the gateway at {url} never served all of {sorted(versions)} within {timeout:g}s "
                        f"(saw {dict(seen)})")
        time.sleep(0.05)
    return seen


def chi_square(canary, total, weight):
    """Pearson's statistic of ``canary`` canary answers among ``total`` against a split of ``weight`` percent
    (one degree of freedom); 0 < weight < 100."""
    expected_canary, expected_stable = total * weight / 100, total * (100 - weight) / 100
    return ((canary - expected_canary) ** 2 / expected_canary
            + (total - canary - expected_stable) ** 2 / expected_stable)
