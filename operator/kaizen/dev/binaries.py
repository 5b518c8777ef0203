"""Locates the upstream binaries of the dev stack (the local control plane, helm, Prometheus, Traefik) and the
generated Gateway API and Kubeflow Trainer CRDs at the versions pinned in ``hack/versions.env``.

``hack/build-binaries.sh`` (run by ``make setup``) builds them into
``${KAIZEN_CACHE:-~/.cache/kaizen}/bin/<tool>-<version>/``; users with ``setup-envtest`` can point
``KUBEBUILDER_ASSETS`` at its folder (etcd, kube-apiserver, kubectl) instead, and ``KAIZEN_PROMETHEUS`` names a
Prometheus binary to use instead of the pinned build. There is no fallback to a binary on ``PATH``: a distribution's
Prometheus 2.x would differ from the pinned 3.x (Prometheus 3 writes a histogram's ``le="1"`` as ``le="1.0"``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
VERSIONS_FILE = REPO_ROOT / "hack" / "versions.env"

# Which pinned tool (a <TOOL>_VERSION key of versions.env, lower-cased) ships each binary.
TOOL_OF_BINARY = {
    "etcd": "etcd",
    "kube-apiserver": "kubernetes",
    "kube-controller-manager": "kubernetes",
    "kube-scheduler": "kubernetes",
    "kubectl": "kubernetes",
    "kwok": "kwok",
    "helm": "helm",
    "prometheus": "prometheus",
    "traefik": "traefik",
}
# A binary of the user's own, named by an environment variable, replaces the pinned build.
OVERRIDE_OF_BINARY = {"prometheus": "KAIZEN_PROMETHEUS"}


class BinaryNotFoundError(FileNotFoundError):
    """A binary of the dev stack is not where it was looked for; the message is one line that says what to do."""


@functools.cache
def versions() -> dict[str, str]:
    """The pinned versions by tool, e.g. ``{"kubernetes": "v1.36.3", "etcd": "v3.6.16", ...}``."""
    try:
        text = VERSIONS_FILE.read_text()
    except FileNotFoundError:
        raise BinaryNotFoundError(
            f"{VERSIONS_FILE} is missing: the dev stack runs from a checkout of the Kaizen repository; "
            "run `make setup` in the checkout and use its .venv/bin/kaizen"
        ) from None
    pinned = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        key = key.strip()
        if sep and not key.startswith("#") and key.endswith("_VERSION"):
            pinned[key.removesuffix("_VERSION").lower()] = value.strip().strip("\"'")
    return pinned


def cache_dir() -> Path:
    """The cache that ``hack/build-binaries.sh`` fills (``$KAIZEN_CACHE``, default ``~/.cache/kaizen``)."""
    return Path(os.environ.get("KAIZEN_CACHE") or Path.home() / ".cache" / "kaizen")


def gateway_api_crds() -> list[Path]:
    """The Gateway API CRDs (YAML) that ``hack/build-binaries.sh gateway-api`` generated for the pinned release."""
    folder = cache_dir() / "bin" / f"gateway-api-{versions()['gateway_api']}"
    found = sorted(folder.glob("*.yaml"))
    if not found:
        raise BinaryNotFoundError(
            f"the Gateway API {versions()['gateway_api']} CRDs were not found in {folder}; run `make setup` first "
            "(it generates them with controller-gen)"
        )
    return found


def kubeflow_trainer_crds() -> list[Path]:
    """Kubeflow Trainer's CRDs (TrainJob, TrainingRuntime, ClusterTrainingRuntime) that ``hack/build-binaries.sh
    kubeflow-trainer`` generated from its Go API types for the pinned release."""
    version = versions()["kubeflow_trainer"]
    folder = cache_dir() / "bin" / f"kubeflow-trainer-{version}"
    found = sorted(folder.glob("*.yaml"))
    if not found:
        raise BinaryNotFoundError(
            f"the Kubeflow Trainer {version} CRDs were not found in {folder}; run `make setup` first (it generates "
            "them with controller-gen)"
        )
    return found


def find_binary(name: str) -> Path:
    """The path of the binary ``name`` (e.g. ``"kube-apiserver"``), or :class:`BinaryNotFoundError`."""
    tool = TOOL_OF_BINARY.get(name)
    if tool is None:
        raise ValueError(f"unknown binary {name!r}; expected one of {', '.join(sorted(TOOL_OF_BINARY))}")
    override = OVERRIDE_OF_BINARY.get(name)
    if override and os.environ.get(override):
        candidate = Path(os.environ[override])
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
        raise BinaryNotFoundError(
            f"{override}={candidate} is not an executable file: point it at a {name} binary, or unset it to use "
            f"the pinned {name} {versions()[tool]} that `make setup` builds"
        )
    looked_in = []
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        candidate = Path(assets) / name
        if os.access(candidate, os.X_OK):
            return candidate
        looked_in.append(f"KUBEBUILDER_ASSETS={assets}")
    candidate = cache_dir() / "bin" / f"{tool}-{versions()[tool]}" / name
    if os.access(candidate, os.X_OK):
        return candidate
    looked_in.append(str(candidate.parent))
    raise BinaryNotFoundError(
        f"{name} {versions()[tool]} was not found (looked in {' and '.join(looked_in)}); "
        "run `make setup` first (it builds the pinned binaries into the cache)"
    )
