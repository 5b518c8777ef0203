"""Shared fixtures: the Kubernetes cluster that integration and end-to-end tests run against.

By default one local control plane (:class:`kaizen.dev.cluster.LocalCluster` with controllers and kwok) serves the
whole session; tests share it and keep apart by unique names and namespaces. With ``KAIZEN_TEST_KUBECONFIG`` set,
the tests run against that cluster instead (kind, or any other).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaizen.dev.cluster import ClusterAccess, LocalCluster

REPO_ROOT = Path(__file__).resolve().parents[1]
# Processes the tests start (`python -m kaizen ...`, the collector, the trainer) run this checkout's code too, not
# whichever checkout the shared virtual environment's editable install points at.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO_ROOT / "operator"), str(REPO_ROOT / "trainer-image"), *filter(None, [os.environ.get("PYTHONPATH")])]
)


@pytest.fixture(scope="session")
def cluster() -> Iterator[ClusterAccess]:
    """The session's cluster: ``.kubeconfig``, ``.kubectl(...)`` and ``.api_client()``."""
    kubeconfig = os.environ.get("KAIZEN_TEST_KUBECONFIG")
    if kubeconfig:
        yield ClusterAccess(kubeconfig)
        return
    with LocalCluster(controllers=True, kwok=True) as local:
        yield local


@pytest.fixture
def namespace(cluster: ClusterAccess, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new namespace named after the test, deleted (without waiting) when the test ends."""
    # A namespace name is a DNS label: at most 63 characters of [a-z0-9-].
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].rstrip("-")
    name = f"t-{slug}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    # The ServiceAccount admission plugin rejects pods until the namespace's `default` service account exists,
    # which the controller manager creates moments after the namespace.
    cluster.kubectl("wait", "--for=create", "serviceaccount/default", f"--namespace={name}", "--timeout=30s")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
