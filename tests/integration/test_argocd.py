"""Argo CD health checks and actions on objects the real operator wrote (a real API server, kube-controller-manager
and kwok, a real Prometheus), in Argo CD's ``resource_customizations`` testdata form.

Each scenario drives a Kaizen object into a state (the test plays only the kubelet of training pods, as
test_retrainjob does), reads it back, and checks what the health Lua says of it. The objects are Argo CD's testdata
(``argocd/resource_customizations/kaizen.dev/<Kind>/testdata``): with ``KAIZEN_RECORD_ARGOCD=1`` this test writes
them (and ``health_test.yaml`` / ``action_test.yaml``); otherwise it compares the fresh objects' shape with the
committed ones, so a status the operator no longer writes that way fails here. Every action runs as Argo CD runs it:
the Lua result becomes a merge patch of the live object, and the operator must act on it.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from kaizen.api.actions import FAILURES_ACKNOWLEDGED, PAUSED, action_annotations
from kaizen.api.trainer import TrainerResult
from kaizen.dev.prometheus import LocalPrometheus
from tests.argocd.lua import ACTION_TIME, ArgoLua
from tests.integration.kube import apply, get, wait_for
from tests.integration.rollouts import kubectl_apply, rollout, running_operator, stable_manifest
from tests.integration.test_retrainjob import result, retrain_job, running_pods, terminate

pytestmark = pytest.mark.integration

CUSTOMIZATIONS = Path(__file__).parents[2] / "argocd" / "resource_customizations" / "kaizen.dev"
RECORD = os.environ.get("KAIZEN_RECORD_ARGOCD") == "1"
GOOD = 'sum(http_requests_total{track="{{track}}"})'


@pytest.fixture(scope="module")
def operator(crds):
    with running_operator(crds):
        yield crds


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    """A real Prometheus; the loops' signals are constant expressions, so it needs no scrape target."""
    with LocalPrometheus(tmp_path_factory.mktemp("prometheus")) as local:
        yield local


