"""The RetrainJob's children through the API: its trainer ConfigMap and batch/v1 Job (create-or-adopt), and the
Job and pods as observed, as plain dicts in the API's own camelCase."""

from __future__ import annotations

from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from kaizen.k8s.client import FIELD_MANAGER, api_client
from kaizen.k8s.errors import NotOwned, typed


def _plain(obj: Any) -> dict[str, Any]:
    return api_client().sanitize_for_serialization(obj)


def _batch() -> kubernetes.client.BatchV1Api:
    return kubernetes.client.BatchV1Api(api_client())


def _core() -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(api_client())


@typed
def create_or_adopt(body: dict[str, Any], owner_uid: str) -> dict[str, Any]:
    """Create a ConfigMap or Job; when one of that name exists and the same owner made it (a retry, or a restart
    between create and status write), adopt it; otherwise refuse with :class:`NotOwned`."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    create, read = ((_core().create_namespaced_config_map, _core().read_namespaced_config_map)
                    if body["kind"] == "ConfigMap" else (_batch().create_namespaced_job, _batch().read_namespaced_job))
    try:
        return _plain(create(namespace, body, field_manager=FIELD_MANAGER))
    except ApiException as error:
        if error.status != 409:
            raise
    existing = _plain(read(name, namespace))
    if owner_uid not in {ref.get("uid") for ref in existing["metadata"].get("ownerReferences") or []}:
        owner = body["metadata"]["ownerReferences"][0]
        raise NotOwned(body["kind"], namespace, name, f"{owner['kind']} {owner['name']}")
    return existing


@typed
def read_job(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return _plain(_batch().read_namespaced_job(name, namespace))
    except ApiException as error:
        if error.status == 404:
            return None
        raise


@typed
def list_pods(namespace: str, job: str) -> list[dict[str, Any]]:
    """The Job's pods, by the label the Job controller puts on them."""
    pods = _core().list_namespaced_pod(namespace, label_selector=f"batch.kubernetes.io/job-name={job}")
    return [_plain(p) for p in pods.items]
