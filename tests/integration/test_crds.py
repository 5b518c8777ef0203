"""The CRDs on a real API server: they install, accept every example, reject bad manifests with a message that
names the field, and document themselves through `kubectl explain`."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from kaizen.api import KINDS

pytestmark = pytest.mark.integration

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


def load(name):
    return yaml.safe_load((Path(__file__).parents[2] / "examples" / name).read_text())


def test_crds_are_established_with_names_and_columns(crds):
    for kind in KINDS:
        crd = json.loads(crds.kubectl("get", "crd", kind.crd_name, "-o", "json").stdout)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions["Established"] == "True" and conditions["NamesAccepted"] == "True"
        assert crd["spec"]["names"]["categories"] == ["kaizen"]
        assert crd["spec"]["names"]["shortNames"] == list(kind.short_names)
        version = crd["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}
        assert [c["name"] for c in version["additionalPrinterColumns"]][0] == "Phase"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_accepted_by_server_side_apply(crds, namespace, path):
    result = crds.kubectl("apply", "--server-side", "-n", namespace, "-f", str(path))
    assert "serverside-applied" in result.stdout
    for doc in yaml.safe_load_all(path.read_text()):
        stored = json.loads(crds.kubectl("get", doc["kind"].lower() + ".kaizen.dev", doc["metadata"]["name"],
                                         "-n", namespace, "-o", "json").stdout)
        # Nothing the user wrote was pruned: every key of the manifest's spec is stored.
        assert _subset(doc["spec"], stored["spec"]), f"{path.name}: the API server dropped fields"


def _subset(small, big):
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and _subset(v, big[k]) for k, v in small.items())
    if isinstance(small, list):
        return isinstance(big, list) and len(small) == len(big) and all(map(_subset, small, big))
    return small == big or (isinstance(small, (int, float)) and small == big)


def test_api_server_applies_schema_defaults(crds, namespace):
    crds.kubectl("apply", "--server-side", "-n", namespace, "-f",
                 str(Path(__file__).parents[2] / "examples" / "improvementloop-minimal.yaml"))
    stored = json.loads(crds.kubectl("get", "improvementloop", "sentiment", "-n", namespace, "-o", "json").stdout)
    spec = stored["spec"]
    assert spec["interval"] == "1m"
    assert spec["policy"]["cooldown"] == "24h"
    assert spec["policy"]["approval"] == {"retrain": "Automatic", "promote": "Automatic"}
    assert spec["target"]["modelEnv"] == "MODEL_URI"
    assert spec["rollout"]["steps"][0] == {"setWeight": 10}
    assert spec["rollout"]["trafficRouting"] == {"replicas": {"maxCanaryReplicas": 10}}
    assert spec["signals"][0]["for"] == "5m"


def _loop():
    return load("improvementloop.yaml")


def _rollout():
    return load("rollout.yaml")


def _job():
    return load("retrainjob.yaml")


def edit(base, change):
    doc = copy.deepcopy(base())
    change(doc["spec"])
    return doc


# (id, manifest, substrings the API server's error must contain: the field path and what is wrong)
INVALID = [
    ("missing-target", edit(_loop, lambda s: s.pop("target")), ["spec.target", "Required value"]),
    ("weight-130", edit(_rollout, lambda s: s["steps"][0].update(setWeight=130)),
     ["spec.steps[0].setWeight", "less than or equal to 100"]),
    ("negative-weight", edit(_rollout, lambda s: s["steps"][0].update(setWeight=-5)),
     ["spec.steps[0].setWeight", "greater than or equal to 0"]),
    ("signal-min-above-max", edit(_loop, lambda s: s["signals"][0].update(min=0.5, max=0.1)),
     ["spec.signals[0].min", "min must be less than or equal to max"]),
    ("unknown-approval-mode", edit(_loop, lambda s: s["policy"]["approval"].update(retrain="Sometimes")),
     ["spec.policy.approval.retrain", "Unsupported value", "Automatic", "Manual"]),
    ("negative-cooldown", edit(_loop, lambda s: s["policy"].update(cooldown="-5m")),
     ["spec.policy.cooldown", "should match"]),
    ("unparseable-duration", edit(_loop, lambda s: s.update(interval="5 minutes")), ["spec.interval", "should match"]),
    ("steps-never-reach-100", edit(_rollout, lambda s: s["steps"].__setitem__(4, {"setWeight": 80})),
     ["spec.steps", "the last setWeight step must reach 100"]),
    ("steps-without-weight", edit(_rollout, lambda s: s.update(steps=[{"pause": {}}])),
     ["spec.steps", "steps must contain a setWeight step"]),
    ("step-with-two-actions", edit(_rollout, lambda s: s["steps"][0].update(pause={})),
     ["spec.steps[0]", "exactly one of setWeight, analysis, pause must be set"]),
    ("signal-without-bounds", edit(_loop, lambda s: [s["signals"][0].pop("max")]),
     ["spec.signals[0]", "a signal needs min or max"]),
    ("duplicate-signal-names", edit(_loop, lambda s: s["signals"][1].update(name="error-rate")),
     ["spec.signals", "signal names must be unique"]),
    ("no-signals", edit(_loop, lambda s: s.update(signals=[])), ["spec.signals", "should have at least 1 items"]),
    ("gate-without-bound", edit(_loop, lambda s: s["gates"].append({"metric": "accuracy"})),
     ["spec.gates[5]", "a gate needs at least one of min, max, minDelta, maxDelta"]),
    ("gate-unknown-metric", edit(_loop, lambda s: s["gates"][0].update(metric="f1")),
     ["spec.gates[0].metric", "Unsupported value"]),
    ("gate-delta-bounds-crossed", edit(_job, lambda s: s["gates"][0].update(maxDelta=0.01)),
     ["spec.gates[0].minDelta", "minDelta must be less than or equal to maxDelta"]),
    ("negative-retrains-per-week", edit(_loop, lambda s: s["policy"].update(maxRetrainsPerWeek=-1)),
     ["spec.policy.maxRetrainsPerWeek", "greater than or equal to 0"]),
    ("missing-trainer-image", edit(_loop, lambda s: s["retrain"].pop("image")), ["spec.retrain.image", "Required"]),
    ("targeted-ratio-above-one", edit(_loop, lambda s: s["retrain"]["data"].update(targetedRatio=1.5)),
     ["spec.retrain.data.targetedRatio", "less than or equal to 1"]),
    ("lora-settings-with-method-full", edit(_job, lambda s: s.update(lora={"rank": 8})),
     ["spec.lora", "lora settings apply to method lora or qlora"]),
    ("qlora-without-gpus", edit(_loop, lambda s: s["retrain"].update(method="qlora", resources={"gpus": 0})),
     ["spec.retrain.method", "needs a CUDA GPU"]),
    ("lora-rank-zero", edit(_job, lambda s: s.update(method="lora", lora={"rank": 0})),
     ["spec.lora.rank", "should be greater than or equal to 1"]),
    ("negative-gpus", edit(_job, lambda s: s["resources"].update(gpus=-1)),
     ["spec.resources.gpus", "greater than or equal to 0"]),
    ("canary-equals-stable", edit(_rollout, lambda s: s["canaryModel"].update(version="v3")),
     ["spec.canaryModel.version", "canaryModel.version must differ from stableModel.version"]),
    ("two-traffic-routings", edit(_rollout, lambda s: s.update(trafficRouting={"replicas": {}, "gatewayAPI": {
        "httpRoute": "bot", "stableBackend": {"name": "bot"}, "canaryBackend": {"name": "bot-canary"}}})),
     ["spec.trafficRouting", "exactly one of replicas, gatewayAPI must be set"]),
    ("canary-backend-equals-stable", edit(_rollout, lambda s: s.update(trafficRouting={"gatewayAPI": {
        "httpRoute": "bot", "stableBackend": {"name": "bot"}, "canaryBackend": {"name": "bot", "kind": "Service"}}})),
     ["spec.trafficRouting.gatewayAPI.canaryBackend", "canaryBackend must differ from stableBackend"]),
    ("session-affinity-header-and-cookie", edit(_rollout, lambda s: s.update(trafficRouting={"gatewayAPI": {
        "httpRoute": "bot", "stableBackend": {"name": "bot"}, "canaryBackend": {"name": "bot-canary"},
        "sessionAffinity": {"header": "X-V", "cookie": "v"}}})),
     ["spec.trafficRouting.gatewayAPI.sessionAffinity", "exactly one of header, cookie must be set"]),
    ("metric-ratio-and-threshold", edit(_rollout, lambda s: s["analysis"]["metrics"][0].update(
        threshold={"query": "x", "max": 1})), ["spec.analysis.metrics[0]", "exactly one of ratio, threshold"]),
    ("alpha-zero", edit(_rollout, lambda s: s["analysis"].update(alpha=0)),
     ["spec.analysis.alpha", "greater than 0"]),
    ("unknown-on-limit-action", edit(_rollout, lambda s: s["analysis"].update(failurePolicy={"onLimit": "Promote"})),
     ["spec.analysis.failurePolicy.onLimit", "Unsupported value"]),
    ("prometheus-url-scheme", edit(_loop, lambda s: s["prometheus"].update(url="ftp://prometheus")),
     ["spec.prometheus.url", "should match"]),
    ("unknown-field", edit(_loop, lambda s: s["signals"][0].update(threshold=3)),
     ["spec.signals[0].threshold", "field not declared in schema"]),
    ("deployment-not-a-dns-label", edit(_rollout, lambda s: s["target"].update(deployment="Support_Bot")),
     ["spec.target.deployment", "should match"]),
    # Issue 13: what the schema accepted but the operator or the API server could not act on.
    ("duration-that-overflows", edit(_loop, lambda s: s["rollout"].setdefault("analysis", {}).update(
        interval="9999999999999999999999999999999h")), ["spec.rollout.analysis.interval", "should match"]),
    ("loop-interval-zero", edit(_loop, lambda s: s.update(interval="0s")),
     ["spec.interval", "must be at least 1s and at most 24h"]),
    ("analysis-interval-zero", edit(_rollout, lambda s: s["analysis"].update(interval="0ms")),
     ["spec.analysis.interval", "must be at least 1s and at most 24h"]),
    ("cooldown-past-a-year", edit(_loop, lambda s: s["policy"].update(cooldown="9000h")),
     ["spec.policy.cooldown", "must be at most 8760h"]),
    ("active-deadline-under-a-second", edit(_job, lambda s: s.update(activeDeadline="500ms")),
     ["spec.activeDeadline", "must be at least 1s"]),
    ("target-too-long-for-its-canary", edit(_rollout, lambda s: s["target"].update(deployment="d" * 57)),
     ["spec.target.deployment", "56"]),
    ("version-not-a-label-value", edit(_rollout, lambda s: s["canaryModel"].update(version="v4-")),
     ["spec.canaryModel.version", "should match"]),
    ("toleration-seconds-without-noexecute", edit(_job, lambda s: s.update(tolerations=[
        {"key": "gpu", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 60}])),
     ["spec.tolerations[0].tolerationSeconds", "only be set with effect NoExecute"]),
    ("toleration-without-key-needs-exists", edit(_job, lambda s: s.update(tolerations=[{"value": "a"}])),
     ["spec.tolerations[0].operator", "operator must be Exists when key is empty"]),
    ("toleration-exists-with-value", edit(_job, lambda s: s.update(tolerations=[
        {"key": "gpu", "operator": "Exists", "value": "a"}])),
     ["spec.tolerations[0].value", "value must be empty when operator is Exists"]),
    ("toleration-key-not-a-label-key", edit(_job, lambda s: s.update(tolerations=[{"key": "bad key", "value": "a"}])),
     ["spec.tolerations[0].key", "must be a label key"]),
    ("node-selector-value-not-ascii", edit(_job, lambda s: s.update(nodeSelector={"zone": "z\u00fcrich"})),
     ["spec.nodeSelector.zone", "should match"]),
    ("node-selector-key-not-a-label-key", edit(_job, lambda s: s.update(nodeSelector={"z\u00f6ne": "a"})),
     ["spec.nodeSelector", "keys must be label keys"]),
    ("queue-name-over-63", edit(_job, lambda s: s.update(queueName="q" * 64)), ["spec.queueName", "63"]),
    ("loop-queue-name-over-63", edit(_loop, lambda s: s["retrain"].update(queueName="q" * 64)),
     ["spec.retrain.queueName", "63"]),
    ("image-with-a-space", edit(_job, lambda s: s.update(image="trainer latest")), ["spec.image", "should match"]),
    ("gpu-resource-in-kubernetes-io", edit(_job, lambda s: s["resources"].update(gpuResourceName="kubernetes.io/gpu")),
     ["spec.resources.gpuResourceName", "must be an extended resource name"]),
    ("pvc-uri-without-a-claim-name", edit(_job, lambda s: s["data"]["replay"][0].update(uri="pvc://Data_Set/x")),
     ["spec.data.replay[0].uri", "pvc://<claim>/<path>"]),
    ("secret-key-with-a-slash", edit(_job, lambda s: s["feedback"]["tokenSecretRef"].update(key="a/b")),
     ["spec.feedback.tokenSecretRef.key", "should match"]),
    # Issue 11: preference objectives and a judge need generated answers.
    ("dpo-on-a-classifier", edit(_job, lambda s: s.update(task="sequence-classification", objective="dpo")),
     ["spec.objective", "objectives dpo and kto train a causal-lm"]),
    ("loop-kto-on-a-classifier", edit(_loop, lambda s: s["retrain"].update(task="sequence-classification",
                                                                         objective="kto")),
     ["spec.retrain.objective", "objectives dpo and kto train a causal-lm"]),
    ("judge-of-a-classifier", edit(_job, lambda s: s.update(task="sequence-classification",
                                                            judge={"uri": "/models/judge"})),
     ["spec.judge", "a judge compares generated answers"]),
    ("unknown-objective", edit(_job, lambda s: s.update(objective="ppo")), ["spec.objective", "Unsupported value"]),
    ("judge-uri-scheme", edit(_job, lambda s: s.update(judge={"uri": "http://judge"})),
     ["spec.judge.uri", "should match"]),
]


def renamed(base, name):
    doc = copy.deepcopy(base())
    doc["metadata"]["name"] = name
    return doc


# Names the DNS-subdomain rule accepts but that would not fit the children's names and label values.
INVALID += [
    ("loop-name-over-40", renamed(_loop, "l" * 41), ["metadata.name", "at most 40 characters", "-retrain-"]),
    ("retrainjob-name-over-55", renamed(_job, "j" * 56), ["metadata.name", "at most 55 characters", "-trainer"]),
    ("rollout-name-over-63", renamed(_rollout, "r" * 64), ["metadata.name", "at most 63 characters"]),
]


@pytest.mark.parametrize("manifest, expected", [pytest.param(m, e, id=i) for i, m, e in INVALID])
def test_invalid_manifest_is_rejected_by_the_api_server_naming_the_field(crds, namespace, manifest, expected):
    result = crds.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest),
                          check=False)
    assert result.returncode != 0, f"accepted: {result.stdout}"
    for text in expected:
        assert text in result.stderr, f"{text!r} not in: {result.stderr}"
    # Nothing was stored.
    listed = crds.kubectl("get", manifest["kind"].lower() + ".kaizen.dev", "-n", namespace, "-o", "name")
    assert listed.stdout.strip() == ""


def test_names_at_the_limits_are_accepted(crds, namespace):
    for base, length in ((_loop, 40), (_job, 55), (_rollout, 63)):
        manifest = yaml.safe_dump(renamed(base, "n" * length))
        crds.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=manifest)


def test_retrainjob_reason_is_immutable(crds, namespace):
    manifest = _job()
    crds.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest))
    manifest["spec"]["reason"]["summary"] = "A rewritten history"
    result = crds.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest),
                          check=False)
    assert result.returncode != 0
    assert "spec.reason" in result.stderr and "is immutable" in result.stderr


def test_kubectl_explain_shows_the_model_descriptions(crds):
    text = crds.kubectl("explain", "improvementloop.spec.signals").stdout
    assert "A health signal: a PromQL query whose value must stay within [min, max]." in text
    assert "How long a breach must be sustained before it counts" in text
    assert "<string> -required-" in text  # query and name are required
    rollout = crds.kubectl("explain", "rollout.spec.steps.setWeight").stdout
    assert "Send this percentage of traffic to the canary." in rollout


def test_short_names_and_category_work(crds, namespace):
    crds.kubectl("apply", "--server-side", "-n", namespace, "-f",
                 str(Path(__file__).parents[2] / "examples" / "rollout.yaml"))
    table = crds.kubectl("get", "kaizen", "-n", namespace).stdout
    assert "rollout.kaizen.dev/support-bot-v4" in table
    wide = crds.kubectl("get", "kro", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "PHASE", "STABLE", "CANARY", "WEIGHT", "ACHIEVED", "STEP", "AGE"]
    row = wide[1].split()
    assert row[0] == "support-bot-v4" and row.index("v3") < row.index("v4")
