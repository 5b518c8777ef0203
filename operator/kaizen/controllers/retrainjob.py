"""RetrainJob controller: create the trainer's ConfigMap and batch/v1 Job (or, for several nodes, a Kubeflow TrainJob
where its API is served, else an Indexed Job and its headless Service: deterministic names, owner references,
create-or-adopt), then follow the job and its pods until it ends: phase, attempts and their classified failures,
GPU-seconds, and on success the candidate, the metrics, the dataset summary and the gate verdict.

The shared skeleton of :mod:`kaizen.controllers.reconcile`: spec validation (Ready / InvalidSpec), then a look when
due — gather (the RetrainJob fresh, its Job, the Job's pods) → :func:`kaizen.logic.retrain.decide`, pure →
:func:`kaizen.controllers.reconcile.apply`. Looks are driven by watches, not a timer: any change of the Job or of
a trainer pod (watched by the ``kaizen.dev/retrainjob`` label, server-side) wakes its RetrainJob, and the due time
the decision returns covers the rest (a running pod's GPU time; a TrainJob and its pods, which JobSet labels, are
not watched). A finished RetrainJob reads nothing: its status is the record of the run, and the pods it was read
from may be gone later.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import kopf

from kaizen.api import RETRAIN_JOB
from kaizen.api.retrainjob import RetrainJobSpec
from kaizen.controllers import reconcile
from kaizen.controllers.reconcile import apply, classified, register, schedule
from kaizen.k8s import jobs, resources
from kaizen.k8s.errors import ApiError
from kaizen.logic import retrain
from kaizen.logic.validation import InvalidSpec, parse_spec

FINISHED = retrain.FINISHED

register(RETRAIN_JOB)


def look_now(obj: dict[str, Any], patch: kopf.Patch, logger: kopf.Logger, retry: int) -> datetime | None:
    """The RetrainJob's look (:func:`kaizen.controllers.reconcile.schedule` calls it when due, or woken)."""
    return follow(body=obj, meta=obj["metadata"], patch=patch, logger=logger, retry=retry)


@classified
def follow(body: dict[str, Any], meta: dict[str, Any], patch: kopf.Patch, logger: kopf.Logger,
           **_: Any) -> datetime | None:
    if (body.get("status") or {}).get("phase") in FINISHED:
        return None  # at rest: nothing to read, nothing to do
    namespace, name = meta["namespace"], meta["name"]
    try:
        # Fresh, not the cached body: a look woken by a pod's change must not merge into a status older than the
        # one the last look wrote (it would report a failure twice).
        fresh = resources.get(RETRAIN_JOB.kind, namespace, name)
    except ApiError as error:
        if error.not_found:
            return None
        raise
    stored, generation = dict(fresh.get("status") or {}), fresh["metadata"].get("generation")
    if stored.get("phase") in FINISHED:
        return None
    try:
        spec: RetrainJobSpec = parse_spec(RETRAIN_JOB, fresh.get("spec") or {}, name)  # type: ignore[assignment]
    except InvalidSpec:
        return None  # the spec handler reports it; nothing can be trained on it until the spec changes
    if stored.get("observedGeneration") != generation:
        return None  # the spec handler has not judged this generation yet; its status write wakes us
    child = retrain.child_name(name)
    # Discovery only when it decides something: a multi-node RetrainJob whose job is not made yet.
    kind = retrain.job_kind(spec, stored.get("jobKind"),
                            spec.resources.nodes > 1 and not stored.get("jobKind") and jobs.trainjobs_served())
    job = jobs.read_job(namespace, child, kind)
    pods = jobs.list_pods(namespace, retrain.pod_selector(kind, child)) if job is not None else []
    effects = retrain.decide(spec, stored, job, pods, reconcile.clock.now(), name=name, namespace=namespace,
                             uid=fresh["metadata"]["uid"], generation=generation, kind=kind)
    return apply(fresh, effects, patch, logger, refused=retrain.refused)


scheduler = schedule(RETRAIN_JOB, look_now)


@kopf.on.startup()
def watch_trainers_only(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Server-side: the operator is sent the Jobs and pods of RetrainJobs, not every pod of the cluster.
    settings.watching.label_selectors["batch", "jobs"] = retrain.LABEL
    settings.watching.label_selectors["v1", "pods"] = retrain.LABEL


@kopf.on.event("batch", "v1", "jobs", labels={retrain.LABEL: kopf.PRESENT}, id="wake_retrainjob_on_job")
@kopf.on.event("v1", "pods", labels={retrain.LABEL: kopf.PRESENT}, id="wake_retrainjob_on_pod")
async def trainer_changed(meta: kopf.Meta, labels: kopf.Labels, **_: Any) -> None:
    """A trainer Job or pod changed: its RetrainJob looks now (a finished one reads nothing)."""
    scheduler.wake(meta.get("namespace") or "", labels[retrain.LABEL])
