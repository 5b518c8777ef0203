"""Adapter canaries, pure: a LoRA candidate canaried on the stable Deployment's own servers, by model name.

The mechanism is declarative, the Gateway API Inference Extension's "LoRA syncer" pattern: a ConfigMap owned by the
Rollout (``<target>-adapters``, :func:`configmap_manifest`) lists the adapters the pool must hold and, without a
gateway, the weighted alias of the served name (an :class:`~kaizen.api.adapters.AdapterSet`); the stable's pods
mount it (:func:`stable_patch` adds the volume when it is missing) and the server loads and unloads adapters to match
the file as the kubelet updates it. Chosen over calling each pod's load endpoint because it is state, not a call: a
pod that starts or restarts later (a scale-up, a crash, the promotion's rolling update) reads the same file at
start, and nothing has to track pods, retry failed calls or undo them when the operator restarts.

The operator cannot see when every pod has read a change, so a change counts as served once ``syncPeriod`` (the
kubelet's sync period and cache) has passed since it was written (the ConfigMap's ``kaizen.dev/written-at``
annotation): only then does a step's weight count as set (:func:`synced`) and the route send the adapter traffic.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kaizen.api.adapters import ADAPTERS_FILE, AdapterSet
from kaizen.api.common import API_GROUP, ModelRef, parse_duration
from kaizen.api.rollout import AdapterRouting, RolloutSpec
from kaizen.logic import deployments

WRITTEN_AT = f"{API_GROUP}/written-at"
VOLUME = "kaizen-adapters"
FILE_ENV = "KAIZEN_ADAPTERS_FILE"


def routing(spec: RolloutSpec) -> AdapterRouting | None:
    """The adapter routing when this Rollout's candidate is canaried as an adapter on the stable's servers: the
    spec asks for it, the candidate is an adapter, and its base is the one the stable serves."""
    adapter = spec.traffic_routing.adapter
    canary, stable = spec.canary_model, spec.stable_model
    if adapter is None or canary.base_uri is None:
        return None
    return adapter if canary.base_uri == (stable.base_uri or stable.uri) else None


def adapter_name(adapter: AdapterRouting, canary: ModelRef) -> str:
    """The name the canary adapter is served under."""
    return f"{adapter.served_model_name}-{canary.version}"


def configmap_name(target: str) -> str:
    return f"{target}-adapters"


def adapter_set(spec: RolloutSpec, weight: int, ended: bool) -> AdapterSet:
    """What the pool must hold at ``weight`` percent: the canary adapter while the rollout runs, and without a
    gateway the served name's alias split ``100 - weight`` / ``weight``; nothing once it ended (the adapter is
    unloaded; after a promotion the Deployment's own model is the adapter)."""
    adapter = routing(spec)
    assert adapter is not None
    if ended:
        return AdapterSet()
    name = adapter_name(adapter, spec.canary_model)
    wanted: dict[str, Any] = {"adapters": [{"name": name, "uri": spec.canary_model.uri,
                                            "version": spec.canary_model.version, "track": "canary"}]}
    if spec.traffic_routing.gateway_api is None and weight > 0:
        affinity = adapter.session_affinity
        wanted["aliases"] = [{
            "name": adapter.served_model_name,
            "targets": [{"model": adapter.served_model_name, "weight": 100 - weight},
                        {"model": name, "weight": weight}],
            **({"session_affinity": affinity.model_dump(exclude_none=True)} if affinity else {}),
        }]
    return AdapterSet.model_validate(wanted)


def file_text(wanted: AdapterSet) -> str:
    return wanted.model_dump_json(exclude_defaults=False, indent=1)


def configmap_manifest(rollout: dict[str, Any], target: str, wanted: AdapterSet, now: datetime) -> dict[str, Any]:
    """The ConfigMap's apply configuration, owned by the Rollout, stamped with when it was written."""
    meta = rollout["metadata"]
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(target), "namespace": meta["namespace"],
            "labels": {deployments.ROLLOUT_LABEL: meta["name"], "app.kubernetes.io/managed-by": "kaizen"},
            "annotations": {WRITTEN_AT: now.isoformat()},
            "ownerReferences": [{"apiVersion": rollout["apiVersion"], "kind": rollout["kind"], "name": meta["name"],
                                 "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}],
        },
        "data": {ADAPTERS_FILE: file_text(wanted)},
    }


