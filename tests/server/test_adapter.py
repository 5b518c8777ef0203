"""A LoRA adapter (what ``method: lora`` writes) served as MODEL_URI: the server loads the base its
adapter_config.json names, or BASE_MODEL_URI, puts the adapter on it, and answers what the trainer evaluated."""

from __future__ import annotations

import json
import shutil

import pytest

from kaizen_server.engine import Engine, ServeError
from kaizen_trainer import evaluate, modeling
from tests.server.conftest import MAX_LENGTH, ServerProcess, adapter_prompts, wait_ready

def test_an_adapter_is_served_on_the_base_its_config_names_as_the_trainer_evaluated_it(adapter, causal) -> None:
    engine = Engine.load(str(adapter))
    assert engine.task == "causal-lm" and engine.base_uri == causal.uri
    rows = adapter_prompts()
    answers = [a.text for a in engine.complete([r.input for r in rows])]
    model, tokenizer = modeling.load("causal-lm", str(adapter))
    scored = evaluate.score(model, modeling.Encoder("causal-lm", model, tokenizer, MAX_LENGTH), rows,
                            modeling.pick_device())
    assert [a == r.target for a, r in zip(answers, rows)] == [s.exact == 1.0 for s in scored]
    base = [a.text for a in Engine.load(causal.uri).complete([r.input for r in rows])]
    assert sum(a == r.target for a, r in zip(answers, rows)) > sum(b == r.target for b, r in zip(base, rows))


def test_base_model_uri_overrides_the_base_the_adapter_names(adapter, causal, tmp_path) -> None:
    moved = tmp_path / "adapter"
    shutil.copytree(adapter, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "where-training-saw-it")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ServeError, match="where-training-saw-it"):
        Engine.load(str(moved))
    engine = Engine.load(str(moved), base_uri=causal.uri)
    assert engine.base_uri == causal.uri
    assert engine.complete([r.input for r in adapter_prompts()]) == Engine.load(str(adapter)).complete(
        [r.input for r in adapter_prompts()])


def test_the_server_process_serves_an_adapter_from_model_uri(adapter, causal, tmp_path) -> None:
    server = ServerProcess(tmp_path, str(adapter)).start()
    try:
        wait_ready([server])
        row = adapter_prompts()[0]
        answer = server.post("/v1/completions", {"prompt": row.input, "max_tokens": 8})
        assert answer.status == 200, answer.body
        assert answer.body["choices"][0]["text"] == Engine.load(str(adapter)).complete([row.input], 8)[0].text
        assert f"base={causal.uri}" in server.log.read_text()
    finally:
        server.stop()
