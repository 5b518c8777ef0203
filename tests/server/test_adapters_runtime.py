"""Adapters held at run time by the server process: loaded and unloaded through vLLM's endpoints and by the watched
file (a mounted ConfigMap), picked by a request's model name (or the gateway's model-name header), split by the
file's weighted alias with session affinity, and every answer labelled with the version and track that answered."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.server.conftest import NAME, NEW_POLICY, ServerProcess, Trained, adapter_prompts, wait_ready

#: chi-square quantile at 1 - 1e-4, one degree of freedom (as tests/integration/gateway.py).
CHI2_Q1 = 15.137


@pytest.fixture(scope="module")
def held(tmp_path_factory, causal: Trained, adapter: Path):
    workdir = tmp_path_factory.mktemp("held")
    file = workdir / "adapters" / "adapters.json"
    file.parent.mkdir()
    server = ServerProcess(workdir, causal.uri, KAIZEN_MODEL_VERSION="v1", KAIZEN_TRACK="stable",
                           KAIZEN_ADAPTERS_FILE=str(file), KAIZEN_ALLOW_RUNTIME_LORA_UPDATING="true",
                           KAIZEN_ADAPTERS_POLL_SECONDS="0.2").start()
    try:
        wait_ready([server])
        yield server, file
    finally:
        server.stop()


def write(file: Path, content: dict) -> None:
    # As the kubelet updates a ConfigMap volume: the new file appears whole.
    partial = file.with_suffix(".tmp")
    partial.write_text(json.dumps(content))
    partial.replace(file)


def wait_for_models(server: ServerProcess, ids: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        listed = {m["id"]: m for m in server.get("/v1/models").body["data"]}
        if set(listed) == ids:
            return listed
        assert time.monotonic() < deadline, f"the server lists {sorted(listed)}, not {sorted(ids)}"
        time.sleep(0.1)


def ask(server: ServerProcess, model: str | None, prompt: str, headers: dict | None = None, max_tokens: int = 12):
    import urllib.request
    body = {"prompt": prompt, "max_tokens": max_tokens, **({"model": model} if model else {})}
    request = urllib.request.Request(server.url + "/v1/completions", json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read()), dict(response.headers)


def test_runtime_endpoints_load_and_unload_an_adapter_whose_answers_carry_its_version(held, adapter) -> None:
    server, _ = held
    row = adapter_prompts()[0]
    loaded = server.post("/v1/load_lora_adapter", {"lora_name": "refunds", "lora_path": str(adapter),
                                                    "version": "v2"})
    assert loaded.status == 200, loaded.body
    assert server.post("/v1/load_lora_adapter", {"lora_name": "refunds", "lora_path": str(adapter)}).status == 400
    models = wait_for_models(server, {NAME, "refunds"})
    assert (models["refunds"]["version"], models["refunds"]["parent"]) == ("v2", NAME)
    body, headers = ask(server, "refunds", row.input)
    assert body["choices"][0]["text"] == NEW_POLICY and headers["X-Kaizen-Model-Version"] == "v2"
    assert body["model"] == "refunds" and body["system_fingerprint"] == "v2"
    base, headers = ask(server, None, row.input)
    assert base["choices"][0]["text"] != NEW_POLICY and headers["X-Kaizen-Model-Version"] == "v1"
    # The gateway's model-name header wins over the body's model, as its rewrite of the body would.
    body, _ = ask(server, NAME, row.input, {"X-Gateway-Model-Name": "refunds"})
    assert body["choices"][0]["text"] == NEW_POLICY
    assert server.metric("kaizen_server_requests_total", model="refunds", model_version="v2", track="canary",
                         route="/v1/completions", code="200") == 2
    assert server.post("/v1/unload_lora_adapter", {"lora_name": "refunds"}).status == 200
    wait_for_models(server, {NAME})
    gone = server.post("/v1/completions", {"model": "refunds", "prompt": row.input})
    assert gone.status == 404 and "'refunds' is not served here" in gone.body["error"]["message"]
    bad = server.post("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/nowhere"})
    assert bad.status == 400 and "cannot load the adapter 'x'" in bad.body["error"]["message"]


def test_the_watched_file_holds_an_adapter_and_its_alias_splits_and_pins(held, adapter) -> None:
    server, file = held
    prompt = adapter_prompts()[1].input
    write(file, {"adapters": [{"name": "support-bot-v2", "uri": str(adapter), "version": "v2"}],
                 "aliases": [{"name": NAME, "targets": [{"model": NAME, "weight": 80},
                                                        {"model": "support-bot-v2", "weight": 20}],
                              "session_affinity": {"header": "X-Kaizen-Version"}}]})
    models = wait_for_models(server, {NAME, "support-bot-v2"})
    assert models["support-bot-v2"]["version"] == "v2"
    total, seen, pinned = 200, Counter(), []
    for _ in range(total):
        body, headers = ask(server, NAME, prompt, max_tokens=1)
        version = headers["X-Kaizen-Model-Version"]
        assert headers["X-Kaizen-Version"] == version == body["system_fingerprint"]
        seen[version] += 1
    expected = total * 0.2
    chi = (seen["v2"] - expected) ** 2 / expected + (seen["v1"] - (total - expected)) ** 2 / (total - expected)
    assert chi < CHI2_Q1, dict(seen)
    for version in ("v1", "v2"):
        pinned += [ask(server, NAME, prompt, {"X-Kaizen-Version": version}, 12) for _ in range(15)]
        assert {h["X-Kaizen-Model-Version"] for _, h in pinned[-15:]} == {version}
    assert {b["choices"][0]["text"] == NEW_POLICY for b, h in pinned if h["X-Kaizen-Model-Version"] == "v2"} == {True}
    assert server.metric("kaizen_server_requests_total", model="support-bot-v2", model_version="v2",
                         track="canary", route="/v1/completions", code="200") == seen["v2"] + 15

    # Promotion points the served name at the adapter; a broken file changes nothing; emptying it unloads. The
    # served name's own alias is not listed in /v1/models, so the sync's log line says when the new split holds (an
    # answer from v2 would not: the old split gives one a fifth of the time).
    write(file, {"adapters": [{"name": "support-bot-v2", "uri": str(adapter), "version": "v2"}],
                 "aliases": [{"name": NAME, "targets": [{"model": "support-bot-v2", "weight": 100}]}]})
    deadline = time.monotonic() + 30
    while f"aliases={NAME}(support-bot-v2:100)" not in server.log.read_text():
        assert time.monotonic() < deadline, "the server did not sync the changed adapters file in 30 s"
        time.sleep(0.1)
    assert {ask(server, NAME, prompt, max_tokens=1)[1]["X-Kaizen-Model-Version"] for _ in range(20)} == {"v2"}
    write(file, {"adapters": [{"name": NAME, "uri": "/x"}]})
    time.sleep(1)
    assert "KAIZEN_ADAPTERS_FILE" in server.log.read_text() and "version: Field required" in server.log.read_text()
    assert set(wait_for_models(server, {NAME, "support-bot-v2"})) == {NAME, "support-bot-v2"}
    file.unlink()
    wait_for_models(server, {NAME})
    body, headers = ask(server, NAME, prompt)
    assert headers["X-Kaizen-Model-Version"] == "v1" and "X-Kaizen-Version" not in headers
    assert body["choices"][0]["text"] != NEW_POLICY