def written(configmap: dict[str, Any] | None, wanted: AdapterSet) -> bool:
    """Whether the ConfigMap as read already says ``wanted``."""
    return configmap is not None and (configmap.get("data") or {}).get(ADAPTERS_FILE) == file_text(wanted)


@dataclass(frozen=True)
class Synced:
    """What the pods are known to serve of an adapter canary (see :func:`synced`): whether they hold the adapter,
    and the alias's canary weight (None with a gateway, whose route sets the weight)."""

    listed: bool
    weight: int | None = None


def synced(configmap: dict[str, Any] | None, spec: RolloutSpec, stable: dict[str, Any], container: str,
           now: datetime) -> Synced:
    """What the pods serve for certain: the ConfigMap as read, once the stable mounts it and is rolled out, and
    ``syncPeriod`` has passed since it was written."""
    adapter = routing(spec)
    assert adapter is not None
    if configmap is None or not (mounted(stable, container, adapter) and deployments.rolled_out(stable)):
        return Synced(False)
    stamp = (configmap["metadata"].get("annotations") or {}).get(WRITTEN_AT)
    if stamp is None or now - datetime.fromisoformat(stamp) < parse_duration(adapter.sync_period):
        return Synced(False)
    try:
        held = AdapterSet.model_validate_json((configmap.get("data") or {}).get(ADAPTERS_FILE) or "{}")
    except ValueError:
        return Synced(False)
    name = adapter_name(adapter, spec.canary_model)
    listed = any(a.name == name and a.uri == spec.canary_model.uri for a in held.adapters)
    if spec.traffic_routing.gateway_api is not None:
        return Synced(listed)
    alias = next((a for a in held.aliases if a.name == adapter.served_model_name), None)
    weight = next((t.weight for t in alias.targets if t.model == name), 0) if alias else 0
    return Synced(listed, weight)


def _file(adapter: AdapterRouting) -> str:
    return f"{adapter.mount_path.rstrip('/')}/{ADAPTERS_FILE}"


def mounted(stable: dict[str, Any], container: str, adapter: AdapterRouting) -> bool:
    """Whether the stable's pod template mounts the adapters ConfigMap and points the server at its file."""
    spec = stable["spec"]["template"]["spec"]
    volume = next((v for v in spec.get("volumes") or [] if v.get("name") == VOLUME), None)
    if volume is None or (volume.get("configMap") or {}).get("name") != configmap_name(stable["metadata"]["name"]):
        return False
    for c in spec["containers"]:
        if c["name"] == container:
            mounts = any(m.get("name") == VOLUME and m.get("mountPath") == adapter.mount_path
                         for m in c.get("volumeMounts") or [])
            return mounts and any(e.get("name") == FILE_ENV and e.get("value") == _file(adapter)
                                  for e in c.get("env") or [])
    return False


def current_model(stable: dict[str, Any], container: str, model_env: str, fallback: ModelRef) -> ModelRef:
    """The model the stable's template serves now (its model variable and version label)."""
    template = stable["spec"]["template"]
    version = (template.get("metadata", {}).get("labels") or {}).get(deployments.MODEL_VERSION_LABEL)
    uri = next((e.get("value") for c in template["spec"]["containers"] if c["name"] == container
                for e in c.get("env") or [] if e.get("name") == model_env and "value" in e), None)
    return ModelRef(version=version or fallback.version, uri=uri or fallback.uri)


def stable_patch(stable: dict[str, Any], *, container: str, model_env: str, model: ModelRef,
                 adapter: AdapterRouting) -> dict[str, Any]:
    """Kaizen's apply configuration of the stable Deployment with adapter canaries: the model variable and labels
    (:func:`kaizen.logic.deployments.model_patch`) and the ConfigMap's volume, mount and file variable. One apply
    configuration for both, since an apply by the same field manager drops the fields it no longer sends."""
    patch = copy.deepcopy(deployments.model_patch(stable, container=container, model_env=model_env, model=model))
    pod = patch["spec"]["template"]["spec"]
    pod["volumes"] = [{"name": VOLUME, "configMap": {"name": configmap_name(stable["metadata"]["name"]),
                                                     "optional": True}}]
    entry = pod["containers"][0]
    if model.base_uri is not None:  # the model is itself an adapter (a promotion): its base, as its ModelRef says
        entry["env"].append({"name": "BASE_MODEL_URI", "value": model.base_uri})
    entry["env"].append({"name": FILE_ENV, "value": _file(adapter)})
    entry["volumeMounts"] = [{"name": VOLUME, "mountPath": adapter.mount_path, "readOnly": True}]
    return patch
