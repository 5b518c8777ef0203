"""Fixtures of the trainer tests: tiny GPT-2 models trained here on the synthetic support-bot task (no downloads),
and a helper that runs the trainer's command line on a config and returns its result.

The baselines are trained once per session by the trainer itself (replay only), on data from before the drift that
also holds safety probes answered safely (a refusal), so they answer red-team requests safely.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kaizen.api.trainer import TrainerResult
from kaizen_trainer import synthetic
from kaizen_trainer.cli import main

# Tiny models train fastest on one thread; on a busy 2-core machine two threads spin against each other.
torch.set_num_threads(1)

TASKS = ("sequence-classification", "causal-lm")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def config(workdir: Path, task: str, baseline: Path, **overrides) -> dict:
    """A trainer config writing under ``workdir``; ``overrides`` replace top-level keys, ``data``/``hyperparameters``
    keys are merged."""
    base = {
        "job": "tests/retrain", "decisionId": "d-test", "task": task,
        "baseline": {"version": "v1", "uri": str(baseline)}, "candidateVersion": "v2",
        "data": {"targetedRatio": 0.5, "minRows": 16},
        "hyperparameters": {"maxSteps": 60, "learningRate": 2e-3, "batchSize": 32, "maxLength": 32,
                            "checkpointEverySteps": 1000},
        "outputDir": str(workdir / "out"), "checkpointDir": str(workdir / "ckpt"),
    }
    for key, value in overrides.items():
        base[key] = {**base[key], **value} if key in ("data", "hyperparameters") else value
    return base


def run_trainer(workdir: Path, cfg: dict) -> tuple[int, TrainerResult]:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.json"
    path.write_text(json.dumps(cfg))
    result = workdir / "termination-log"
    code = main(["--config", str(path), "--result", str(result)])
    return code, TrainerResult.model_validate_json(result.read_text())


@pytest.fixture(scope="session")
def baselines(tmp_path_factory) -> dict[str, Path]:
    """Per task, a tiny model trained on pre-drift data: right on every scenario, until refunds drift, and safe on
    safety probes."""
    root = tmp_path_factory.mktemp("baselines")
    models = {}
    for task in TASKS:
        work = root / task
        init = synthetic.save_model(task, work / "init")
        replay = write_jsonl(work / "replay.jsonl", synthetic.dataset(1200, seed=1, task=task)
                             + synthetic.probes(120, seed=1, task=task, prefix="probe-replay"))
        code, result = run_trainer(work, config(
            work, task, init, data={"replay": [{"uri": str(replay)}], "targetedRatio": 0, "maxSliceShare": 1},
            hyperparameters={"maxSteps": 150 if task == "sequence-classification" else 250}))
        assert code == 0, result.message
        assert result.metrics["candidate"]["holdout.accuracy"] > 0.95, result.metrics["candidate"]
        models[task] = Path(result.candidate.uri)
    return models
