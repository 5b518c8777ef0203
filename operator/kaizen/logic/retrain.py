"""RetrainJob logic, pure: what to create for a RetrainJob (the trainer config, its ConfigMap, the batch/v1 Job or
Kubeflow TrainJob, and a multi-node Job's headless Service) and what its status is, given the Job and its pods as
observed. No I/O; the controller gathers and applies.

:func:`decide` is one look's every effect (:class:`kaizen.logic.effects.Effects`): the children to create, the
status, the Events (each pod failure once, the outcome once) and when to look again; :func:`refused` says what a
child the API server refuses means (a RetrainJob is one run: unless a person can unblock it, it has failed).

More than one process: ``resources.gpus > 1`` runs the trainer under torchrun (:data:`TORCHRUN`) in its one pod
(``--standalone``, a process per GPU). ``resources.nodes > 1`` runs a pod per node, each under torchrun: as a
Kubeflow Trainer TrainJob (runtime ``torch-distributed``) when the cluster serves its API, whose torch plugin sets
torchrun's rendezvous (``PET_*``); otherwise as an Indexed Job (a pod per completion index) with a headless Service
that names its pods, where pod ``<job>-0.<service>`` hosts the rendezvous on port :data:`RENDEZVOUS_PORT`. Either
way a pod's node rank is its completion index (torchrun's static rendezvous: ``--node-rank`` from the index, as
Kubeflow's plugin does; torch's c10d rendezvous would assign ranks by sorted host address and pid instead, so the pod
that holds the result would not be known). Only global rank 0 writes outputs and the result, so the result is read
from the pod of completion index 0.

Retries are the Job's own: ``backoffLimit`` counts failed pods, and a ``podFailurePolicy`` fails the Job at once
when the trainer exits with :data:`EXIT_PERMANENT` (a bad config or bad data) and does not count pods disrupted by
preemption or eviction. Each new pod resumes from the checkpoint the last one left.

Pods do not last: preemption, Kueue suspending the Job, the Job's pod garbage collection or a user delete them. So the
status is not rebuilt from the pods there are now but merged with the status stored before (:func:`tally`): every
pod seen is remembered with its GPU time and whether it failed, so attempts, gpuSeconds and the failure count never
go down, and a failure is reported once, by pod, however often it is seen.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

from kaizen.api.common import API_GROUP, API_VERSION, parse_duration
from kaizen.api.retrainjob import (
    ATTEMPTS_KEPT, FAILURES_KEPT, AttemptFailure, GateResult, PodAttempt, RetrainJobSpec, RetrainJobStatus,
    RetrainPhase,
)
from kaizen.api.trainer import FeedbackExport, MlflowRun, TrainerConfig, TrainerResult
from kaizen.logic.conditions import Event, set_condition
from kaizen.logic.effects import Effects, Failure, blocked
from kaizen.logic.gates import judge

#: Exit code of a trainer failure that retrying cannot fix (kaizen_trainer.cli.EXIT_PERMANENT).
EXIT_PERMANENT = 2
CONTAINER = "trainer"
LABEL = f"{API_GROUP}/retrainjob"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
CONFIG_DIR = "/etc/kaizen/trainer"
TOKEN_DIR = "/var/run/kaizen/collector"
MLFLOW_TOKEN_DIR = "/var/run/kaizen/mlflow"
PVC_ROOT = "/mnt/kaizen/pvc"
WORKSPACE = "/workspace"
#: The trainer image's unprivileged user (trainer-image/Dockerfile).
TRAINER_UID = 10001
#: Where pod ``<job>-0`` hosts torchrun's rendezvous: torchrun's default port, and Kubeflow Trainer's.
RENDEZVOUS_PORT = 29500
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
#: Kubeflow Trainer v2's API, which a RetrainJob of more than one node writes a TrainJob to where it is served.
TRAINJOB_GROUP, TRAINJOB_VERSION, TRAINJOB_PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
#: The ClusterTrainingRuntime Kubeflow Trainer installs for torchrun, its replicated job and its trainer container.
TRAINJOB_RUNTIME, TRAINJOB_NODE = "torch-distributed", "node"
JOBSET_LABEL, REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/jobset-name", "jobset.sigs.k8s.io/replicatedjob-name"
#: torchrun as the trainer image runs it: the same launcher and options (kaizen_trainer.launch), exiting with the
#: trainer's own codes, so the podFailurePolicy still fails the Job at once on a permanent failure (plain torchrun
#: exits 1 whenever a worker fails).
TORCHRUN = ["python", "-m", "kaizen_trainer.launch"]
#: The trainer's container in the pods of each kind of job.
CONTAINERS = {"Job": CONTAINER, "TrainJob": TRAINJOB_NODE}
_PVC = re.compile(r"^pvc://([a-z0-9]([-a-z0-9.]*[a-z0-9])?)(/.*)?$")


def child_name(name: str) -> str:
    """The Job's (and ConfigMap's) name: the RetrainJob's, suffixed; hashed down to stay a 63-character label."""
    if len(name) <= 55:
        return f"{name}-trainer"
    return f"{name[:46]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}-tr"


