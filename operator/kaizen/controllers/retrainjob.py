"""RetrainJob controller: validate the spec, create the trainer's ConfigMap and batch/v1 Job (deterministic names,
owner references, create-or-adopt), then follow the Job and its pods until it ends, and write the status once per
pass: phase, attempts and their classified failures, GPU-seconds, and on success the candidate, the metrics, the
dataset summary and the gate verdict judged by :func:`kaizen.logic.gates.judge`.

What to create and what the status is are pure (:mod:`kaizen.logic.retrain`); the API calls are in
:mod:`kaizen.k8s.jobs`. The status is merged with the one stored, not rebuilt from the pods: pods get deleted while
the Job runs (preemption, Kueue, pod garbage collection), and what they used and how they failed must still count,
and each failure be reported once. A timer follows unfinished RetrainJobs; a finished one is left alone, its status
being the record of the run (the Job's pods may be gone later).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import kopf

from kaizen.api import RETRAIN_JOB
from kaizen.api.retrainjob import RetrainJobSpec, RetrainJobStatus
from kaizen.controllers.reconcile import accept, blocked, classified, classify, write_status
from kaizen.k8s import jobs
from kaizen.k8s.errors import ApiError, NotOwned
from kaizen.logic import retrain
from kaizen.logic.conditions import set_condition
from kaizen.logic.validation import InvalidSpec, parse_spec

TARGET = ("kaizen.dev", "v1alpha1", RETRAIN_JOB.plural)
FINISHED = ("Succeeded", "Failed")
#: How often an unfinished RetrainJob's Job and pods are looked at.
FOLLOW_SECONDS = 3.0
STATUS_FIELDS = {field.alias or name for name, field in RetrainJobStatus.model_fields.items()}


@kopf.on.resume(*TARGET)
@kopf.on.create(*TARGET)
@kopf.on.update(*TARGET, field="spec")
@classified
def start(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, patch: kopf.Patch,
          logger: kopf.Logger, **_: Any) -> None:
    parsed = accept(RETRAIN_JOB, body, dict(spec), dict(status), meta.get("generation"), patch, logger)
    if isinstance(parsed, RetrainJobSpec):
        try:
            reconcile(parsed, body, dict(status), meta, patch, logger)
        except kopf.TemporaryError:
            pass  # blocked, and said so in status: the timer tries again, slowly


@kopf.timer(*TARGET, interval=FOLLOW_SECONDS, initial_delay=FOLLOW_SECONDS,
            when=lambda status, **_: status.get("phase") not in FINISHED)
@classified
def follow(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, patch: kopf.Patch,
           logger: kopf.Logger, **_: Any) -> None:
    try:
        parsed = parse_spec(RETRAIN_JOB, dict(spec))
    except InvalidSpec:
        return  # reported by start(); nothing to follow
    reconcile(parsed, body, dict(status), meta, patch, logger)


def reconcile(spec: RetrainJobSpec, body: kopf.Body, status: dict[str, Any], meta: kopf.Meta, patch: kopf.Patch,
              logger: kopf.Logger, now: datetime | None = None) -> None:
    """Gather the Job and pods (creating them first if needed), decide the status, write it once."""
    if status.get("phase") in FINISHED:
        return  # the status is the record of the run; the pods it was read from may be gone by now
    now = now or datetime.now(timezone.utc)
    name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
    generation = meta.get("generation")
    conditions = list(patch.status.get("conditions") or status.get("conditions") or [])
    planned = retrain.plan(spec, name, namespace, uid)
    child = planned.job["metadata"]["name"]
    job = jobs.read_job(namespace, child)
    if job is None:
        try:
            what = f"ConfigMap {namespace}/{child}"
            jobs.create_or_adopt(planned.config_map, uid)
            what = f"Job {namespace}/{child}"
            job = jobs.create_or_adopt(planned.job, uid)
        except (NotOwned, ApiError) as error:
            failure = classify(error, what)
            if failure is None:
                raise
            if not failure.final:
                blocked(body, status, patch, logger, failure, now, generation)
            # The same spec would be refused again, and a RetrainJob is one run: it has failed, and says why.
            conditions = set_condition(conditions, type="Progressing", status="False", reason=failure.reason,
                                       message=failure.message, now=now, generation=generation)
            logger.warning(f"Failed retrain reason={failure.reason}: {failure.message}")
            kopf.warn(body, reason=failure.reason, message=failure.message[:1024])
            write_status(status, patch, {"phase": "Failed", "message": failure.message, "conditions": conditions})
            return
        logger.info(f"Created training Job job={child} image={spec.image} gpus={spec.resources.gpus}")
        kopf.info(body, reason="JobCreated", message=f"Created training Job {child}.")
    previous = RetrainJobStatus.model_validate({k: v for k, v in status.items() if k in STATUS_FIELDS})
    observed = retrain.observe(spec, job, jobs.list_pods(namespace, child) if job else [], now, previous=previous)

    for failure in observed.new_failures:
        retried = "retrying from the last checkpoint" if failure.retried else "not retried"
        kopf.warn(body, reason=failure.reason, message=f"Pod {failure.pod}: {failure.message} ({retried})"[:1024])
        logger.warning(f"Training pod failed pod={failure.pod} reason={failure.reason} retried={failure.retried}")
    if observed.phase in FINISHED:
        verdict = observed.fields.get("verdict")
        (kopf.info if verdict == "Passed" else kopf.warn)(
            body, reason=f"Gates{verdict}" if verdict else "TrainingFailed", message=observed.message[:1024])
        logger.info(f"Finished retrain phase={observed.phase} verdict={verdict}")

    running = observed.phase not in FINISHED
    conditions = set_condition(conditions, type="Progressing", status="True" if running else "False",
                               reason=observed.phase, message=observed.message, now=now, generation=generation)
    write_status(status, patch, {"phase": observed.phase, "message": observed.message, **observed.fields,
                                 "conditions": conditions})
