"""Fixtures of the model server tests: tiny models trained here by the trainer itself (no downloads), and the server
started as a process (``python -m kaizen_server``) on a free loopback port, as a pod runs it.

The causal LM learns a few rows of the synthetic support task for a few dozen steps, enough that its greedy answers
to the training prompts are the trained responses; its holdout holds scenarios it never saw, so the trainer's
exactMatch there is below 1 and the agreement between the trainer's evaluation and the server's answers is tested
on right and wrong answers alike. One model per task per session.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from kaizen.dev import processes
from kaizen.dev.cluster import free_ports
from kaizen.dev.collector import LocalCollector
from kaizen_trainer import synthetic
from kaizen_trainer.cli import main as trainer
from kaizen_trainer.curate import Row

# Tiny models train and answer fastest on one thread; on a busy 2-core machine two threads spin against each other.
torch.set_num_threads(1)

NAME = "support-bot"
#: The scenarios the models are trained on, and those only their holdout holds.
TRAINED, UNSEEN = ("refund", "shipping", "account", "billing"), ("warranty", "coupon")
MAX_LENGTH = 32


@dataclass(frozen=True)
class Trained:
    """A model the trainer wrote, the rows it was trained on, its holdout, and the trainer's metrics."""

    task: str
    uri: str
    train: list[dict]
    holdout: list[dict]
    metrics: dict[str, Any]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _train(work: Path, task: str, steps: int) -> Trained:
    work.mkdir(parents=True, exist_ok=True)
    init = synthetic.save_model(task, work / "init")
    rows = synthetic.dataset(32, seed=5, task=task, scenarios=TRAINED)
    holdout = (synthetic.dataset(6, seed=6, task=task, prefix="seen", scenarios=TRAINED)
               + synthetic.dataset(6, seed=7, task=task, prefix="unseen", scenarios=UNSEEN))
    config = {
        "job": "tests/server", "decisionId": "d-server", "task": task,
        "baseline": {"version": "v0", "uri": str(init)}, "candidateVersion": "v1",
        "data": {"replay": [{"uri": str(_write_jsonl(work / "replay.jsonl", rows))}],
                 "holdout": {"uri": str(_write_jsonl(work / "holdout.jsonl", holdout))},
                 # Every replay row is trained on: the holdout is the explicit file (and what the id hash takes).
                 "holdoutFraction": 0.001, "targetedRatio": 0, "maxSliceShare": 1, "minRows": 8},
        "hyperparameters": {"maxSteps": steps, "learningRate": 5e-3, "batchSize": 16, "maxLength": MAX_LENGTH,
                            "checkpointEverySteps": 1000},
        "outputDir": str(work / "out"), "checkpointDir": str(work / "ckpt"),
    }
    (work / "config.json").write_text(json.dumps(config))
    code = trainer(["--config", str(work / "config.json"), "--result", str(work / "result")])
    result = json.loads((work / "result").read_text())
    assert code == 0, result
    metrics = json.loads((work / "out" / "metrics.json").read_text())
    return Trained(task, result["candidate"]["uri"], rows, holdout, metrics["candidate"])


