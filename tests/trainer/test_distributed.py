"""The trainer under torchrun, on CPU with gloo (two processes on this machine, as two GPUs of one pod or two pods):
it ends where one process ends, within a stated tolerance, with the same gate verdict; it resumes from its
checkpoint after the whole pod is killed; only rank 0 writes; a permanent failure on any rank fails every rank with
the permanent exit code, through ``python -m kaizen_trainer.launch`` (torchrun with the trainer's exit codes)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from kaizen.api.trainer import TrainerResult
from kaizen_trainer import distributed, synthetic
from kaizen_trainer.errors import EXIT_PERMANENT, TrainerError
from tests.trainer.conftest import config, run_trainer, write_jsonl

REPO = Path(__file__).parents[2]
TASK = "causal-lm"  # responses of different lengths: each rank's share of the loss terms differs, the hard case
#: Two processes take the steps one does, on the same batches, but sum each gradient in another order (each rank's
#: half of the batch, then the all-reduce): the weights differ by float32 rounding, amplified by the AdamW steps
#: (measured: 4e-5 at most). A weighting error moves them much further: averaging the ranks' mean losses unweighted,
#: as a plain DDP loop does, ended 1e-2 away.
WEIGHT_TOLERANCE = 1e-3
#: Evaluation runs on rank 0 on the whole sets, so equal weights give equal metrics, within what the weight rounding
#: moves a mean token loss.
METRIC_TOLERANCE = 1e-3
STEPS = 40
GATES = [{"metric": "loss", "maxDelta": -0.5}, {"metric": "exactMatch", "min": 0.99}]  # one passes, one fails


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """A tiny untrained GPT-2 without dropout: dropout is drawn per rank, so with it two processes would match one
    only in distribution, not step by step."""
    path = synthetic.save_model(TASK, tmp_path_factory.mktemp("ddp") / "init")
    settings = json.loads((path / "config.json").read_text())
    settings |= {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    (path / "config.json").write_text(json.dumps(settings))
    return path


def _config(work: Path, baseline: Path, replay: Path, **hyperparameters) -> dict:
    return config(work, TASK, baseline, data={"replay": [{"uri": str(replay)}], "targetedRatio": 0, "maxSliceShare": 1},
                  gates=GATES, hyperparameters={"maxSteps": STEPS, "batchSize": 8, "maxLength": 24,
                                                "checkpointEverySteps": 10, **hyperparameters})


def _pod(cfg: dict, work: Path, name: str) -> dict:
    """The config as the pod ``name`` of a two-pod run sees it: its own output and checkpoint directories."""
    return {**cfg, "outputDir": str(work / name / "out"), "checkpointDir": str(work / name / "ckpt")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(work: Path, cfg: dict, *launcher: str, pod: str = "") -> subprocess.Popen:
    """The trainer as a pod runs it: ``python -m kaizen_trainer.launch --standalone --nproc-per-node=2 -m
    kaizen_trainer --config ... --result ...`` unless ``launcher`` names other torchrun options; the config and result
    files of ``pod`` are its own."""
    work.mkdir(parents=True, exist_ok=True)
    (work / f"config{pod}.json").write_text(json.dumps(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "trainer-image"), *sys.path])}
    return subprocess.Popen(
        [sys.executable, "-m", "kaizen_trainer.launch", *(launcher or ("--standalone", "--nproc-per-node=2")),
         "-m", "kaizen_trainer", "--config", str(work / f"config{pod}.json"),
         "--result", str(work / f"termination-log{pod}")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _two_pods(work: Path, configs: list[dict]) -> list[subprocess.Popen]:
    """Two pods of one process each, meeting on loopback. The static rendezvous makes the first one rank 0 for sure
    (c10d ranks nodes by host name, then process id: here both on one host, only likely)."""
    rendezvous = ("--nnodes=2", "--nproc-per-node=1", "--master-addr=127.0.0.1", f"--master-port={_free_port()}")
    return [_torchrun(work, cfg, *rendezvous, f"--node-rank={i}", pod="" if i == 0 else f"-{i}")
            for i, cfg in enumerate(configs)]


def _kill_pod(process: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers, as a lost node or an OOM kill of the pod does (torchrun starts each worker in
    a session of its own, so killing its process group would spare them)."""
    def family(pid: int) -> list[int]:
        children = []
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                children += [int(c) for c in (task / "children").read_text().split()]
        return [pid, *(p for c in children for p in family(c))]

    for pid in family(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()


def _finish(process: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, out


def _weights(work: Path) -> dict:
    return load_file(work / "out" / "model" / "model.safetensors")


def _quality(result: TrainerResult) -> dict[str, dict[str, float]]:  # latency differs from run to run
    return {who: {k: v for k, v in m.items() if "latency" not in k} for who, m in result.metrics.items()}


def test_two_processes_killed_and_resumed_end_where_one_process_ends(tmp_path, baseline):
    """Two processes in one pod are killed after a checkpoint; two pods resume, the second without checkpoints or
    outputs of its own (rank 0 reads and broadcasts the checkpoint, and alone writes)."""
    replay = write_jsonl(tmp_path / "replay.jsonl", synthetic.dataset(400, seed=3, task=TASK, prefix="rp"))
    one = tmp_path / "one"
    code, alone = run_trainer(one, _config(one, baseline, replay))
    assert code == 0, alone.message

    two = tmp_path / "two"
    process = _torchrun(two, _config(two, baseline, replay))
    deadline = time.monotonic() + 180
    while not list((two / "ckpt").glob("step-*.pt")):
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint was written within 3 minutes"
        time.sleep(0.05)
    _kill_pod(process)
    reached = max(int(p.stem.split("-")[1]) for p in (two / "ckpt").glob("step-*.pt"))
    assert 0 < reached < STEPS

    cfg = _config(two, baseline, replay)
    (code, log), (code_1, log_1) = (_finish(pod) for pod in _two_pods(two, [cfg, _pod(cfg, two, "pod-1")]))
    assert (code, code_1) == (0, 0), log + log_1
    assert f"Resumed from checkpoint step={reached} of {STEPS}" in log
    both = TrainerResult.model_validate_json((two / "termination-log").read_text())
    assert both.phase == "Succeeded" and both.steps == STEPS

    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    drift = max((a[k] - b[k]).abs().max().item() for k in a)
    assert drift < WEIGHT_TOLERANCE, f"two processes ended {drift} away from one"
    assert max((a[k] - baseline_weight).abs().max().item()
               for k, baseline_weight in load_file(baseline / "model.safetensors").items() if k in a) > 0.01
    for who in ("candidate", "baseline"):
        for key, value in _quality(alone)[who].items():
            assert abs(_quality(both)[who][key] - value) <= METRIC_TOLERANCE, (who, key)
    assert [g.passed for g in both.gates] == [g.passed for g in alone.gates] == [True, False]
    assert both.message == alone.message

    training = json.loads((two / "out" / "metrics.json").read_text())["training"]
    assert (training["processes"], training["strategy"], training["steps"]) == (2, "ddp", STEPS)
    assert sorted(p.name for p in (two / "out").iterdir()) == sorted(p.name for p in (one / "out").iterdir())
    assert not (two / "pod-1").exists() and not (two / "termination-log-1").exists()  # rank 1 wrote nothing


def test_a_permanent_failure_on_rank_1_fails_every_rank_permanently(tmp_path, baseline):
    """Two pods (two torchrun agents, one process each, as an indexed Job's pods):
    the second pod's node lacks the baseline. Every rank exits with the permanent code, and rank 0 reports what rank
    1 found, so the operator fails the Job at once with the reason."""
    replay = write_jsonl(tmp_path / "replay.jsonl", synthetic.dataset(100, seed=4, task=TASK, prefix="rp"))
    cfg = _config(tmp_path, baseline, replay)
    missing = {**_pod(cfg, tmp_path, "pod-1"), "baseline": {"version": "v1", "uri": str(tmp_path / "not-mounted")}}
    finished = [_finish(pod) for pod in _two_pods(tmp_path, [cfg, missing])]
    assert [code for code, _ in finished] == [EXIT_PERMANENT, EXIT_PERMANENT], finished
    result = TrainerResult.model_validate_json((tmp_path / "termination-log").read_text())
    assert result.reason == "InvalidConfig" and result.permanent
    assert result.message.startswith("on rank 1 of 2: baseline") and "not-mounted" in result.message
    assert not list((tmp_path / "out").glob("*")) and not list((tmp_path / "ckpt").glob("*"))  # nothing written


def test_a_batch_that_does_not_split_over_the_processes_is_a_config_error(tmp_path, baseline):
    replay = write_jsonl(tmp_path / "replay.jsonl", synthetic.dataset(100, seed=5, task=TASK, prefix="rp"))
    cfg = _config(tmp_path, baseline, replay, batchSize=7, maxSteps=5)
    code, log = _finish(_torchrun(tmp_path, cfg))
    assert code == EXIT_PERMANENT, log
    result = TrainerResult.model_validate_json((tmp_path / "termination-log").read_text())
    assert result.reason == "InvalidConfig"
    assert "batchSize 7 does not split evenly over 2 training processes" in result.message


def test_the_world_comes_from_torchruns_environment():
    assert distributed.from_environment({}) == distributed.SINGLE
    assert distributed.from_environment({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == \
        distributed.World(rank=3, local_rank=1, size=4)
    for broken in ({"WORLD_SIZE": "two"}, {"WORLD_SIZE": "2", "RANK": "2"}):
        with pytest.raises(TrainerError, match="start the trainer with torchrun") as raised:
            distributed.from_environment(broken)
        assert raised.value.reason == "InvalidConfig"


def test_each_rank_takes_its_share_of_the_batch_and_a_rank_left_without_one_weighs_nothing():
    second = distributed.World(rank=1, local_rank=1, size=2)
    assert distributed.share(list("abcde"), second) == (["b", "d"], True)
    assert distributed.share(["a"], second) == (["a"], False)  # it still runs the step's collectives


def test_a_lora_adapter_sharded_by_fsdp_over_two_processes_ends_where_one_process_ends(tmp_path, baseline):
    """FSDP2 (fully_shard) runs on CPU with gloo; with a frozen base only the adapter trains and is written."""
    replay = write_jsonl(tmp_path / "replay.jsonl", synthetic.dataset(400, seed=3, task=TASK, prefix="rp"))
    lora = {"method": "lora", "lora": {"rank": 4, "alpha": 8, "dropout": 0.0}}
    one = tmp_path / "one"
    code, alone = run_trainer(one, _config(one, baseline, replay) | lora)
    assert code == 0, alone.message
    two = tmp_path / "two"
    code, log = _finish(_torchrun(two, _config(two, baseline, replay) | lora | {"strategy": "fsdp"}))
    assert code == 0, log
    both = TrainerResult.model_validate_json((two / "termination-log").read_text())
    assert both.candidate.base_uri == str(baseline)
    a, b = (load_file(d / "out" / "model" / "adapter_model.safetensors") for d in (one, two))
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < WEIGHT_TOLERANCE
    assert [g.passed for g in both.gates] == [g.passed for g in alone.gates]
    training = json.loads((two / "out" / "metrics.json").read_text())["training"]
    assert (training["processes"], training["strategy"], training["method"]) == (2, "fsdp", "lora")
    assert training["trainableParameters"] < training["parameters"] / 10
