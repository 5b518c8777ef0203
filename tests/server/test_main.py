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
from kaizen_server.engine import Engine, ServeError
from tests.server.conftest import NAME, Trained


def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_URI", "KAIZEN_", "PORT"))}
    env = {**clean, "HOST": "127.0.0.1", "PORT": str(free_ports(1)[0]), **env}
    return subprocess.run([sys.executable, "-m", "kaizen_server"], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("env, message", [
    ({"MODEL_URI": ""}, "MODEL_URI is not set"),
    ({"MODEL_URI": "/tmp", "PORT": "eighty"}, "PORT='eighty' is not a port number"),
    ({"MODEL_URI": "/tmp", "KAIZEN_COLLECTOR_URL": "127.0.0.1:8090"}, "must start with http://"),
    ({"MODEL_URI": "/tmp", "KAIZEN_COLLECTOR_URL": "http://127.0.0.1:1", "KAIZEN_TRACK": "blue"}, "KAIZEN_TRACK"),
    ({"MODEL_URI": "/tmp", "KAIZEN_COLLECTOR_TOKEN_FILE": "/nowhere/token"}, "No such file"),
])
def test_a_bad_environment_is_one_line_and_exit_code_2(env: dict[str, str], message: str) -> None:
    result = run(env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_an_unloadable_model_is_one_line_and_exit_code_2_after_the_port_opened(tmp_path: Path) -> None:
    result = run({"MODEL_URI": str(tmp_path / "nowhere")})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "Listening" in result.stderr  # it was ready for probes (503) while it tried
    errors = [line for line in result.stderr.splitlines() if line.startswith("kaizen-server:")]
    assert errors == [f"kaizen-server: cannot serve MODEL_URI={tmp_path / 'nowhere'}: model {tmp_path / 'nowhere'} "
                      "is not a saved transformers model (no config.json there) nor a LoRA adapter (no "
                      "adapter_config.json)"], result.stderr


@pytest.mark.parametrize("uri, message", [
    ("ftp://host/model", "unsupported scheme"),
    ("pvc://models/v1", "/mnt/kaizen/pvc/models/v1 is not a saved transformers model"),
])
def test_unservable_uris_are_one_clear_error(uri: str, message: str) -> None:
    with pytest.raises(ServeError, match=message):
        Engine.load(uri)


def test_a_model_of_another_kind_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"architectures": ["BertModel"], "model_type": "bert"}')
    with pytest.raises(ServeError, match="BertModel; the server serves causal LMs"):
        Engine.load(str(tmp_path))


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
