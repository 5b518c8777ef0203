"""The dev node agent's pure parts: which pods it runs (the ones kwok holds for it: training pods as the operator
labels them, serving pods by image), how a pod's paths map onto local folders and back, and which local entry point
an image has."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from kaizen.dev.cluster import KWOK_STAGES
from kaizen.dev.node_agent import IMAGES, POD_LABEL, Filesystem, image_name, is_serving_pod
from kaizen.logic import retrain


STAGES = {s["metadata"]["name"]: s for s in yaml.safe_load_all(KWOK_STAGES.read_text()) if s}


def test_kwok_holds_exactly_the_training_pods_the_agent_runs():
    stages = STAGES
    held = [e for e in stages["pod-complete"]["spec"]["selector"]["matchExpressions"]
            if e["operator"] == "DoesNotExist" and "labels" in e["key"]]
    assert held == [{"key": f'.metadata.labels["{POD_LABEL}"]', "operator": "DoesNotExist"}]
    assert POD_LABEL == retrain.LABEL  # the operator puts it on every training pod


FS = Filesystem(mounts=(("/etc/kaizen/trainer", Path("/w/pod/volumes/config")),
                        ("/workspace", Path("/w/pod/volumes/workspace"))), root=Path("/w/node"))


def test_pod_paths_map_to_their_volume_or_the_nodes_root():
    assert FS.host("/etc/kaizen/trainer/config.json") == "/w/pod/volumes/config/config.json"
    assert FS.host("/workspace") == "/w/pod/volumes/workspace"
    assert FS.host("/workspace-other/x") == "/w/node/workspace-other/x"  # a prefix of a name is not a mount
    assert FS.host("/models/bot/v1/model") == "/w/node/models/bot/v1/model"


def test_json_config_paths_are_rewritten_and_urls_left_alone():
    config = {"outputDir": "/models/bot/ns/rj", "feedback": {"url": "http://collector:8090/v1/export?x=/y"},
              "data": {"replay": [{"uri": "/data/replay.jsonl"}]}, "steps": 3}
    assert FS.rewrite(config) == {"outputDir": "/w/node/models/bot/ns/rj",
                                  "feedback": {"url": "http://collector:8090/v1/export?x=/y"},
                                  "data": {"replay": [{"uri": "/w/node/data/replay.jsonl"}]}, "steps": 3}


def test_the_termination_message_reports_pod_paths():
    message = '{"candidate": {"uri": "/w/node/models/bot/ns/rj/model"}, "log": "/w/pod/volumes/workspace/x"}'
    assert FS.pod(message) == '{"candidate": {"uri": "/models/bot/ns/rj/model"}, "log": "/workspace/x"}'


def test_images_are_matched_without_tag_or_digest():
    assert image_name("ghcr.io/kaizen-dev/kaizen-trainer:0.1.0") == "ghcr.io/kaizen-dev/kaizen-trainer"
    assert image_name("ghcr.io/kaizen-dev/kaizen-trainer@sha256:abc") == "ghcr.io/kaizen-dev/kaizen-trainer"
    assert image_name("localhost:5000/trainer") == "localhost:5000/trainer"
    assert image_name("ghcr.io/kaizen-dev/kaizen-trainer:0.1.0") in IMAGES


def test_kwok_leaves_the_serving_pods_of_exactly_the_agents_images_to_it():
    [rule] = [e for e in STAGES["pod-ready"]["spec"]["selector"]["matchExpressions"] if "$image" in e["key"]]
    assert rule["operator"] == "NotIn" and rule["values"] == ["true"]
    # kwok evaluates the key with gojq; the images it names are the agent's, and it strips tags as image_name does.
    [listed] = re.findall(r'\(\[("[^]]*")\] \| any\(\. == \$image\)\)', rule["key"])
    assert sorted(json.loads(f"[{listed}]")) == sorted(IMAGES)
    assert 'sub("@.*"; "") | sub(":[^:/]*$"; "")' in rule["key"]
    assert 'any(. == "Job") | not' in rule["key"]


def pod(image, owner="ReplicaSet"):
    return {"metadata": {"name": "p", "ownerReferences": [{"kind": owner, "name": "o"}] if owner else []},
            "spec": {"containers": [{"name": "server", "image": image}]}}


@pytest.mark.parametrize("candidate, serves", [
    (pod("ghcr.io/kaizen-dev/kaizen-server:0.1.0"), True),
    (pod("ghcr.io/kaizen-dev/kaizen-server@sha256:abc", owner=None), True),
    (pod("ghcr.io/kaizen-dev/kaizen-server:0.1.0", owner="Job"), False),  # a Job's pod: kwok completes it
    (pod("ghcr.io/kaizen-dev/kaizen-trainer:0.1.0", owner="Job"), False),  # a training pod: the other path
    (pod("example.com/bot-server:1"), False),  # kwok fakes it
])
def test_the_agent_serves_pods_of_its_images_that_no_job_owns(candidate, serves):
    assert is_serving_pod(candidate) is serves