def _mount(uri: str, claims: dict[str, str]) -> str:
    """A pvc:// URI as the path where the pod mounts the claim (and note the claim); other URIs as they are."""
    match = _PVC.match(uri)
    if not match:
        return uri
    claim, path = match.group(1), match.group(3) or ""
    claims[claim] = f"{PVC_ROOT}/{claim}"
    return f"{PVC_ROOT}/{claim}{path}"


def mounted_path(uri: str) -> str:
    """Where a pod that mounts the claim of a pvc:// URI (at ``PVC_ROOT/CLAIM``) finds it; other URIs as they are.
    The model server reads ``MODEL_URI`` through it, so a serving pod takes the same pvc:// URI as the trainer."""
    return _mount(uri, {})


def service_name(child: str) -> str:
    """The headless Service of a multi-node Job: its name is the pods' DNS subdomain, so a DNS label (RFC 1035)."""
    label = re.sub(r"[^a-z0-9-]", "-", child)
    return label if label[:1].isalpha() else f"t-{label}"[:63].rstrip("-")


def job_kind(spec: RetrainJobSpec, stored_kind: str | None, trainjobs_served: bool) -> str:
    """Job or TrainJob: what the RetrainJob's training runs as (once chosen, it stays, as stored in the status)."""
    if stored_kind:
        return stored_kind
    return "TrainJob" if spec.resources.nodes > 1 and trainjobs_served else "Job"


def pod_selector(kind: str, child: str) -> str:
    """The label selector of the training pods of the Job (the Job controller's label) or of the TrainJob (JobSet's,
    which names the JobSet after the TrainJob, for its trainer's replicated job)."""
    if kind == "TrainJob":
        return f"{JOBSET_LABEL}={child},{REPLICATED_JOB_LABEL}={TRAINJOB_NODE}"
    return f"{JOB_NAME_LABEL}={child}"


def processes_per_node(spec: RetrainJobSpec) -> int:
    """One trainer process per GPU; one on CPU."""
    return max(1, spec.resources.gpus)


def torchrun(spec: RetrainJobSpec, child: str) -> list[str] | None:
    """The container's command when more than one process trains (None: the image's own entry point, one process).
    Today's arguments follow it."""
    nodes, procs = spec.resources.nodes, processes_per_node(spec)
    if nodes == 1 and procs == 1:
        return None
    if nodes == 1:
        rendezvous = ["--standalone"]
    else:
        # The node rank comes from PET_NODE_RANK (the completion index: see the module docstring).
        rendezvous = [f"--nnodes={nodes}", f"--master-addr={child}-0.{service_name(child)}",
                      f"--master-port={RENDEZVOUS_PORT}"]
    return [*TORCHRUN, *rendezvous, f"--nproc-per-node={procs}", "-m", "kaizen_trainer"]


@dataclass(frozen=True)
class Plan:
    """What the controller creates for one RetrainJob: the trainer config in its ConfigMap, the Job (a batch/v1 Job,
    or a Kubeflow TrainJob) and, for an Indexed Job of several pods, its headless Service."""

    config: TrainerConfig
    config_map: dict[str, Any]
    job: dict[str, Any]
    service: dict[str, Any] | None = None

    @property
    def children(self) -> tuple[dict[str, Any], ...]:
        """In the order to create them: the pods need the ConfigMap, and the Service before they rendezvous."""
        return (self.config_map, *([self.service] if self.service else []), self.job)


