"""Rollouts on a real API server with kube-controller-manager (Deployments become ReplicaSets and kwok pods) and a
real Prometheus scraping emitter processes labelled as the stable and canary pods: the issue's scenarios."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
import yaml

from kaizen.cli import main as kaizen_cli
from kaizen.controllers import rollout as controller
from kaizen.k8s.identity import whoami
from kaizen.logic.effects import SLOW_RETRY
from kaizen.logic.rollout import TARGET_RECHECK
from tests.fixtures.prometheus import emit, prometheus  # noqa: F401
from tests.integration.kube import apply, condition, driven_clock, get, settled, wait_for
from tests.integration.rollouts import (
    SUCCESS_RATE, deployment, env, kubectl_apply, reasons, rollout, running_operator, stable_manifest,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def operator(crds):
    with running_operator(crds):
        yield crds


@pytest.fixture
def served(operator, namespace):
    """The stable Deployment `bot` (4 replicas), rolled out."""
    kubectl_apply(operator, namespace, stable_manifest())
    operator.kubectl("rollout", "status", "deployment/bot", "-n", namespace, "--timeout=60s")
    return deployment(operator, namespace, "bot")


def tracks(emit, prometheus, namespace, *, stable_error=0.01, canary_error=0.01):
    labels = {"app": "bot"}
    stable = emit(namespace=namespace, pod="bot-stable", rate=200, error_rate=stable_error,
                  labels={**labels, "kaizen.dev/track": "stable", "kaizen.dev/model-version": "v1"})
    canary = emit(namespace=namespace, pod="bot-canary", rate=50, error_rate=canary_error,
                  labels={**labels, "kaizen.dev/track": "canary", "kaizen.dev/model-version": "v2"})
    # Prometheus serving both tracks before the rollout starts, as in a cluster that has been scraping for a while.
    prometheus.wait_for_data(
        f'count(count by (track) (increase(http_requests_total{{namespace="{namespace}"}}[5s]) > 0)) == 2')
    return stable, canary


def phase(name):
    return lambda obj: obj.get("status", {}).get("phase") == name


def test_a_healthy_canary_is_promoted_through_10_50_100(operator, namespace, served, prometheus, emit):
    tracks(emit, prometheus, namespace)
    steps = [{"setWeight": 10}, {"analysis": {"duration": "3s"}}, {"setWeight": 50}, {"analysis": {"duration": "3s"}},
             {"setWeight": 100}]
    apply(operator, namespace, rollout("bot-v2", steps, prometheus_url=prometheus.url, metrics=[SUCCESS_RATE]))

    seen_replicas = set()

    def watch(obj):
        canary = deployment(operator, namespace, "bot-canary")
        if canary is not None:
            seen_replicas.add(canary["spec"]["replicas"])
        return phase("Promoted")(obj)

    obj = wait_for(operator, "rollout", "bot-v2", namespace, watch, timeout=90)
    stable = deployment(operator, namespace, "bot")
    assert env(stable) == {"GREETING": "hello", "MODEL_URI": "s3://models/bot/v2"}
    assert stable["spec"]["template"]["metadata"]["labels"]["kaizen.dev/model-version"] == "v2"
    assert stable["spec"]["replicas"] == 4  # never touched by routing
    assert {1, 4} <= seen_replicas  # 10 % is 1 canary beside 4 stable, 50 % is 4 beside 4
    operator.kubectl("wait", "--for=delete", "deployment/bot-canary", "-n", namespace, "--timeout=30s")
    records = obj["status"]["analysis"]
    assert {r["weight"] for r in records} >= {10, 50}
    passed = next(r for r in records if r["verdict"] == "Pass")["metrics"][0]
    assert passed["canary"]["total"] >= 50 and passed["ciLow"] >= -0.05
    assert obj["status"]["message"] == "Promoted v2: the stable Deployment serves s3://models/bot/v2."
    assert reasons(operator, namespace, "bot-v2").count("Promoted") == 1


def test_a_regression_at_50_percent_is_rolled_back_with_its_numbers(operator, namespace, served, prometheus, emit):
    _, canary = tracks(emit, prometheus, namespace)
    steps = [{"setWeight": 10}, {"analysis": {"duration": "2s"}}, {"setWeight": 50},
             {"analysis": {"duration": "60s"}}, {"setWeight": 100}]
    apply(operator, namespace, rollout("bot-v2", steps, prometheus_url=prometheus.url, metrics=[SUCCESS_RATE]))
    wait_for(operator, "rollout", "bot-v2", namespace, lambda o: o.get("status", {}).get("canaryWeight") == 50,
             timeout=60)
    canary.set(error_rate=0.4)

    obj = wait_for(operator, "rollout", "bot-v2", namespace, phase("RolledBack"), timeout=60)
    message = obj["status"]["message"]
    assert message.startswith("Rolled back: metric success-rate failed: canary 0.")
    failed = obj["status"]["analysis"][0]
    stable_rate = failed["metrics"][0]["stable"]["value"]
    # The stable's errors are drawn at 1 %: what a look read of them varies, within a point or so at this size.
    assert f"vs stable {stable_rate:.4f}" in message and abs(stable_rate - 0.99) < 0.015
    assert "always-valid CI" in message
    assert failed["verdict"] == "Fail" and failed["weight"] == 50
    assert failed["metrics"][0]["evidence"] >= 1 / 0.05  # the e-value reached 1/alpha
    assert failed["metrics"][0]["canary"]["value"] < failed["metrics"][0]["stable"]["value"] - 0.05
    stable = deployment(operator, namespace, "bot")
    assert stable["metadata"]["generation"] == served["metadata"]["generation"]  # untouched
    assert "MODEL_URI" not in env(stable)
    operator.kubectl("wait", "--for=delete", "deployment/bot-canary", "-n", namespace, "--timeout=30s")
    assert "AnalysisFail" in reasons(operator, namespace, "bot-v2")


def test_prometheus_down_pauses_and_never_promotes_then_resumes(operator, namespace, served, prometheus, emit):
    tracks(emit, prometheus, namespace)
    steps = [{"setWeight": 10}, {"analysis": {"duration": "3s"}}, {"setWeight": 100}]
    apply(operator, namespace, rollout("bot-v2", steps, prometheus_url=prometheus.url, metrics=[SUCCESS_RATE],
                                       policy={"consecutiveErrorLimit": 100}))
    wait_for(operator, "rollout", "bot-v2", namespace,
             lambda o: o.get("status", {}).get("currentStep") == 1 and o["status"].get("analysis"), timeout=60)
    prometheus.stop()

    held = wait_for(operator, "rollout", "bot-v2", namespace, phase("Paused"), timeout=30)
    assert "Holding: no usable metrics" in held["status"]["message"]
    assert "is unreachable" in held["status"]["analysis"][0]["metrics"][0]["message"]
    # Past the analysis step's 3 s, with no data: still at step 1, the stable Deployment not promoted. (Seen by two
    # looks taken after the step's end, not by a sleep.)
    def looked_past_the_step(obj):
        started = obj["status"]["stepStartedAt"]
        end = (datetime.fromisoformat(started.replace("Z", "+00:00")) + timedelta(seconds=3)).isoformat()
        return len([r for r in obj["status"]["analysis"]
                    if datetime.fromisoformat(r["time"].replace("Z", "+00:00")).isoformat() > end]) >= 2

    obj = wait_for(operator, "rollout", "bot-v2", namespace, looked_past_the_step, timeout=30)
    assert obj["status"]["phase"] == "Paused" and obj["status"]["currentStep"] == 1
    assert "MODEL_URI" not in env(deployment(operator, namespace, "bot"))

    prometheus.start()
    obj = wait_for(operator, "rollout", "bot-v2", namespace, phase("Promoted"), timeout=60)
    assert env(deployment(operator, namespace, "bot"))["MODEL_URI"] == "s3://models/bot/v2"
    assert obj["status"]["consecutiveErrors"] == 0


def test_metrics_gate_promotion_even_without_an_analysis_step(operator, namespace, served, prometheus, emit):
    _, canary = tracks(emit, prometheus, namespace)
    # The canary gets no traffic, so every look is Inconclusive: there is nothing to judge it on.
    canary.set(rate=0)
    prometheus.wait_for_data(
        f'sum(increase(http_requests_total{{namespace="{namespace}",track="canary"}}[3s])) == 0')
    steps = [{"setWeight": 10}, {"pause": {"duration": "2s"}}, {"setWeight": 100}]
    apply(operator, namespace, rollout("bot-v2", steps, prometheus_url=prometheus.url, metrics=[SUCCESS_RATE],
                                       policy={"inconclusiveLimit": 1000}))

    # The timed pause is long over, the canary runs at 100 %: held there, look after look, and not promoted.
    held = wait_for(operator, "rollout", "bot-v2", namespace,
                    lambda o: o.get("status", {}).get("currentStep") == 2
                    and (o["status"].get("consecutiveInconclusive") or 0) >= 3, timeout=60)
    assert held["status"]["phase"] == "Progressing" and held["status"]["canaryWeight"] == 100
    assert held["status"]["message"] == ("Step 2 of 3 at canary weight 100%. Holding for a passing analysis look "
                                         "before promoting (latest: Inconclusive).")
    latest = held["status"]["analysis"][0]
    assert latest["step"] == 2 and latest["verdict"] == "Inconclusive"
    assert "waiting for 50 events per track" in latest["metrics"][0]["message"]
    assert "MODEL_URI" not in env(deployment(operator, namespace, "bot"))

    canary.set(rate=50)
    obj = wait_for(operator, "rollout", "bot-v2", namespace, phase("Promoted"), timeout=60)
    assert env(deployment(operator, namespace, "bot"))["MODEL_URI"] == "s3://models/bot/v2"
    passed = obj["status"]["analysis"][0]
    assert (passed["step"], passed["weight"], passed["verdict"]) == (2, 100, "Pass")
    assert passed["metrics"][0]["canary"]["total"] >= 50


def test_the_inconclusive_limit_with_on_limit_rollback_removes_the_canary(operator, namespace, served, prometheus,
                                                                         emit):
    tracks(emit, prometheus, namespace)
    # More events than the test will ever see: the analysis can never decide, only reach its limit.
    undecided = {**SUCCESS_RATE, "minSamples": 1_000_000_000}
    steps = [{"setWeight": 10}, {"setWeight": 50}, {"analysis": {"duration": "2s"}}, {"setWeight": 100}]
    apply(operator, namespace, rollout("bot-v2", steps, prometheus_url=prometheus.url, metrics=[undecided],
                                       policy={"inconclusiveLimit": 3, "onLimit": "Rollback"}))

    obj = wait_for(operator, "rollout", "bot-v2", namespace, phase("RolledBack"), timeout=60)
    message = obj["status"]["message"]
    assert message.startswith("Rolled back: 3 inconclusive analysis intervals after step 2's 2s (success-rate: "
                              "Inconclusive (waiting for 1000000000 events per track (stable ")
    assert obj["status"]["currentStep"] == 2 and obj["status"]["canaryWeight"] == 0
    assert [r["verdict"] for r in obj["status"]["analysis"][:3]] == ["Inconclusive"] * 3
    assert obj["status"]["analysis"][0]["metrics"][0]["stable"]["total"] > 0  # data arrived: it is not an error
    operator.kubectl("wait", "--for=delete", "deployment/bot-canary", "-n", namespace, "--timeout=30s")
    stable = deployment(operator, namespace, "bot")
    assert stable["metadata"]["generation"] == served["metadata"]["generation"]  # still v1, never touched
    assert "MODEL_URI" not in env(stable)
    assert reasons(operator, namespace, "bot-v2").count("RolledBack") == 1


def test_a_pause_without_duration_waits_for_approve(operator, namespace, served):
    steps = [{"setWeight": 10}, {"pause": {}}, {"setWeight": 100}]
    apply(operator, namespace, rollout("bot-v2", steps))
    waiting = wait_for(operator, "rollout", "bot-v2", namespace,
                       lambda o: o.get("status", {}).get("awaitingApproval") is True, timeout=60)
    assert waiting["status"]["phase"] == "Paused" and waiting["status"]["currentStep"] == 1
    # Nothing but an approval ends this step: no look is scheduled, however far the clock moves.
    with driven_clock() as clock:
        settled(controller.scheduler, namespace, "bot-v2", lambda s: s.due is None)
        clock.advance(timedelta(days=1))
        assert controller.scheduler.slept(namespace, "bot-v2").due is None
    # (A look that an event brings, e.g. the canary's pods turning ready late on a loaded machine, is not the clock's.)
    assert get(operator, "rollout", "bot-v2", namespace)["status"]["currentStep"] == 1
    assert controller.scheduler.slept(namespace, "bot-v2").due is None

    assert kaizen_cli(["approve", "bot-v2", "-n", namespace]) == 0
    obj = wait_for(operator, "rollout", "bot-v2", namespace, phase("Promoted"), timeout=60)
    action = obj["status"]["lastAction"]
    assert action["action"] == "approve" and action["by"] == whoami()
    assert action["outcome"] == "approved: step 1 completed"
    wait_for(operator, "rollout", "bot-v2", namespace,
             lambda o: "kaizen.dev/action" not in o["metadata"].get("annotations", {}), timeout=10)


def test_reapplying_the_manifest_after_promotion_keeps_the_promoted_model(operator, namespace, served):
    steps = [{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}, {"setWeight": 100}]
    apply(operator, namespace, rollout("bot-v2", steps))
    wait_for(operator, "rollout", "bot-v2", namespace, lambda o: o.get("status", {}).get("awaitingApproval"),
             timeout=60)
    assert kaizen_cli(["promote", "bot-v2", "-n", namespace]) == 0
    obj = wait_for(operator, "rollout", "bot-v2", namespace, phase("Promoted"), timeout=60)
    assert obj["status"]["lastAction"]["outcome"] == "promoting: remaining steps skipped"

    # What Argo CD self-heal does: apply the manifest from git again, here with a real change in it.
    kubectl_apply(operator, namespace, stable_manifest(extra_env="hello again"))
    assert env(deployment(operator, namespace, "bot")) == {"GREETING": "hello again", "MODEL_URI": "s3://models/bot/v2"}
    # And as Argo CD does with server-side apply, under its own field manager.
    operator.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=argocd-controller", "-n",
                     namespace, "-f", "-", input=yaml.safe_dump(stable_manifest(extra_env="bye")))
    stable = json.loads(operator.kubectl("get", "deployment", "bot", "-n", namespace, "-o", "json",
                                         "--show-managed-fields").stdout)
    assert env(stable) == {"GREETING": "bye", "MODEL_URI": "s3://models/bot/v2"}
    owners = [m["manager"] for m in stable["metadata"]["managedFields"] if owns(m.get("fieldsV1", {}), "MODEL_URI")]
    assert owners == ["kaizen"]


def owns(fields: dict, env_name: str) -> bool:
    """Whether a managedFields entry's fieldsV1 holds the env entry ``env_name``."""
    key = json.dumps({"name": env_name}, separators=(",", ":"))
    return any(k == f"k:{key}" or (isinstance(v, dict) and owns(v, env_name)) for k, v in fields.items())


