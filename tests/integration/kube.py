"""Helpers of the integration tests: read Kaizen objects through kubectl and wait for their status."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from datetime import datetime, timedelta

import pytest
import yaml

from kaizen.controllers import reconcile
from kaizen.controllers.reconcile import Clock


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


@contextmanager
def admission_policy(cluster, namespace, *, rule, expression, message, probe):
    """A cluster admin's ValidatingAdmissionPolicy (CEL), bound to ``namespace``: the API server refuses matching
    requests with 422 and ``message``. ``rule`` is a resourceRules entry; ``probe`` a kubectl dry-run that the
    policy refuses once it is in force (policies are loaded a moment after they are created)."""
    name = f"kaizen-test-{namespace}"[:63]
    docs = [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": name},
         "spec": {"failurePolicy": "Fail", "matchConstraints": {"resourceRules": [rule]},
                  "validations": [{"expression": expression, "message": message}]}},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": {"name": name},
         "spec": {"policyName": name, "validationActions": ["Deny"],
                  "matchResources": {"namespaceSelector": {
                      "matchLabels": {"kubernetes.io/metadata.name": namespace}}}}},
    ]
    for doc in docs:
        cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))
    try:
        deadline = time.monotonic() + 30
        while message not in cluster.kubectl(*probe, "--dry-run=server", check=False).stderr:
            assert time.monotonic() < deadline, "the admission policy never took effect"
            time.sleep(0.5)
        yield
    finally:
        cluster.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name, check=False)


class DrivenClock(Clock):
    """The controllers' clock, moved by the test: wall time plus what the test has advanced it by."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return super().now() + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta
        reconcile.clock_moved()


@contextmanager
def driven_clock():
    """Replace the operator's clock (the operator runs in this process: KopfRunner) with a :class:`DrivenClock`."""
    clock, saved = DrivenClock(), reconcile.clock
    reconcile.clock = clock
    try:
        yield clock
    finally:
        reconcile.clock = saved
        reconcile.clock_moved()


def settled(scheduler, namespace, name, predicate=lambda slept: True, after=0, timeout=30.0):
    """The scheduler's record of ``name`` once it has taken more than ``after`` looks and ``predicate`` holds: a look
    has finished (its status written, its Events posted) and the object sleeps until ``slept.due``."""
    deadline = time.monotonic() + timeout
    while True:
        slept = scheduler.slept(namespace, name)
        if slept is not None and slept.looks > after and predicate(slept):
            return slept
        if time.monotonic() > deadline:
            pytest.fail(f"{name} never settled; last seen: {slept}")
        time.sleep(0.05)