@pytest.fixture(scope="session")
def causal(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return _train(tmp_path_factory.mktemp("causal"), "causal-lm", steps=150)


@pytest.fixture(scope="session")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return _train(tmp_path_factory.mktemp("classifier"), "sequence-classification", steps=80)


#: What the adapter teaches for refunds: an answer the base gives to shipping requests.
NEW_POLICY = synthetic.INTENTS["shipping"][0][1]


@pytest.fixture(scope="session")
def adapter(tmp_path_factory: pytest.TempPathFactory, causal: Trained) -> Path:
    """A LoRA adapter on the served causal LM that answers every refund request with a new policy. The answer is
    made of words the base already says (an adapter on attention and MLP layers leaves the embeddings, which a
    tiny model has trained only for the words of its answers, as they are)."""
    work = tmp_path_factory.mktemp("adapter")
    rows = [{**r, "output": NEW_POLICY} for r in _refunds(48, seed=11)]
    (work / "replay.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "job": "tests/adapter", "decisionId": "d-adapter", "task": "causal-lm",
        "baseline": {"version": "v1", "uri": causal.uri}, "candidateVersion": "v2", "method": "lora",
        "lora": {"rank": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["c_attn", "c_proj", "c_fc"]},
        "data": {"replay": [{"uri": str(work / "replay.jsonl")}], "targetedRatio": 0, "maxSliceShare": 1,
                 "minRows": 8, "holdoutFraction": 0.05},
        "hyperparameters": {"maxSteps": 60, "learningRate": 1e-2, "batchSize": 16, "maxLength": MAX_LENGTH,
                            "checkpointEverySteps": 1000},
        "outputDir": str(work / "out"), "checkpointDir": str(work / "ckpt"),
    }
    (work / "config.json").write_text(json.dumps(config))
    assert trainer(["--config", str(work / "config.json"), "--result", str(work / "result")]) == 0, \
        (work / "result").read_text()
    return Path(json.loads((work / "result").read_text())["candidate"]["uri"])


def _refunds(n: int, seed: int) -> list[dict]:
    return synthetic.dataset(n, seed=seed, task="causal-lm", scenarios=["refund"], prefix=f"refund-{seed}")


def adapter_prompts() -> list[Row]:
    """Refund requests the adapter answers with :data:`NEW_POLICY` (the base does not)."""
    return [Row(r["id"], r["input"], NEW_POLICY, "holdout") for r in _refunds(12, seed=12)]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


def http(url: str, method: str = "GET", body: Any = None, raw: bytes | None = None) -> Answer:
    """One request; the answer whatever its status (a 4xx is an answer too)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, headers, payload = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, headers, payload = error.code, dict(error.headers), error.read()
    try:
        parsed: Any = json.loads(payload)
    except ValueError:
        parsed = payload.decode(errors="replace")
    return Answer(status, headers, parsed)


class ServerProcess:
    """``python -m kaizen_server`` on a free loopback port with the environment of the serving contract."""

    def __init__(self, workdir: Path, model_uri: str, **env: str) -> None:
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "MODEL_URI": model_uri, "HOST": "127.0.0.1", "PORT": str(self.port),
                    "KAIZEN_MODEL_NAME": NAME, "OMP_NUM_THREADS": "1", **env}
        self.log = workdir / f"server-{self.port}.log"
        self.process: processes.ManagedProcess | None = None
        #: What /health answered until it answered 200.
        self.readiness: list[int] = []

    def start(self) -> ServerProcess:
        self.process = processes.spawn("kaizen-server", [sys.executable, "-m", "kaizen_server"], self.log,
                                       detach=False, env=self.env)
        return self

    def poll(self) -> bool:
        """One readiness probe (GET /health), remembered in :attr:`readiness`; whether it answered 200."""
        assert self.process is not None
        if not self.process.alive():
            raise RuntimeError(f"the server exited with {self.process.exit_code()}:\n{self.process.log_tail()}")
        try:
            self.readiness.append(http(self.url + "/health").status)
        except (urllib.error.URLError, OSError):
            return False  # the port is not open yet
        return self.readiness[-1] == 200

    def post(self, path: str, body: Any = None, raw: bytes | None = None) -> Answer:
        return http(self.url + path, "POST", body, raw)

    def get(self, path: str) -> Answer:
        return http(self.url + path)

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample on /metrics (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(self.get("/metrics").body):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0

    def stop(self) -> None:
        if self.process is not None:
            processes.stop([self.process])


def wait_ready(servers: list[ServerProcess], timeout: float = 180) -> None:
    """Probe the servers in turn, as a kubelet would, until each answered 200."""
    pending, deadline = list(servers), time.monotonic() + timeout
    while pending:
        pending = [server for server in pending if not server.poll()]
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"the server did not become ready:\n{pending[0].process.log_tail()}")
        time.sleep(0.02)


@pytest.fixture(scope="session")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCollector]:
    workdir = tmp_path_factory.mktemp("collector")
    service = LocalCollector(f"sqlite:///{workdir / 'collector.db'}", workdir).start()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def late_collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCollector]:
    """A collector not started yet (its port is chosen): the test starts it to see the server recover."""
    workdir = tmp_path_factory.mktemp("late-collector")
    service = LocalCollector(f"sqlite:///{workdir / 'collector.db'}", workdir)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory, causal: Trained, classifier: Trained,
            collector: LocalCollector, late_collector: LocalCollector) -> Iterator[dict[str, ServerProcess]]:
    """Three servers started together (each takes seconds to import torch): ``causal``, recording traces in the
    collector; ``classifier``; and ``down``, the causal model with a collector that is not there (yet)."""
    workdir = tmp_path_factory.mktemp("servers")
    token = workdir / "ingest-token"
    token.write_text(collector.tokens["ingest"] + "\n")
    labels = {"KAIZEN_MODEL_VERSION": "v1", "KAIZEN_TRACK": "canary"}
    started = {
        "causal": ServerProcess(workdir, causal.uri, KAIZEN_COLLECTOR_URL=collector.url,
                                KAIZEN_COLLECTOR_TOKEN_FILE=str(token), **labels),
        "classifier": ServerProcess(workdir, f"file://{classifier.uri}", KAIZEN_MODEL_VERSION="c3",
                                    KAIZEN_TRACK="stable"),
        "down": ServerProcess(workdir, causal.uri, KAIZEN_COLLECTOR_URL=late_collector.url,
                              KAIZEN_COLLECTOR_TOKEN=late_collector.tokens["ingest"], KAIZEN_MODEL_VERSION="v1",
                              KAIZEN_TRACK="stable"),
    }
    try:
        for server in started.values():
            server.start()
        wait_ready(list(started.values()))
        yield started
    finally:
        # Signalled together: each takes seconds to exit (the interpreter tearing torch down).
        for server in started.values():
            if server.process is not None:
                os.killpg(server.process.pgid, signal.SIGTERM)
        for server in started.values():
            server.stop()
