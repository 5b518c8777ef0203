"""The manifests a Rollout applies: the canary beside the stable, and the promotion's apply configuration."""

from __future__ import annotations

import copy

import pytest

from kaizen.api.common import ModelRef
from kaizen.cli.rollout import target
from kaizen.k8s.deployments import Expired, Watched
from kaizen.logic.deployments import (
    available, canary_manifest, container_name, essentials, model_patch, owned_by_rollout, rolled_out, serves,
)

STABLE = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "bot", "namespace": "prod", "generation": 3, "labels": {"app": "bot"}},
    "spec": {
        "replicas": 4,
        "selector": {"matchLabels": {"app": "bot"}},
        "template": {
            "metadata": {"labels": {"app": "bot"}},
            "spec": {"containers": [
                {"name": "proxy", "image": "envoy"},
                {"name": "server", "image": "bot:1", "env": [{"name": "MODEL_URI", "value": "s3://m/v1"},
                                                             {"name": "GREETING", "value": "hi"}]},
            ]},
        },
    },
    "status": {"observedGeneration": 3, "replicas": 4, "updatedReplicas": 4, "availableReplicas": 4},
}
ROLLOUT = {"apiVersion": "kaizen.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "bot-v2", "uid": "u-1"}}
V2 = ModelRef(version="v2", uri="s3://m/v2")


def test_the_canary_copies_the_stable_template_with_the_canary_model():
    canary = canary_manifest(STABLE, ROLLOUT, container="server", model_env="MODEL_URI", model=V2, replicas=1)
    assert canary["metadata"]["name"] == "bot-canary" and canary["metadata"]["namespace"] == "prod"
    assert canary["metadata"]["ownerReferences"] == [{"apiVersion": "kaizen.dev/v1alpha1", "kind": "Rollout",
                                                      "name": "bot-v2", "uid": "u-1", "controller": True,
                                                      "blockOwnerDeletion": True}]
    assert canary["spec"]["replicas"] == 1
    assert canary["spec"]["selector"] == {"matchLabels": {"app": "bot", "kaizen.dev/track": "canary"}}
    template = canary["spec"]["template"]
    assert template["metadata"]["labels"] == {"app": "bot", "kaizen.dev/track": "canary",
                                              "kaizen.dev/model-version": "v2"}
    proxy, server = template["spec"]["containers"]
    assert proxy == {"name": "proxy", "image": "envoy"}
    assert server["env"] == [{"name": "GREETING", "value": "hi"}, {"name": "MODEL_URI", "value": "s3://m/v2"}]
    assert STABLE["spec"]["template"]["spec"]["containers"][1]["env"][0]["value"] == "s3://m/v1"  # not mutated


def test_the_promotion_applies_only_the_model_variable_and_the_pod_labels():
    patch = model_patch(STABLE, container="server", model_env="MODEL_URI", model=V2)
    assert patch == {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bot", "namespace": "prod"},
        "spec": {"template": {
            "metadata": {"labels": {"kaizen.dev/track": "stable", "kaizen.dev/model-version": "v2"}},
            "spec": {"containers": [{"name": "server", "env": [{"name": "MODEL_URI", "value": "s3://m/v2"}]}]},
        }},
    }


def test_serves_rolled_out_and_available():
    assert serves(STABLE, container="server", model_env="MODEL_URI", uri="s3://m/v1")
    assert not serves(STABLE, container="server", model_env="MODEL_URI", uri="s3://m/v2")
    assert not serves(STABLE, container="proxy", model_env="MODEL_URI", uri="s3://m/v1")
    assert rolled_out(STABLE) and available(STABLE) == 4 and available(None) == 0
    rolling = copy.deepcopy(STABLE)
    rolling["metadata"]["generation"] = 4
    assert not rolled_out(rolling) and available(rolling) == 0
    rolling["status"].update(observedGeneration=4, updatedReplicas=2)
    assert not rolled_out(rolling) and available(rolling) == 2


def test_what_the_operator_keeps_of_a_deployment_answers_as_the_whole_does():
    canary = canary_manifest(STABLE, ROLLOUT, container="server", model_env="MODEL_URI", model=V2, replicas=1)
    watched = copy.deepcopy(STABLE)
    watched["metadata"].update(uid="d-1", resourceVersion="812", creationTimestamp="2026-01-01T00:00:00Z",
                               annotations={"kubectl.kubernetes.io/last-applied-configuration": "{...}" * 500},
                               managedFields=[{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}] * 20)
    kept = essentials(watched)
    assert "managedFields" not in kept["metadata"] and "annotations" not in kept["metadata"]
    assert len(str(kept)) < len(str(watched)) / 4
    assert kept["spec"] == STABLE["spec"] and kept["status"] == STABLE["status"]
    for read in (rolled_out, available, lambda d: serves(d, container="server", model_env="MODEL_URI",
                                                         uri="s3://m/v1")):
        assert read(kept) == read(watched)
    assert canary_manifest(kept, ROLLOUT, container="server", model_env="MODEL_URI", model=V2, replicas=1) == canary
    assert owned_by_rollout(essentials({**canary, "status": {}})) and not owned_by_rollout(kept)


def test_watch_events_keep_what_a_look_reads_and_an_expired_watch_lists_again():
    watched = Watched()
    watched._followed.add("prod")  # as if listed: get reads what the events left
    stable = {**copy.deepcopy(STABLE), "metadata": {**STABLE["metadata"], "resourceVersion": "7", "managedFields": []}}
    assert watched._apply("prod", {"type": "ADDED", "object": stable}, "1") == "7"
    assert watched.get("prod", "bot") == essentials(stable)
    looked = watched.get("prod", "bot")
    looked["spec"]["replicas"] = 99  # each look decodes a copy of its own
    assert watched.get("prod", "bot")["spec"]["replicas"] == 4
    scaled = copy.deepcopy(stable)
    scaled["spec"]["replicas"], scaled["metadata"]["resourceVersion"] = 6, "9"
    assert watched._apply("prod", {"type": "MODIFIED", "object": scaled}, "7") == "9"
    assert watched.get("prod", "bot")["spec"]["replicas"] == 6
    bookmark = {"type": "BOOKMARK", "object": {"kind": "Deployment", "metadata": {"resourceVersion": "12"}}}
    assert watched._apply("prod", bookmark, "9") == "12" and watched.get("prod", "bot") is not None
    assert watched._apply("prod", {"type": "DELETED", "object": scaled}, "12") == "9"
    assert watched.get("prod", "bot") is None
    with pytest.raises(Expired):
        watched._apply("prod", {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}, "9")


def test_container_name_defaults_to_the_first_and_names_what_exists():
    assert container_name(STABLE, None) == "proxy" and container_name(STABLE, "server") == "server"
    with pytest.raises(ValueError, match=r"has no container 'model' \(it has proxy, server\)"):
        container_name(STABLE, "model")


@pytest.mark.parametrize("name, action, expected", [
    ("bot-v2", "promote", ("Rollout", "bot-v2")),
    ("bot-v2", "approve", (None, "bot-v2")),
    ("rollout/bot-v2", "approve", ("Rollout", "bot-v2")),
    ("loop/bot", "approve", ("ImprovementLoop", "bot")),
    ("kro/bot-v2", "abort", ("Rollout", "bot-v2")),
])
def test_cli_targets(name, action, expected):
    assert target(name, action) == expected


def test_cli_target_errors_say_what_is_accepted():
    with pytest.raises(ValueError, match="KIND one of"):
        target("deploy/bot", "promote")
    with pytest.raises(ValueError, match="an ImprovementLoop can only be approved"):
        target("loop/bot", "promote")