class Recorder:
    """Collects the fixtures of one kind; checks (or, when recording, writes) them at the end."""

    def __init__(self, kind: str) -> None:
        self.kind, self.dir = kind, CUSTOMIZATIONS / kind
        self.health: list[dict] = []
        self.actions: list[dict] = []
        self.discovery: list[dict] = []

    def state(self, name: str, obj: dict, expected: str) -> dict:
        """A recorded object named ``name`` whose health must be ``expected``."""
        obj = clean(obj)
        health = ArgoLua().health((self.dir / "health.lua").read_text(), obj)
        assert health["status"] == expected, (name, health, obj.get("status"))
        path = self.dir / "testdata" / f"{name}.yaml"
        if RECORD:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(obj, sort_keys=False))
        else:
            assert path.exists(), f"{path} is not committed: record it with KAIZEN_RECORD_ARGOCD=1"
            committed = yaml.safe_load(path.read_text())
            assert shape(obj) == shape(committed), (
                f"{path.name}: the operator now writes another shape; re-record with KAIZEN_RECORD_ARGOCD=1")
        self.health.append({"healthStatus": health, "inputPath": f"testdata/{name}.yaml"})
        return obj

    def act(self, cluster, namespace: str, action: str, obj: dict, name: str, live_name: str | None = None) -> dict:
        """Run the action's Lua as Argo CD does on the live object ``live_name`` (default: ``obj``'s): its result is
        merge-patched onto it. Records the action test on the recorded state ``name`` (``obj``), whose expected
        output carries the annotations the CLI sets."""
        script = (self.dir / "actions" / action / "action.lua").read_text()
        live_name = live_name or obj["metadata"]["name"]
        live = get(cluster, self.kind.lower(), live_name, namespace)
        changed = ArgoLua().act(script, live)
        patch = merge_patch(live, changed)
        assert set(patch) == {"metadata"} and set(patch["metadata"]) == {"annotations"}, patch
        cluster.kubectl("patch", f"{self.kind.lower()}.kaizen.dev", live_name, "-n", namespace,
                        "--type=merge", "-p", json.dumps(patch))
        expected = json.loads(json.dumps(obj))
        expected["metadata"].setdefault("annotations", {}).update(cli_annotations(action, ACTION_TIME))
        expected["metadata"]["annotations"] = {k: v for k, v in expected["metadata"]["annotations"].items()
                                               if v is not None}
        output = f"{name}_{action}.yaml"
        if RECORD:
            (self.dir / "actions" / "testdata").mkdir(parents=True, exist_ok=True)
            (self.dir / "actions" / "testdata" / output).write_text(yaml.safe_dump(expected, sort_keys=False))
        self.actions.append({"action": action, "inputPath": f"../testdata/{name}.yaml",
                             "expectedOutputPath": f"testdata/{output}"})
        return patch

    def discover(self, name: str, obj: dict) -> list[dict]:
        actions = ArgoLua().discover((self.dir / "actions" / "discovery.lua").read_text(), obj)
        self.discovery.append({"inputPath": f"../testdata/{name}.yaml",
                               "result": sorted(actions, key=lambda a: a["name"])})
        return {a["name"]: a["disabled"] for a in actions}

    def finish(self) -> None:
        if not RECORD:
            committed = yaml.safe_load((self.dir / "health_test.yaml").read_text())["tests"]
            statuses = {t["inputPath"]: t["healthStatus"]["status"] for t in committed}
            assert {t["inputPath"]: t["healthStatus"]["status"] for t in self.health} == statuses
            return
        (self.dir / "health_test.yaml").write_text(yaml.safe_dump({"tests": self.health}, sort_keys=False))
        if self.actions or self.discovery:
            (self.dir / "actions" / "action_test.yaml").write_text(yaml.safe_dump(
                {"discoveryTests": self.discovery, "actionTests": self.actions}, sort_keys=False))


def cli_annotations(action: str, at: datetime) -> dict[str, str | None]:
    """What the kaizen CLI sets for ``action`` (kaizen.cli.loop / kaizen.cli.rollout), asked by Argo CD."""
    if action == "pause":
        return {PAUSED: "true"}
    if action == "resume":
        return {PAUSED: None, FAILURES_ACKNOWLEDGED: at.isoformat().replace("+00:00", "Z")}
    return action_annotations(action, "argocd", at)


def clean(obj: dict) -> dict:
    """The object as Argo CD's testdata keep it: without managedFields."""
    obj = json.loads(json.dumps(obj))
    obj["metadata"].pop("managedFields", None)
    return obj


def shape(value, path: str = "") -> set[str]:
    """The set of key paths of status (lists by their items' keys), and the Kaizen annotation keys: what the health
    Lua and the actions read. Values, names and times differ from run to run."""
    if path == "":
        annotations = {f"annotation:{k}" for k in value["metadata"].get("annotations", {}) if "kaizen.dev" in k}
        status = value.get("status", {})
        return annotations | shape(status, "status") | {f"phase:{status.get('phase')}"}
    if isinstance(value, dict):
        if path.endswith(("evidence", "metrics", "rows", "excluded")):
            return {path}  # free-form maps: their keys are data
        return {path} | {p for k, v in value.items() for p in shape(v, f"{path}.{k}")}
    if isinstance(value, list):
        return {f"{path}[]"} | {p for v in value for p in shape(v, f"{path}[]")}
    return {path}


def merge_patch(old: dict, new: dict) -> dict:
    """The JSON merge patch (RFC 7386) from ``old`` to ``new``, as Argo CD patches an action's result."""
    patch: dict = {}
    for key in old.keys() | new.keys():
        if key not in new:
            patch[key] = None
        elif key not in old or (type(old[key]) is not type(new[key])):
            patch[key] = new[key]
        elif isinstance(new[key], dict):
            inner = merge_patch(old[key], new[key])
            if inner:
                patch[key] = inner
        elif old[key] != new[key]:
            patch[key] = new[key]
    return patch


