"""Preemption: a trainer killed mid-run (SIGKILL, as an OOM kill or a lost node does) resumes in the next pod from
its newest checkpoint, at the step it reached, and ends with the same model as a run that was never interrupted; a
trainer told to stop (SIGTERM) checkpoints the step it is at first."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
from safetensors.torch import load_file

from kaizen.api.trainer import TrainerResult
from kaizen_trainer import synthetic
from tests.trainer.conftest import config, run_trainer, write_jsonl

REPO = Path(__file__).parents[2]


def test_killed_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(tmp_path, baselines, caplog):
    task = "sequence-classification"
    feedback = write_jsonl(tmp_path / "feedback.jsonl", synthetic.feedback(120, seed=12, task=task))
    replay = write_jsonl(tmp_path / "replay.jsonl", synthetic.dataset(300, seed=6, task=task, prefix="rp"))
    steps = 200

    def cfg(work: Path) -> dict:
        return config(work, task, baselines[task], feedback={"url": str(feedback)},
                      data={"replay": [{"uri": str(replay)}]},
                      hyperparameters={"maxSteps": steps, "checkpointEverySteps": 20, "batchSize": 8})

    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "config.json").write_text(json.dumps(cfg(killed)))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "trainer-image"), *sys.path])}
    process = subprocess.Popen(
        [sys.executable, "-m", "kaizen_trainer", "--config", str(killed / "config.json"),
         "--result", str(killed / "termination-log")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list((killed / "ckpt").glob("step-*.pt")):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint was written within 2 minutes"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # killed mid-run, not finished
    reached = max(int(p.stem.split("-")[1]) for p in (killed / "ckpt").glob("step-*.pt"))
    assert 0 < reached < steps

    with caplog.at_level(logging.INFO, logger="kaizen_trainer"):
        code, resumed = run_trainer(killed, cfg(killed))
    assert code == 0, resumed.message
    assert resumed.steps == steps
    assert f"Resumed from checkpoint step={reached} of {steps}" in caplog.text

    straight = tmp_path / "straight"
    code, uninterrupted = run_trainer(straight, cfg(straight))
    assert code == 0
    a = load_file(killed / "out" / "model" / "model.safetensors")
    b = load_file(straight / "out" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a), "the resumed run ended with other weights"

    def quality(result):  # latency differs from run to run; everything else must not
        return {who: {k: v for k, v in m.items() if "latency" not in k} for who, m in result.metrics.items()}

    assert quality(resumed) == quality(uninterrupted)


def test_sigterm_checkpoints_the_current_step_before_the_pod_goes(tmp_path, baselines):
    """What the kubelet sends on preemption: the trainer saves where it is and exits retryable (not permanent)."""
    task = "sequence-classification"
    replay = write_jsonl(tmp_path / "replay.jsonl", synthetic.dataset(300, seed=8, task=task, prefix="rp"))
    cfg = config(tmp_path, task, baselines[task], data={"replay": [{"uri": str(replay)}], "targetedRatio": 0},
                 hyperparameters={"maxSteps": 100_000, "checkpointEverySteps": 1_000_000, "batchSize": 8})
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "trainer-image"), *sys.path])}
    process = subprocess.Popen(
        [sys.executable, "-m", "kaizen_trainer", "--config", str(tmp_path / "config.json"),
         "--result", str(tmp_path / "termination-log")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    for line in process.stderr:  # wait until it trains, then preempt it
        if b"Training steps=" in line or time.monotonic() > deadline:
            break
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 1  # EXIT_RETRY: the Job makes another pod
    result = TrainerResult.model_validate_json((tmp_path / "termination-log").read_text())
    assert result.reason == "Error" and not result.permanent
    step = int(result.message.split("at step ")[1].split(";")[0])
    assert [p.name.split("-")[1] for p in (tmp_path / "ckpt").glob("step-*.pt")] == [str(step)]


def test_a_new_pod_resumes_from_the_mirrored_checkpoints(tmp_path, baselines, caplog):
    """With output on object storage the checkpoints live on the pod's disk and a copy next to the output; a pod
    on another node (no local checkpoints) downloads them and resumes."""
    task = "sequence-classification"
    replay = write_jsonl(tmp_path / "replay.jsonl", synthetic.dataset(300, seed=9, task=task, prefix="rp"))
    mirror = f"memory://kaizen-tests/{tmp_path.name}/checkpoints"
    cfg = config(tmp_path, task, baselines[task], data={"replay": [{"uri": str(replay)}], "targetedRatio": 0},
                 checkpointMirror=mirror, hyperparameters={"maxSteps": 40, "checkpointEverySteps": 10})
    code, first = run_trainer(tmp_path / "node-a", cfg | {"checkpointDir": str(tmp_path / "node-a" / "ckpt")})
    assert code == 0, first.message
    fs, root = fsspec.core.url_to_fs(mirror)
    # The last two are kept.
    assert sorted(p.rsplit("/", 1)[-1].split("-")[1] for p in fs.ls(root, detail=False)) == ["30", "40"]

    with caplog.at_level(logging.INFO, logger="kaizen_trainer"):
        code, second = run_trainer(tmp_path / "node-b", cfg | {"checkpointDir": str(tmp_path / "node-b" / "ckpt")})
    assert code == 0, second.message
    assert "Resumed from checkpoint step=40 of 40" in caplog.text
    assert second.metrics["candidate"]["holdout.accuracy"] == first.metrics["candidate"]["holdout.accuracy"]