def test_a_missing_target_is_waited_for_and_abort_leaves_the_stable_untouched(operator, namespace):
    apply(operator, namespace, rollout("bot-v2", [{"setWeight": 10}, {"pause": {}}, {"setWeight": 100}]))
    waiting = wait_for(operator, "rollout", "bot-v2", namespace, lambda o: "does not exist" in o.get("status", {})
                       .get("message", ""))
    assert waiting["status"]["message"] == (f"The target Deployment {namespace}/bot does not exist; waiting for it.")
    assert reasons(operator, namespace, "bot-v2") == ["TargetUnavailable"]

    kubectl_apply(operator, namespace, stable_manifest())
    wait_for(operator, "rollout", "bot-v2", namespace, lambda o: o.get("status", {}).get("awaitingApproval"),
             timeout=60)
    stable = deployment(operator, namespace, "bot")
    assert kaizen_cli(["abort", "bot-v2", "-n", namespace]) == 0
    obj = wait_for(operator, "rollout", "bot-v2", namespace, phase("Aborted"))
    assert obj["status"]["message"].startswith(f"Aborted by {whoami()} at ")
    assert obj["status"]["message"].endswith("; stable untouched.")
    operator.kubectl("wait", "--for=delete", "deployment/bot-canary", "-n", namespace, "--timeout=30s")
    assert deployment(operator, namespace, "bot")["metadata"]["generation"] == stable["metadata"]["generation"]


