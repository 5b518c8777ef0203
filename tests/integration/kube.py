"""Helpers of the integration tests: read Kaizen objects through kubectl and wait for their status."""

from __future__ import annotations

import json
import time

import pytest
import yaml


def get(cluster, kind, name, namespace):
    return json.loads(cluster.kubectl("get", f"{kind}.kaizen.dev", name, "-n", namespace, "-o", "json").stdout)


def wait_for(cluster, kind, name, namespace, predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        obj = get(cluster, kind, name, namespace)
        if predicate(obj):
            return obj
        if time.monotonic() > deadline:
            last = json.dumps(obj["status"] if "status" in obj else obj)
            pytest.fail(f"{kind}/{name} never reached the expected state; last seen: {last}")
        time.sleep(0.2)


def condition(obj, type):
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type), None)


def reconciled(obj):
    ready = condition(obj, "Ready")
    return obj.get("status", {}).get("observedGeneration") == obj["metadata"]["generation"] and ready is not None


def apply(cluster, namespace, doc):
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
