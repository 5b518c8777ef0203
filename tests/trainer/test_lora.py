"""method: lora on tiny models: the candidate is an adapter that names its base, gated as base plus adapter against
the baseline; merge writes a full model with the same answers; an adapter's checkpoint holds only the adapter and a
resumed run ends where an uninterrupted one does; a retrain from an adapter goes on training it; qlora without CUDA
is a clear configuration error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kaizen.api.retrainjob import Hyperparameters, LoraSettings
from kaizen_trainer import adapters, curate, evaluate, modeling, synthetic, train
from tests.trainer.conftest import config, run_trainer, write_jsonl

TASK = "sequence-classification"
OTHERS = [s for s in synthetic.SCENARIOS if s != synthetic.DRIFTED]
#: LoRA moves few weights, so it takes a higher rate than a full fine-tune (the tests' 2e-3).
LORA = {"method": "lora", "lora": {"rank": 8, "alpha": 16, "dropout": 0.0}}


def _data(tmp_path: Path, task: str = TASK) -> dict:
    feedback = write_jsonl(tmp_path / "feedback.jsonl", synthetic.feedback(240, seed=7, task=task))
    replay = write_jsonl(tmp_path / "replay.jsonl", synthetic.dataset(800, seed=2, task=task, prefix="rp"))
    return {"feedback": {"url": str(feedback)}, "targets": {"scenarios": ["refund"]},
            "data": {"replay": [{"uri": str(replay)}]}}


def test_lora_candidate_is_an_adapter_naming_its_base_and_gated_as_base_plus_adapter(tmp_path, baselines):
    gates = [{"metric": "accuracy", "cohort": "refund", "minDelta": 0.3},
             *({"metric": "accuracy", "cohort": s, "minDelta": -0.005} for s in OTHERS)]
    code, result = run_trainer(tmp_path, config(
        tmp_path, TASK, baselines[TASK], gates=gates, **_data(tmp_path), **LORA,
        hyperparameters={"maxSteps": 80, "learningRate": 1e-2}))
    assert code == 0, result.message
    assert all(g.passed for g in result.gates), result.gates
    candidate, baseline = result.metrics["candidate"], result.metrics["baseline"]
    assert candidate["holdout.accuracy.refund"] - baseline["holdout.accuracy.refund"] >= 0.5

    model = tmp_path / "out" / "model"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in model.iterdir()}
    assert not (model / "model.safetensors").exists()
    assert json.loads((model / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        str(baselines[TASK])
    assert result.candidate.uri == str(model) and result.candidate.base_uri == str(baselines[TASK])
    adapter_size = (model / "adapter_model.safetensors").stat().st_size
    assert adapter_size < (baselines[TASK] / "model.safetensors").stat().st_size / 2

    training = json.loads((tmp_path / "out" / "metrics.json").read_text())["training"]
    assert training["method"] == "lora" and training["baseModel"] == str(baselines[TASK])
    assert 0 < training["trainableParameters"] < training["parameters"] / 4
    card = (tmp_path / "out" / "MODEL_CARD.md").read_text()
    assert f"it needs the base model **{baselines[TASK]}**" in card

    # What was gated is what a server gets: base plus adapter, loaded back, answers the holdout as evaluated.
    loaded, tokenizer = modeling.load(TASK, str(model))
    assert modeling.base_of(loaded) == str(baselines[TASK])
    holdout = [curate.Row(r["id"], r["input"], r["output"], "holdout", r["cohort"], r["scenario"])
               for r in synthetic.dataset(200, seed=31, task=TASK, drifted=True, prefix="fresh")]
    device = modeling.pick_device()
    encoder = modeling.Encoder(TASK, loaded, tokenizer, 32)
    refund = [s.correct for s in evaluate.score(loaded, encoder, holdout, device) if s.row.scenario == "refund"]
    assert sum(refund) / len(refund) >= 0.9


def test_merge_writes_a_full_model_answering_as_base_plus_adapter(tmp_path, baselines):
    code, result = run_trainer(tmp_path, config(
        tmp_path, TASK, baselines[TASK], **_data(tmp_path), method="lora", lora={"rank": 4, "merge": True},
        hyperparameters={"maxSteps": 30, "learningRate": 1e-2}))
    assert code == 0, result.message
    out = tmp_path / "out"
    assert (out / "model" / "model.safetensors").is_file() and not (out / "model" / "adapter_config.json").exists()
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert result.candidate.base_uri is None  # a full model: no base needed

    merged, tokenizer = modeling.load(TASK, str(out / "model"))
    adapted, _ = modeling.load(TASK, str(out / "adapter"))
    base, _ = modeling.load(TASK, str(baselines[TASK]))
    batch = modeling.Encoder(TASK, merged, tokenizer, 32).batch(
        modeling.Encoder(TASK, merged, tokenizer, 32).encode_all(
            [curate.Row(r["id"], r["input"], r["output"], "holdout") for r in
             synthetic.dataset(64, seed=5, task=TASK, drifted=True)]), torch.device("cpu"))
    batch.pop("labels")
    with torch.no_grad():
        logits = [m.eval()(**batch).logits for m in (merged, adapted, base)]
    assert torch.allclose(logits[0], logits[1], atol=1e-4)
    assert not torch.allclose(logits[0], logits[2], atol=1e-2)  # the adapter changed something


def _adapter_model(baseline: Path):
    model, tokenizer = modeling.load(TASK, str(baseline))
    return adapters.attach(model, TASK, LoraSettings(rank=4, dropout=0.0), "lora", seed=1), tokenizer


def test_an_adapter_checkpoint_holds_only_the_adapter_and_resumes_to_the_uninterrupted_result(tmp_path, baselines):
    rows = [curate.Row(r["id"], r["input"], r["target"], "feedback") for r in synthetic.feedback(200, 3, TASK)]
    hp = Hyperparameters(max_steps=30, learning_rate=1e-2, batch_size=16, checkpoint_every_steps=10)
    device = modeling.Device(torch.device("cpu"), None)

    def run(directory: Path, stop_at: int | None = None):
        model, tokenizer = _adapter_model(baselines[TASK])
        encoder = modeling.Encoder(TASK, model, tokenizer, 32)
        stats = train.train(model, encoder, encoder.encode_all(rows), hp, device, directory, "lora",
                            until=(lambda step, _: step == stop_at) if stop_at else None)
        return model, stats

    interrupted = tmp_path / "interrupted"
    run(interrupted, stop_at=15)  # as if killed at step 15: the checkpoint at step 10 is what survives
    assert sorted(p.name for p in interrupted.glob("step-*.pt")) == ["step-10-lora.pt"]
    state = torch.load(interrupted / "step-10-lora.pt", weights_only=False)
    assert state["model"] and all("lora_" in k or "modules_to_save" in k for k in state["model"]), \
        sorted(state["model"])[:5]
    model, _ = _adapter_model(baselines[TASK])
    assert len(state["model"]) < len(model.state_dict()) / 2

    resumed, stats = run(interrupted)
    assert stats.resumed_from == 10 and stats.steps == 30
    straight, _ = run(tmp_path / "straight")
    a, b = resumed.state_dict(), straight.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed adapter differs from the uninterrupted one"
    assert stats.optimizer_bytes > 0


def test_a_retrain_from_an_adapter_trains_that_adapter_on_the_same_base(tmp_path, baselines):
    first = tmp_path / "first"
    code, result = run_trainer(first, config(first, TASK, baselines[TASK], **_data(tmp_path), **LORA,
                                             hyperparameters={"maxSteps": 10, "learningRate": 1e-2}))
    assert code == 0, result.message
    second = tmp_path / "second"
    code, again = run_trainer(second, config(
        second, TASK, Path(result.candidate.uri), **_data(tmp_path), **LORA,
        hyperparameters={"maxSteps": 10, "learningRate": 1e-2}))
    assert code == 0, again.message
    assert again.candidate.base_uri == str(baselines[TASK])
    before = load_file(first / "out" / "model" / "adapter_model.safetensors")
    after = load_file(second / "out" / "model" / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.skipif(torch.cuda.is_available(), reason="qlora runs where CUDA is; this checks its absence")
def test_qlora_without_cuda_is_a_configuration_error(tmp_path, baselines):
    code, result = run_trainer(tmp_path, config(tmp_path, TASK, baselines[TASK], **_data(tmp_path), method="qlora"))
    assert code == 2 and result.reason == "InvalidConfig", (code, result)
    assert "needs a CUDA GPU" in result.message and "use method lora" in result.message
    assert not (tmp_path / "out" / "model").exists()


def test_unknown_target_modules_are_a_configuration_error_naming_the_modules(tmp_path, baselines):
    code, result = run_trainer(tmp_path, config(
        tmp_path, TASK, baselines[TASK], **_data(tmp_path), method="lora", lora={"targetModules": ["q_proj"]}))
    assert result.reason == "InvalidConfig", result
    assert "lora.targetModules ['q_proj']" in result.message and "c_attn" in result.message
