"""Adapter canaries in the pure decide function: a LoRA candidate on the stable's own pods, by model name, through
the Rollout's ConfigMap of adapters (and the servers' alias without a gateway, or the route's model-name rules
with one): what each look writes, when a step's weight counts as served, promotion and rollback."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone

from kaizen.api.rollout import RolloutSpec
from kaizen.logic import adapters
from kaizen.logic import rollout as machine
from kaizen.logic.rollout import Gathered, decide
from tests.unit.test_rollout_deployments import STABLE

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
ROLLOUT = {"apiVersion": "kaizen.dev/v1alpha1", "kind": "Rollout",
           "metadata": {"name": "bot-v2", "namespace": "prod", "uid": "u-1", "generation": 1}}
STEPS = [{"setWeight": 20}, {"pause": {}}, {"setWeight": 100}]
ADAPTER = {"servedModelName": "bot", "sessionAffinity": {"header": "X-Kaizen-Version"}, "syncPeriod": "5s"}
GATEWAY = {"httpRoute": "bot", "stableBackend": {"name": "bot-stable", "port": 80},
           "canaryBackend": {"name": "bot-canary", "port": 80}}
ROUTE = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
         "metadata": {"name": "bot", "namespace": "prod", "resourceVersion": "7"},
         "spec": {"rules": [{"name": "api", "backendRefs": [{"name": "bot-stable", "port": 80}]}]}}


def spec(*, gateway=False, base="s3://m/v1", steps=STEPS):
    routing = {"adapter": {k: v for k, v in ADAPTER.items() if not (gateway and k == "sessionAffinity")}}
    if gateway:
        routing["gatewayAPI"] = GATEWAY
    return RolloutSpec.model_validate({
        "target": {"deployment": "bot", "container": "server"},
        "stableModel": {"version": "v1", "uri": "s3://m/v1"},
        "canaryModel": {"version": "v2", "uri": "s3://m/v2-adapter", **({"baseURI": base} if base else {})},
        "trafficRouting": routing, "steps": steps})


def look(s, stored, now=NOW, **gathered):
    return decide(s, stored, Gathered(**{"stable": STABLE, "holder_known": True, **gathered}), now, rollout=ROLLOUT)


def applied(effects, kind):
    return [b for b in effects.apply if b["kind"] == kind]


def file_of(configmap):
    return json.loads(configmap["data"]["adapters.json"])


def stamped(configmap, at):
    """The ConfigMap as applied at ``at``."""
    return {**configmap, "metadata": {**configmap["metadata"], "annotations": {adapters.WRITTEN_AT: at.isoformat()}}}


def mounted_stable(patch, uri="s3://m/v1"):
    """The stable Deployment after Kaizen's apply of ``patch`` rolled out."""
    stable = copy.deepcopy(STABLE)
    pod = stable["spec"]["template"]["spec"]
    pod["volumes"] = patch["spec"]["template"]["spec"]["volumes"]
    server = next(c for c in pod["containers"] if c["name"] == "server")
    server["volumeMounts"] = patch["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    added = patch["spec"]["template"]["spec"]["containers"][0]["env"]
    server["env"] = [{"name": "MODEL_URI", "value": uri}, *(e for e in added if e["name"] != "MODEL_URI")]
    return stable


def test_the_canary_is_the_adapter_on_the_stables_pods_split_by_the_servers_alias():
    s = spec()
    started = look(s, {})
    (configmap,) = applied(started, "ConfigMap")
    (patch,) = applied(started, "Deployment")  # the mount, no canary Deployment
    assert configmap["metadata"]["name"] == "bot-adapters"
    assert configmap["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert file_of(configmap) == {
        "adapters": [{"name": "bot-v2", "uri": "s3://m/v2-adapter", "version": "v2", "track": "canary"}],
        "aliases": [{"name": "bot", "targets": [{"model": "bot", "weight": 80}, {"model": "bot-v2", "weight": 20}],
                     "session_affinity": {"header": "X-Kaizen-Version", "cookie": None}}]}
    assert patch["metadata"]["name"] == "bot"
    server = patch["spec"]["template"]["spec"]["containers"][0]
    assert server["env"] == [{"name": "MODEL_URI", "value": "s3://m/v1"},
                             {"name": "KAIZEN_ADAPTERS_FILE", "value": "/etc/kaizen/adapters/adapters.json"}]
    assert patch["spec"]["template"]["spec"]["volumes"] == [
        {"name": "kaizen-adapters", "configMap": {"name": "bot-adapters", "optional": True}}]
    assert (started.status["canaryReplicas"], started.status["achievedWeight"]) == (0, 20.0)
    weight_set = next(e for e in started.events if e.reason == "WeightSet")
    assert "by model name on the servers' alias bot: adapter bot-v2 on the stable's own pods" in weight_set.message
    assert started.delete == ()

    # The step's weight counts as served once the pods mount the ConfigMap and syncPeriod passed since it changed.
    stable = mounted_stable(patch)
    written = stamped(configmap, NOW)
    early = look(s, started.status, NOW + timedelta(seconds=4), stable=stable, configmap=written)
    assert early.apply == () and early.status["currentStep"] == 0
    served = look(s, early.status, NOW + timedelta(seconds=5), stable=stable, configmap=written)
    assert served.apply == () and served.status["currentStep"] == 1 and served.status["awaitingApproval"]

    # Approved: 100% is a new alias weight, which must be served before the promotion.
    approved = look(s, served.status, NOW + timedelta(seconds=6), stable=stable, configmap=written,
                    action=machine.Action("approve", "alice", NOW))
    (at_100,) = approved.apply
    assert file_of(at_100)["aliases"][0]["targets"] == [{"model": "bot", "weight": 0},
                                                        {"model": "bot-v2", "weight": 100}]
    at_100 = stamped(at_100, NOW + timedelta(seconds=6))
    promoting = look(s, approved.status, NOW + timedelta(seconds=11), stable=stable, configmap=at_100)
    (promotion,) = promoting.apply
    assert promotion["kind"] == "Deployment" and promoting.status["currentStep"] == 3
    env = promotion["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [{"name": "MODEL_URI", "value": "s3://m/v2-adapter"}, {"name": "BASE_MODEL_URI", "value": "s3://m/v1"},
                   {"name": "KAIZEN_ADAPTERS_FILE", "value": "/etc/kaizen/adapters/adapters.json"}]
    assert promotion["spec"]["template"]["spec"]["volumes"]  # the same apply keeps the mount

    # Promoted once the stable's pods serve the adapter as their own model: the ConfigMap holds nothing more.
    promoted = look(s, promoting.status, NOW + timedelta(seconds=12), stable=mounted_stable(promotion,
                                                                                           "s3://m/v2-adapter"),
                    configmap=at_100)
    assert promoted.status["phase"] == "Promoted"
    (emptied,) = promoted.apply
    assert file_of(emptied) == {"adapters": [], "aliases": []}


def test_an_aborted_adapter_canary_unloads_the_adapter_and_deletes_no_deployment():
    s = spec()
    started = look(s, {})
    stable = mounted_stable(applied(started, "Deployment")[0])
    aborted = look(s, started.status, NOW + timedelta(seconds=1), stable=stable,
                   configmap=applied(started, "ConfigMap")[0], action=machine.Action("abort", "alice", NOW))
    assert aborted.status["phase"] == "Aborted" and aborted.delete == ()
    (emptied,) = aborted.apply
    assert file_of(emptied) == {"adapters": [], "aliases": []}


def test_with_a_gateway_the_route_splits_by_model_name_once_the_pods_hold_the_adapter():
    s = spec(gateway=True)
    started = look(s, {}, route=ROUTE)
    (configmap,) = applied(started, "ConfigMap")
    assert file_of(configmap)["aliases"] == [] and [a["name"] for a in file_of(configmap)["adapters"]] == ["bot-v2"]
    assert applied(started, "HTTPRoute") == []  # the pods do not hold it yet
    stable = mounted_stable(applied(started, "Deployment")[0])
    written = stamped(configmap, NOW)
    routed = look(s, started.status, NOW + timedelta(seconds=5), stable=stable, configmap=written, route=ROUTE)
    (route,) = applied(routed, "HTTPRoute")
    model, api = route["spec"]["rules"]
    assert api == ROUTE["spec"]["rules"][0]  # the user's rule stays exactly as it was
    assert model["name"] == "kaizen-bot-v2-api-model"
    assert model["matches"][0]["headers"] == [{"type": "Exact", "name": "X-Gateway-Model-Name", "value": "bot"}]
    stable_ref, canary_ref = model["backendRefs"]
    assert (stable_ref["name"], stable_ref["weight"], canary_ref["name"], canary_ref["weight"]) == (
        "bot-stable", 80, "bot-canary", 20)
    assert canary_ref["filters"] == [{"type": "RequestHeaderModifier", "requestHeaderModifier": {
        "set": [{"name": "X-Gateway-Model-Name", "value": "bot-v2"}]}}]
    assert routed.status["achievedWeight"] == 20.0 and routed.status["currentStep"] == 1
    # Aborted: the route loses Kaizen's rule in the same look as the ConfigMap its adapter.
    on_route = {**ROUTE, "spec": {"rules": route["spec"]["rules"]}}
    aborted = look(s, routed.status, NOW + timedelta(seconds=6), stable=stable, configmap=written, route=on_route,
                   action=machine.Action("abort", "alice", NOW))
    assert [b["kind"] for b in aborted.apply] == ["ConfigMap", "HTTPRoute"]
    assert applied(aborted, "HTTPRoute")[0]["spec"]["rules"] == ROUTE["spec"]["rules"]


def test_a_full_model_candidate_or_an_adapter_on_another_base_gets_a_canary_deployment():
    for s in (spec(base=None), spec(base="s3://m/other-base")):
        started = look(s, {})
        assert [b["kind"] for b in started.apply] == ["Deployment"]
        assert started.apply[0]["metadata"]["name"] == "bot-canary"


def test_a_configmap_of_that_name_kaizen_does_not_own_blocks_the_rollout():
    foreign = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bot-adapters"}, "data": {}}
    blocked = look(spec(), {}, configmap=foreign)
    assert blocked.apply == () and "ConfigMap prod/bot-adapters exists and is not owned" in blocked.events[0].message