def created(cluster, namespace: str, doc: dict) -> dict:
    """The object as the API server returned it on create: before any operator has seen it."""
    return json.loads(cluster.kubectl("create", "-n", namespace, "-o", "json", "-f", "-",
                                      input=yaml.safe_dump(doc)).stdout)


def phase(name):
    return lambda o: o.get("status", {}).get("phase") == name


def last_action(by: str, action: str):
    return lambda o: (o.get("status", {}).get("lastAction") or {}).get("by") == by and \
        o["status"]["lastAction"]["action"] == action


def test_rollout_health_and_actions(operator, namespace, tmp_path):
    rec = Recorder("Rollout")
    kubectl_apply(operator, namespace, stable_manifest())
    operator.kubectl("rollout", "status", "deployment/bot", "-n", namespace, "--timeout=60s")

    absent = rollout("absent-target", [{"setWeight": 100}])
    absent["spec"]["target"]["deployment"] = "absent"
    absent["spec"]["analysis"]["metrics"] = []
    rec.state("progressing_noStatus", created(operator, namespace, absent), "Progressing")
    obj = wait_for(operator, "rollout", "absent-target", namespace, lambda o: "does not exist" in
                   o.get("status", {}).get("message", ""))
    rec.state("missing_targetDeployment", obj, "Missing")
    operator.kubectl("delete", "rollout.kaizen.dev", "absent-target", "-n", namespace)

    timed = rollout("timed", [{"setWeight": 10}, {"pause": {"duration": "10m"}}, {"setWeight": 100}])
    apply(operator, namespace, timed)
    obj = rec.state("progressing_timedPause", wait_for(
        operator, "rollout", "timed", namespace, lambda o: o.get("status", {}).get("currentStep") == 1, timeout=60),
        "Progressing")
    assert rec.discover("progressing_timedPause", obj) == {"promote": False, "abort": False, "approve": True}
    rec.act(operator, namespace, "abort", obj, "progressing_timedPause")
    obj = rec.state("degraded_aborted", wait_for(operator, "rollout", "timed", namespace, phase("Aborted")),
                    "Degraded")
    assert obj["status"]["lastAction"]["by"] == "argocd"
    assert rec.discover("degraded_aborted", obj) == {"promote": True, "abort": True, "approve": True}

    paused = rollout("paused", [{"setWeight": 10}, {"pause": {}}, {"setWeight": 100}])
    apply(operator, namespace, paused)
    obj = waiting = rec.state("suspended_pauseStep", wait_for(
        operator, "rollout", "paused", namespace, lambda o: o.get("status", {}).get("awaitingApproval"), timeout=60),
        "Suspended")
    assert rec.discover("suspended_pauseStep", obj) == {"promote": False, "abort": False, "approve": False}
    rec.act(operator, namespace, "approve", obj, "suspended_pauseStep")
    obj = rec.state("healthy_promoted", wait_for(operator, "rollout", "paused", namespace, phase("Promoted"),
                                                 timeout=60), "Healthy")
    assert obj["status"]["lastAction"] == {**obj["status"]["lastAction"], "by": "argocd", "action": "approve"}
    rec.discover("healthy_promoted", obj)

    again = rollout("promoted-early", [{"setWeight": 10}, {"pause": {}}, {"setWeight": 100}])
    again["spec"]["stableModel"], again["spec"]["canaryModel"] = (
        {"version": "v2", "uri": "s3://models/bot/v2"}, {"version": "v3", "uri": "s3://models/bot/v3"})
    apply(operator, namespace, again)
    wait_for(operator, "rollout", "promoted-early", namespace, lambda o: o.get("status", {}).get("awaitingApproval"),
             timeout=60)
    rec.act(operator, namespace, "promote", waiting, "suspended_pauseStep", live_name="promoted-early")
    wait_for(operator, "rollout", "promoted-early", namespace, phase("Promoted"), timeout=60)
    assert get(operator, "rollout", "promoted-early", namespace)["status"]["lastAction"]["by"] == "argocd"

    # Analysis against a Prometheus that is not there, rolled back at the first error: the failure policy's limit.
    failing = rollout("no-metrics", [{"setWeight": 10}, {"setWeight": 100}], prometheus_url="http://127.0.0.1:9",
                      metrics=[{"name": "success-rate", "ratio": {"good": GOOD, "total": GOOD}}],
                      policy={"consecutiveErrorLimit": 1, "onLimit": "Rollback"})
    failing["spec"]["stableModel"], failing["spec"]["canaryModel"] = (
        {"version": "v3", "uri": "s3://models/bot/v3"}, {"version": "v4", "uri": "s3://models/bot/v4"})
    apply(operator, namespace, failing)
    rec.state("degraded_rolledBack", wait_for(operator, "rollout", "no-metrics", namespace, phase("RolledBack"),
                                              timeout=60), "Degraded")

    invalid = rollout("bad-query", [{"setWeight": 100}], prometheus_url="http://127.0.0.1:9",
                      metrics=[{"name": "rate", "threshold": {"query": "up{job=\"{{jbo}}\"}", "max": 1}}])
    apply(operator, namespace, invalid)
    rec.state("degraded_invalidSpec", wait_for(operator, "rollout", "bad-query", namespace, lambda o: any(
        c["type"] == "InvalidSpec" for c in o.get("status", {}).get("conditions", []))), "Degraded")
    rec.finish()


