"""s3:// for real: the trainer reads its baseline and data from S3, mirrors its checkpoints there, and writes its
model and reports there, against moto's S3 server on loopback. A second pod on a fresh disk resumes from the
mirrored checkpoints, and a LoRA candidate written to S3 names its S3 base.

botocore (under s3fs and moto) needs python-dateutil < 3 and kubernetes 37 needs >= 3, so these run the trainer in
its own environment, ``.venv-trainer-s3`` (``hack/setup-python.sh trainer-s3``, run by ``make setup``), the one the
trainer image installs: the trainer's contract and its dependencies, with none of the operator's.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kaizen.api.trainer import TrainerResult
from kaizen.dev import processes
from kaizen.dev.cluster import free_ports
from kaizen_trainer import synthetic
from tests.trainer.conftest import config, write_jsonl

REPO = Path(__file__).parents[2]
TASK = "sequence-classification"
BUCKET = "kaizen"


@pytest.fixture(scope="module")
def s3_python() -> Path:
    python = Path(os.environ.get("KAIZEN_TRAINER_S3_PYTHON") or REPO / ".venv-trainer-s3" / "bin" / "python")
    if not python.exists():
        pytest.fail(f"{python} is missing: run `make setup` (or hack/setup-python.sh trainer-s3) to build the "
                    "trainer's S3 environment, or set KAIZEN_TRAINER_S3_PYTHON to its python")
    return python


@pytest.fixture(scope="module")
def moto(s3_python: Path, tmp_path_factory: pytest.TempPathFactory):
    """moto's S3 server on a free loopback port, with the environment that points boto at it."""
    port = free_ports(1)[0]
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = processes.spawn("moto", [s3_python.parent / "moto_server", "-H", "127.0.0.1", "-p", str(port)], log,
                             detach=False)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=10).read()
            break
        except OSError:  # refused, or no answer yet (URLError and timeouts are OSErrors)
            assert server.alive(), server.log_tail()
            assert time.monotonic() < deadline, f"moto did not answer within 60 s:\n{server.log_tail()}"
            time.sleep(0.2)
    env = {**os.environ, "AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer-image")])}
    yield env
    processes.stop([server])


