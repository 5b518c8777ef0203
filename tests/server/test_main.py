"""``python -m kaizen_server`` from its environment: a bad one is one line and exit code 2; readiness is 503 until
the model is loaded, then 200."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from kaizen.dev.cluster import free_ports
from kaizen_server.app import Server, Settings, create_app
from tests.server.conftest import NAME, Trained


def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "MODEL_URI"}
    env = {**clean, "HOST": "127.0.0.1", "PORT": str(free_ports(1)[0]), **env}
    return subprocess.run([sys.executable, "-m", "kaizen_server"], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("env, message", [
    ({}, "MODEL_URI is not set"),
    ({"MODEL_URI": "/nowhere/model"}, "is not a saved transformers model"),
    ({"MODEL_URI": "ftp://host/model"}, "unsupported scheme"),
    ({"MODEL_URI": "/tmp", "PORT": "eighty"}, "PORT='eighty' is not a port number"),
    ({"MODEL_URI": "/tmp", "KAIZEN_COLLECTOR_URL": "http://127.0.0.1:1", "KAIZEN_TRACK": "blue"}, "KAIZEN_TRACK"),
])
def test_a_bad_environment_is_one_line_and_exit_code_2(env: dict[str, str], message: str) -> None:
    result = run({"MODEL_URI": "", **env} if "MODEL_URI" not in env else env)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "kaizen-server:" in line]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_model_folder_of_another_kind_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"architectures": ["BertModel"], "model_type": "bert"}')
    result = run({"MODEL_URI": str(tmp_path)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "BertModel" in result.stderr.splitlines()[-1]


def test_health_is_503_until_the_model_is_loaded(causal: Trained) -> None:
    async def scenario() -> tuple[int, int, int, int]:
        server = Server(Settings(model_uri=causal.uri, name=NAME, version="v9"))
        async with TestClient(TestServer(create_app(server))) as client:
            loading = (await client.get("/health")).status
            refused = await client.post("/v1/completions", json={"prompt": causal.train[0]["input"]})
            await server.load()
            loaded = (await client.get("/health")).status
            answered = await client.post("/v1/completions", json={"prompt": causal.train[0]["input"]})
            assert (await answered.json())["choices"][0]["text"] == causal.train[0]["output"]
            return loading, refused.status, loaded, answered.status

    assert asyncio.run(scenario()) == (503, 503, 200, 200)
