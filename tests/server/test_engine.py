"""The engine in-process, as the benchmark uses it: it loads what the trainer saved, infers the task, answers the
trained responses, batches without changing answers, and agrees with the trainer's own exactMatch row by row."""

from __future__ import annotations

import pytest

from kaizen_server.engine import Engine, ServeError, WrongTask
from kaizen_trainer import evaluate, modeling
from kaizen_trainer.curate import Row
from tests.server.conftest import MAX_LENGTH, Trained


def test_loads_the_trained_causal_lm_and_answers_the_trained_responses(causal: Trained) -> None:
    engine = Engine.load(causal.uri)
    assert engine.task == "causal-lm"
    answers = engine.complete([row["input"] for row in causal.train])
    assert [a.text for a in answers] == [row["output"] for row in causal.train]
    assert {a.finish_reason for a in answers} == {"stop"}
    first = answers[0]
    words = causal.train[0]["input"].split()
    # The prompt, then the separator; the answer's words, then eos (the word-level tokenizer: one token a word).
    assert (first.prompt_tokens, first.completion_tokens) == (len(words) + 1, len(first.text.split()) + 1)


def test_batching_does_not_change_the_answers(causal: Trained) -> None:
    engine = Engine.load(causal.uri)
    prompts = [row["input"] for row in causal.train[:5] + causal.holdout]
    # Prompts of different lengths, so the batch is padded.
    prompts[0] = "hello hello hello please " + prompts[0]
    assert engine.complete(prompts) == [engine.complete([p])[0] for p in prompts]
    # Prompts of one length (no padding), whose answers end at different steps.
    same = [row["input"] for row in causal.train[:8]]
    assert len({len(p.split()) for p in same}) == 1 and len({len(r["output"].split()) for r in causal.train[:8]}) > 1
    assert engine.complete(same) == [engine.complete([p])[0] for p in same]


def test_max_tokens_cuts_the_answer_with_finish_reason_length(causal: Trained) -> None:
    engine = Engine.load(causal.uri)
    row = causal.train[0]
    [cut] = engine.complete([row["input"]], max_tokens=2)
    assert cut.finish_reason == "length" and cut.completion_tokens == 2
    assert cut.text == " ".join(row["output"].split()[:2])


def test_a_prompt_longer_than_the_model_keeps_its_end(causal: Trained) -> None:
    engine = Engine.load(causal.uri)
    words = [f"w{i}" for i in range(engine.positions * 2)]  # unknown words, one token each
    prompt = " ".join(words + causal.train[0]["input"].split())
    [answer] = engine.complete([prompt], max_tokens=8)
    # Room for the 8 tokens of the answer: the prompt's last tokens, then the separator.
    assert answer.prompt_tokens == engine.positions - 8
    kept = " ".join(prompt.split()[-(engine.positions - 9):])
    assert engine.complete([kept], max_tokens=8) == [answer]
    assert engine.complete([" ".join(prompt.split()[-(engine.positions - 8):])], max_tokens=8)[0].prompt_tokens \
        == engine.positions - 8


def test_server_answers_equal_the_trainers_exact_match(causal: Trained) -> None:
    """The shared format: greedy serving reproduces a response exactly where the trainer's evaluation says it does."""
    engine = Engine.load(causal.uri)
    model, tokenizer = modeling.load("causal-lm", causal.uri)
    encoder = modeling.Encoder("causal-lm", model, tokenizer, MAX_LENGTH)
    rows = [Row(id=r["id"], input=r["input"], target=r["output"], origin="holdout") for r in causal.holdout]
    scored = evaluate.score(model, encoder, rows, modeling.pick_device())
    served = [a.text == row.target for a, row in zip(engine.complete([r.input for r in rows]), rows)]
    assert served == [s.exact == 1.0 for s in scored]
    # Both outcomes occur, so the agreement is not that of a model right (or wrong) everywhere.
    assert True in served and False in served
    # And the trainer's reported holdout.exactMatch is the share of right answers the server gives there.
    assert causal.metrics["holdout.exactMatch"] == pytest.approx(sum(served) / len(served))


def test_classifier_labels_and_scores(classifier: Trained) -> None:
    engine = Engine.load(f"file://{classifier.uri}")
    assert engine.task == "sequence-classification"
    labels = engine.classify([row["input"] for row in classifier.train])
    assert [label.label for label in labels] == [row["output"] for row in classifier.train]
    # The label's probability: the most likely of the labels, so above the uniform share.
    assert all(1 / len(engine.id2label) < label.score <= 1 for label in labels)


def test_each_task_refuses_the_other_tasks_call(causal: Trained, classifier: Trained) -> None:
    with pytest.raises(WrongTask, match="/v1/classifications"):
        Engine.load(classifier.uri).complete(["hello"])
    with pytest.raises(WrongTask, match="/v1/completions"):
        Engine.load(causal.uri).classify(["hello"])


def test_a_folder_without_a_model_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(ServeError, match="not a saved transformers model"):
        Engine.load(str(tmp_path))
