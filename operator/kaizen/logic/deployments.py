"""The Deployments of a Rollout as plain dicts in the API's camelCase, pure: read what the stable and canary
Deployments show (:func:`serves`, :func:`rolled_out`, :func:`available`, :func:`owned_by_rollout`) and build what
a Rollout applies (:func:`canary_manifest`, :func:`model_patch`). The API calls are :mod:`kaizen.k8s.deployments`.

GitOps safety rests on :func:`model_patch`: it is server-side applied with Kaizen's field manager and holds *only*
the model variable (and the track and version pod labels), so a manifest in git that leaves them out never
conflicts with, nor reverts, a promotion — whoever re-applies it (kubectl, Argo CD self-heal) owns every other field.
"""

from __future__ import annotations

import copy
from typing import Any

from kaizen.api.common import API_GROUP, ModelRef

TRACK_LABEL = f"{API_GROUP}/track"
MODEL_VERSION_LABEL = f"{API_GROUP}/model-version"
ROLLOUT_LABEL = f"{API_GROUP}/rollout"


#: The metadata a Rollout reads of a Deployment (:func:`essentials`).
READ_METADATA = ("name", "namespace", "uid", "generation", "labels", "ownerReferences")


def essentials(deployment: dict[str, Any]) -> dict[str, Any]:
    """What a Rollout reads of a Deployment: its spec, status and the metadata above. Not its managedFields nor its
    annotations (``kubectl apply``'s copy of the whole manifest among them), most of its size: the operator keeps
    this of every Deployment it watches."""
    meta = deployment.get("metadata") or {}
    return {"metadata": {key: meta[key] for key in READ_METADATA if key in meta},
            "spec": deployment.get("spec") or {}, "status": deployment.get("status") or {}}


def canary_name(target: str) -> str:
    return f"{target}-canary"


def container_name(deployment: dict[str, Any], wanted: str | None) -> str:
    """The model container: the one named, or the pod's first. Raises ValueError naming what exists."""
    names = [c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]]
    if wanted is None:
        return names[0]
    if wanted not in names:
        raise ValueError(f"Deployment {deployment['metadata']['name']} has no container {wanted!r} "
                         f"(it has {', '.join(names)}): fix spec.target.container")
    return wanted


def _with_env(container: dict[str, Any], name: str, value: str) -> dict[str, Any]:
    env = [e for e in container.get("env") or [] if e.get("name") != name]
    return {**container, "env": [*env, {"name": name, "value": value}]}


def canary_manifest(
    stable: dict[str, Any], rollout: dict[str, Any], *, container: str, model_env: str, model: ModelRef,
    replicas: int,
) -> dict[str, Any]:
    """The canary Deployment: the stable's pod template with the canary model, owned by the Rollout.

    Its selector is the stable's plus ``kaizen.dev/track=canary``, so its pods still match the stable's Service
    (that is the replica-ratio split) while the two Deployments never claim each other's ReplicaSets.
    """
    meta = rollout["metadata"]
    template = copy.deepcopy(stable["spec"]["template"])
    labels = {**template.get("metadata", {}).get("labels", {}), TRACK_LABEL: "canary",
              MODEL_VERSION_LABEL: model.version}
    template.setdefault("metadata", {})["labels"] = labels
    template["spec"]["containers"] = [
        _with_env(c, model_env, model.uri) if c["name"] == container else c for c in template["spec"]["containers"]
    ]
    selector = copy.deepcopy(stable["spec"]["selector"])
    selector.setdefault("matchLabels", {})[TRACK_LABEL] = "canary"
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": canary_name(stable["metadata"]["name"]),
            "namespace": stable["metadata"]["namespace"],
            "labels": {TRACK_LABEL: "canary", MODEL_VERSION_LABEL: model.version, ROLLOUT_LABEL: meta["name"],
                       "app.kubernetes.io/managed-by": "kaizen"},
            "ownerReferences": [{
                "apiVersion": rollout["apiVersion"], "kind": rollout["kind"], "name": meta["name"],
                "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": {"replicas": replicas, "selector": selector, "template": template},
    }


def model_patch(stable: dict[str, Any], *, container: str, model_env: str, model: ModelRef) -> dict[str, Any]:
    """The apply configuration of a promotion: the model variable and the pod's track and version labels, only."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": stable["metadata"]["name"], "namespace": stable["metadata"]["namespace"]},
        "spec": {"template": {
            "metadata": {"labels": {TRACK_LABEL: "stable", MODEL_VERSION_LABEL: model.version}},
            "spec": {"containers": [{"name": container, "env": [{"name": model_env, "value": model.uri}]}]},
        }},
    }


def serves(deployment: dict[str, Any], *, container: str, model_env: str, uri: str) -> bool:
    """Whether the Deployment's pod template points the container at ``uri``."""
    for c in deployment["spec"]["template"]["spec"]["containers"]:
        if c["name"] == container:
            return any(e.get("name") == model_env and e.get("value") == uri for e in c.get("env") or [])
    return False


def rolled_out(deployment: dict[str, Any]) -> bool:
    """Whether the Deployment's current template is fully rolled out and available (``kubectl rollout status``)."""
    status, spec = deployment.get("status") or {}, deployment["spec"]
    replicas = spec.get("replicas", 1)
    return (status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
            and status.get("updatedReplicas", 0) == replicas and status.get("replicas", 0) == replicas
            and status.get("availableReplicas", 0) == replicas)


def available(deployment: dict[str, Any] | None) -> int:
    """Available replicas of the Deployment's current template (0 while it is still rolling out or absent)."""
    if deployment is None:
        return 0
    status = deployment.get("status") or {}
    if status.get("observedGeneration", 0) < deployment["metadata"].get("generation", 0):
        return 0
    return min(status.get("availableReplicas", 0), status.get("updatedReplicas", 0))


def owned_by_rollout(deployment: dict[str, Any]) -> bool:
    """Whether a Kaizen Rollout owns the Deployment: only such a canary may be resized, adopted or removed."""
    return any(ref.get("kind") == "Rollout" and str(ref.get("apiVersion", "")).startswith(f"{API_GROUP}/")
               for ref in deployment["metadata"].get("ownerReferences") or [])
