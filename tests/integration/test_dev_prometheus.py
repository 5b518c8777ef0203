"""The Prometheus that ``make setup`` builds (hack/build-binaries.sh) is the pinned release, found by
kaizen.dev.binaries; tests/integration/test_prometheus_edge.py checks what the stack uses of it (file_sd_configs,
relabelling, the query API)."""

from __future__ import annotations

import subprocess

import pytest

from kaizen.dev.binaries import find_binary, versions

pytestmark = pytest.mark.integration


def test_the_pinned_prometheus_module_version_is_the_release_that_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAIZEN_PROMETHEUS", raising=False)
    # Prometheus 3.x's Go module v0.3XX.Y is release 3.XX.Y.
    minor, patch = versions()["prometheus"].removeprefix("v0.").split(".")
    release = f"{int(minor) // 100}.{int(minor) % 100}.{patch}"
    output = subprocess.run([find_binary("prometheus"), "--version"], capture_output=True, text=True,
                            timeout=30).stdout
    assert output.startswith(f"prometheus, version {release} "), output
