"""The dev node agent's pure parts: which pods it runs (the ones kwok holds for it: training pods as the operator
labels them, serving pods by image), how a pod's paths map onto local folders and back, and which local entry point
an image has."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from kaizen.dev.cluster import KWOK_STAGES
from kaizen.dev.node_agent import (
    IMAGES, POD_LABEL, Filesystem, image_name, is_serving_pod, local_rendezvous, torchrun_argv,
)
from kaizen.dev.serving import ConfigError
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


# --- torchrun ------------------------------------------------------------------------------------------------------

TRAINER_ENTRY = [sys.executable, "-m", "kaizen_trainer", "--result", "/w/pod/termination-log"]


def test_a_torchrun_command_runs_torchs_launcher_on_the_images_entry_point():
    argv = torchrun_argv(["torchrun", "--standalone", "--nproc-per-node=2", "-m", "kaizen_trainer"], TRAINER_ENTRY)
    assert argv == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                    "-m", "kaizen_trainer", "--result", "/w/pod/termination-log"]
    # A launcher module with torchrun's options runs the same way.
    assert torchrun_argv(["python", "-m", "kaizen_trainer.launch", "--standalone", "-m", "kaizen_trainer"],
                         TRAINER_ENTRY)[:4] == [sys.executable, "-m", "kaizen_trainer.launch", "--standalone"]
    # The operator's command for a RetrainJob of several GPUs is one the agent runs.
    planned = retrain.plan(retrain_spec(gpus=2), "rj", "team", "uid")
    command = planned.job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert torchrun_argv(command, TRAINER_ENTRY)[:3] == [sys.executable, "-m", "kaizen_trainer.launch"]


@pytest.mark.parametrize("command, error", [
    (["python", "train.py"], "only as torchrun ... -m kaizen_trainer (or python -m torch.distributed.run or "
                                "kaizen_trainer.launch), not python train.py"),
    (["torchrun", "train.py"], "torchrun must run the image's module kaizen_trainer as its last argument"),
    (["torchrun", "-m", "other"], "torchrun must run the image's module kaizen_trainer"),
    (["python", "-m", "other.launcher", "-m", "kaizen_trainer"], "only as torchrun ... -m kaizen_trainer"),
])
def test_a_command_the_agent_cannot_run_is_a_config_error_saying_so(command, error):
    with pytest.raises(ConfigError, match=re.escape(error)):
        torchrun_argv(command, TRAINER_ENTRY)


def retrain_spec(**resources):
    from kaizen.api.retrainjob import RetrainJobSpec

    return RetrainJobSpec.model_validate({
        "reason": {"decisionId": "d1", "summary": "s"}, "baseline": {"version": "v1", "uri": "/models/v1"},
        "image": "ghcr.io/kaizen-dev/kaizen-trainer:test", "outputURI": "/models/bot", "resources": resources})


def test_pods_of_one_rendezvous_meet_on_one_local_port_and_other_rendezvous_on_others():
    command = retrain.plan(retrain_spec(gpus=2, nodes=2), "rj", "team", "uid").job["spec"]["template"]["spec"][
        "containers"][0]["command"]
    argv = torchrun_argv(command, TRAINER_ENTRY)
    ports: dict = {}
    first, _ = local_rendezvous(ports, "team", argv, {"PET_NODE_RANK": "0"})
    second, _ = local_rendezvous(ports, "team", argv, {"PET_NODE_RANK": "1"})
    other, _ = local_rendezvous(ports, "other-team", argv, {})
    assert first == second != other
    (port,) = [a.split("=")[1] for a in first if a.startswith("--master-port=")]
    assert "--master-addr=127.0.0.1" in first and "--local-addr=127.0.0.1" in first and port != "29500"
    assert list(ports) == [("team", "rj-trainer-0.rj-trainer", "29500"), ("other-team", "rj-trainer-0.rj-trainer",
                                                                          "29500")]
    assert first[first.index("-m", 3):] == TRAINER_ENTRY[1:]  # the trainer's own arguments untouched


def test_a_rendezvous_named_by_kubeflows_variables_moves_too_and_standalone_stays():
    argv = torchrun_argv(["torchrun", "-m", "kaizen_trainer"], TRAINER_ENTRY)
    ports: dict = {}
    moved, env = local_rendezvous(ports, "team", argv, {"PET_MASTER_ADDR": "tj-node-0-0.tj", "PET_MASTER_PORT": "29400",
                                                        "PET_NODE_RANK": "1"})
    assert env["PET_MASTER_ADDR"] == "127.0.0.1" and env["PET_MASTER_PORT"] == ports[("team", "tj-node-0-0.tj",
                                                                                        "29400")]
    assert env["PET_NODE_RANK"] == "1" and "--local-addr=127.0.0.1" in moved
    standalone = torchrun_argv(["torchrun", "--standalone", "--nproc-per-node=2", "-m", "kaizen_trainer"],
                               TRAINER_ENTRY)
    assert local_rendezvous(ports, "team", standalone, {}) == (standalone, {})
    assert local_rendezvous(ports, "team", TRAINER_ENTRY, {"PET_MASTER_ADDR": "x"}) == (TRAINER_ENTRY,
                                                                                       {"PET_MASTER_ADDR": "x"})