def plan(spec: RetrainJobSpec, name: str, namespace: str, uid: str, *, kind: str = "Job") -> Plan:
    claims: dict[str, str] = {}
    data = spec.data.model_copy(deep=True)
    for source in [*data.replay, data.holdout, data.regression, data.safety]:
        if source is not None:
            source.uri = _mount(source.uri, claims)
    output = _mount(spec.output_uri.rstrip("/"), claims) + f"/{namespace}/{name}"
    # Checkpoints must outlive the pod: next to the output on a volume; for s3:// output on the pod's own disk,
    # mirrored next to the output.
    on_volume = output.startswith("/")
    checkpoints = f"{output}/checkpoints" if on_volume else f"{WORKSPACE}/checkpoints"
    judge = spec.judge.model_copy(update={"uri": _mount(spec.judge.uri, claims)}) if spec.judge else None
    feedback = None
    if spec.feedback is not None:
        query = {"model": spec.feedback.model}
        for key, values in (("categories", spec.targets.categories), ("scenarios", spec.targets.scenarios),
                            ("cohorts", spec.targets.cohorts)):
            if values:
                query[key] = ",".join(values)
        if spec.feedback.since:
            query["since"] = spec.feedback.since.isoformat().replace("+00:00", "Z")
        feedback = FeedbackExport(
            url=f"{spec.feedback.collector_url.rstrip('/')}/v1/export?{urlencode(query)}",
            token_file=f"{TOKEN_DIR}/token" if spec.feedback.token_secret_ref else None,
        )
    tracking = spec.tracking.mlflow if spec.tracking else None
    mlflow = MlflowRun(tracking_uri=tracking.tracking_uri, experiment=tracking.experiment, run_name=name,
                       token_file=f"{MLFLOW_TOKEN_DIR}/token" if tracking.token_secret_ref else None) \
        if tracking else None
    config = TrainerConfig(
        job=f"{namespace}/{name}", decision_id=spec.reason.decision_id, task=spec.task, baseline=spec.baseline,
        candidate_version=spec.candidate_version or name[:63], data=data, feedback=feedback, targets=spec.targets,
        hyperparameters=spec.hyperparameters, method=spec.method, lora=spec.lora, objective=spec.objective,
        judge=judge, gates=spec.gates, output_dir=output, checkpoint_dir=checkpoints,
        checkpoint_mirror=None if on_volume else f"{output}/checkpoints", strategy=spec.strategy, mlflow=mlflow,
    )
    child = child_name(name)
    owner = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "RetrainJob", "name": name, "uid": uid,
             "controller": True, "blockOwnerDeletion": True}
    labels = {LABEL: name, "app.kubernetes.io/managed-by": "kaizen", "app.kubernetes.io/component": "trainer"}
    config_map = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": child, "namespace": namespace, "labels": labels, "ownerReferences": [owner]},
        "data": {"config.json": config.model_dump_json(by_alias=True, exclude_none=True, indent=2)},
    }
    pod = _pod(spec, child, claims)
    if kind == "TrainJob":
        return Plan(config, config_map, _trainjob(spec, child, namespace, labels, owner, pod))
    job = _job(spec, child, namespace, labels, owner, pod)
    if spec.resources.nodes == 1:
        return Plan(config, config_map, job)
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": service_name(child), "namespace": namespace, "labels": labels,
                     "ownerReferences": [owner]},
        # Headless: a DNS record per pod, <job>-<index>.<service>, published before the pod is ready, since the
        # pods rendezvous while they start.
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": {JOB_NAME_LABEL: child},
                 "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}]},
    }
    return Plan(config, config_map, job, service)


@dataclass(frozen=True)
class _PodParts:
    """The parts of the training pod that a batch Job and a TrainJob both carry."""

    command: list[str] | None
    args: list[str]
    resources: dict[str, dict[str, str]]
    volumes: list[dict[str, Any]]
    mounts: list[dict[str, Any]]


def _pod(spec: RetrainJobSpec, child: str, claims: dict[str, str]) -> _PodParts:
    res = spec.resources
    requests: dict[str, str] = {"cpu": res.cpu, "memory": res.memory}
    limits: dict[str, str] = {"memory": res.memory}
    if res.gpus:
        requests[res.gpu_resource_name] = limits[res.gpu_resource_name] = str(res.gpus)
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": child}},
        {"name": "workspace", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "workspace", "mountPath": WORKSPACE},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if processes_per_node(spec) > 1:
        # NCCL shares memory between the processes of a node through /dev/shm, which a container gets 64 MiB of.
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    for i, (claim, path) in enumerate(sorted(claims.items())):
        volumes.append({"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": f"pvc-{i}", "mountPath": path})
    if spec.feedback is not None and spec.feedback.token_secret_ref is not None:
        ref = spec.feedback.token_secret_ref
        volumes.append({"name": "collector-token",
                        "secret": {"secretName": ref.name, "items": [{"key": ref.key, "path": "token"}]}})
        mounts.append({"name": "collector-token", "mountPath": TOKEN_DIR, "readOnly": True})
    if spec.tracking is not None and spec.tracking.mlflow.token_secret_ref is not None:
        ref = spec.tracking.mlflow.token_secret_ref
        volumes.append({"name": "mlflow-token",
                        "secret": {"secretName": ref.name, "items": [{"key": ref.key, "path": "token"}]}})
        mounts.append({"name": "mlflow-token", "mountPath": MLFLOW_TOKEN_DIR, "readOnly": True})
    return _PodParts(torchrun(spec, child), ["--config", f"{CONFIG_DIR}/config.json"],
                     {"requests": requests, "limits": limits}, volumes, mounts)


