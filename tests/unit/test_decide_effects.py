"""The pure decide functions of the RetrainJob and the Rollout, and the shared effects of a refused child or a
judged spec, without a cluster: what one look creates, applies, deletes, posts, writes and when it looks again."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from kaizen.api import IMPROVEMENT_LOOP, RETRAIN_JOB, ROLLOUT
from kaizen.api.rollout import TrafficRouting
from kaizen.api.trainer import TrainerResult
from kaizen.logic import retrain
from kaizen.logic import rollout as machine
from kaizen.logic.conditions import Event, find_condition
from kaizen.logic.effects import SLOW_RETRY, Effects, Failure, blocked, refused, rejected, rejected_for, unblocked
from kaizen.logic.rollout import Contender, Gathered, decide
from kaizen.logic.validation import judge
from tests.unit.test_retrain_logic import job, pod, spec
from tests.unit.test_rollout_deployments import STABLE
from tests.unit.test_rollout_logic import spec as rollout_spec

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
EXAMPLES = Path(__file__).parents[2] / "examples"


def look(stored, job_=None, pods=(), now=NOW):
    return retrain.decide(spec(), stored, job_, list(pods), now, name="rj", namespace="team", uid="uid-1",
                          generation=1)


def running_job():
    running = job()
    running["metadata"]["labels"] = {}
    return running


# --- RetrainJob ------------------------------------------------------------------------------------------------


def test_a_new_retrainjob_creates_its_config_map_then_its_job_and_says_so_once():
    effects = look({"observedGeneration": 1})
    assert [(b["kind"], b["metadata"]["name"]) for b in effects.create] == [
        ("ConfigMap", "rj-trainer"), ("Job", "rj-trainer")]
    assert effects.create[1]["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert (effects.apply, effects.delete) == ((), ())
    assert effects.status["phase"] == "Pending" and effects.status["message"] == "Creating the training Job."
    assert find_condition(effects.status["conditions"], "Progressing")["status"] == "True"
    assert effects.events == (Event("Normal", "JobCreated", "Created training Job rj-trainer."),)
    assert effects.next_due == NOW + retrain.FOLLOW_IDLE  # a safety net: the Job's watch event comes first
    # The operator stopped after creating them, before writing the status and posting the Event: the next look
    # finds the Job, adopts it, and says so then; once the status has a phase, it is not said again.
    adopted = look({"observedGeneration": 1}, running_job(), [pod("p1", uid="u1")])
    assert adopted.create == () and adopted.status["phase"] == "Training"
    assert adopted.events == (Event("Normal", "JobCreated", "Created training Job rj-trainer."),)
    assert look({"phase": "Pending"}, running_job(), [pod("p1", uid="u1")]).events == ()


def test_a_training_pod_is_followed_for_its_gpu_time_and_a_waiting_one_only_by_watch():
    training = look({"phase": "Pending"}, running_job(), [pod("p1", uid="u1")])
    assert training.status["phase"] == "Training" and training.create == ()
    assert training.next_due == NOW + retrain.FOLLOW_RUNNING
    assert training.status["gpuSeconds"] == 3600.0  # one GPU since 11:00
    assert training.events == ()
    queued = look({"phase": "Pending"}, job(suspend=True))
    assert queued.status["phase"] == "Pending" and queued.next_due == NOW + retrain.FOLLOW_IDLE
    scheduled = look({"phase": "Pending"}, running_job(), [pod("p1", "Pending")])
    assert scheduled.status["message"].startswith("Waiting for a training pod") and scheduled.events == ()


def test_a_failed_pod_is_reported_once_however_often_it_is_looked_at():
    oom = pod("p1", "Failed", {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-11-28T11:10:00Z"},
              uid="u1")
    first = look({"phase": "Training"}, running_job(), [oom, pod("p2", uid="u2")])
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "OOMKilled")]
    assert first.events[0].message.startswith("Pod p1: the trainer ran out of memory")
    assert first.events[0].message.endswith("(retrying from the last checkpoint)")
    again = look(first.status, running_job(), [oom, pod("p2", uid="u2")], now=NOW + timedelta(seconds=10))
    assert again.events == () and again.status["failedAttempts"] == 1 and again.status["attempts"] == 2


def succeeded_pod(refund):
    result = TrainerResult(
        phase="Succeeded", reason="Completed", message="done",
        metrics={"candidate": {"holdout.accuracy": refund}, "baseline": {"holdout.accuracy": 0.5}})
    return pod("p1", "Succeeded", {"exitCode": 0, "finishedAt": "2026-11-28T11:30:00Z",
                                    "message": result.to_termination_message()}, uid="u1")


@pytest.mark.parametrize("refund, verdict, event", [(0.9, "Passed", ("Normal", "GatesPassed")),
                                                    (0.1, "Failed", ("Warning", "GatesFailed"))])
def test_a_finished_job_ends_the_retrainjob_with_one_event_and_no_next_look(refund, verdict, event):
    effects = look({"phase": "Training"}, job(("Complete", "CompletionsReached")), [succeeded_pod(refund)])
    assert effects.status["phase"] == "Succeeded" and effects.status["verdict"] == verdict
    assert [(e.type, e.reason) for e in effects.events] == [event]
    assert effects.next_due is None
    assert find_condition(effects.status["conditions"], "Progressing")["status"] == "False"


def test_a_job_that_fails_ends_the_retrainjob_with_the_reason():
    effects = look({"phase": "Training"}, job(("Failed", "DeadlineExceeded")))
    assert effects.status["phase"] == "Failed" and "activeDeadline 6h exceeded" in effects.status["message"]
    assert [(e.type, e.reason) for e in effects.events] == [("Warning", "TrainingFailed")]
    assert effects.next_due is None


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_a_finished_retrainjob_has_no_effect_whatever_is_observed(phase):
    assert look({"phase": phase}) == Effects()
    assert look({"phase": phase}, job(("Complete", "CompletionsReached")), [succeeded_pod(0.1)]) == Effects()


def test_a_refused_child_blocks_a_retrainjob_a_person_can_unblock_and_fails_one_nobody_can():
    taken = Failure("NameConflict", "ConfigMap team/rj-trainer exists and is not owned by RetrainJob rj", final=False)
    waiting = retrain.refused({}, taken, NOW, 1)
    assert "phase" not in waiting.status and waiting.next_due == NOW + SLOW_RETRY
    assert waiting.events == (Event("Warning", "NameConflict", taken.message),)
    assert retrain.refused(waiting.status, taken, NOW + SLOW_RETRY, 1).events == ()  # said once
    invalid = Failure("ChildRejected", "The API server refused Job team/rj-trainer: no", final=True)
    failed = retrain.refused({}, invalid, NOW, 1)
    assert (failed.status["phase"], failed.status["message"], failed.next_due) == ("Failed", invalid.message, None)
    progressing = find_condition(failed.status["conditions"], "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "ChildRejected")
    assert failed.events == (Event("Warning", "ChildRejected", invalid.message),)


# --- shared refusals and the spec handler ----------------------------------------------------------------------


def test_a_blocked_object_retries_slowly_and_is_unblocked_by_a_look_that_gets_through():
    failure = Failure("ChildForbidden", "The API server forbade Job ns/x: quota", final=False)
    effects = refused({}, failure, NOW, 3)
    assert effects == blocked({}, failure, NOW, 3) and effects.next_due == NOW + SLOW_RETRY
    assert find_condition(effects.status["conditions"], "Progressing")["reason"] == "ChildForbidden"
    assert unblocked(effects.status) == {"conditions": []}
    assert unblocked({"conditions": [{"type": "Progressing", "reason": "Training"}]}) == {}


def test_a_child_refused_as_invalid_rejects_this_generation_of_the_spec_only():
    failure = Failure("ChildRejected", "The API server refused Rollout ns/x: bad", final=True)
    effects = refused({}, failure, NOW, 4)
    assert effects == rejected({}, failure, NOW, 4) and effects.next_due is None
    assert rejected_for(effects.status, 4) and not rejected_for(effects.status, 5)
    assert find_condition(effects.status["conditions"], "Ready")["status"] == "False"


@pytest.mark.parametrize("resource, file", [(IMPROVEMENT_LOOP, "improvementloop.yaml"),
                                            (RETRAIN_JOB, "retrainjob.yaml"), (ROLLOUT, "rollout.yaml")])
def test_the_spec_handler_judges_the_name_too(resource, file):
    spec_ = yaml.safe_load((EXAMPLES / file).read_text())["spec"]
    parsed, accepted = judge(resource, spec_, name="ok", status={}, generation=2, now=NOW)
    assert parsed is not None and accepted.events == () and accepted.status["observedGeneration"] == 2
    assert find_condition(accepted.status["conditions"], "Ready")["reason"] == "SpecAccepted"
    long = "n" * (resource.max_name_length + 1)
    parsed, refused_ = judge(resource, spec_, name=long, status=accepted.status, generation=2, now=NOW)
    assert parsed is None
    invalid = find_condition(refused_.status["conditions"], "InvalidSpec")
    assert invalid["message"].startswith(f"metadata.name: {len(long)} characters, but the name of a {resource.kind}")
    assert refused_.events == (Event("Warning", "InvalidSpec", invalid["message"]),)


# --- Rollout ---------------------------------------------------------------------------------------------------

ROLLOUT_OBJ = {"apiVersion": "kaizen.dev/v1alpha1", "kind": "Rollout",
               "metadata": {"name": "bot-v2", "namespace": "prod", "uid": "u-1", "generation": 1}}
STEPS = [{"setWeight": 25}, {"pause": {}}, {"setWeight": 100}]


def rspec(steps=STEPS, container="server"):
    s = rollout_spec(steps, metrics=())
    return s.model_copy(update={"target": s.target.model_copy(update={"container": container})})


def owned_canary(replicas):
    return {"metadata": {"name": "bot-canary", "generation": 1, "ownerReferences": [
        {"kind": "Rollout", "apiVersion": "kaizen.dev/v1alpha1"}]}, "spec": {"replicas": replicas},
        "status": {"observedGeneration": 1, "availableReplicas": replicas, "updatedReplicas": replicas}}


def rollout_look(stored, *, steps=STEPS, now=NOW, **gathered):
    return decide(rspec(steps), stored, Gathered(**{"stable": STABLE, **gathered}), now, rollout=ROLLOUT_OBJ)


def test_a_rollout_asks_who_holds_its_target_before_it_starts_and_before_it_touches_a_deployment():
    assert rollout_look({}) is None  # not started: who holds the target comes first
    started = rollout_look({}, holder_known=True)
    (canary,) = started.apply
    assert (canary["metadata"]["name"], canary["spec"]["replicas"]) == ("bot-canary", 2)
    assert canary["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert started.status["phase"] == "Progressing" and started.status["canaryWeight"] == 25
    assert [e.reason for e in started.events] == ["Started", "WeightSet"]
    assert started.log == ("Scaled canary deployment=bot-canary replicas=2",
                           "Rollout phase=Progressing step=0 message='Step 0 of 3 at canary weight 25%.'")
    assert started.next_due == NOW + machine.DEPLOYMENT_POLL
    # Under way, with nothing to touch, it lists no Rollouts: the canary is at its size.
    applied = {**canary, "status": {"observedGeneration": 0, "availableReplicas": 1, "updatedReplicas": 1}}
    waiting = rollout_look(started.status, canary=applied, now=NOW + timedelta(seconds=1))
    assert waiting is not None and waiting.apply == () and waiting.delete == ()


def test_a_paused_rollout_costs_nothing_until_its_user_acts():
    canary = owned_canary(2)
    started = rollout_look({}, holder_known=True)
    paused = rollout_look(started.status, canary=canary, now=NOW + timedelta(seconds=1))
    assert paused.status["phase"] == "Paused" and paused.status["awaitingApproval"] is True
    assert [e.reason for e in paused.events] == ["AwaitingApproval"] and paused.next_due is None
    again = rollout_look(paused.status, canary=canary, now=NOW + timedelta(hours=1))
    assert again.events == () and again.next_due is None and again.apply == ()
    aborted = rollout_look(paused.status, canary=canary, holder_known=True, now=NOW + timedelta(hours=1),
                           action=machine.Action("abort", "alice", NOW))
    assert aborted.delete == (("Deployment", "bot-canary"),) and aborted.status["phase"] == "Aborted"
    assert aborted.status["lastAction"]["outcome"] == "aborted: canary removed, stable untouched"
    assert aborted.log[0] == "Removed canary deployment=bot-canary" and aborted.next_due is None


def test_a_rollout_promotes_by_applying_the_model_variable_alone():
    promoting = {"phase": "Progressing", "currentStep": 3, "canaryWeight": 100, "canaryReplicas": 4,
                 "stepStartedAt": "2026-11-28T11:59:00Z"}
    canary = owned_canary(4)
    assert rollout_look(promoting, canary=canary) is None  # about to touch the stable Deployment: who holds it?
    effects = rollout_look(promoting, canary=canary, holder_known=True)
    (patch,) = effects.apply
    assert patch["metadata"]["name"] == "bot" and "replicas" not in patch["spec"]
    assert patch["spec"]["template"]["spec"]["containers"] == [
        {"name": "server", "env": [{"name": "MODEL_URI", "value": "s3://m/v2"}]}]
    assert effects.log[-1] == "Promoted deployment=bot model=v2" and effects.next_due == NOW + machine.DEPLOYMENT_POLL


def test_a_rollout_refused_its_target_touches_nothing_and_says_so_once():
    holder = Contender("bot-v1", NOW - timedelta(hours=1), "Paused")
    effects = rollout_look({}, holder=holder, holder_known=True)
    assert (effects.apply, effects.delete) == ((), ()) and effects.status["phase"] is None
    assert effects.status["message"].startswith("Deployment prod/bot is held by Rollout bot-v1")
    assert find_condition(effects.status["conditions"], "Progressing")["reason"] == "TargetInUse"
    assert [e.reason for e in effects.events] == ["TargetInUse"] and effects.next_due == NOW + machine.TARGET_RECHECK
    again = rollout_look(effects.status, holder=holder, holder_known=True)
    assert again.events == ()


def test_a_missing_target_a_wrong_container_and_a_foreign_canary_hold_the_rollout():
    missing = rollout_look({}, stable=None, holder_known=True)
    assert missing.status == {"message": "The target Deployment prod/bot does not exist; waiting for it."}
    assert [e.reason for e in missing.events] == ["TargetUnavailable"] and missing.next_due == NOW + machine.RECHECK
    assert rollout_look(missing.status, stable=None, holder_known=True).events == ()  # said once
    wrong = decide(rspec(container="nope"), {}, Gathered(STABLE, holder_known=True), NOW, rollout=ROLLOUT_OBJ)
    assert "has no container 'nope'" in wrong.status["message"]
    foreign = {"metadata": {"name": "bot-canary"}, "spec": {"replicas": 2}}
    conflict = rollout_look({}, canary=foreign, holder_known=True)
    assert conflict.apply == () and conflict.next_due == NOW + SLOW_RETRY
    assert find_condition(conflict.status["conditions"], "Progressing")["reason"] == "NameConflict"


# --- Rollout with Gateway API routing ---------------------------------------------------------------------------

GATEWAY = {"gatewayAPI": {"httpRoute": "bot", "stableBackend": {"name": "bot", "port": 80},
                          "canaryBackend": {"name": "bot-canary", "port": 80}}}
ROUTE = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
         "metadata": {"name": "bot", "namespace": "prod", "resourceVersion": "7"},
         "spec": {"rules": [{"backendRefs": [{"group": "", "kind": "Service", "name": "bot", "port": 80,
                                              "weight": 1}]}]}}


def routed_look(stored, *, steps=STEPS, now=NOW, **gathered):
    s = rspec(steps)
    s = s.model_copy(update={"traffic_routing": TrafficRouting.model_validate(GATEWAY)})
    return decide(s, stored, Gathered(**{"stable": STABLE, "holder_known": True, **gathered}), now,
                  rollout=ROLLOUT_OBJ)


def weights(manifest):
    return [(b["name"], b["weight"]) for b in manifest["spec"]["rules"][0]["backendRefs"]]


def test_gateway_routing_sets_the_weight_once_the_canary_is_ready_and_restores_100_0_before_removing_it():
    """The canary goes the route's scaleDownDelay (30 s) after the route went back to 100/0, as a gateway loads the
    route some time after it is written; until then the ended Rollout holds its target and says when it will look."""
    started = routed_look({}, route=ROUTE)
    (canary,) = started.apply  # the route waits for the canary to be ready at its size
    assert canary["kind"] == "Deployment" and canary["spec"]["replicas"] == 1  # 25% of the stable's 4 replicas
    assert started.status["achievedWeight"] == 0.0  # the route has no canary backendRef yet: it sends it nothing
    routed = routed_look(started.status, route=ROUTE, canary=owned_canary(1), now=NOW + timedelta(seconds=1))
    (route,) = routed.apply
    assert route["kind"] == "HTTPRoute" and route["metadata"]["resourceVersion"] == "7"
    assert weights(route) == [("bot", 75), ("bot-canary", 25)]
    assert routed.status["achievedWeight"] == 25.0
    assert "Routed httproute=bot canaryWeight=25" in routed.log
    on_route = {**ROUTE, "spec": {"rules": route["spec"]["rules"]}}
    aborted = routed_look(routed.status, route=on_route, canary=owned_canary(1), now=NOW + timedelta(seconds=2),
                          action=machine.Action("abort", "alice", NOW))
    (restored,) = aborted.apply
    assert weights(restored) == [("bot", 100), ("bot-canary", 0)]
    assert aborted.delete == () and aborted.status["achievedWeight"] == 0.0
    removal = NOW + timedelta(seconds=32)
    assert aborted.status["phase"] == "Aborted" and aborted.status["canaryRemovalAt"] == "2026-11-28T12:00:32Z"
    assert aborted.next_due == removal and machine.holds_target(aborted.status)
    restored_route = {**ROUTE, "spec": {"rules": restored["spec"]["rules"]}}
    early = routed_look(aborted.status, route=restored_route, canary=owned_canary(1),
                        now=removal - timedelta(seconds=1))
    assert (early.apply, early.delete, early.events, early.next_due) == ((), (), (), removal)
    removed = routed_look(early.status, route=restored_route, canary=owned_canary(1), now=removal)
    assert (removed.apply, removed.delete) == ((), (("Deployment", "bot-canary"),))
    assert removed.status["canaryRemovalAt"] is None and removed.next_due is None
    assert not machine.holds_target(removed.status)
    # Without a canary to remove (it never became ready, or it is gone already), nothing is held.
    never = routed_look(routed.status, route=on_route, now=NOW + timedelta(seconds=2),
                        action=machine.Action("abort", "alice", NOW))
    assert never.status["canaryRemovalAt"] is None and not machine.holds_target(never.status)


def test_a_missing_or_foreign_route_is_an_invalid_spec_that_touches_nothing_and_clears_when_fixed():
    missing = routed_look({})
    assert (missing.apply, missing.delete) == ((), ())
    invalid = find_condition(missing.status["conditions"], "InvalidSpec")
    assert (invalid["status"], invalid["reason"]) == ("True", "InvalidRoute")
    assert invalid["message"].startswith("HTTPRoute prod/bot (spec.trafficRouting.gatewayAPI.httpRoute) does not "
                                         "exist: create it")
    assert find_condition(missing.status["conditions"], "Ready")["status"] == "False"
    assert [e.reason for e in missing.events] == ["InvalidRoute"] and missing.next_due == NOW + machine.RECHECK
    assert routed_look(missing.status).events == ()  # said once
    foreign = {**ROUTE, "spec": {"rules": [{"backendRefs": [{"name": "other", "port": 80}]}]}}
    refused_ = routed_look(missing.status, route=foreign)
    assert "has no rule with backendRef Service bot port 80" in find_condition(
        refused_.status["conditions"], "InvalidSpec")["message"]
    fixed = routed_look(refused_.status, route=ROUTE)
    assert find_condition(fixed.status["conditions"], "InvalidSpec") is None
    assert find_condition(fixed.status["conditions"], "Ready")["status"] == "True"
    assert fixed.apply[0]["kind"] == "Deployment"
