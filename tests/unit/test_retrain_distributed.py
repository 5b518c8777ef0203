"""RetrainJobs of more than one process, without a cluster: torchrun in one pod, an Indexed Job and its headless
Service, a Kubeflow TrainJob, where the result is read from, and GPU-seconds over every GPU of every pod."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from kaizen.api.improvementloop import ImprovementLoopSpec
from kaizen.api.retrainjob import RetrainJobSpec
from kaizen.api.trainer import TrainerResult
from kaizen.logic.retrain import (
    COMPLETION_INDEX, JOBSET_LABEL, TORCHRUN, decide, job_kind, observe, plan, pod_selector, service_name,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
CONFIG = ["--config", "/etc/kaizen/trainer/config.json"]


def spec(resources=None, **extra):
    return RetrainJobSpec.model_validate({
        "reason": {"decisionId": "d1", "summary": "refunds regressed"},
        "baseline": {"version": "v3", "uri": "s3://models/v3"}, "image": "trainer:1",
        "data": {"replay": [{"uri": "pvc://training-data/replay.jsonl"}]}, "outputURI": "pvc://models/bot",
        "resources": {"gpuResourceName": "nvidia.com/gpu", **(resources or {})}, **extra})


def container(planned):
    (only,) = planned.job["spec"]["template"]["spec"]["containers"]
    return only


def test_one_gpu_runs_the_image_entry_point_as_today():
    planned = plan(spec({"gpus": 1}), "rj", "team", "uid-1")
    assert "command" not in container(planned) and container(planned)["args"] == CONFIG
    assert planned.service is None and planned.children == (planned.config_map, planned.job)
    assert "completionMode" not in planned.job["spec"] and planned.job["spec"]["backoffLimit"] == 2


def test_several_gpus_run_torchrun_standalone_with_a_process_per_gpu_in_one_pod():
    planned = plan(spec({"gpus": 4}, strategy="fsdp"), "rj", "team", "uid-1")
    assert container(planned)["command"] == [*TORCHRUN, "--standalone", "--nproc-per-node=4", "-m", "kaizen_trainer"]
    assert TORCHRUN == ["python", "-m", "kaizen_trainer.launch"]  # torchrun with the trainer's exit codes
    assert container(planned)["args"] == CONFIG
    assert container(planned)["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert planned.service is None and "completionMode" not in planned.job["spec"]
    assert planned.config.strategy == "fsdp"
    pod_spec = planned.job["spec"]["template"]["spec"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod_spec["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container(planned)["volumeMounts"]
    assert "dshm" not in {v["name"] for v in plan(spec({"gpus": 1}), "rj", "team", "u").job["spec"]["template"][
        "spec"]["volumes"]}
    assert '"strategy": "fsdp"' in planned.config_map["data"]["config.json"]


def test_several_nodes_make_an_indexed_job_and_a_headless_service_rank_0_hosting_the_rendezvous():
    planned = plan(spec({"gpus": 2, "nodes": 3}, backoffLimit=2), "rj", "team", "uid-1")
    job = planned.job["spec"]
    assert (job["completionMode"], job["completions"], job["parallelism"]) == ("Indexed", 3, 3)
    assert job["backoffLimit"] == 6  # an attempt fails every node's pod
    pod_spec = job["template"]["spec"]
    assert pod_spec["subdomain"] == "rj-trainer" == planned.service["metadata"]["name"]
    assert container(planned)["command"] == [
        *TORCHRUN, "--nnodes=3", "--master-addr=rj-trainer-0.rj-trainer", "--master-port=29500",
        "--nproc-per-node=2", "-m", "kaizen_trainer"]
    assert container(planned)["env"] == [{"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}]
    service = planned.service
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": "rj-trainer"}
    assert service["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert planned.children == (planned.config_map, planned.service, planned.job)


def test_the_service_name_is_a_dns_label_whatever_the_retrainjob_name():
    assert service_name("v1.2-trainer") == "v1-2-trainer"
    assert service_name("2024-fix-trainer") == "t-2024-fix-trainer"
    assert len(service_name("a" * 63)) <= 63


def test_a_trainjob_on_the_torch_distributed_runtime_carries_nodes_processes_resources_and_volumes():
    planned = plan(spec({"gpus": 2, "nodes": 2, "cpu": "8", "memory": "32Gi"}, queueName="gpu",
                        nodeSelector={"pool": "a100"},
                        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}]),
                   "rj", "team", "uid-1", kind="TrainJob")
    trainjob = planned.job
    assert (trainjob["apiVersion"], trainjob["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert planned.service is None
    assert trainjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu" and trainjob["spec"]["suspend"]
    assert trainjob["spec"]["runtimeRef"]["name"] == "torch-distributed"
    trainer = trainjob["spec"]["trainer"]
    assert trainer["command"] == [*TORCHRUN, "-m", "kaizen_trainer"] and trainer["args"] == CONFIG
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 2)
    assert trainer["resourcesPerNode"] == {"requests": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"},
                                           "limits": {"memory": "32Gi", "nvidia.com/gpu": "2"}}
    (override,) = trainjob["spec"]["podSpecOverrides"]
    assert override["targetJobs"] == [{"name": "node"}] and override["nodeSelector"] == {"pool": "a100"}
    assert override["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in override["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"training-data", "models"}
    (mounts,) = override["containers"]
    assert mounts["name"] == "node" and {"name": "config", "mountPath": "/etc/kaizen/trainer",
                                          "readOnly": True} in mounts["volumeMounts"]


def test_the_kind_is_a_trainjob_only_for_several_nodes_where_it_is_served_and_stays_once_chosen():
    assert job_kind(spec({"nodes": 2}), None, trainjobs_served=True) == "TrainJob"
    assert job_kind(spec({"nodes": 2}), None, trainjobs_served=False) == "Job"
    assert job_kind(spec({"nodes": 1, "gpus": 8}), None, trainjobs_served=True) == "Job"
    assert job_kind(spec({"nodes": 2}), "Job", trainjobs_served=True) == "Job"
    assert pod_selector("Job", "rj-trainer") == "batch.kubernetes.io/job-name=rj-trainer"
    assert pod_selector("TrainJob", "rj-trainer") == (
        "jobset.sigs.k8s.io/jobset-name=rj-trainer,jobset.sigs.k8s.io/replicatedjob-name=node")


def test_first_look_creates_service_before_job_and_records_the_kind():
    effects = decide(spec({"nodes": 2}), {}, None, [], NOW, name="rj", namespace="team", uid="u", generation=1,
                     kind="Job")
    assert [c["kind"] for c in effects.create] == ["ConfigMap", "Service", "Job"]
    assert effects.status["jobKind"] == "Job"
    effects = decide(spec({"nodes": 2}), {}, None, [], NOW, name="rj", namespace="team", uid="u", generation=1,
                     kind="TrainJob")
    assert [c["kind"] for c in effects.create] == ["ConfigMap", "TrainJob"]
    assert effects.status["message"] == "Creating the training TrainJob."


@pytest.mark.parametrize("nodes", [0, 65])
def test_nodes_are_bounded(nodes):
    with pytest.raises(ValidationError, match="nodes"):
        spec({"nodes": nodes})


def test_the_loop_template_takes_nodes_and_strategy_from_the_same_model():
    fields = ImprovementLoopSpec.model_fields["retrain"].annotation.model_fields
    assert fields["strategy"].default == "ddp" and "nodes" in fields["resources"].annotation.model_fields


# --- observing ---------------------------------------------------------------------------------------------------


def result_message(version):
    return TrainerResult(phase="Succeeded", reason="Completed", message="done", steps=3,
                         metrics={"candidate": {"holdout.accuracy": 0.9}, "baseline": {"holdout.accuracy": 0.8}},
                         candidate={"version": version, "uri": f"/models/{version}"}).to_termination_message()


def node_pod(index, *, gpus=2, message=None, phase="Succeeded", container="trainer", trainjob=False,
             started="2026-12-01T11:00:00Z", finished="2026-12-01T11:10:00Z"):
    labels = {COMPLETION_INDEX: str(index), **({JOBSET_LABEL: "rj-trainer"} if trainjob else {})}
    terminated = {"exitCode": 0, "reason": "Completed", "startedAt": started, "finishedAt": finished}
    if message:
        terminated["message"] = message
    state = {"terminated": terminated} if phase != "Running" else {"running": {"startedAt": started}}
    return {
        "metadata": {"name": f"rj-trainer-{index}-x", "uid": f"uid-{index}", "labels": labels,
                     "creationTimestamp": started},
        "spec": {"containers": [{"name": container, "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]},
        "status": {"phase": phase, "containerStatuses": [{"name": container, "state": state}]},
    }


def complete(kind="Job"):
    return {"kind": kind, "metadata": {"name": "rj-trainer"}, "spec": {},
            "status": {"conditions": [{"type": "Complete", "status": "True",
                                       "lastTransitionTime": "2026-12-01T11:10:00Z"}]}}


def test_gpu_seconds_count_every_gpu_of_every_pod():
    # Two pods of two GPUs each, ten minutes: 2 x 2 x 600 GPU-seconds.
    pods = [node_pod(0, message=result_message("v4")), node_pod(1)]
    observed = observe(spec({"gpus": 2, "nodes": 2}), complete(), pods, NOW)
    assert observed.fields["gpuSeconds"] == 2 * 2 * 600
    # While they run, until now.
    running = [node_pod(i, phase="Running", started="2026-12-01T11:59:00Z") for i in (0, 1)]
    observed = observe(spec({"gpus": 2, "nodes": 2}), {**complete(), "status": {}}, running, NOW)
    assert observed.fields["gpuSeconds"] == 2 * 2 * 60 and observed.phase == "Training"
    assert observed.message == "Training in 2 pods (rj-trainer-0-x, rj-trainer-1-x)."


def test_the_result_is_read_from_the_pod_of_completion_index_0():
    pods = [node_pod(0, message=result_message("v4")), node_pod(1, finished="2026-12-01T11:11:00Z")]
    observed = observe(spec({"nodes": 2}), complete(), pods, NOW)
    assert observed.phase == "Succeeded" and observed.fields["candidate"]["version"] == "v4"
    assert observed.fields["jobKind"] == "Job"
    # Index 0 without a result (whatever another pod says) is a run without a result.
    pods = [node_pod(0), node_pod(1, message=result_message("v5"))]
    observed = observe(spec({"nodes": 2}), complete(), pods, NOW)
    assert observed.phase == "Failed" and "without reporting a result" in observed.message


def test_a_trainjob_is_observed_from_its_conditions_and_its_node_containers():
    pods = [node_pod(i, container="node", trainjob=True, message=result_message("v6") if i == 0 else None)
            for i in (0, 1)]
    observed = observe(spec({"gpus": 2, "nodes": 2}), complete("TrainJob"), pods, NOW)
    assert observed.phase == "Succeeded" and observed.fields["candidate"]["version"] == "v6"
    assert observed.fields["jobKind"] == "TrainJob" and observed.fields["gpuSeconds"] == 2400
    failed = {"kind": "TrainJob", "metadata": {"name": "rj-trainer"}, "spec": {}, "status": {"conditions": [
        {"type": "Failed", "status": "True", "reason": "JobSetFailed", "message": "jobset failed",
         "lastTransitionTime": "2026-12-01T11:10:00Z"}]}}
    observed = observe(spec({"nodes": 2}), failed, [], NOW)
    assert observed.phase == "Failed" and observed.message == "Training failed: jobset failed"


def test_a_trainjob_is_looked_at_again_soon_its_pods_being_unwatched():
    stored = {"phase": "Pending", "jobKind": "TrainJob", "observedGeneration": 1}
    pending = {"kind": "TrainJob", "metadata": {"name": "rj-trainer"}, "spec": {}, "status": {}}
    effects = decide(spec({"nodes": 2}), stored, pending, [], NOW, name="rj", namespace="team", uid="u",
                     generation=1, kind="TrainJob")
    assert effects.status["phase"] == "Pending" and (effects.next_due - NOW).total_seconds() == 10
    effects = decide(spec({"nodes": 2}), {"phase": "Pending"}, {**pending, "kind": "Job"}, [], NOW, name="rj",
                     namespace="team", uid="u", generation=1, kind="Job")
    assert (effects.next_due - NOW).total_seconds() == 60


def test_a_name_with_a_dot_cannot_name_the_pods_of_several_nodes_and_fails_saying_so():
    effects = decide(spec({"nodes": 2}), {}, None, [], NOW, name="fix.v2", namespace="team", uid="u", generation=1,
                     kind="Job")
    assert effects.create == () and effects.status["phase"] == "Failed"
    assert "recreate the RetrainJob under a name without '.'" in effects.status["message"]
    assert decide(spec({"nodes": 1}), {}, None, [], NOW, name="fix.v2", namespace="team", uid="u", generation=1,
                  kind="Job").create
