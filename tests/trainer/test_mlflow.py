"""Experiment tracking for real: the trainer trains a tiny model built from a config and records the retrain in a
real ``mlflow server`` (SQLite backend store, artifacts proxied by the server) on loopback, and the run is read back
through MLflow's REST API: parameters, candidate and baseline metrics, the dataset manifest, metrics.json and the model
card as artifacts, and the decision id as a tag. A retried pod completes the same run; a failed retrain is a FAILED run.

The server comes from :mod:`tests.fixtures.mlflow`, built in its own environment by ``make setup``.
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

from kaizen.dev.cluster import free_ports
from kaizen_trainer import synthetic
from tests.fixtures.mlflow import mlflow, rest  # noqa: F401
from tests.fixtures.mlflow import runs as runs_of
from tests.trainer.conftest import config, run_trainer, write_jsonl

TASK = "sequence-classification"
EXPERIMENT = "support-bot"


def runs(url: str, job: str) -> list[dict]:
    return runs_of(url, EXPERIMENT, job)


def tracked(tmp_path: Path, url: str, job: str, **overrides) -> dict:
    """A trainer config for a tiny retrain from a config-built model, recorded in ``url``."""
    init = synthetic.save_model(TASK, tmp_path / "init")
    replay = write_jsonl(tmp_path / "replay.jsonl", synthetic.dataset(200, seed=31, task=TASK, prefix="rp"))
    return config(tmp_path, TASK, init, job=job, decisionId=f"d-{job.split('/')[1]}",
                  data={"replay": [{"uri": str(replay)}], "targetedRatio": 0},
                  hyperparameters={"maxSteps": 8},
                  gates=[{"metric": "accuracy", "dataset": "holdout", "minDelta": -1}],
                  mlflow={"trackingURI": url, "experiment": EXPERIMENT, "runName": job.split("/")[1]}, **overrides)


def test_a_retrain_is_one_mlflow_run_with_params_metrics_artifacts_and_the_decision_id(mlflow, tmp_path):
    cfg = tracked(tmp_path, mlflow, "team/rj-tracked")
    code, result = run_trainer(tmp_path / "pod-a", cfg)
    assert code == 0, result.message
    [run] = runs(mlflow, "team/rj-tracked")
    info, data = run["info"], run["data"]
    assert result.mlflow_run_id == info["run_id"]
    assert (info["status"], info["run_name"]) == ("FINISHED", "rj-tracked")

    tags = {t["key"]: t["value"] for t in data["tags"]}
    assert tags["kaizen.decisionId"] == "d-rj-tracked" and tags["kaizen.verdict"] == "Passed"
    params = {p["key"]: p["value"] for p in data["params"]}
    assert params["hyperparameters.maxSteps"] == "8" and params["task"] == TASK and params["method"] == "full"
    assert params["baseline.uri"] == cfg["baseline"]["uri"]
    out = Path(cfg["outputDir"])
    written = json.loads((out / "metrics.json").read_text())
    logged = {m["key"]: m["value"] for m in data["metrics"]}
    for who in ("candidate", "baseline"):
        assert {k.removeprefix(f"{who}."): v for k, v in logged.items() if k.startswith(f"{who}.")} == written[who]
    assert logged["training.steps"] == 8

    listed = rest(mlflow, f"mlflow/artifacts/list?run_id={info['run_id']}")["files"]
    assert sorted(f["path"] for f in listed) == ["MODEL_CARD.md", "dataset-manifest.json", "metrics.json"]
    for name in ("MODEL_CARD.md", "dataset-manifest.json"):
        stored = rest(mlflow, "mlflow-artifacts/artifacts/" + urllib.parse.urlparse(info["artifact_uri"]).path.strip(
            "/") + f"/{name}", raw=True)
        assert stored == (out / name).read_bytes()

    # The pod is retried (say it was evicted after recording): its run is completed again, not recorded twice.
    code, again = run_trainer(tmp_path / "pod-b", cfg | {"checkpointDir": str(tmp_path / "pod-b" / "ckpt")})
    assert code == 0, again.message
    [run] = runs(mlflow, "team/rj-tracked")
    assert again.mlflow_run_id == run["info"]["run_id"] == info["run_id"]


def test_a_failed_retrain_is_a_failed_run_with_its_reason(mlflow, tmp_path):
    cfg = tracked(tmp_path, mlflow, "team/rj-broken")
    cfg["data"]["replay"] = [{"uri": str(tmp_path / "no-such.jsonl")}]
    code, result = run_trainer(tmp_path / "pod", cfg)
    assert code != 0 and result.phase == "Failed"
    [run] = runs(mlflow, "team/rj-broken")
    assert result.mlflow_run_id == run["info"]["run_id"] and run["info"]["status"] == "FAILED"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["kaizen.failureReason"] == result.reason and "no-such.jsonl" in tags["kaizen.failureMessage"]
    assert tags["kaizen.decisionId"] == "d-rj-broken"


def test_a_tracking_server_that_does_not_answer_does_not_fail_the_retrain(tmp_path):
    """The run is a record of the retrain, not a gate of it: the candidate is still judged, and the result says what
    was not recorded, and why."""
    closed = f"http://127.0.0.1:{free_ports(1)[0]}"
    code, result = run_trainer(tmp_path / "pod", tracked(tmp_path, closed, "team/rj-offline"))
    assert code == 0 and result.phase == "Succeeded" and result.mlflow_run_id is None
    assert result.message == "Passed: 1/1 gates passed"
    assert result.mlflow_error.startswith(f"MLflow at {closed} did not answer GET mlflow/experiments/get-by-name")
    assert "after 4 tries" in result.mlflow_error
