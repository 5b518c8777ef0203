"""RetrainJob logic without a cluster: what is created for a spec, and how pods and Jobs become status."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from kaizen.api.retrainjob import RetrainJobSpec, RetrainJobStatus
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


def pod(name, phase="Running", terminated=None, conditions=(), started="2026-11-28T11:00:00Z", reason=None, uid=None):
    state = {"terminated": {"startedAt": started, **terminated}} if terminated else {"running": {"startedAt": started}}
    status = {"phase": phase, "conditions": list(conditions),
              "containerStatuses": [{"name": "trainer", "state": state}]}
    if reason:
        status["reason"] = reason
    metadata = {"name": name, "creationTimestamp": started}
    if uid:
        metadata["uid"] = uid
    return {"metadata": metadata, "status": status}


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


def test_every_data_source_on_a_volume_is_mounted_safety_probes_too():
    data = {"replay": [{"uri": "pvc://training-data/support/replay.jsonl"}],
            "holdout": {"uri": "pvc://eval/holdout.jsonl"}, "regression": {"uri": "pvc://eval/golden.jsonl"},
            "safety": {"uri": "pvc://redteam/probes.jsonl"}}
    planned = plan(spec(data=data), "rj", "team", "uid-1")
    assert planned.config.data.holdout.uri == "/mnt/kaizen/pvc/eval/holdout.jsonl"
    assert planned.config.data.regression.uri == "/mnt/kaizen/pvc/eval/golden.jsonl"
    assert planned.config.data.safety.uri == "/mnt/kaizen/pvc/redteam/probes.jsonl"
    pod_spec = planned.job["spec"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod_spec["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"training-data", "eval", "redteam", "models"}


def test_objective_and_judge_reach_the_trainer_and_a_judge_on_a_volume_is_mounted():
    planned = plan(spec(objective="kto", judge={"uri": "pvc://judges/pairwise"},
                        hyperparameters={"beta": 0.3}), "rj", "team", "uid-1")
    assert planned.config.objective == "kto" and planned.config.hyperparameters.beta == 0.3
    assert planned.config.judge.uri == "/mnt/kaizen/pvc/judges/pairwise"
    written = json.loads(planned.config_map["data"]["config.json"])
    assert written["objective"] == "kto" and written["judge"] == {"uri": "/mnt/kaizen/pvc/judges/pairwise"}
    pod_spec = planned.job["spec"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod_spec["volumes"] if "persistentVolumeClaim" in v}
    assert "judges" in claims
    assert plan(spec(), "rj", "team", "uid-1").config.objective == "sft"


@pytest.mark.parametrize("extra, message", [
    ({"objective": "dpo"}, "objective dpo trains a causal-lm"),
    ({"judge": {"uri": "/models/judge"}}, "a judge compares generated answers"),
])
def test_preference_objectives_and_judges_need_a_causal_lm(extra, message):
    with pytest.raises(ValueError, match=message):
        spec(task="sequence-classification", **extra)


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
    assert (crashed.reason, crashed.retried) == ("Error", True)
    assert crashed.message == "exit code 1: RuntimeError: CUDA error"
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


# --- status merged with the stored one: pods that vanish still count, once ---------------------------------------

MINUTE = timedelta(minutes=1)
#: p1 ran 11:00-11:10 and was OOM-killed; p2 has run since 11:11 (2940 s at NOW); p3 was never scheduled.
P1 = pod("rj-trainer-p1", "Failed", {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-11-28T11:10:00Z"},
         uid="u1")
P2 = pod("rj-trainer-p2", started="2026-11-28T11:11:00Z", uid="u2")
P3 = {"metadata": {"name": "rj-trainer-p3", "uid": "u3", "creationTimestamp": "2026-11-28T11:50:00Z"},
      "status": {"phase": "Pending"}}
#: p4 is being preempted: disrupted and terminated while its phase still says Running; then it is Failed.
DISRUPTED = {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler", "message": "preempted"}
P4_TERMINATING = pod("rj-trainer-p4", "Running", {"exitCode": 143, "reason": "Error",
                                                  "finishedAt": "2026-11-28T11:05:00Z"}, [DISRUPTED], uid="u4")
P4_FAILED = pod("rj-trainer-p4", "Failed", {"exitCode": 143, "reason": "Error", "finishedAt": "2026-11-28T11:05:00Z"},
                [DISRUPTED], uid="u4")


def follow(passes, s=None, stored=None, job_=None):
    """Observe each (now, pods) in turn, storing the status between passes as the controller does; return the last
    observation, the stored status and the pods whose failure was reported (an Event each)."""
    stored = dict(stored or {})
    reported = []
    for now, pods in passes:
        observed = observe(s or spec(), job_ or job(), pods, now, previous=RetrainJobStatus.model_validate(stored))
        stored = {**stored, **json.loads(json.dumps(observed.fields))}  # as written and read back from the API
        reported += [f.pod for f in observed.new_failures]
    return observed, stored, reported


@pytest.mark.parametrize("passes, attempts, gpu_seconds, failed, reported", [
    pytest.param([(NOW, [P1, P2]), (NOW + MINUTE, [P2])], 2, 600 + 2940 + 60, ["rj-trainer-p1"], ["rj-trainer-p1"],
                 id="a failed pod deleted: its GPU time and failure are kept"),
    pytest.param([(NOW, [P1, P2]), (NOW + MINUTE, [])], 2, 600 + 2940, ["rj-trainer-p1"], ["rj-trainer-p1"],
                 id="Kueue suspends the Job, deleting every pod: nothing is lost"),
    pytest.param([(NOW, [P2]), (NOW + 10 * MINUTE, [P2])], 1, 2940 + 600, [], [],
                 id="a running pod's seconds grow, counted once"),
    pytest.param([(NOW, [P2]), (NOW + 10 * MINUTE, [])], 1, 2940, [], [],
                 id="a running pod deleted keeps the seconds last seen"),
    pytest.param([(NOW, [P1]), (NOW + MINUTE, [P1]), (NOW + 2 * MINUTE, [P1, P2])], 2, 600 + 2940 + 120,
                 ["rj-trainer-p1"], ["rj-trainer-p1"], id="the same failure seen on every pass is one entry"),
    pytest.param([(NOW, [P4_TERMINATING]), (NOW + MINUTE, [P4_FAILED])], 1, 300, ["rj-trainer-p4"],
                 ["rj-trainer-p4"], id="a preempted pod seen terminating, then Failed, is one failure"),
    pytest.param([(NOW, [P3]), (NOW + MINUTE, [])], 1, 0, [], [], id="a pod deleted before it started is an attempt"),
    pytest.param([(NOW, [P1]), (NOW + MINUTE, []), (NOW + 2 * MINUTE, [P2]), (NOW + 3 * MINUTE, [P2, P3])],
                 3, 600 + 2940 + 180, ["rj-trainer-p1"], ["rj-trainer-p1"], id="pods come and go"),
])
def test_status_counts_every_pod_ever_seen(passes, attempts, gpu_seconds, failed, reported):
    observed, stored, events = follow(passes)
    assert stored["attempts"] == attempts
    assert stored["gpuSeconds"] == gpu_seconds
    assert [f["pod"] for f in stored["failures"]] == failed and stored["failedAttempts"] == len(failed)
    assert events == reported


def test_gpu_seconds_never_decrease_and_attempts_never_go_down():
    passes = [(NOW, [P1, P2]), (NOW + MINUTE, [P2]), (NOW + 2 * MINUTE, [P2, P3]), (NOW + 3 * MINUTE, [P3]),
              (NOW + 4 * MINUTE, [])]
    stored, seen = {}, []
    for step in passes:
        _, stored, _ = follow([step], stored=stored)
        seen.append((stored["gpuSeconds"], stored["attempts"]))
    assert seen == sorted(seen) and seen[-1] == (600 + 2940 + 120, 3)
    assert stored["startTime"] == "2026-11-28T11:00:00Z"  # from p1, gone since


def test_a_failed_job_names_its_last_failure_after_the_pod_is_gone():
    _, stored, _ = follow([(NOW, [P1])])
    observed, _, reported = follow([(NOW + MINUTE, [])], stored=stored, job_=job(("Failed", "BackoffLimitExceeded")))
    assert observed.phase == "Failed" and reported == []
    assert observed.message == ("Training failed: 1 attempt(s) failed, backoffLimit 2 reached; last: OOMKilled: the "
                                "trainer ran out of memory; the next pod resumes from the last checkpoint (raise "
                                "resources.memory or lower batchSize/maxLength if it repeats)")


def failed_pod(i):
    started = datetime(2026, 11, 28, 1, 0, tzinfo=timezone.utc) + i * MINUTE
    return pod(f"rj-trainer-f{i:02}", "Failed", {"exitCode": 1, "message": f"crash {i}",
                                                 "finishedAt": (started + timedelta(seconds=30)).isoformat()},
               started=started.isoformat().replace("+00:00", "Z"), uid=f"uid-{i}")


def test_failures_keep_the_last_32_and_the_count_of_all():
    # 40 pods fail one after the other, each deleted before the next pass (the Job's pod GC, say).
    observed, stored, reported = follow([(NOW + i * MINUTE, [failed_pod(i)]) for i in range(40)])
    assert reported == [f"rj-trainer-f{i:02}" for i in range(40)]
    assert [f["pod"] for f in stored["failures"]] == [f"rj-trainer-f{i:02}" for i in range(8, 40)]
    assert stored["failedAttempts"] == 40 and stored["attempts"] == 40 and stored["gpuSeconds"] == 40 * 30
    assert observed.message == ("Waiting for a training pod to be scheduled after 40 failed attempt(s), last Error: "
                                "resuming from the last checkpoint.")


def test_pods_beyond_those_remembered_stay_counted_and_are_not_counted_again():
    # 70 pods, all still there: the status remembers the newest 64; the 6 older are in the totals only.
    pods = [failed_pod(i) for i in range(70)]
    observed, stored, reported = follow([(NOW, pods[:35]), (NOW + MINUTE, pods)])
    assert len(stored["podAttempts"]) == 64 and stored["podAttempts"][0]["pod"] == "rj-trainer-f06"
    assert (stored["attempts"], stored["gpuSeconds"], stored["failedAttempts"]) == (70, 70 * 30, 70)
    assert len(reported) == 70
    # Seen again, the 6 forgotten pods are recognised as older than every remembered one: nothing changes.
    again, restored, reported = follow([(NOW + 2 * MINUTE, pods), (NOW + 3 * MINUTE, pods[:3])], stored=stored)
    assert reported == [] and restored == stored and again.fields == observed.fields


def test_a_status_written_before_pods_were_remembered_is_a_floor():
    # Written by an operator that rebuilt the status from the pods: p1's failure is already reported.
    legacy = {"jobName": "rj-trainer", "attempts": 2, "gpuSeconds": 3540,
              "failures": [{"pod": "rj-trainer-p1", "reason": "OOMKilled", "retried": True}]}
    _, stored, reported = follow([(NOW + MINUTE, [P1, P2])], stored=legacy)
    assert reported == [] and stored["failedAttempts"] == 1 and len(stored["failures"]) == 1
    assert (stored["attempts"], stored["gpuSeconds"]) == (2, 600 + 2940 + 60)
    _, stored, _ = follow([(NOW + 2 * MINUTE, [P2])], stored=stored)
    assert (stored["attempts"], stored["gpuSeconds"]) == (2, 600 + 2940 + 120)


def test_method_and_lora_settings_reach_the_trainer_config():
    planned = plan(spec(method="lora", lora={"rank": 16, "alpha": 32, "targetModules": ["q_proj", "v_proj"]}),
                   "rj", "team", "uid-1")
    assert planned.config.method == "lora"
    assert planned.config.lora.rank == 16 and planned.config.lora.target_modules == ["q_proj", "v_proj"]
    assert plan(spec(), "rj", "team", "uid-1").config.method == "full"


@pytest.mark.parametrize(("extra", "message"), [
    ({"lora": {"rank": 4}}, "lora settings apply to method lora or qlora"),
    ({"method": "qlora", "resources": {"gpus": 0}}, "method qlora quantises the base with bitsandbytes"),
    ({"method": "lora", "lora": {"rank": 0}}, "greater than or equal to 1"),
])
def test_lora_settings_that_cannot_train_are_refused_with_what_to_change(extra, message):
    with pytest.raises(ValueError, match=message):
        spec(**extra)
