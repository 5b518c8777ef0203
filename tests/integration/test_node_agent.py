"""The dev node agent as the kubelet of kwok's GPU node, with the operator: it runs a RetrainJob's training pod as
a local process and reports how the container ended, so the operator classifies it as it would a real pod's. The
whole successful run is the demo's (tests/e2e); here, the failures."""

from __future__ import annotations

import sys

import pytest

from kaizen.dev import processes
from tests.integration.kube import apply, wait_for
from tests.integration.rollouts import running_operator

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def operator(crds):
    with running_operator(crds):
        yield crds


@pytest.fixture(scope="module")
def agent(crds, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("node-agent")
    agent = processes.spawn("node-agent", [sys.executable, "-m", "kaizen.dev.node_agent", "--kubeconfig",
                                           str(crds.kubeconfig), "--dir", str(workdir), "--root",
                                           str(workdir / "node")], workdir / "node-agent.log", detach=False)
    yield agent
    processes.stop([agent])


def retrain_job(name, image="ghcr.io/kaizen-dev/kaizen-trainer:test", **spec):
    return {
        "apiVersion": "kaizen.dev/v1alpha1", "kind": "RetrainJob", "metadata": {"name": name},
        "spec": {
            "reason": {"decisionId": f"d-{name}", "summary": "Refund answers regressed."},
            "baseline": {"version": "v1", "uri": "/models/bot/v1"}, "image": image,
            "task": "sequence-classification", "data": {"replay": [{"uri": "/data/bot/missing.jsonl"}]},
            "targets": {"scenarios": ["refund"]},
            "outputURI": "/models/bot", "backoffLimit": 0, **spec,
        },
    }


def failed(obj):
    return obj.get("status", {}).get("phase") == "Failed"


def test_a_trainer_failing_on_its_data_fails_the_job_at_once_with_the_message_in_pod_paths(operator, agent,
                                                                                           namespace):
    apply(operator, namespace, retrain_job("bad-data", backoffLimit=3))
    status = wait_for(operator, "retrainjob", "bad-data", namespace, failed, timeout=90)["status"]
    assert status["attempts"] == 1  # a permanent failure (exit code 2) is not retried
    [failure] = status["failures"]
    assert failure["reason"] == "InvalidData" and failure["retried"] is False
    # The agent ran it on local folders, and reported what a pod would: the path as the pod sees it.
    assert failure["message"].startswith("cannot read /data/bot/missing.jsonl: No such file")
    assert "the trainer reported a failure retrying cannot fix" in status["message"]


def test_an_image_without_a_local_entry_point_fails_its_pod(operator, agent, namespace):
    apply(operator, namespace, retrain_job("unknown-image", image="example.com/other-trainer:1"))
    status = wait_for(operator, "retrainjob", "unknown-image", namespace, failed, timeout=60)["status"]
    [failure] = status["failures"]
    assert failure["reason"] == "Error"
    assert failure["message"].startswith("exit code 128: the dev node agent has no local entry point for image "
                                         "example.com/other-trainer:1")
