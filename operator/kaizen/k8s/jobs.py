"""The RetrainJob's children through the API: its trainer ConfigMap, its batch/v1 Job or Kubeflow TrainJob, and a
multi-node Job's headless Service (create-or-adopt); whether the cluster serves Kubeflow Trainer's TrainJob; and the
job and its pods as observed, as plain dicts in the API's own camelCase."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from kaizen.k8s.client import FIELD_MANAGER, api_client, json_object
from kaizen.k8s.errors import NotOwned, typed
from kaizen.logic.retrain import TRAINJOB_GROUP, TRAINJOB_PLURAL, TRAINJOB_VERSION

#: The kinds :func:`create_or_adopt` creates.
KINDS = ("ConfigMap", "Service", "Job", "TrainJob")


def _plain(obj: Any) -> dict[str, Any]:
    return api_client().sanitize_for_serialization(obj)


def _batch() -> kubernetes.client.BatchV1Api:
    return kubernetes.client.BatchV1Api(api_client())


def _core() -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(api_client())


def _custom() -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(api_client())


def _create_trainjob(namespace: str, body: dict[str, Any], field_manager: str) -> dict[str, Any]:
    return json_object(_custom().create_namespaced_custom_object(
        TRAINJOB_GROUP, TRAINJOB_VERSION, namespace, TRAINJOB_PLURAL, body, field_manager=field_manager))


def _read_trainjob(name: str, namespace: str) -> dict[str, Any]:
    return json_object(_custom().get_namespaced_custom_object(
        TRAINJOB_GROUP, TRAINJOB_VERSION, namespace, TRAINJOB_PLURAL, name))


def _calls(kind: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    core, batch = _core(), _batch()
    calls: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
        "ConfigMap": (core.create_namespaced_config_map, core.read_namespaced_config_map),
        "Service": (core.create_namespaced_service, core.read_namespaced_service),
        "Job": (batch.create_namespaced_job, batch.read_namespaced_job),
        "TrainJob": (_create_trainjob, _read_trainjob),
    }
    return calls[kind]


@typed
def create_or_adopt(body: dict[str, Any], owner_uid: str) -> dict[str, Any]:
    """Create one of :data:`KINDS`; when one of that name exists and the same owner made it (a retry, or a restart
    between create and status write), adopt it; otherwise refuse with :class:`NotOwned`."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    create, read = _calls(body["kind"])
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
def trainjobs_served() -> bool:
    """Whether the API server serves Kubeflow Trainer's TrainJob (its CRD is installed), by discovery."""
    try:
        resources = kubernetes.client.CustomObjectsApi(api_client()).get_api_resources(TRAINJOB_GROUP,
                                                                                         TRAINJOB_VERSION)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return any(r.name == TRAINJOB_PLURAL for r in resources.resources or [])


@typed
def read_job(namespace: str, name: str, kind: str = "Job") -> dict[str, Any] | None:
    """The batch/v1 Job or the TrainJob of that name, None when there is none."""
    try:
        job = _plain(_calls(kind)[1](name, namespace))
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    # The client's models drop apiVersion and kind on read: the observation says which it is.
    return {**job, "kind": kind}


@typed
def list_pods(namespace: str, selector: str) -> list[dict[str, Any]]:
    """The training pods, by the label selector of their job (:func:`kaizen.logic.retrain.pod_selector`)."""
    pods = _core().list_namespaced_pod(namespace, label_selector=selector)
    return [_plain(p) for p in pods.items]
