"""Experiment tracking without a server: what a RetrainJob's spec.tracking becomes in the trainer's config and pod,
how the trainer's config and metrics map onto an MLflow run, and how the run id reaches the status."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kaizen.api.retrainjob import RetrainJobSpec
from kaizen.api.trainer import MlflowRun, TrainerConfig, TrainerResult
from kaizen.dev.cluster import free_ports
from kaizen.logic.retrain import observe, plan
from kaizen_trainer import tracking
from tests.unit.test_loop_decide import BREACHED, ENOUGH_FEEDBACK, EXAMPLE, Observed, run
from tests.unit.test_retrain_logic import NOW, job, pod, spec

TRACKING = {"mlflow": {"trackingURI": "http://mlflow.mlflow.svc:5000", "experiment": "support-bot",
                       "tokenSecretRef": {"name": "mlflow", "key": "token"}}}


def test_spec_tracking_becomes_the_trainers_mlflow_run_named_after_the_retrainjob_with_its_token_mounted():
    planned = plan(spec(tracking=TRACKING), "rj-7", "team", "u")
    assert planned.config.mlflow.model_dump(by_alias=True) == {
        "trackingURI": "http://mlflow.mlflow.svc:5000", "experiment": "support-bot", "runName": "rj-7",
        "tokenFile": "/var/run/kaizen/mlflow/token"}
    pod_spec = planned.job["spec"]["template"]["spec"]
    assert {"name": "mlflow-token", "secret": {"secretName": "mlflow", "items": [{"key": "token", "path": "token"}]}} \
        in pod_spec["volumes"]
    assert {"name": "mlflow-token", "mountPath": "/var/run/kaizen/mlflow", "readOnly": True} \
        in pod_spec["containers"][0]["volumeMounts"]
    assert '"mlflow"' in planned.config_map["data"]["config.json"]


def test_without_tracking_the_trainer_records_nothing():
    planned = plan(spec(), "rj", "team", "u")
    assert planned.config.mlflow is None
    assert "mlflow" not in planned.config_map["data"]["config.json"]


def test_a_tracking_uri_must_be_http():
    with pytest.raises(ValidationError, match="trackingURI"):
        spec(tracking={"mlflow": {"trackingURI": "file:///mlruns"}})


def config() -> TrainerConfig:
    return plan(spec(tracking=TRACKING, lora=None, hyperparameters={"learningRate": 0.001, "maxSteps": 40},
                     feedback={"collectorURL": "http://collector:8080", "model": "bot",
                               "tokenSecretRef": {"name": "c", "key": "t"}}), "rj-7", "team", "u").config


def test_params_are_the_config_flattened_without_the_pods_paths_and_ids():
    p = tracking.params(config())
    assert p["hyperparameters.learningRate"] == "0.001" and p["hyperparameters.maxSteps"] == "40"
    assert p["task"] == "causal-lm" and p["method"] == "full" and p["baseline.version"] == "v3"
    assert p["baseline.uri"] == "s3://models/v3"
    assert p["targets.scenarios"] == '["refund", "returns"]'
    assert p["gates"] == '[{"metric": "accuracy", "dataset": "holdout", "minDelta": 0.0}]'
    for key in p:
        assert not key.startswith(("outputDir", "checkpointDir", "mlflow", "decisionId", "job")), key
    assert "feedback.tokenFile" not in p and p["feedback.url"].startswith("http://collector:8080/v1/export?")


def test_long_param_values_are_cut_to_mlflows_limit():
    long = config().model_copy(update={"candidate_version": "v9"})
    long.data.replay[0].uri = "/data/" + "x" * 7000
    value = next(v for k, v in tracking.params(long).items() if k == "data.replay")
    assert len(value) == tracking.MAX_PARAM_VALUE and value.endswith("…")


def test_metrics_put_candidate_and_baseline_side_by_side_and_drop_what_json_cannot_carry():
    m = tracking.metrics({"candidate": {"holdout.accuracy": 0.9, "holdout.accuracy.plan=pro+eu": 0.8,
                                        "holdout.perplexity": float("inf")},
                          "baseline": {"holdout.accuracy": 0.6}},
                         {"steps": 40, "tokensPerSecond": 1234.5, "device": "cpu"})
    assert m == {"candidate.holdout.accuracy": 0.9, "candidate.holdout.accuracy.plan_pro_eu": 0.8,
                 "baseline.holdout.accuracy": 0.6, "training.steps": 40.0, "training.tokensPerSecond": 1234.5}


def test_the_decision_id_is_a_tag_and_none_values_are_left_out():
    t = tracking.tags(config(), verdict="Passed", failureReason=None)
    assert t["kaizen.decisionId"] == "d1" and t["kaizen.job"] == "team/rj-7" and t["kaizen.verdict"] == "Passed"
    assert t["kaizen.baselineVersion"] == "v3" and t["kaizen.candidateVersion"] == "rj-7"
    assert "kaizen.failureReason" not in t


def test_batches_keep_within_mlflows_per_request_limits():
    p = {f"p{i}": "v" for i in range(250)}
    m = {f"m{i}": float(i) for i in range(1001)}
    bodies = tracking.batches("r1", p, m, {"a": "b"}, 7, 1000)
    assert [len(b.get("params", b.get("metrics", b.get("tags")))) for b in bodies] == [100, 100, 50, 1000, 1, 1]
    assert all(b["run_id"] == "r1" for b in bodies)
    assert bodies[3]["metrics"][0] == {"key": "m0", "value": 0.0, "timestamp": 1000, "step": 7}


def test_the_run_id_the_trainer_reports_reaches_the_status():
    result = TrainerResult(phase="Succeeded", reason="Completed", mlflow_run_id="0123abcd",
                           metrics={"candidate": {"holdout.accuracy": 0.9}, "baseline": {"holdout.accuracy": 0.5}})
    done = observe(spec(), job(("Complete", "CompletionsReached")),
                   [pod("p1", "Succeeded", {"exitCode": 0, "message": result.to_termination_message()})], NOW)
    assert done.phase == "Succeeded" and done.fields["mlflowRunID"] == "0123abcd"
    assert done.message == "Candidate passed all 1 gate(s)."


def test_a_run_the_trainer_could_not_record_is_said_in_the_status_message_not_failed():
    result = TrainerResult(phase="Succeeded", reason="Completed", mlflow_error="MLflow at http://m did not answer",
                           metrics={"candidate": {"holdout.accuracy": 0.9}, "baseline": {"holdout.accuracy": 0.5}})
    done = observe(spec(tracking=TRACKING), job(("Complete", "CompletionsReached")),
                   [pod("p1", "Succeeded", {"exitCode": 0, "message": result.to_termination_message()})], NOW)
    assert done.phase == "Succeeded" and "mlflowRunID" not in done.fields
    assert done.message == "Candidate passed all 1 gate(s). Not recorded in MLflow: MLflow at http://m did not answer"


def test_an_unreachable_server_is_a_tracking_error_naming_it():
    url = f"http://127.0.0.1:{free_ports(1)[0]}"
    client = tracking.Client(MlflowRun(tracking_uri=url, run_name="rj"), backoff=0)
    with pytest.raises(tracking.TrackingError, match=f"MLflow at {url} did not answer POST mlflow/runs/create after "
                                                     "4 tries: .*Connection refused"):
        client.call("POST", "mlflow/runs/create", {})


def test_an_unreadable_token_file_says_which():
    with pytest.raises(tracking.TrackingError, match="cannot read the MLflow token file /no/such/token"):
        tracking.Client(MlflowRun(tracking_uri="http://127.0.0.1:1", run_name="rj", token_file="/no/such/token"))


def test_a_loops_tracking_reaches_every_retrainjob_it_starts():
    planned = run(Observed(BREACHED, feedback=ENOUGH_FEEDBACK))
    assert planned.create.kind == "RetrainJob"
    assert planned.create.spec["tracking"] == EXAMPLE["retrain"]["tracking"] == {
        "mlflow": {"trackingURI": "http://mlflow.mlflow.svc:5000", "experiment": "support-bot"}}
    retrain = RetrainJobSpec.model_validate({**planned.create.spec, "reason": {"decisionId": "d9", "summary": "s"}})
    assert plan(retrain, "rj", "team", "u").config.mlflow.experiment == "support-bot"


def test_artifacts_go_straight_to_an_artifact_root_the_server_does_not_proxy(tmp_path):
    """``mlflow server --no-serve-artifacts`` hands out the artifact root itself (here a file:// one)."""
    (tmp_path / "MODEL_CARD.md").write_text("# card\n")
    root = tmp_path / "mlruns" / "1" / "r1" / "artifacts"
    tracking.Client(MlflowRun(tracking_uri="http://127.0.0.1:1", run_name="rj")).upload(
        f"file://{root}", [tmp_path / "MODEL_CARD.md"])
    assert (root / "MODEL_CARD.md").read_text() == "# card\n"
    with pytest.raises(tracking.TrackingError, match="cannot write the run's artifacts to gs://bucket/1/r1"):
        tracking.Client(MlflowRun(tracking_uri="http://127.0.0.1:1", run_name="rj")).upload(
            "gs://bucket/1/r1", [tmp_path / "MODEL_CARD.md"])
