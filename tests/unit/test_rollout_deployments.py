"""The manifests a Rollout applies: the canary beside the stable, and the promotion's apply configuration."""

from __future__ import annotations

import copy

import pytest

from kaizen.api.common import ModelRef
from kaizen.cli.rollout import target
from kaizen.logic.deployments import available, canary_manifest, container_name, model_patch, rolled_out, serves

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