def in_trainer_env(python: Path, env: dict[str, str], code: str, *args: str) -> str:
    """Run ``code`` with the trainer environment's python; its stdout."""
    done = subprocess.run([str(python), "-c", code, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def s3(python: Path, env: dict[str, str], op: str, *args: str) -> str:
    """One s3fs operation: put LOCAL REMOTE (recursive), ls PREFIX (every key under it, one a line), cat KEY."""
    return in_trainer_env(python, env, """
import sys, s3fs
fs = s3fs.S3FileSystem()
op, args = sys.argv[1], sys.argv[2:]
if op == "mkbucket":
    fs.makedirs(args[0], exist_ok=True)
elif op == "put":
    fs.put(args[0], args[1], recursive=True)
elif op == "ls":
    print("\\n".join(sorted(fs.find(args[0]))))
elif op == "cat":
    sys.stdout.write(fs.cat(args[0]).decode())
""", op, *args)


def train(python: Path, env: dict[str, str], work: Path, cfg: dict) -> tuple[int, TrainerResult, str]:
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(cfg))
    done = subprocess.run([str(python), "-m", "kaizen_trainer", "--config", str(work / "config.json"), "--result",
                           str(work / "termination-log")], env=env, capture_output=True, text=True, timeout=600)
    return done.returncode, TrainerResult.model_validate_json((work / "termination-log").read_text()), done.stderr


def test_the_trainer_environment_holds_no_operator_dependency(s3_python, moto):
    """What the trainer image installs: the contract (kaizen.api) and the trainer, and s3fs, without kopf or
    kubernetes, which the trainer and the model server must not need."""
    out = in_trainer_env(s3_python, moto, """
import importlib.util
import kaizen_trainer.pipeline, kaizen_trainer.cli, kaizen_server.app, kaizen_server.engine, s3fs
print(sorted(m for m in ("kopf", "kubernetes", "sqlalchemy", "prometheus_api_client") if importlib.util.find_spec(m)))
""")
    assert out.strip() == "[]"


def test_s3_baseline_data_checkpoint_mirror_and_output(s3_python, moto, baselines, tmp_path):
    s3(s3_python, moto, "mkbucket", BUCKET)
    base = f"s3://{BUCKET}/{tmp_path.name}"
    s3(s3_python, moto, "put", str(baselines[TASK]), f"{base}/models/v1")
    feedback = write_jsonl(tmp_path / "feedback.jsonl", synthetic.feedback(120, seed=21, task=TASK))
    replay = write_jsonl(tmp_path / "replay.jsonl", synthetic.dataset(300, seed=22, task=TASK, prefix="rp"))
    s3(s3_python, moto, "put", str(feedback), f"{base}/data/feedback.jsonl")
    s3(s3_python, moto, "put", str(replay), f"{base}/data/replay.jsonl")
    output = f"{base}/out/retrain"
    cfg = config(tmp_path, TASK, f"{base}/models/v1",
                 feedback={"url": f"{base}/data/feedback.jsonl"}, targets={"scenarios": ["refund"]},
                 data={"replay": [{"uri": f"{base}/data/replay.jsonl",
                                   "sha256": hashlib.sha256(replay.read_bytes()).hexdigest()}]},
                 hyperparameters={"maxSteps": 20, "checkpointEverySteps": 10},
                 outputDir=output, checkpointMirror=f"{output}/checkpoints",
                 checkpointDir=str(tmp_path / "pod-a" / "ckpt"))
    code, result, log = train(s3_python, moto, tmp_path / "pod-a", cfg)
    assert code == 0, log[-3000:]
    assert result.candidate.uri == f"{output}/model"
    keys = s3(s3_python, moto, "ls", output).split()
    prefix = output.removeprefix("s3://")
    for name in ("model/config.json", "model/model.safetensors", "metrics.json", "dataset-manifest.json",
                 "MODEL_CARD.md"):
        assert f"{prefix}/{name}" in keys, keys
    assert sorted(k.rsplit("/", 1)[-1].split("-")[1] for k in keys if "/checkpoints/step-" in k) == ["10", "20"]
    manifest = json.loads(s3(s3_python, moto, "cat", f"{output}/dataset-manifest.json"))
    read = {s["uri"]: s["sha256"] for s in manifest["sources"]}
    assert read[f"{base}/data/feedback.jsonl"] == hashlib.sha256(feedback.read_bytes()).hexdigest()
    assert result.metrics["candidate"]["holdout.accuracy.refund"] > result.metrics["baseline"][
        "holdout.accuracy.refund"]

    # A pod on another node: no local checkpoints, so it downloads the mirrored ones and resumes from step 20.
    code, again, log = train(s3_python, moto, tmp_path / "pod-b",
                             cfg | {"checkpointDir": str(tmp_path / "pod-b" / "ckpt")})
    assert code == 0, log[-3000:]
    assert "Resumed from checkpoint step=20 of 20" in log
    assert again.metrics["candidate"]["holdout.accuracy"] == result.metrics["candidate"]["holdout.accuracy"]


def test_a_lora_candidate_on_s3_names_its_s3_base_and_a_retrain_from_it_loads_both(s3_python, moto, baselines,
                                                                                  tmp_path):
    s3(s3_python, moto, "mkbucket", BUCKET)
    base = f"s3://{BUCKET}/{tmp_path.name}"
    s3(s3_python, moto, "put", str(baselines[TASK]), f"{base}/models/v1")
    replay = write_jsonl(tmp_path / "replay.jsonl", synthetic.dataset(200, seed=23, task=TASK, prefix="rp"))
    cfg = config(tmp_path, TASK, f"{base}/models/v1",
                 data={"replay": [{"uri": str(replay)}], "targetedRatio": 0}, method="lora",
                 hyperparameters={"maxSteps": 5}, outputDir=f"{base}/out/lora")
    code, result, log = train(s3_python, moto, tmp_path / "first", cfg)
    assert code == 0, log[-3000:]
    assert result.candidate.base_uri == f"{base}/models/v1"
    adapter = json.loads(s3(s3_python, moto, "cat", f"{base}/out/lora/model/adapter_config.json"))
    assert adapter["base_model_name_or_path"] == f"{base}/models/v1"

    code, again, log = train(s3_python, moto, tmp_path / "second", cfg | {
        "baseline": {"version": "v2", "uri": result.candidate.uri}, "outputDir": f"{base}/out/lora-2",
        "checkpointDir": str(tmp_path / "second" / "ckpt")})
    assert code == 0, log[-3000:]
    assert again.candidate.base_uri == f"{base}/models/v1"