def test_metrics_without_prometheus_are_rejected_by_the_api_server(crds, namespace):
    doc = rollout("bot-v2", [{"setWeight": 10}, {"analysis": {"duration": "1m"}}, {"setWeight": 100}],
                  metrics=[SUCCESS_RATE])
    result = crds.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert result.returncode != 0
    assert "spec.prometheus: Invalid value" in result.stderr
    assert "analysis metrics need spec.prometheus to read them from" in result.stderr


def test_a_second_rollout_of_one_target_waits_and_touches_nothing_until_the_first_ends(operator, namespace, served):
    apply(operator, namespace, rollout("bot-v2", [{"setWeight": 10}, {"pause": {}}, {"setWeight": 100}]))
    wait_for(operator, "rollout", "bot-v2", namespace, lambda o: o.get("status", {}).get("awaitingApproval"),
             timeout=60)
    second = rollout("bot-v3", [{"setWeight": 50}, {"setWeight": 100}])
    second["spec"]["canaryModel"] = {"version": "v3", "uri": "s3://models/bot/v3"}
    apply(operator, namespace, second)

    refused = wait_for(operator, "rollout", "bot-v3", namespace,
                       lambda o: (condition(o, "Progressing") or {}).get("reason") == "TargetInUse")
    assert "phase" not in refused["status"]
    assert refused["status"]["message"] == (
        f"Deployment {namespace}/bot is held by Rollout bot-v2, which has not ended; this Rollout waits and touches "
        "nothing until it does. To go ahead sooner: `kaizen abort bot-v2` or delete it; or delete this Rollout.")
    assert condition(refused, "Progressing")["status"] == "False"
    # While it waits, the stable Deployment and bot-v2's canary stay as bot-v2 left them, look after look: three
    # rechecks, brought by the driven clock. (Unwoken it rechecks every 5 minutes: bot-v2's end wakes it below.)
    stable_generation = deployment(operator, namespace, "bot")["metadata"]["generation"]
    with driven_clock() as clock:
        slept = settled(controller.scheduler, namespace, "bot-v3", lambda s: s.due is not None)
        for _ in range(3):
            clock.advance(TARGET_RECHECK)
            slept = settled(controller.scheduler, namespace, "bot-v3", lambda s: s.due is not None,
                            after=slept.looks)
            canary = deployment(operator, namespace, "bot-canary")
            assert canary["metadata"]["labels"]["kaizen.dev/rollout"] == "bot-v2"
            assert canary["spec"]["replicas"] == 1
            assert deployment(operator, namespace, "bot")["metadata"]["generation"] == stable_generation
    assert reasons(operator, namespace, "bot-v3") == ["TargetInUse"]  # said once, not on every look
    assert get(operator, "rollout", "bot-v2", namespace)["status"]["phase"] == "Paused"

    assert kaizen_cli(["abort", "bot-v2", "-n", namespace]) == 0
    obj = wait_for(operator, "rollout", "bot-v3", namespace, phase("Promoted"), timeout=60)
    assert obj["status"]["message"] == "Promoted v3: the stable Deployment serves s3://models/bot/v3."
    assert condition(obj, "Progressing")["reason"] == "Promoted"
    stable = deployment(operator, namespace, "bot")
    assert env(stable)["MODEL_URI"] == "s3://models/bot/v3"
    assert stable["metadata"]["generation"] == stable_generation + 1  # promoted once, by bot-v3 alone