def _trainjob(spec: RetrainJobSpec, child: str, namespace: str, labels: dict[str, str], owner: dict[str, Any],
              pod: _PodParts) -> dict[str, Any]:
    """A Kubeflow Trainer TrainJob on the torch-distributed runtime: the runtime's pod, with Kaizen's image, command,
    resources, volumes and placement. Its torch plugin sets torchrun's nodes, processes, node rank and master
    (``PET_*``), so the command is plain torchrun. Retries and deadlines are the runtime's (its JobSet's)."""
    override: dict[str, Any] = {
        "targetJobs": [{"name": TRAINJOB_NODE}], "volumes": pod.volumes,
        "containers": [{"name": TRAINJOB_NODE, "volumeMounts": pod.mounts}],
    }
    if spec.node_selector:
        override["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        override["tolerations"] = [t.to_wire() for t in spec.tolerations]
    job_labels = dict(labels)
    if spec.queue_name:
        job_labels[QUEUE_LABEL] = spec.queue_name
    return {
        "apiVersion": f"{TRAINJOB_GROUP}/{TRAINJOB_VERSION}", "kind": "TrainJob",
        "metadata": {"name": child, "namespace": namespace, "labels": job_labels, "ownerReferences": [owner]},
        "spec": {
            "runtimeRef": {"name": TRAINJOB_RUNTIME, "apiGroup": TRAINJOB_GROUP, "kind": "ClusterTrainingRuntime"},
            "suspend": bool(spec.queue_name),
            "labels": labels,  # on its JobSet and Jobs
            "trainer": {
                "image": spec.image, "command": [*TORCHRUN, "-m", "kaizen_trainer"], "args": pod.args,
                "numNodes": spec.resources.nodes, "numProcPerNode": processes_per_node(spec),
                "resourcesPerNode": pod.resources,
            },
            "podSpecOverrides": [override],
        },
    }


def _job(spec: RetrainJobSpec, child: str, namespace: str, labels: dict[str, str], owner: dict[str, Any],
         pod: _PodParts) -> dict[str, Any]:
    nodes = spec.resources.nodes
    container: dict[str, Any] = {
        "name": CONTAINER, "image": spec.image, **({"command": pod.command} if pod.command else {}),
        "args": pod.args, "resources": pod.resources,
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "terminationMessagePath": "/dev/termination-log",
        # A trainer that dies before writing its result still leaves the end of its log as the message.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": pod.mounts,
    }
    if nodes > 1:
        container["env"] = [{"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {
            "fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}}}]
    job_labels = dict(labels)
    if spec.queue_name:
        job_labels[QUEUE_LABEL] = spec.queue_name
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # The trainer talks to no Kubernetes API: it gets no token to lose.
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": TRAINER_UID, "runAsGroup": TRAINER_UID,
                            "fsGroup": TRAINER_UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": pod.volumes,
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [t.to_wire() for t in spec.tolerations]
    indexed: dict[str, Any] = {}
    if nodes > 1:
        # A pod per node, named <job>-<index>.<service> in DNS; all of them fail when one does (their rendezvous
        # breaks), so an attempt costs ``nodes`` failed pods of the backoff limit.
        pod_spec["subdomain"] = service_name(child)
        indexed = {"completionMode": "Indexed", "completions": nodes, "parallelism": nodes}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": child, "namespace": namespace, "labels": job_labels, "ownerReferences": [owner]},
        "spec": {
            "suspend": bool(spec.queue_name),  # Kueue admits (unsuspends) it when the queue has room
            **indexed,
            "backoffLimit": spec.backoff_limit * nodes,
            "activeDeadlineSeconds": int(parse_duration(spec.active_deadline).total_seconds()),
            "podFailurePolicy": {"rules": [
                {"action": "FailJob",
                 "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_PERMANENT]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


# --- observing -------------------------------------------------------------------------------------------------


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _trainer_status(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The trainer container's status: ``trainer`` in a Job's pod, ``node`` in a TrainJob's."""
    wanted = CONTAINERS["TrainJob"] if JOBSET_LABEL in (pod["metadata"].get("labels") or {}) else CONTAINER
    return next((s for s in pod.get("status", {}).get("containerStatuses") or [] if s.get("name") == wanted), None)


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    return ((_trainer_status(pod) or {}).get("state") or {}).get("terminated")


def _started(pod: dict[str, Any]) -> datetime | None:
    state = (_trainer_status(pod) or {}).get("state") or {}
    return _time((state.get("running") or state.get("terminated") or {}).get("startedAt"))


def completion_index(pod: dict[str, Any]) -> str | None:
    """The pod's completion index in an Indexed Job (a TrainJob's pods are those of its JobSet's Indexed Jobs)."""
    meta = pod["metadata"]
    return (meta.get("labels") or {}).get(COMPLETION_INDEX) or (meta.get("annotations") or {}).get(COMPLETION_INDEX)


def trainer_result(pod: dict[str, Any]) -> TrainerResult | None:
    """The trainer's result from the pod's termination message, or None when there is none (or only a log tail)."""
    message = (_terminated(pod) or {}).get("message")
    if not message:
        return None
    try:
        return TrainerResult.model_validate_json(message)
    except ValueError:
        return None


def classify(pod: dict[str, Any]) -> AttemptFailure | None:
    """What went wrong with a failed (or disrupted) pod, and whether the Job retries it."""
    status = pod.get("status", {})
    name = pod["metadata"]["name"]
    disrupted = next((c for c in status.get("conditions") or []
                      if c.get("type") == "DisruptionTarget" and c.get("status") == "True"), None)
    terminated = _terminated(pod) or {}
    if status.get("phase") != "Failed" and not (disrupted and terminated):
        return None
    if disrupted:
        reason = "Evicted" if disrupted.get("reason") in ("TerminationByKubelet", "EvictionByEvictionAPI") \
            else "Preempted"
        return AttemptFailure(pod=name, reason=reason, retried=True,
                              message=(disrupted.get("message") or reason)[:1024])
    if status.get("reason") == "Evicted":
        return AttemptFailure(pod=name, reason="Evicted", retried=True, message=(status.get("message") or "")[:1024])
    if terminated.get("reason") == "OOMKilled":
        return AttemptFailure(pod=name, reason="OOMKilled", retried=True,
                              message="the trainer ran out of memory; the next pod resumes from the last checkpoint "
                              "(raise resources.memory or lower batchSize/maxLength if it repeats)")
    if status.get("reason") == "DeadlineExceeded":
        return AttemptFailure(pod=name, reason="DeadlineExceeded", retried=False, message="activeDeadline exceeded")
    result = trainer_result(pod)
    if result is not None and result.phase == "Failed":
        return AttemptFailure(pod=name, reason=result.reason, retried=not result.permanent, message=result.message)
    code = terminated.get("exitCode")
    tail = (terminated.get("message") or "").strip().splitlines()[-1:] or [terminated.get("reason") or "failed"]
    return AttemptFailure(pod=name, reason="Error", retried=code != EXIT_PERMANENT,
                          message=f"exit code {code}: {tail[0]}"[:1024])


def _job_condition(job: dict[str, Any], type: str) -> dict[str, Any] | None:
    return next((c for c in job.get("status", {}).get("conditions") or []
                 if c.get("type") == type and c.get("status") == "True"), None)


def pod_gpus(spec: RetrainJobSpec, pod: dict[str, Any]) -> int:
    """The GPUs a training pod holds: its containers' limits of the GPU resource (the spec's, for a pod that does not
    say, as in a hand-written test)."""
    name, containers = spec.resources.gpu_resource_name, pod.get("spec", {}).get("containers")
    if not containers:
        return spec.resources.gpus
    return sum(int(((c.get("resources") or {}).get("limits") or {}).get(name, 0) or 0) for c in containers)


def _gpu_seconds(spec: RetrainJobSpec, pod: dict[str, Any], now: datetime) -> float:
    """One pod's GPU time: every GPU it holds, for as long as its trainer ran. :func:`tally` sums it over every pod,
    of every node and every attempt."""
    started = _started(pod)
    if started is None:
        return 0.0
    ended = _time((_terminated(pod) or {}).get("finishedAt")) or now
    return max(0.0, (ended - started).total_seconds()) * pod_gpus(spec, pod)


_EPOCH = datetime.min.replace(tzinfo=timezone.utc)


def _order(created: datetime | None, name: str) -> tuple[datetime, str]:
    """Pods in the order the Job made them (creation times have whole seconds; the name breaks ties)."""
    return created or _EPOCH, name


def _pod_order(pod: dict[str, Any]) -> tuple[datetime, str]:
    return _order(_time(pod["metadata"].get("creationTimestamp")), pod["metadata"]["name"])


@dataclass(frozen=True)
class Tally:
    """Every training pod ever seen: the previous status merged with the pods there are now."""

    pods: list[PodAttempt]  # the last ATTEMPTS_KEPT, oldest first
    attempts: int
    gpu_seconds: float
    failures: list[AttemptFailure]  # the last FAILURES_KEPT, oldest first
    failed: int
    new_failures: list[AttemptFailure]  # seen failed for the first time now: to report once
    start_time: datetime | None


def tally(spec: RetrainJobSpec, pods: list[dict[str, Any]], previous: RetrainJobStatus, now: datetime) -> Tally:
    """Merge the pods there are with those the previous status remembers; a pod is known by its uid (its name where
    it has none). A remembered pod keeps its GPU time when deleted; a running one's is replaced, never added again."""
    remembered = list(previous.pod_attempts)
    # A status written before pods were remembered was rebuilt from the pods then present: its totals are a floor.
    legacy = not remembered and bool(previous.attempts)
    # Pods dropped off the remembered list (beyond ATTEMPTS_KEPT) stay in the totals...
    dropped_count = 0 if legacy else max(0, (previous.attempts or 0) - len(remembered))
    dropped_seconds = 0.0 if legacy else max(0.0, (previous.gpu_seconds or 0) - sum(p.gpu_seconds for p in remembered))
    # ...and are older than every remembered one: a pod not remembered that is no newer than those was dropped.
    horizon = _order(remembered[0].created, remembered[0].pod) if dropped_count and remembered else None
    reported = {f.pod for f in previous.failures}
    records = {p.uid or p.pod: p for p in remembered}
    new_failures: list[AttemptFailure] = []
    for pod in sorted(pods, key=_pod_order):
        meta = pod["metadata"]
        name, uid, created = meta["name"], meta.get("uid"), _time(meta.get("creationTimestamp"))
        record = records.get(uid or name)
        if record is None and horizon is not None and _order(created, name) <= horizon:
            continue
        failure = classify(pod)
        failed_before = (record is not None and record.failed) or name in reported
        if failure is not None and not failed_before:
            new_failures.append(failure)
        seconds = round(_gpu_seconds(spec, pod, now), 3)
        records[uid or name] = PodAttempt(
            pod=name, uid=uid, created=created or (record.created if record else None),
            gpu_seconds=max(seconds, record.gpu_seconds if record else 0.0),
            failed=failed_before or failure is not None,
        )
    ordered = sorted(records.values(), key=lambda p: _order(p.created, p.pod))
    attempts = dropped_count + len(ordered)
    gpu_seconds = round(dropped_seconds + sum(p.gpu_seconds for p in ordered), 3)
    if legacy:
        attempts, gpu_seconds = max(attempts, previous.attempts or 0), max(gpu_seconds, previous.gpu_seconds or 0)
    failed = (len(previous.failures) if previous.failed_attempts is None else previous.failed_attempts) \
        + len(new_failures)
    started = [t for t in (_started(p) for p in pods) if t]
    if previous.start_time is not None:
        started.append(previous.start_time)
    return Tally(ordered[-ATTEMPTS_KEPT:], attempts, gpu_seconds, [*previous.failures, *new_failures][-FAILURES_KEPT:],
                 failed, new_failures, min(started, default=None))


@dataclass(frozen=True)
class Observation:
    """The status a RetrainJob should have, from its Job and pods and the status it had."""

    phase: RetrainPhase
    message: str
    fields: dict[str, Any]
    failures: list[AttemptFailure]
    #: Failures seen for the first time in this observation: the controller reports each once.
    new_failures: list[AttemptFailure] = field(default_factory=list)


def observe(spec: RetrainJobSpec, job: dict[str, Any] | None, pods: list[dict[str, Any]], now: datetime,
            previous: RetrainJobStatus | None = None) -> Observation:
    """Phase, message and status fields from what the Job and its pods show, merged with the ``previous`` status
    (see the module docstring)."""
    if job is None:
        return Observation("Pending", "Creating the training Job.", {}, [])
    pods = sorted(pods, key=_pod_order)
    seen = tally(spec, pods, previous or RetrainJobStatus(), now)
    failures = seen.failures
    fields: dict[str, Any] = {
        "jobName": job["metadata"]["name"],
        "jobKind": job.get("kind") or "Job",
        "attempts": seen.attempts,
        "gpuSeconds": seen.gpu_seconds,
        "failures": [f.to_wire() for f in failures],
        "failedAttempts": seen.failed,
        "podAttempts": [p.to_wire() for p in seen.pods],
    }
    if seen.start_time:
        fields["startTime"] = _iso(seen.start_time)
    return replace(_phase(spec, job, pods, now, fields, failures, seen.failed), new_failures=seen.new_failures)


def _phase(spec: RetrainJobSpec, job: dict[str, Any], pods: list[dict[str, Any]], now: datetime,
           fields: dict[str, Any], failures: list[AttemptFailure], failed_count: int) -> Observation:
    complete, failed = _job_condition(job, "Complete"), _job_condition(job, "Failed")
    if complete:
        fields["completionTime"] = _iso(_time(job["status"].get("completionTime")) or now)
        succeeded = [p for p in pods if p.get("status", {}).get("phase") == "Succeeded"]
        if any(completion_index(p) is not None for p in pods):
            # Several nodes: only rank 0, in the pod of completion index 0, reports the result.
            succeeded = [p for p in succeeded if completion_index(p) == "0"]
        result = trainer_result(succeeded[-1]) if succeeded else None
        if result is None or result.phase != "Succeeded":
            return Observation("Failed", "The trainer finished without reporting a result in its termination "
                               "message; see the pod's log.", fields, failures)
        return _succeeded(spec, result, fields, failures)
    if failed:
        fields["completionTime"] = _iso(_time(failed.get("lastTransitionTime")) or now)
        last = failures[-1] if failures else None
        why = {"BackoffLimitExceeded": f"{failed_count} attempt(s) failed, backoffLimit {spec.backoff_limit} "
                                       "reached",
               "DeadlineExceeded": f"activeDeadline {spec.active_deadline} exceeded",
               "PodFailurePolicy": "the trainer reported a failure retrying cannot fix"}.get(
            failed.get("reason") or "", failed.get("message") or failed.get("reason") or "the Job failed")
        detail = f"; last: {last.reason}: {last.message}" if last else ""
        return Observation("Failed", f"Training failed: {why}{detail}", fields, failures)
    if job.get("spec", {}).get("suspend"):
        queue = job["metadata"].get("labels", {}).get(QUEUE_LABEL)
        return Observation("Pending", f"Queued: waiting for Kueue to admit the Job (queue {queue})." if queue
                           else "The Job is suspended.", fields, failures)
    running = [p for p in pods if p.get("status", {}).get("phase") == "Running"]
    retrying = f" after {failed_count} failed attempt(s), last {failures[-1].reason}: resuming from the last " \
               "checkpoint" if failures else ""
    if len(running) == 1:
        return Observation("Training", f"Training in pod {running[-1]['metadata']['name']}{retrying}.", fields,
                           failures)
    if running:
        names = ", ".join(p["metadata"]["name"] for p in sorted(running, key=lambda p: completion_index(p) or ""))
        return Observation("Training", f"Training in {len(running)} pods ({names}){retrying}.", fields, failures)
    return Observation("Pending", f"Waiting for a training pod to be scheduled{retrying}.", fields, failures)


def _succeeded(spec: RetrainJobSpec, result: TrainerResult, fields: dict[str, Any],
               failures: list[AttemptFailure]) -> Observation:
    metrics = result.metrics
    gates, verdict = judge(spec.gates, metrics.get("candidate", {}), metrics.get("baseline", {}))
    fields.update({
        "verdict": verdict,
        "gates": [g.to_wire() for g in gates],
        "metrics": metrics,
    })
    if result.candidate:
        fields["candidate"] = result.candidate.to_wire()
    if result.dataset:
        fields["dataset"] = result.dataset.to_wire()
    if result.model_card_uri:
        fields["modelCardURI"] = result.model_card_uri
    message = _verdict_message(verdict, gates)
    if result.mlflow_run_id:
        fields["mlflowRunID"] = result.mlflow_run_id
    elif result.mlflow_error:  # a record of the retrain, not a gate of it: said, not failed
        message += f" Not recorded in MLflow: {result.mlflow_error}"
    return Observation("Succeeded", message, fields, failures)


def _verdict_message(verdict: str, gates: list[GateResult]) -> str:
    failed = [g for g in gates if not g.passed]
    if not failed:
        return f"Candidate passed all {len(gates)} gate(s)."
    return "Candidate failed gate(s): " + "; ".join(
        f"{g.dataset}.{g.metric}{'.' + g.cohort if g.cohort else ''} candidate={_fmt(g.candidate)} "
        f"baseline={_fmt(g.baseline)} ({g.threshold})" for g in failed)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")



# --- deciding --------------------------------------------------------------------------------------------------

FINISHED = ("Succeeded", "Failed")
STATUS_FIELDS = frozenset(info.alias or name for name, info in RetrainJobStatus.model_fields.items())
#: How often a RetrainJob with a training pod running looks again, so that its gpuSeconds (which the loop's GPU
#: budget sums) follow the pod's run. Every other change is seen through the watch of the Job and its pods.
FOLLOW_RUNNING = timedelta(seconds=10)
#: The look of an unfinished RetrainJob when nothing is running: a safety net (a change of the Job or of a pod,
#: which the controller watches, is looked at at once), not a schedule.
FOLLOW_IDLE = timedelta(seconds=60)


def previous_status(stored: dict[str, Any]) -> RetrainJobStatus:
    return RetrainJobStatus.model_validate({k: v for k, v in stored.items() if k in STATUS_FIELDS})


def decide(spec: RetrainJobSpec, stored: dict[str, Any], job: dict[str, Any] | None, pods: list[dict[str, Any]],
           now: datetime, *, name: str, namespace: str, uid: str, generation: int | None,
           kind: str = "Job") -> Effects:
    """One look at a RetrainJob: from its stored status (wire form), its Job of ``kind`` (:func:`job_kind`; None:
    not there) and the Job's pods, every effect. A finished RetrainJob has none: its status is the record of the
    run, and the pods it was read from may be gone by now."""
    if stored.get("phase") in FINISHED:
        return Effects()
    conditions = list(stored.get("conditions") or [])
    if job is None and kind == "Job" and spec.resources.nodes > 1 and "." in name:
        # The Job controller names each pod's host <job>-<index>, a DNS label: the API server would refuse every pod.
        return refused(stored, Failure("InvalidName", f"resources.nodes is {spec.resources.nodes}: each training pod "
                                       f"is named <job>-<index> in DNS, which the '.' in the name {name} does not "
                                       "allow; recreate the RetrainJob under a name without '.'", final=True),
                       now, generation)
    if job is None:
        planned = plan(spec, name, namespace, uid, kind=kind)
        child = planned.job["metadata"]["name"]
        message = f"Creating the training {kind}."
        res = spec.resources
        return Effects(
            create=planned.children,
            status={"phase": "Pending", "message": message, "jobKind": kind, "conditions": set_condition(
                conditions, type="Progressing", status="True", reason="Pending", message=message, now=now,
                generation=generation)},
            events=(Event("Normal", "JobCreated", f"Created training {kind} {child}."),),
            log=(f"Created training {kind} job={child} image={spec.image} gpus={res.gpus} nodes={res.nodes}",),
            # The Job's own watch event brings the next look sooner; a TrainJob's pods are not watched.
            next_due=now + (FOLLOW_RUNNING if kind == "TrainJob" else FOLLOW_IDLE),
        )
    observed = observe(spec, job, pods, now, previous=previous_status(stored))
    events: list[Event] = []
    if not stored.get("phase"):
        # The look that created the Job stopped before writing its status, and a look's Events wait for its status
        # (kaizen.controllers.reconcile.LookPatch): this one adopts the Job, and says so.
        events.append(Event("Normal", "JobCreated", f"Created training Job {job['metadata']['name']}."))
    log: list[str] = []
    for failure in observed.new_failures:
        retried = "retrying from the last checkpoint" if failure.retried else "not retried"
        events.append(Event("Warning", failure.reason, f"Pod {failure.pod}: {failure.message} ({retried})"[:1024]))
        log.append(f"Training pod failed pod={failure.pod} reason={failure.reason} retried={failure.retried}")
    finished = observed.phase in FINISHED
    if finished:
        verdict = observed.fields.get("verdict")
        events.append(Event("Normal" if verdict == "Passed" else "Warning",
                            f"Gates{verdict}" if verdict else "TrainingFailed", observed.message[:1024]))
        log.append(f"Finished retrain phase={observed.phase} verdict={verdict}")
    conditions = set_condition(conditions, type="Progressing", status="False" if finished else "True",
                               reason=observed.phase, message=observed.message, now=now, generation=generation)
    # A TrainJob's pods are labelled by its JobSet, not by Kaizen: no watch wakes the RetrainJob for them.
    followed = observed.phase == "Training" or kind == "TrainJob"
    due = None if finished else now + (FOLLOW_RUNNING if followed else FOLLOW_IDLE)
    return Effects(status={"phase": observed.phase, "message": observed.message, **observed.fields,
                           "conditions": conditions},
                   events=tuple(events), log=tuple(log), next_due=due)


def refused(stored: dict[str, Any], failure: Failure, now: datetime, generation: int | None) -> Effects:
    """A trainer ConfigMap or Job the API server refuses. A person can unblock a taken name or a quota: blocked, and
    retried slowly. Otherwise the same spec would be refused again, and a RetrainJob is one run: it has failed, and
    says why."""
    if not failure.final:
        return blocked(stored, failure, now, generation)
    conditions = set_condition(list(stored.get("conditions") or []), type="Progressing", status="False",
                               reason=failure.reason, message=failure.message, now=now, generation=generation)
    return Effects(status={"phase": "Failed", "message": failure.message, "conditions": conditions},
                   events=(Event("Warning", failure.reason, failure.message[:1024]),),
                   log=(f"Failed retrain reason={failure.reason}: {failure.message}",))