def loop(name: str, query: str, prometheus_url: str, **policy) -> dict:
    return {
        "apiVersion": "kaizen.dev/v1alpha1", "kind": "ImprovementLoop", "metadata": {"name": name},
        "spec": {
            "target": {"deployment": name},
            "model": {"version": "v1", "uri": "/models/v1"},
            "prometheus": {"url": prometheus_url},
            "interval": "1s",
            "signals": [{"name": "error-rate", "query": query, "max": 0.05, "for": "0s"}],
            "policy": {"cooldown": "0s", **policy},
            "retrain": {"image": "kaizen.invalid/trainer:test", "outputURI": "/models", "resources": {"gpus": 1}},
            "gates": [{"metric": "accuracy", "minDelta": 0}],
            "rollout": {"steps": [{"setWeight": 50}, {"pause": {}}, {"setWeight": 100}]},
        },
    }


def test_improvementloop_and_retrainjob_health_and_actions(operator, namespace, prometheus):
    rec, jobs = Recorder("ImprovementLoop"), Recorder("RetrainJob")

    calm = loop("calm", "vector(0.01)", prometheus.url)
    rec.state("progressing_noStatus", created(operator, namespace, calm), "Progressing")
    obj = rec.state("healthy_observing", wait_for(operator, "improvementloop", "calm", namespace, lambda o: [
        s.get("state") for s in o.get("status", {}).get("signals", [])] == ["Healthy"]), "Healthy")
    assert rec.discover("healthy_observing", obj) == {"approve": True, "retrain": False, "pause": False,
                                                      "resume": True}
    rec.act(operator, namespace, "pause", obj, "healthy_observing")
    obj = rec.state("suspended_paused", wait_for(operator, "improvementloop", "calm", namespace, phase("Paused")),
                    "Suspended")
    assert rec.discover("suspended_paused", obj) == {"approve": True, "retrain": True, "pause": True,
                                                     "resume": False}
    rec.act(operator, namespace, "resume", obj, "suspended_paused")
    wait_for(operator, "improvementloop", "calm", namespace, phase("Observing"))

    apply(operator, namespace, loop("silent", "vector(1) > 2", prometheus.url))
    rec.state("unknown_noData", wait_for(operator, "improvementloop", "silent", namespace, lambda o: [
        s.get("state") for s in o.get("status", {}).get("signals", [])] == ["Unknown"]), "Unknown")

    breached = loop("breached", "vector(0.2)", prometheus.url, maxConsecutiveFailures=1,
                    approval={"retrain": "Manual"})
    apply(operator, namespace, breached)
    obj = rec.state("suspended_awaitingApproval", wait_for(operator, "improvementloop", "breached", namespace,
                                                           phase("AwaitingApproval")), "Suspended")
    assert rec.discover("suspended_awaitingApproval", obj)["approve"] is False
    rec.act(operator, namespace, "approve", obj, "suspended_awaitingApproval")
    # Settled: the look that acted on the request records it; a later look removes its annotations.
    obj = rec.state("progressing_retraining", wait_for(operator, "improvementloop", "breached", namespace, lambda o: (
        phase("Retraining")(o) and "kaizen.dev/action" not in (o["metadata"].get("annotations") or {})),
        timeout=60), "Progressing")
    assert obj["status"]["lastAction"]["by"] == "argocd"
    job = obj["status"]["decisions"][0]["child"].removeprefix("RetrainJob/")
    training = wait_for(operator, "retrainjob", job, namespace, lambda o: o.get("status", {}).get("jobName"))
    pods = running_pods(operator, namespace, training["status"]["jobName"])
    jobs.state("progressing_training", wait_for(operator, "retrainjob", job, namespace, phase("Training")),
               "Progressing")
    terminate(operator, pods[0], exit_code=2, reason="Error", message=TrainerResult(
        phase="Failed", reason="InvalidData", message="no replay data: the data source is empty",
    ).to_termination_message())
    jobs.state("degraded_failed", wait_for(operator, "retrainjob", job, namespace, phase("Failed"), timeout=60),
               "Degraded")
    obj = rec.state("degraded_tooManyFailures", wait_for(operator, "improvementloop", "breached", namespace,
                                                         phase("Degraded"), timeout=60), "Degraded")
    assert rec.discover("degraded_tooManyFailures", obj) == {"approve": True, "retrain": False, "pause": False,
                                                             "resume": False}
    rec.act(operator, namespace, "retrain", obj, "degraded_tooManyFailures")
    wait_for(operator, "improvementloop", "breached", namespace,
             lambda o: phase("Retraining")(o) and o["status"]["decisions"][0].get("child") not in (
                 None, f"RetrainJob/{job}"), timeout=60)

    bad = loop("misspelt", 'rate(errors{deployment="{{deploymnet}}"}[5m])', prometheus.url)
    apply(operator, namespace, bad)
    rec.state("degraded_invalidSpec", wait_for(operator, "improvementloop", "misspelt", namespace, lambda o: any(
        c["type"] == "InvalidSpec" for c in o.get("status", {}).get("conditions", []))), "Degraded")

    jobs.state("progressing_noStatus", created(operator, namespace, retrain_job("passes")), "Progressing")
    (pod,) = running_pods(operator, namespace, "passes-trainer")
    terminate(operator, pod, exit_code=0, reason="Completed", message=result(refund_candidate=0.95))
    jobs.state("healthy_gatesPassed", wait_for(operator, "retrainjob", "passes", namespace, phase("Succeeded"),
                                               timeout=60), "Healthy")
    apply(operator, namespace, retrain_job("fails-gates"))
    (pod,) = running_pods(operator, namespace, "fails-gates-trainer")
    terminate(operator, pod, exit_code=0, reason="Completed", message=result(refund_candidate=0.15))
    jobs.state("degraded_gatesFailed", wait_for(operator, "retrainjob", "fails-gates", namespace,
                                                phase("Succeeded"), timeout=60), "Degraded")
    rec.finish()
    jobs.finish()