def test_a_canary_name_taken_by_a_foreign_deployment_is_a_condition_and_never_taken_over(operator, namespace,
                                                                                         served):
    foreign = stable_manifest("bot-canary", replicas=2)
    kubectl_apply(operator, namespace, foreign)
    before = deployment(operator, namespace, "bot-canary")
    apply(operator, namespace, rollout("bot-v2", [{"setWeight": 10}, {"setWeight": 100}]))

    obj = wait_for(operator, "rollout", "bot-v2", namespace,
                   lambda o: (condition(o, "Progressing") or {}).get("reason") == "NameConflict")
    assert condition(obj, "Progressing")["message"] == (
        f"Deployment {namespace}/bot-canary exists and is not owned by a Kaizen Rollout; Kaizen will not take it "
        "over: delete or rename it")
    # Retried slowly, a minute on (by the driven clock): one Warning, and the foreign Deployment as it was.
    with driven_clock() as clock:
        slept = settled(controller.scheduler, namespace, "bot-v2",
                        lambda s: s.due is not None and s.due >= clock.now() + SLOW_RETRY * 0.8)
        clock.advance(SLOW_RETRY)
        settled(controller.scheduler, namespace, "bot-v2", after=slept.looks)
    assert reasons(operator, namespace, "bot-v2") == ["NameConflict"]
    after = deployment(operator, namespace, "bot-canary")
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["spec"]["replicas"] == 2 and "ownerReferences" not in after["metadata"]
    assert deployment(operator, namespace, "bot")["metadata"]["generation"] == served["metadata"]["generation"]


