"""Experiment tracking: the retrain recorded as one MLflow run, where teams already keep their experiments.

With ``mlflow`` in the config (the RetrainJob's ``spec.tracking.mlflow``), rank 0 records, once evaluated: the
trainer's parameters, the candidate's and the baseline's metrics, the dataset manifest, ``metrics.json`` and the model
card as artifacts, and the decision id as the tag ``kaizen.decisionId``. A failed run is recorded too, as FAILED.

It speaks MLflow's REST API (``/api/2.0/mlflow``, the server's public, versioned API) with the standard library: the
client package would bring some twenty packages (a web server among them) into the trainer image for six calls.
Artifacts go where the run's artifact URI says: through the server for ``mlflow-artifacts:`` (what ``mlflow
server`` proxies by default), else straight to the artifact root (a path, ``file://``, or ``s3://`` through fsspec).

A retry of the same RetrainJob (a new pod resuming) finds the run it recorded before, by the tags ``kaizen.job`` and
``kaizen.decisionId``, and completes it, so one RetrainJob stays one run. The mapping functions are pure; the
:class:`Client` is the edge. Tracking never fails a retrain: what went wrong is logged and said in the result.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kaizen.api.trainer import MlflowRun, TrainerConfig
from kaizen_trainer import load
from kaizen_trainer.errors import TrainerError

log = logging.getLogger("kaizen_trainer")

#: MLflow's limits (mlflow/utils/validation.py): one log-batch request, a param value, a key.
MAX_PARAMS_PER_BATCH, MAX_TAGS_PER_BATCH, MAX_METRICS_PER_BATCH = 100, 100, 1000
MAX_PARAM_VALUE, MAX_KEY = 6000, 250
#: Config fields that are where this pod writes, or the tracking itself: no parameter of the experiment.
NOT_PARAMS = {"decisionId", "outputDir", "checkpointDir", "checkpointMirror", "mlflow", "job", "candidateVersion"}
ARTIFACTS = ("dataset-manifest.json", "metrics.json", "MODEL_CARD.md")
RETRIES = 4


class TrackingError(Exception):
    """The tracking server could not be reached or refused a call; the message says which and why."""


def params(config: TrainerConfig) -> dict[str, str]:
    """The config as MLflow parameters: nested fields flattened with dots (``hyperparameters.learningRate``), lists as
    JSON; the run's own paths and ids left out (they are tags, or differ between pods)."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            flat[_key(prefix)] = text if len(text) <= MAX_PARAM_VALUE else text[:MAX_PARAM_VALUE - 1] + "…"

    wire = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    walk("", {k: v for k, v in wire.items() if k not in NOT_PARAMS})
    flat.pop("feedback.tokenFile", None)
    return flat


def metrics(evaluated: Mapping[str, Mapping[str, float]], training: Mapping[str, Any]) -> dict[str, float]:
    """``candidate.<dataset>.<metric>[.<cohort>]`` and ``baseline.…``, side by side, and the training's throughput.
    Values that are not finite (a perplexity that overflowed) are left out: JSON has no NaN; metrics.json has them."""
    out = {_key(f"{who}.{key}"): float(value) for who, values in evaluated.items() for key, value in values.items()}
    for key in ("steps", "tokens", "seconds", "tokensPerSecond"):
        if isinstance(training.get(key), int | float):
            out[f"training.{key}"] = float(training[key])
    return {key: value for key, value in out.items() if math.isfinite(value)}


def tags(config: TrainerConfig, **more: str | None) -> dict[str, str]:
    """The run's tags: the decision that started the retrain, the RetrainJob, the versions, and ``more``."""
    base = {
        "kaizen.decisionId": config.decision_id, "kaizen.job": config.job, "kaizen.task": config.task,
        "kaizen.baselineVersion": config.baseline.version, "kaizen.candidateVersion": config.candidate_version,
        "mlflow.source.type": "JOB", "mlflow.source.name": "kaizen-trainer",
    }
    return base | {f"kaizen.{k}": v for k, v in more.items() if v is not None}


def _key(key: str) -> str:
    """An MLflow key: letters, digits and ``_-. :/`` (a cohort or scenario name may hold anything else)."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", key)[:MAX_KEY]


def batches(run_id: str, p: Mapping[str, str], m: Mapping[str, float], t: Mapping[str, str], step: int,
            timestamp_ms: int) -> list[dict[str, Any]]:
    """``runs/log-batch`` bodies within MLflow's per-request limits."""
    items: dict[str, list[dict[str, Any]]] = {
        "params": [{"key": k, "value": v} for k, v in p.items()],
        "metrics": [{"key": k, "value": v, "timestamp": timestamp_ms, "step": step} for k, v in m.items()],
        "tags": [{"key": k, "value": v} for k, v in t.items()],
    }
    limits = {"params": MAX_PARAMS_PER_BATCH, "metrics": MAX_METRICS_PER_BATCH, "tags": MAX_TAGS_PER_BATCH}
    bodies = []
    for kind, rows in items.items():
        for start in range(0, len(rows), limits[kind]):
            bodies.append({"run_id": run_id, kind: rows[start:start + limits[kind]]})
    return bodies


