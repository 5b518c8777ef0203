"""A RetrainJob with ``spec.tracking.mlflow``, on the real operator: the dev node agent trains it for real (a tiny
sequence classifier on CPU) and the trainer records it in a real MLflow server on loopback; the RetrainJob's status
names the run, and the run holds what the status says (metrics, verdict) with the decision id as its tag."""

from __future__ import annotations

import pytest

from tests.fixtures.mlflow import mlflow, rest, runs  # noqa: F401
from tests.integration.kube import apply, wait_for
from tests.integration.test_retrainjob_distributed import agent, finished, operator, retrain_job  # noqa: F401

pytestmark = pytest.mark.integration


def test_a_tracked_retrainjob_is_an_mlflow_run_and_its_status_names_it(operator, agent, namespace, mlflow):
    manifest = retrain_job("tracked")
    manifest["spec"]["tracking"] = {"mlflow": {"trackingURI": mlflow, "experiment": "operator-test"}}
    apply(operator, namespace, manifest)
    status = wait_for(operator, "retrainjob", "tracked", namespace, finished, timeout=240)["status"]
    assert status["phase"] == "Succeeded", status.get("message")

    [run] = runs(mlflow, "operator-test", f"{namespace}/tracked")
    assert status["mlflowRunID"] == run["info"]["run_id"]
    assert (run["info"]["status"], run["info"]["run_name"]) == ("FINISHED", "tracked")
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["kaizen.decisionId"] == "d-tracked" and tags["kaizen.verdict"] == status["verdict"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["hyperparameters.maxSteps"] == "4" and params["baseline.version"] == "v1"
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    for who in ("candidate", "baseline"):
        assert metrics[f"{who}.holdout.accuracy"] == pytest.approx(status["metrics"][who]["holdout.accuracy"],
                                                                   abs=1e-6)
    listed = rest(mlflow, f"mlflow/artifacts/list?run_id={run['info']['run_id']}")["files"]
    assert sorted(f["path"] for f in listed) == ["MODEL_CARD.md", "dataset-manifest.json", "metrics.json"]