def test_of_two_rollouts_under_way_on_one_target_the_older_keeps_it(operator, namespace, served):
    """Two Rollouts both started (as two made at the same moment by operators before exclusivity could leave them):
    the younger is refused the moment it would touch a Deployment."""
    apply(operator, namespace, rollout("bot-v2", [{"setWeight": 10}, {"pause": {}}, {"setWeight": 100}]))
    wait_for(operator, "rollout", "bot-v2", namespace, lambda o: o.get("status", {}).get("awaitingApproval"),
             timeout=60)
    stable_generation = deployment(operator, namespace, "bot")["metadata"]["generation"]
    second = rollout("bot-v3", [{"setWeight": 50}, {"setWeight": 100}])
    second["spec"]["canaryModel"] = {"version": "v3", "uri": "s3://models/bot/v3"}
    apply(operator, namespace, second)
    operator.kubectl("patch", "rollout.kaizen.dev", "bot-v3", "-n", namespace, "--subresource=status",
                     "--type=merge", "-p", json.dumps({"status": {"phase": "Progressing", "currentStep": 0,
                                                                  "canaryWeight": 0, "canaryReplicas": 0}}))

    refused = wait_for(operator, "rollout", "bot-v3", namespace,
                       lambda o: (condition(o, "Progressing") or {}).get("reason") == "TargetInUse")
    assert refused["status"]["message"].startswith(f"Deployment {namespace}/bot is held by Rollout bot-v2")
    canary = deployment(operator, namespace, "bot-canary")
    assert canary["metadata"]["labels"]["kaizen.dev/rollout"] == "bot-v2" and canary["spec"]["replicas"] == 1
    assert deployment(operator, namespace, "bot")["metadata"]["generation"] == stable_generation
    assert get(operator, "rollout", "bot-v2", namespace)["status"]["phase"] == "Paused"
