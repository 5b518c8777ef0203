"""The simulated users against the real model server (``python -m kaizen_server``, a tiny causal LM of the demo's
support domain trained here by the trainer) and a real collector: the tally counts what the server answered, the
feedback lands on the traces of the answers it judges, non-consented feedback is never exported, and users who
opt out are deleted from the collector."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import Counter

import pytest

from kaizen.dev import demo_data
from kaizen.dev import support_domain as sd
from kaizen.dev.collector import LocalCollector
from kaizen.dev.traffic import ALL, Tally, Traffic
from kaizen.dev.users import Population
from tests.server.conftest import NAME, ServerProcess, wait_ready


def get(url: str, token: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    """The demo's baseline, trained briefly: right on most intents before the drift, not on all."""
    root = tmp_path_factory.mktemp("traffic-model")
    dom = demo_data.domain()
    files = demo_data.write_data(root, dom)
    result = demo_data.train(root / "work", root / "out", task="causal-lm",
                             baseline=("v0", str(demo_data.initial_model(root / "init"))), candidate_version="v7",
                             replay=[files["history"]],
                             hyperparameters={**demo_data.BASELINE_HYPERPARAMETERS, "maxSteps": 150})
    return result["candidate"]["uri"]


def test_users_judge_the_served_answers_and_their_feedback_lands_on_the_traces(tmp_path, model):
    collector = LocalCollector(f"sqlite:///{tmp_path / 'collector.db'}", tmp_path / "collector").start()
    token = tmp_path / "ingest-token"
    token.write_text(collector.tokens["ingest"])
    server = ServerProcess(tmp_path, model, KAIZEN_COLLECTOR_URL=collector.url,
                           KAIZEN_COLLECTOR_TOKEN_FILE=str(token), KAIZEN_MODEL_VERSION="v7", KAIZEN_TRACK="stable")
    try:
        wait_ready([server.start()])
        # The policy changed just before: returns are answered wrongly by this pre-drift model, most else rightly.
        users = Population(sd.Domain(sd.drift(policy_at=-1)), 40, seed=9, no_consent=0.3, opt_out=0.15,
                           opt_out_between=(1.0, 2.0), feedback_wrong=0.7, feedback_right=0.3)
        traffic = Traffic(users, server.url, collector_url=collector.url, ingest_token=collector.tokens["ingest"],
                          admin_token=collector.tokens["admin"], model=NAME, rate=25, duration=3, threads=3)
        final = traffic.start().wait(timeout=60)
        assert not traffic.running

        outcomes = list(traffic.outcomes)
        assert final.sent == len(outcomes) == 75 and final.errors == 0, final.last_error
        # The tally counts what the server answered, per version (its header) and cohort.
        assert final.versions() == ["v7"]
        right = Counter(o.request.user.cohort for o in outcomes if o.judgement.correct)
        asked = Counter(o.request.user.cohort for o in outcomes)
        for cohort in asked:
            assert final.counts("v7", cohort) == final.counts(ALL, cohort)
            assert (final.counts("v7", cohort).requests, final.counts("v7", cohort).right) == \
                (asked[cohort], right[cohort])
        assert 0 < final.quality("v7") < 1  # right and wrong answers both, so judging is tested both ways
        returns = [o for o in outcomes if o.request.intent == "refund.return"]
        assert returns and not any(o.judgement.correct for o in returns)

        # Every answer has its own trace, recorded by the server with the request as the user sent it.
        read = collector.tokens["read"]
        opted_out = {u.subject_id for u in users.opt_outs(-1e9, 1e9) if u.opts_out_at <= traffic.now()}
        assert final.opt_outs == len(opted_out) > 0
        for outcome in outcomes:
            status, body = get(f"{collector.url}/v1/traces/{outcome.answered.trace_id}", read)
            if outcome.request.user.subject_id in opted_out:
                assert status == 404  # deleted with the subject's data
                continue
            assert status == 200, body
            trace = json.loads(body)
            assert (trace["input"], trace["output"], trace["cohort"], trace["scenario"], trace["modelVersion"]) == \
                (outcome.request.text, outcome.answered.text, outcome.request.user.cohort, outcome.request.intent,
                 "v7")
            expected = users.domain.answer(outcome.request.intent, outcome.request.user.cohort, outcome.request.at)
            assert outcome.judgement.correct == expected.matches(trace["output"])

        # Feedback is on the trace of the answer it judges; only consented feedback of users still there is exported.
        given = [o for o in outcomes if o.judgement.feedback]
        assert final.feedback == len(given) and final.feedback_errors == 0
        status, body = get(f"{collector.url}/v1/export?model={NAME}", read)
        assert status == 200
        exported = {r["id"]: r for r in map(json.loads, body.decode().splitlines()) if r.get("kind") == "example"}
        wanted = {f"fb-{o.request.id}": o for o in given
                  if o.request.user.consent and o.request.user.subject_id not in opted_out}
        assert set(exported) == set(wanted) and wanted
        for feedback_id, row in exported.items():
            outcome = wanted[feedback_id]
            feedback = outcome.judgement.feedback
            assert row["traceId"] == outcome.answered.trace_id and row["output"] == outcome.answered.text
            assert (row["rating"], row.get("category"), row.get("target")) == \
                (feedback.rating, feedback.category, feedback.correction)
        assert any(r["rating"] == "down" and r.get("target") for r in exported.values())
    finally:
        server.stop()
        collector.stop()


def test_the_classification_variant_judges_the_served_labels(tmp_path):
    dom = demo_data.domain()
    task = "sequence-classification"
    files = demo_data.write_data(tmp_path, dom, task)
    result = demo_data.train(tmp_path / "work", tmp_path / "out", task=task,
                             baseline=("v0", str(demo_data.initial_model(tmp_path / "init", task))),
                             candidate_version="c1", replay=[files["history"]],
                             hyperparameters={**demo_data.BASELINE_HYPERPARAMETERS, "maxSteps": 80})
    server = ServerProcess(tmp_path, result["candidate"]["uri"], KAIZEN_MODEL_VERSION="c1")
    try:
        wait_ready([server.start()])
        users = Population(sd.Domain(sd.drift(policy_at=-1)), 20, seed=4, task=task)
        traffic = Traffic(users, server.url, model=NAME, rate=50, count=30)
        final = traffic.start().wait(timeout=60)
    finally:
        server.stop()
    assert final.sent == 30 and final.errors == 0, final.last_error
    assert final.counts("c1").requests == 30 and 0 < final.quality("c1") < 1
    for outcome in traffic.outcomes:
        expected = users.domain.answer(outcome.request.intent, outcome.request.user.cohort, outcome.request.at)
        assert outcome.answered.text in sd.labels()
        assert outcome.judgement.correct == (outcome.answered.text == expected.label)


def test_the_tally_windows_and_bounds():
    tally = Tally(window=10)
    tally.answered(0, "v1", "free", True)
    tally.answered(5, "v1", "pro", False)
    tally.answered(12, "v2", "free", True)
    snapshot = tally.snapshot(now=14)
    assert snapshot.quality() == pytest.approx(2 / 3) and snapshot.quality("v1") == 0.5
    assert snapshot.quality(window=True) == 0.5 and snapshot.quality("v2", "free", window=True) == 1.0
    assert snapshot.counts("v1", window=True).requests == 1  # the answer at 0 left the window
    assert snapshot.quality("v3") is None
    assert snapshot.lines()[0].startswith("all versions: 66.7% right (2/3; free 2/2, pro 0/1)")
    with pytest.raises(ValueError, match="unbounded traffic"):
        Traffic(Population(sd.Domain(), 5), "http://127.0.0.1:1")