class Client:
    """The few calls of MLflow's REST API a run needs, retried with backoff while the server is unreachable or
    answers 5xx or 429."""

    def __init__(self, tracking: MlflowRun, timeout: float = 30, backoff: float = 1.0) -> None:
        self.base = tracking.tracking_uri.rstrip("/")
        self.timeout, self.backoff = timeout, backoff
        self.headers = {"Content-Type": "application/json"}
        if tracking.token_file:
            try:
                token = Path(tracking.token_file).read_text().strip()
            except OSError as error:
                raise TrackingError(f"cannot read the MLflow token file {tracking.token_file}: {error}") from None
            self.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
             missing_ok: bool = False) -> dict[str, Any]:
        url = f"{self.base}/api/2.0/{path}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = self.headers if raw is None else {**self.headers, "Content-Type": "application/octet-stream"}
        for attempt in range(RETRIES):
            request = urllib.request.Request(url, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    text = response.read()
                return json.loads(text) if text.strip() else {}
            except urllib.error.HTTPError as error:
                detail = error.read().decode(errors="replace")[:500]
                if missing_ok and error.code == 404:
                    return {}
                if error.code < 500 and error.code != 429:
                    raise TrackingError(f"MLflow answered {method} {url} with HTTP {error.code}: {detail}") from None
                problem = f"HTTP {error.code}: {detail}"
            except (OSError, ValueError) as error:  # refused, timed out, or not JSON
                problem = str(error)
            if attempt < RETRIES - 1:
                time.sleep(self.backoff * 2 ** attempt)
        raise TrackingError(f"MLflow at {self.base} did not answer {method} {path} after {RETRIES} tries: {problem}")

    def experiment_id(self, name: str) -> str:
        found = self.call("GET", "mlflow/experiments/get-by-name?" + urllib.parse.urlencode(
            {"experiment_name": name}), missing_ok=True)
        if found:
            return found["experiment"]["experiment_id"]
        try:
            return self.call("POST", "mlflow/experiments/create", {"name": name})["experiment_id"]
        except TrackingError:  # another retrain created it meanwhile
            return self.call("GET", "mlflow/experiments/get-by-name?" + urllib.parse.urlencode(
                {"experiment_name": name}))["experiment"]["experiment_id"]

    def find_run(self, experiment_id: str, job: str, decision_id: str) -> dict[str, Any] | None:
        """The run an earlier pod of this RetrainJob recorded, if any."""
        if "'" in job + decision_id:  # not expressible in MLflow's filter syntax; a new run then
            return None
        runs = self.call("POST", "mlflow/runs/search", {
            "experiment_ids": [experiment_id], "max_results": 1,
            "filter": f"tags.`kaizen.job` = '{job}' and tags.`kaizen.decisionId` = '{decision_id}'",
        }).get("runs", [])
        return runs[0]["info"] if runs else None

    def upload(self, artifact_uri: str, files: list[Path]) -> None:
        if artifact_uri.startswith("mlflow-artifacts:"):
            path = urllib.parse.urlparse(artifact_uri).path.strip("/")
            for file in files:
                self.call("PUT", f"mlflow-artifacts/artifacts/{urllib.parse.quote(path)}/{file.name}",
                          raw=file.read_bytes())
            return
        local = load.local_path(artifact_uri)
        try:
            if local is not None:
                local.mkdir(parents=True, exist_ok=True)
                for file in files:
                    shutil.copyfile(file, local / file.name)
                return
            fs = load.require_fsspec(artifact_uri).filesystem(artifact_uri.split("://")[0])
            for file in files:
                fs.put(str(file), f"{artifact_uri.rstrip('/')}/{file.name}")
        except (OSError, ValueError, ImportError, TrainerError) as error:
            raise TrackingError(f"cannot write the run's artifacts to {artifact_uri}: {error}") from None


def record(config: TrainerConfig, *, status: str, evaluated: Mapping[str, Mapping[str, float]] | None = None,
           training: Mapping[str, Any] | None = None, artifacts: Path | None = None,
           **more_tags: str | None) -> str:
    """Record the retrain as an MLflow run (status FINISHED or FAILED); returns its run id. Raises
    :class:`TrackingError`."""
    assert config.mlflow is not None
    client = Client(config.mlflow)
    experiment = client.experiment_id(config.mlflow.experiment)
    now = int(time.time() * 1000)
    run = client.find_run(experiment, config.job, config.decision_id)
    if run is None:
        run = client.call("POST", "mlflow/runs/create", {
            "experiment_id": experiment, "run_name": config.mlflow.run_name, "start_time": now,
            "tags": [{"key": k, "value": v} for k, v in tags(config).items()],
        })["run"]["info"]
    run_id = run["run_id"]
    step = int(training.get("steps", 0)) if training else 0
    for body in batches(run_id, params(config), metrics(evaluated or {}, training or {}),
                        tags(config, **more_tags), step, now):
        client.call("POST", "mlflow/runs/log-batch", body)
    if artifacts is not None:
        client.upload(run["artifact_uri"], [artifacts / name for name in ARTIFACTS if (artifacts / name).exists()])
    client.call("POST", "mlflow/runs/update", {"run_id": run_id, "status": status, "end_time": now})
    log.info("Recorded run in MLflow run_id=%s experiment=%s tracking_uri=%s status=%s", run_id,
             config.mlflow.experiment, config.mlflow.tracking_uri, status)
    return run_id
