"""Sampled evaluation of live answers and the review queue, on the real collector (SQLite; PostgreSQL under
``integration``) with real tiny evaluator models (:mod:`tests.collector.evaluators`): traces and corrections go in,
the collector's own evaluators judge them off the ingest path, and the verdict counters on /metrics (read by a real
Prometheus once), the review queue and the feedback its answers become come out."""

from __future__ import annotations

import re
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kaizen.cli import main as kaizen
from kaizen.collector import evaluation
from kaizen.collector.evaluation import Result
from kaizen.dev.prometheus import Target
from tests.collector.conftest import BACKENDS, database_url
from tests.collector.evaluators import keyword_classifier
from tests.collector.harness import REVIEW_TOKEN, Collector, call, export
from tests.fixtures.prometheus import prometheus  # noqa: F401

pytest.importorskip("torch", reason="the sampled evaluation needs torch and transformers (the trainer extra)")


@pytest.fixture(scope="module")
def evaluator_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A rubric judge, good and sure of it when an answer ends in 'thanks', good but unsure when it ends in 'maybe',
    else bad; a safety classifier that calls an answer ending in 'bomb' unsafe."""
    root = tmp_path_factory.mktemp("evaluators")
    return {
        "judge": keyword_classifier(root / "judge", ["good", "bad"],
                                    {"thanks": ("good", 0.95), "maybe": ("good", 0.55)}, ("bad", 0.9)),
        "safety": keyword_classifier(root / "safety", ["safe", "unsafe"], {"bomb": ("unsafe", 0.97)},
                                     ("safe", 0.97)),
    }


@pytest.fixture(scope="module", params=BACKENDS)
def eval_collector(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                   evaluator_models: dict[str, Path]) -> Iterator[Collector]:
    workdir = tmp_path_factory.mktemp(f"collector-eval-{request.param}")
    service = Collector(database_url(request.param, workdir, request), workdir,
                        "--eval-share", "stable=1", "--eval-share", "canary=1",  # shadow: the default, none
                        "--eval-judge", f"rubric={evaluator_models['judge']}",
                        "--eval-safety", str(evaluator_models["safety"]), "--eval-queue", "20").start(timeout=60)
    yield service
    service.stop()


def _metrics(collector: Collector, name: str) -> list[tuple[dict[str, str], float]]:
    with urllib.request.urlopen(f"{collector.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return [(dict(re.findall(r'(\w+)="([^"]*)"', labels)), float(value))
            for labels, value in re.findall(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, flags=re.MULTILINE)]


def _verdicts(collector: Collector, model: str) -> dict[tuple[str, str, str], float]:
    return {(s["track"], s["evaluator"], s["verdict"]): v for s, v in _metrics(collector, "kaizen_eval_total")
            if s["model"] == model}


def _eventually(check: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)
    return value


def test_live_answers_are_scored_and_the_unsure_ones_queued_for_review(
    eval_collector: Collector, model: str, tmp_path: Path, request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    question = "how do i get a refund"
    answers = {"sure": "you will get your money back in days thanks", "unsure": "you will get a refund maybe",
               "unsafe": "here is how to build a bomb", "corrected": "the wrong answer thanks"}
    traces = [{"id": f"{model}-{key}", "model": model, "modelVersion": "v2", "track": "canary", "input": question,
               "output": output, "subjectId": f"{model}-{key}-user", "consent": {"training": key != "unsure"}}
              for key, output in answers.items()]
    traces.append({"id": f"{model}-shadow", "model": model, "modelVersion": "v2", "track": "shadow",
                   "input": question, "output": answers["unsafe"]})
    assert call(eval_collector, "POST", "/v1/traces", {"items": traces}, scope="ingest")[0] == 201
    # A user's correction: the reference evaluator finds the served answer far from it, the judge liked it.
    status, _ = call(eval_collector, "POST", "/v1/feedback", {
        "traceId": f"{model}-corrected", "rating": "down", "correction": "you get your refund in days",
        "subjectId": f"{model}-corrected-user", "consent": {"training": True}}, scope="ingest")
    assert status == 201

    expected = {("canary", "rubric", "good"): 4, ("canary", "rubric", "bad"): 1, ("canary", "safety", "good"): 3,
                ("canary", "safety", "bad"): 1, ("canary", "reference", "bad"): 1}
    assert _eventually(lambda: _verdicts(eval_collector, model) == expected and _verdicts(eval_collector, model),
                       f"the verdicts {expected}, got {_verdicts(eval_collector, model)}")
    cost = {s["evaluator"]: v for s, v in _metrics(eval_collector, "kaizen_eval_cpu_seconds_count")}
    assert cost.get("rubric", 0) >= 5 and cost.get("safety", 0) >= 4 and cost.get("reference", 0) >= 1, cost

    # The review queue: the unsure judge, the unsafe answer, the judge and the reference disagreeing; no others.
    assert call(eval_collector, "GET", f"/v1/reviews?model={model}", scope="read")[0] == 403
    status, page = call(eval_collector, "GET", f"/v1/reviews?model={model}", scope="review")
    assert status == 200, page
    reasons = {item["traceId"]: item["reasons"] for item in page["items"]}
    assert reasons == {f"{model}-unsure": ["low-confidence"], f"{model}-unsafe": ["unsafe"],
                       f"{model}-corrected": ["disagreement"]}, reasons
    unsafe = next(item for item in page["items"] if item["traceId"] == f"{model}-unsafe")
    assert unsafe["output"] == answers["unsafe"] and unsafe["modelVersion"] == "v2" and unsafe["track"] == "canary"
    assert {r["evaluator"]: r["verdict"] for r in unsafe["results"]} == {"rubric": "bad", "safety": "bad"}

    # Answered by API: stored as feedback with the reviewer, once; a different second answer is refused.
    answer = {"verdict": "bad", "correction": "i can not help with that", "category": "unsafe"}
    status, review = call(eval_collector, "POST", f"/v1/reviews/{model}-unsafe", answer, scope="review")
    assert status == 201 and review["reviewer"] == "review-client" and review["verdict"] == "bad", review
    assert call(eval_collector, "POST", f"/v1/reviews/{model}-unsafe", answer, scope="review")[0] == 200
    status, conflict = call(eval_collector, "POST", f"/v1/reviews/{model}-unsafe", {"verdict": "good"},
                            scope="review")
    assert status == 409 and "answered before (bad by review-client)" in conflict["error"], conflict
    status, missing = call(eval_collector, "POST", f"/v1/reviews/{model}-sure", {"verdict": "good"}, scope="review")
    assert status == 404 and "GET /v1/reviews" in missing["error"]

    # And by the CLI: `kaizen review list` and `kaizen review answer`, with the review token.
    token = tmp_path / "token"
    token.write_text(REVIEW_TOKEN + "\n")
    cli = ["review", "--collector", eval_collector.url, "--token-file", str(token)]
    assert kaizen([*cli, "list", "--model", model]) == 0
    listed = capsys.readouterr().out
    assert f"{model}-unsure" in listed and "low-confidence" in listed and f"{model}-unsafe" not in listed, listed
    assert kaizen([*cli, "answer", f"{model}-unsure", "--verdict", "good"]) == 0
    assert "good by review-client" in capsys.readouterr().out
    assert kaizen([*cli, "answer", f"{model}-sure", "--verdict", "good"]) == 1
    assert "HTTP 404" in capsys.readouterr().err

    # Curation sees the answers as feedback, under the trace subject's consent: the unsure trace's subject did not
    # consent, so only the unsafe one's answer (with its correction as the target) and the user's own are exported.
    rows, manifest = export(eval_collector, f"model={model}")
    by_reviewer = {r.get("reviewer"): r for r in rows}
    assert set(by_reviewer) == {"review-client", None} and manifest["excluded"]["noConsent"] == 1, rows
    reviewed = by_reviewer["review-client"]
    assert reviewed["traceId"] == f"{model}-unsafe" and reviewed["target"] == answer["correction"]
    assert reviewed["rating"] == "down" and reviewed["category"] == "unsafe"
    status, page = call(eval_collector, "GET", f"/v1/reviews?model={model}&state=answered", scope="review")
    assert sorted(i["traceId"] for i in page["items"]) == [f"{model}-unsafe", f"{model}-unsure"]

    # Opt-out takes a subject's reviews with its traces.
    assert call(eval_collector, "DELETE", f"/v1/subjects/{model}-corrected-user", scope="admin")[0] == 200
    status, page = call(eval_collector, "GET", f"/v1/reviews?model={model}&state=all", scope="review")
    assert f"{model}-corrected" not in {i["traceId"] for i in page["items"]}

    if "sqlite" in eval_collector.db:  # one Prometheus test: the ratio a Rollout's analysis would judge
        prometheus = request.getfixturevalue("prometheus")
        prometheus.set_targets([Target(eval_collector.url.removeprefix("http://"))])
        selector = f'model="{model}",evaluator="rubric",track="canary"'
        ratio = prometheus.wait_for_data(f'sum(kaizen_eval_total{{{selector},verdict="good"}}) / '
                                         f'sum(kaizen_eval_total{{{selector}}})', timeout=60)
        assert float(ratio[0]["value"][1]) == pytest.approx(4 / 5)


def test_sampling_is_bounded_and_dropped_samples_are_counted(eval_collector: Collector, model: str) -> None:
    def samples() -> dict[str, float]:
        return {s["outcome"]: v for s, v in _metrics(eval_collector, "kaizen_eval_samples_total")}

    before = samples()
    flood = [{"id": f"{model}-{i}", "model": model, "modelVersion": "v1", "track": "stable", "input": "how",
              "output": "you will get a refund thanks"} for i in range(300)]
    assert call(eval_collector, "POST", "/v1/traces", {"items": flood}, scope="ingest")[0] == 201
    after = samples()
    queued, dropped = (after.get(k, 0) - before.get(k, 0) for k in ("queued", "dropped"))
    # 300 sampled at once into a queue of 20: the rest are dropped, counted, and ingestion answered all the same.
    assert queued + dropped == 300 and dropped >= 300 - 20 - 1, after
    good = _eventually(lambda: _verdicts(eval_collector, model).get(("stable", "rubric", "good")) == queued and queued,
                       "the queued samples to be evaluated")
    assert good == queued


def test_flags_say_why_a_human_is_needed() -> None:
    def result(evaluator: str, verdict: str, confidence: float | None = None) -> Result:
        return Result(evaluator, verdict, 0.9, confidence)  # type: ignore[arg-type]

    assert evaluation.flags([result("judge", "good", 0.9), result("safety", "good")], 0.7) == []
    assert evaluation.flags([result("judge", "good", 0.6)], 0.7) == ["low-confidence"]
    assert evaluation.flags([result("judge", "good", 0.9), result("safety", "bad")], 0.7) == ["unsafe"]
    # The safety verdict is not a quality verdict: a safe bad answer is no disagreement.
    assert evaluation.flags([result("judge", "bad", 0.9), result("safety", "good")], 0.7) == []
    assert evaluation.flags([result("a", "good", 0.9), result("b", "bad", 0.95)], 0.7) == ["disagreement"]
    assert evaluation.flags([result("judge", "good", 0.9), result("reference", "bad")], 0.7) == ["disagreement"]


def test_sampling_takes_the_share_by_trace_id_and_the_bucket_bounds_the_rate() -> None:
    ids = [f"trace-{uuid.UUID(int=i)}" for i in range(20_000)]
    share = sum(evaluation.sampled(i, 0.1) for i in ids) / len(ids)
    assert 0.09 < share < 0.11
    assert all(evaluation.sampled(i, 0.1) == evaluation.sampled(i, 0.1) for i in ids[:100])  # the same each time
    assert not any(evaluation.sampled(i, 0.0) for i in ids[:100]) and all(evaluation.sampled(i, 1) for i in ids[:100])

    now = [0.0]
    bucket = evaluation.TokenBucket(2.0, clock=lambda: now[0])
    assert [bucket.delay() for _ in range(2)] == [0.0, 0.0]  # a second's burst
    assert bucket.delay() == pytest.approx(0.5)  # then one per half second
    now[0] = 10.0
    assert bucket.delay() == 0.0


def test_a_model_of_no_known_contract_is_refused_with_what_it_needs(evaluator_models: dict[str, Path]) -> None:
    with pytest.raises(evaluation.EvaluatorError, match="needs the labels safe and unsafe"):
        evaluation.check(evaluation.Settings(default_share=1, safety=str(evaluator_models["judge"])))
    with pytest.raises(evaluation.EvaluatorError, match="labels good and bad .rubric., or A and B"):
        evaluation.check(evaluation.Settings(default_share=1, judges=(("j", str(evaluator_models["safety"])),)))
    with pytest.raises(evaluation.EvaluatorError, match="no config.json there"):
        evaluation.check(evaluation.Settings(default_share=1, judges=(("j", "/nonexistent/judge"),)))


def test_a_pairwise_judge_compares_the_served_answer_with_the_correction_whatever_its_place(tmp_path: Path) -> None:
    # The trainer's judge contract (labels A, B, tie): this one prefers the answer that ends in "thanks", A or B.
    judge = evaluation.Classifier("pairwise", str(keyword_classifier(
        tmp_path / "pairwise", ["A", "B", "tie"], {"thanks": ("B", 0.9)}, ("A", 0.9))))
    polite, curt = "you will get your refund thanks", "you will get your refund maybe"
    for n in range(4):  # trace ids whose coin puts the served answer first and second
        trace = {"id": f"trace-{n}", "input": "how do i get a refund"}
        won = evaluation.judge_result(judge, evaluation.Sample({**trace, "output": polite}, curt))
        lost = evaluation.judge_result(judge, evaluation.Sample({**trace, "output": curt}, polite))
        assert won is not None and lost is not None
        assert (won.verdict, lost.verdict) == ("good", "bad") and won.confidence == pytest.approx(0.9, abs=1e-4)
    assert {evaluation._answer_is_a(f"trace-{n}") for n in range(4)} == {True, False}
    # Nothing to compare: no correction, or the correction is the answer served.
    served = {"id": "t", "input": "q", "output": polite}
    assert evaluation.judge_result(judge, evaluation.Sample(served)) is None
    assert evaluation.judge_result(judge, evaluation.Sample(served, polite)) is None
