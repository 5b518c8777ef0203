"""Fixtures of the integration tests: the Kaizen CRDs installed in the session's cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaizen.api import KINDS

REPO_ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="session")
def crds(cluster):
    """Install the generated CRDs (server-side apply, as a user would) and wait until they are Established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    *(f"crd/{kind.crd_name}" for kind in KINDS))
    return cluster
