"""Deployments of a Rollout through the API: read one, server-side apply (the canary, a promotion's model variable)
and delete. The manifests and what a Deployment shows are pure, in :mod:`kaizen.logic.deployments`.
"""

from __future__ import annotations

import json
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from kaizen.k8s.client import FIELD_MANAGER, api_client
from kaizen.k8s.errors import typed


def _apps() -> kubernetes.client.AppsV1Api:
    return kubernetes.client.AppsV1Api(api_client())


@typed
def read(namespace: str, name: str) -> dict[str, Any] | None:
    """The Deployment as the API returns it (camelCase dict), or None if there is none.

    The JSON is read as it is, not through the client's model objects: a V1Deployment built only to be serialized
    back is CPU for nothing, twice per Rollout look."""
    try:
        # With _preload_content=False the client returns the raw HTTP response, not the V1Deployment it is typed as.
        response: Any = _apps().read_namespaced_deployment(name, namespace, _preload_content=False)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return json.loads(response.data)


@typed
def apply(manifest: dict[str, Any]) -> None:
    """Server-side apply with Kaizen's field manager; ``force`` because these fields are Kaizen's to own."""
    meta = manifest["metadata"]
    _apps().patch_namespaced_deployment(
        meta["name"], meta["namespace"], manifest, field_manager=FIELD_MANAGER, force=True,
        _content_type="application/apply-patch+yaml",
    )


@typed
def delete(namespace: str, name: str) -> bool:
    """Delete the Deployment (its pods go with it); False if it was already gone."""
    try:
        _apps().delete_namespaced_deployment(name, namespace, propagation_policy="Background")
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True
