"""Rollout objects through the API: read one fresh and write the status subresource."""

from __future__ import annotations

from typing import Any

import kubernetes.client

from kaizen.api import ROLLOUT
from kaizen.api.common import API_GROUP, API_VERSION
from kaizen.k8s.client import api_client, json_object
from kaizen.k8s.errors import typed


@typed
def read(namespace: str, name: str) -> dict[str, Any]:
    return json_object(kubernetes.client.CustomObjectsApi(api_client()).get_namespaced_custom_object(
        API_GROUP, API_VERSION, namespace, ROLLOUT.plural, name))


@typed
def list_in(namespace: str) -> list[dict[str, Any]]:
    """Every Rollout of the namespace, as the API server has them now."""
    return json_object(kubernetes.client.CustomObjectsApi(api_client()).list_namespaced_custom_object(
        API_GROUP, API_VERSION, namespace, ROLLOUT.plural))["items"]


@typed
def patch_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    """A merge patch of the status subresource (``None`` values remove a field)."""
    kubernetes.client.CustomObjectsApi(api_client()).patch_namespaced_custom_object_status(
        API_GROUP, API_VERSION, namespace, ROLLOUT.plural, name, {"status": status})
