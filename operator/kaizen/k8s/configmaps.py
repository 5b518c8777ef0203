"""ConfigMaps through the API: read one, and server-side apply one with Kaizen's field manager (an adapter canary's
list of the adapters the stable's pods hold, built in :mod:`kaizen.logic.adapters`)."""

from __future__ import annotations

from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from kaizen.k8s.client import FIELD_MANAGER, api_client
from kaizen.k8s.errors import typed


def _core() -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(api_client())


@typed
def read(namespace: str, name: str) -> dict[str, Any] | None:
    """The ConfigMap as the API returns it (camelCase dict), or None if there is none."""
    try:
        found = _core().read_namespaced_config_map(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return api_client().sanitize_for_serialization(found)


@typed
def apply(manifest: dict[str, Any]) -> None:
    """Server-side apply with Kaizen's field manager; ``force``: the data is Kaizen's to own."""
    meta = manifest["metadata"]
    _core().patch_namespaced_config_map(meta["name"], meta["namespace"], manifest, field_manager=FIELD_MANAGER,
                                        force=True, _content_type="application/apply-patch+yaml")
