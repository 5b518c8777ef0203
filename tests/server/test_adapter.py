"""A LoRA adapter (what ``method: lora`` writes) served as MODEL_URI: the server loads the base its
adapter_config.json names, or BASE_MODEL_URI, puts the adapter on it, and answers what the trainer evaluated."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kaizen_server.engine import Engine, ServeError
from kaizen_trainer import evaluate, modeling, synthetic
from kaizen_trainer.cli import main as trainer
from kaizen_trainer.curate import Row
from tests.server.conftest import MAX_LENGTH, ServerProcess, Trained, wait_ready

#: What the adapter teaches for refunds: an answer the base gives to shipping requests.
NEW_POLICY = synthetic.INTENTS["shipping"][0][1]


@pytest.fixture(scope="module")
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


def _prompts() -> list[Row]:
    return [Row(r["id"], r["input"], NEW_POLICY, "holdout") for r in _refunds(12, seed=12)]


def test_an_adapter_is_served_on_the_base_its_config_names_as_the_trainer_evaluated_it(adapter, causal) -> None:
    engine = Engine.load(str(adapter))
    assert engine.task == "causal-lm" and engine.base_uri == causal.uri
    rows = _prompts()
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
    assert engine.complete([r.input for r in _prompts()]) == Engine.load(str(adapter)).complete(
        [r.input for r in _prompts()])


def test_the_server_process_serves_an_adapter_from_model_uri(adapter, causal, tmp_path) -> None:
    server = ServerProcess(tmp_path, str(adapter)).start()
    try:
        wait_ready([server])
        row = _prompts()[0]
        answer = server.post("/v1/completions", {"prompt": row.input, "max_tokens": 8})
        assert answer.status == 200, answer.body
        assert answer.body["choices"][0]["text"] == Engine.load(str(adapter)).complete([row.input], 8)[0].text
        assert f"base={causal.uri}" in server.log.read_text()
    finally:
        server.stop()
