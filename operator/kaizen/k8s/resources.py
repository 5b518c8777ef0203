"""Kaizen's own objects through the API: the children a loop owns, create-or-adopt, annotations, Secrets."""

from __future__ import annotations

import base64
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from kaizen.api import KINDS, ResourceKind
from kaizen.api.common import API_GROUP, API_VERSION
from kaizen.k8s.client import FIELD_MANAGER, api_client, json_object
from kaizen.k8s.errors import NotOwned, typed

BY_KIND: dict[str, ResourceKind] = {k.kind: k for k in KINDS}
LOOP_LABEL = f"{API_GROUP}/loop"


def _custom() -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(api_client())


@typed
def list_owned(kind: str, namespace: str, loop: str) -> list[dict[str, Any]]:
    """The objects of ``kind`` a loop created (found by label; owner references make them its children)."""
    listed = json_object(_custom().list_namespaced_custom_object(
        API_GROUP, API_VERSION, namespace, BY_KIND[kind].plural, label_selector=f"{LOOP_LABEL}={loop}"
    ))
    return listed["items"]


@typed
def create_or_adopt(kind: str, namespace: str, body: dict[str, Any], owner_uid: str) -> dict[str, Any]:
    """Create the object; if one of that name exists and the same owner made it, adopt it (a retry or a restart
    after a crash between create and status write), otherwise refuse with :class:`NotOwned`."""
    plural = BY_KIND[kind].plural
    try:
        return json_object(_custom().create_namespaced_custom_object(API_GROUP, API_VERSION, namespace, plural, body,
                                                                      field_manager=FIELD_MANAGER))
    except ApiException as error:
        if error.status != 409:
            raise
    existing = json_object(_custom().get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, plural,
                                                                  body["metadata"]["name"]))
    owners = {ref.get("uid") for ref in existing["metadata"].get("ownerReferences", [])}
    if owner_uid not in owners:
        owner = body["metadata"]["ownerReferences"][0]
        raise NotOwned(kind, namespace, body["metadata"]["name"], f"{owner['kind']} {owner['name']}")
    return existing


@typed
def delete(kind: str, namespace: str, name: str) -> None:
    try:
        _custom().delete_namespaced_custom_object(API_GROUP, API_VERSION, namespace, BY_KIND[kind].plural, name,
                                                  propagation_policy="Background")
    except ApiException as error:
        if error.status != 404:
            raise


@typed
def get(kind: str, namespace: str, name: str) -> dict[str, Any]:
    return json_object(_custom().get_namespaced_custom_object(API_GROUP, API_VERSION, namespace,
                                                              BY_KIND[kind].plural, name))


@typed
def patch_status(kind: str, namespace: str, name: str, status: dict[str, Any]) -> str | None:
    """A merge patch of the status subresource (a None value removes a field); returns the object's new
    resourceVersion."""
    patched = _custom().patch_namespaced_custom_object_status(API_GROUP, API_VERSION, namespace,
                                                              BY_KIND[kind].plural, name, {"status": status})
    return (patched.get("metadata") or {}).get("resourceVersion") if isinstance(patched, dict) else None


@typed
def set_annotations(kind: str, namespace: str, name: str, annotations: dict[str, str | None]) -> None:
    """A merge patch of annotations only (None deletes one): user requests never touch a GitOps-managed spec."""
    patch = {"metadata": {"annotations": annotations}}
    _custom().patch_namespaced_custom_object(API_GROUP, API_VERSION, namespace, BY_KIND[kind].plural, name, patch)


def remove_annotations(kind: str, namespace: str, name: str, keys: list[str]) -> None:
    """Consume a user's request."""
    set_annotations(kind, namespace, name, {key: None for key in keys})


@typed
def read_secret_key(namespace: str, name: str, key: str) -> str:
    secret = kubernetes.client.CoreV1Api(api_client()).read_namespaced_secret(name, namespace)
    data = secret.data or {}
    if key not in data:
        raise KeyError(f"Secret {namespace}/{name} has no key {key!r}")
    return base64.b64decode(data[key]).decode().strip()
