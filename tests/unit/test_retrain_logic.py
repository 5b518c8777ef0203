"""RetrainJob logic without a cluster: what is created for a spec, and how pods and Jobs become status."""

from __future__ import annotations

from datetime import datetime, timezone

from kaizen.api.retrainjob import RetrainJobSpec
from kaizen.api.trainer import TrainerResult
from kaizen.logic.retrain import child_name, classify, observe, plan

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)


def spec(**extra):
    return RetrainJobSpec.model_validate({
        "reason": {"decisionId": "d1", "summary": "refunds regressed"},
        "baseline": {"version": "v3", "uri": "s3://models/v3"}, "image": "trainer:1",
        "data": {"replay": [{"uri": "pvc://training-data/support/replay.jsonl"}]},
        "targets": {"categories": ["incorrect"], "scenarios": ["refund", "returns"]},
        "outputURI": "pvc://models/bot", "gates": [{"metric": "accuracy", "minDelta": 0}], **extra})


def pod(name, phase="Running", terminated=None, conditions=(), started="2026-11-28T11:00:00Z", reason=None):
    state = {"terminated": {"startedAt": started, **terminated}} if terminated else {"running": {"startedAt": started}}
    status = {"phase": phase, "conditions": list(conditions),
              "containerStatuses": [{"name": "trainer", "state": state}]}
    if reason:
        status["reason"] = reason
    return {"metadata": {"name": name, "creationTimestamp": started}, "status": status}


def job(*conditions, suspend=False):
    return {"metadata": {"name": "rj-trainer", "labels": {"kueue.x-k8s.io/queue-name": "q"}},
            "spec": {"suspend": suspend},
            "status": {"conditions": [{"type": t, "status": "True", "reason": r, "lastTransitionTime":
                                       "2026-11-28T11:30:00Z"} for t, r in conditions],
                       "completionTime": "2026-11-28T11:30:00Z"}}


def test_pvc_uris_are_mounted_and_rewritten_and_checkpoints_sit_on_the_volume():
    planned = plan(spec(), "rj", "team", "uid-1")
    assert planned.config.data.replay[0].uri == "/mnt/kaizen/pvc/training-data/support/replay.jsonl"
    assert planned.config.output_dir == "/mnt/kaizen/pvc/models/bot/team/rj"
    assert planned.config.checkpoint_dir == "/mnt/kaizen/pvc/models/bot/team/rj/checkpoints"
    assert planned.config.checkpoint_mirror is None
    pod_spec = planned.job["spec"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod_spec["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"training-data", "models"}


def test_s3_output_keeps_checkpoints_on_the_pods_disk_mirrored_next_to_the_output():
    planned = plan(spec(outputURI="s3://models/bot/"), "rj", "team", "uid-1")
    assert planned.config.output_dir == "s3://models/bot/team/rj"
    assert planned.config.checkpoint_dir == "/workspace/checkpoints"
    assert planned.config.checkpoint_mirror == "s3://models/bot/team/rj/checkpoints"


def test_feedback_export_url_carries_model_targets_and_token_file():
    planned = plan(spec(feedback={"collectorURL": "http://collector.kaizen:8080/", "model": "support-bot",
                                  "tokenSecretRef": {"name": "collector", "key": "read"}}), "rj", "team", "u")
    assert planned.config.feedback.url == ("http://collector.kaizen:8080/v1/export?model=support-bot&"
                                           "categories=incorrect&scenarios=refund%2Creturns")
    assert planned.config.feedback.token_file == "/var/run/kaizen/collector/token"
    volumes = planned.job["spec"]["template"]["spec"]["volumes"]
    assert {"name": "collector-token", "secret": {"secretName": "collector",
                                                 "items": [{"key": "read", "path": "token"}]}} in volumes


def test_child_names_are_deterministic_labels():
    assert child_name("rj") == "rj-trainer"
    long = "a" * 120
    assert child_name(long) == child_name(long) and len(child_name(long)) <= 63
    assert child_name(long) != child_name("a" * 119 + "b")


def test_failures_are_classified():
    oom = classify(pod("p1", "Failed", {"exitCode": 137, "reason": "OOMKilled"}))
    assert (oom.reason, oom.retried) == ("OOMKilled", True)
    preempted = classify(pod("p2", "Failed", {"exitCode": 143, "reason": "Error"}, conditions=[
        {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler", "message": "preempted"}]))
    assert (preempted.reason, preempted.retried) == ("Preempted", True)
    evicted = classify(pod("p3", "Failed", reason="Evicted"))
    assert (evicted.reason, evicted.retried) == ("Evicted", True)
    message = TrainerResult(phase="Failed", reason="InvalidConfig", message="baseline is not a model")
    permanent = classify(pod("p4", "Failed", {"exitCode": 2, "message": message.to_termination_message()}))
    assert (permanent.reason, permanent.retried, permanent.message) == ("InvalidConfig", False,
                                                                        "baseline is not a model")
    crashed = classify(pod("p5", "Failed", {"exitCode": 1, "message": "Traceback ...\nRuntimeError: CUDA error"}))
    assert (crashed.reason, crashed.retried, crashed.message) == ("Error", True, "exit code 1: RuntimeError: CUDA error")
    assert classify(pod("p6")) is None


def test_observed_phases():
    s = spec()
    assert observe(s, None, [], NOW).phase == "Pending"
    queued = observe(s, job(suspend=True), [], NOW)
    assert (queued.phase, queued.message) == ("Pending", "Queued: waiting for Kueue to admit the Job (queue q).")
    training = observe(s, job(), [pod("p1")], NOW)
    assert training.phase == "Training" and training.fields["gpuSeconds"] == 3600.0
    silent = observe(s, job(("Complete", "CompletionsReached")), [pod("p1", "Succeeded", {"exitCode": 0})], NOW)
    assert silent.phase == "Failed" and "without reporting a result" in silent.message
    exhausted = observe(s, job(("Failed", "BackoffLimitExceeded")), [
        pod("p1", "Failed", {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-11-28T11:10:00Z"}),
        pod("p2", "Failed", {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-11-28T11:20:00Z"},
            started="2026-11-28T11:11:00Z")], NOW)
    assert exhausted.phase == "Failed"
    assert exhausted.message.startswith("Training failed: 2 attempt(s) failed, backoffLimit 2 reached; last: OOMKilled")
    assert exhausted.fields["gpuSeconds"] == 600 + 540 and exhausted.fields["attempts"] == 2
