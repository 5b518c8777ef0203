"""Consent, opt-out, redaction at ingestion, and what the export and the backlog contain, over real HTTP."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime

from kaizen.dev.collector import TOKENS
from tests.collector.harness import Collector, call, export


def _ingest(collector: Collector, model: str, n: int, *, subject: str, consent: bool, category: str = "incorrect",
            rating: object = "down", cohort: str = "eu", scenario: str = "billing", prefix: str = "") -> list[str]:
    traces = [{"id": f"{model}-{prefix}{subject}-{i}", "model": model, "modelVersion": "v1", "track": "stable",
               "cohort": cohort, "scenario": scenario, "input": f"question {i}", "output": f"answer {i}",
               "subjectId": subject, "consent": {"training": consent}} for i in range(n)]
    assert call(collector, "POST", "/v1/traces", {"items": traces}, scope="ingest")[0] == 201
    feedback = [{"traceId": t["id"], "rating": rating, "category": category, "correction": f"better {i}",
                 "subjectId": subject, "consent": {"training": consent}} for i, t in enumerate(traces)]
    code, answer = call(collector, "POST", "/v1/feedback", {"items": feedback}, scope="ingest")
    assert code == 201 and all(i["traceKnown"] for i in answer["items"])
    return [t["id"] for t in traces]


def test_export_holds_only_consented_rows_joined_to_their_traces(collector: Collector, model: str) -> None:
    _ingest(collector, model, 3, subject="alice", consent=True)
    _ingest(collector, model, 2, subject="bob", consent=False)
    rows, manifest = export(collector, f"model={model}")
    assert len(rows) == 3 and manifest["rows"] == 3 and manifest["withTarget"] == 3
    assert manifest["excluded"] == {"noConsent": 2, "unknownTrace": 0, "noText": 0}
    row = next(r for r in rows if r["traceId"] == f"{model}-alice-1")
    assert row["input"] == "question 1" and row["output"] == "answer 1" and row["target"] == "better 1"
    assert row["sentiment"] == "negative" and row["modelVersion"] == "v1" and row["cohort"] == "eu"
    assert all("subjectId" not in r and "alice" not in json.dumps({k: v for k, v in r.items() if k != "traceId"})
               for r in rows)
    lines = b"".join(
        line.encode() + b"\n" for line in call(collector, "GET", f"/v1/export?model={model}", scope="read")[1]
        .splitlines()[:-1]
    )
    assert manifest["sha256"] == hashlib.sha256(lines).hexdigest()
    # Feedback consent alone is not enough: the trace's subject must have consented too.
    call(collector, "POST", "/v1/feedback",
         {"traceId": f"{model}-bob-0", "rating": "down", "consent": {"training": True}}, scope="ingest")
    assert len(export(collector, f"model={model}")[0]) == 3


def test_export_filters(collector: Collector, model: str) -> None:
    _ingest(collector, model, 2, subject="a", consent=True, category="tone", cohort="us", scenario="refunds")
    middle = datetime.now(UTC).isoformat()
    time.sleep(0.01)
    _ingest(collector, model, 3, subject="b", consent=True, category="unsafe", rating=5)
    assert len(export(collector, f"model={model}&categories=tone")[0]) == 2
    assert len(export(collector, f"model={model}&categories=tone,unsafe")[0]) == 5
    assert len(export(collector, f"model={model}&cohorts=us")[0]) == 2
    assert len(export(collector, f"model={model}&scenarios=billing")[0]) == 3
    assert len(export(collector, f"model={model}&negativeOnly=true")[0]) == 2
    rows, manifest = export(collector, f"model={model}&since={middle.replace('+00:00', 'Z')}")
    assert len(rows) == 3 and manifest["filters"]["since"]
    assert export(collector, "model=no-such-model")[0] == []


def test_opt_out_removes_a_subject_from_every_later_export_backlog_and_count(collector: Collector, model: str) -> None:
    carol = _ingest(collector, model, 4, subject="carol", consent=True)
    _ingest(collector, model, 1, subject="dave", consent=True)
    # Someone else's feedback on carol's output quotes it: it goes too.
    call(collector, "POST", "/v1/feedback", {"traceId": carol[0], "rating": "down", "subjectId": "erin",
                                             "consent": {"training": True}}, scope="ingest")
    assert call(collector, "GET", f"/v1/feedback/count?model={model}", scope="read")[1]["count"] == 6
    code, deleted = call(collector, "DELETE", "/v1/subjects/carol", scope="admin")
    assert code == 200 and deleted["tracesDeleted"] == 4 and deleted["feedbackDeleted"] == 5
    rows, manifest = export(collector, f"model={model}")
    assert [r["traceId"] for r in rows] == [f"{model}-dave-0"] and manifest["subjectsOptedOut"] >= 1
    backlog = call(collector, "GET", f"/v1/backlog?model={model}", scope="read")[1]
    assert [i["exampleTraceIds"] for i in backlog["items"]] == [[f"{model}-dave-0"]]
    assert call(collector, "GET", f"/v1/feedback/count?model={model}", scope="read")[1]["count"] == 1
    assert call(collector, "GET", f"/v1/traces/{carol[1]}", scope="read")[0] == 404
    # Later data of the subject is dropped at the door, and never reaches an export.
    code, answer = call(collector, "POST", "/v1/traces", {"id": f"{model}-late", "model": model, "modelVersion": "v1",
                                                          "input": "x", "subjectId": "carol",
                                                          "consent": {"training": True}}, scope="ingest")
    assert code == 201 and answer["stored"] is False
    assert call(collector, "GET", f"/v1/traces/{model}-late", scope="read")[0] == 404
    code, again = call(collector, "DELETE", "/v1/subjects/carol", scope="admin")
    assert code == 200 and again["tracesDeleted"] == 0 and again["tombstonedAt"] == deleted["tombstonedAt"]


def test_backlog_groups_negative_feedback_by_volume_then_recency(collector: Collector, model: str) -> None:
    _ingest(collector, model, 3, subject="p", consent=True, category="incorrect", scenario="billing")
    _ingest(collector, model, 1, subject="q", consent=True, category="tone", scenario="greeting")
    _ingest(collector, model, 1, subject="r", consent=True, category="unsafe", scenario="medical")
    _ingest(collector, model, 4, subject="s", consent=True, category="incorrect", rating="up", prefix="pos-")
    _ingest(collector, model, 5, subject="t", consent=False, category="unhelpful")
    code, backlog = call(collector, "GET", f"/v1/backlog?model={model}&examples=2", scope="read")
    assert code == 200
    groups = [(i["category"], i["scenario"], i["count"]) for i in backlog["items"]]
    assert groups == [("incorrect", "billing", 3), ("unsafe", "medical", 1), ("tone", "greeting", 1)]
    examples = backlog["items"][0]["exampleTraceIds"]
    assert len(examples) == 2 and set(examples) < {f"{model}-p-{i}" for i in range(3)}
    everyone = call(collector, "GET", f"/v1/backlog?model={model}&consentedOnly=false", scope="read")[1]
    assert everyone["items"][0] == {**everyone["items"][0], "category": "unhelpful", "count": 5}
    only_tone = call(collector, "GET", f"/v1/backlog?model={model}&categories=tone", scope="read")[1]
    assert [i["category"] for i in only_tone["items"]] == ["tone"]


def test_pii_is_redacted_before_it_is_stored_and_recorded(collector: Collector, model: str) -> None:
    trace = {"id": f"{model}-pii", "model": model, "modelVersion": "v1", "subjectId": "u1",
             "input": "I am jane.doe@example.com, card 4111-1111-1111-1111, from 203.0.113.9",
             "output": "Call +44 20 7946 0958", "consent": {"training": True}}
    code, stored = call(collector, "POST", "/v1/traces", trace, scope="ingest")
    assert code == 201 and stored["redacted"] == {"email": 1, "card": 1, "ip": 1, "phone": 1}
    code, feedback = call(collector, "POST", "/v1/feedback", {
        "traceId": f"{model}-pii", "rating": "down", "comment": "my SSN is 123-45-6789",
        "correction": "IBAN GB82 WEST 1234 5698 7654 32", "consent": {"training": True}}, scope="ingest")
    assert feedback["redacted"] == {"national_id": 1, "iban": 1}
    saved = call(collector, "GET", f"/v1/traces/{model}-pii", scope="read")[1]
    assert saved["input"] == "I am [EMAIL], card [CARD], from [IP]" and saved["output"] == "Call [PHONE]"
    row = export(collector, f"model={model}")[0][0]
    assert row["redacted"] and row["comment"] == "my SSN is [NATIONAL_ID]" and row["target"] == "IBAN [IBAN]"
    metrics = call(collector, "GET", "/metrics")[1]
    assert 'kaizen_pii_redactions_total{kind="iban"}' in metrics


def test_audit_log_is_append_only_and_paged(collector: Collector, model: str) -> None:
    entries = [{"id": f"{model}-d{i}", "time": "2026-11-28T10:00:00Z", "loop": f"ns/{model}", "action": "retrain",
                "reason": "feedback backlog", "evidence": {"negative": 50 + i}} for i in range(3)]
    seqs = []
    for entry in entries:
        code, record = call(collector, "POST", "/v1/audit", entry, scope="audit")
        assert code == 201
        seqs.append(record["seq"])
    assert seqs == sorted(seqs)
    assert call(collector, "POST", "/v1/audit", entries[0], scope="audit")[0] == 200  # an identical retry
    code, conflict = call(collector, "POST", "/v1/audit", {**entries[0], "action": "skip"}, scope="audit")
    assert code == 409 and "append-only" in conflict["error"]
    page = call(collector, "GET", f"/v1/audit?loop=ns/{model}&limit=2", scope="read")[1]["items"]
    assert [p["id"] for p in page] == [f"{model}-d0", f"{model}-d1"] and page[0]["evidence"] == {"negative": 50}
    rest = call(collector, "GET", f"/v1/audit?loop=ns/{model}&after={page[-1]['seq']}", scope="read")[1]["items"]
    assert [p["id"] for p in rest] == [f"{model}-d2"]


def test_export_carries_the_served_answer_and_preference_rows_keep_every_privacy_rule(collector: Collector,
                                                                                       model: str) -> None:
    """Each exported item carries the answer served on its trace, so the trainer can pair a correction (chosen) with
    it (rejected) for DPO, or learn from a bare thumbs up or down for KTO; what the export leaves out for SFT (no
    consent, opted out) no preference row holds, and the served answers are redacted like every text."""
    from kaizen.api.retrainjob import DataSource, DataSpec, Targets
    from kaizen.api.trainer import Example
    from kaizen_trainer.curate import Source, curate
    from kaizen_trainer.load import load_source

    def ingest(subject: str, consent: bool, items: list[tuple[str, str | None]], output: str = "stale answer",
               trace_consent: bool | None = None) -> None:
        traces = [{"id": f"{model}-{subject}-{i}", "model": model, "modelVersion": "v1", "scenario": "refund",
                   "input": f"refund question {subject} {i}", "output": f"{output} {i}", "subjectId": subject,
                   "consent": {"training": consent if trace_consent is None else trace_consent}}
                  for i in range(len(items))]
        assert call(collector, "POST", "/v1/traces", {"items": traces}, scope="ingest")[0] == 201
        feedback = [{"traceId": t["id"], "rating": rating, "subjectId": subject, "consent": {"training": consent},
                     **({"correction": correction} if correction else {})}
                    for t, (rating, correction) in zip(traces, items, strict=True)]
        assert call(collector, "POST", "/v1/feedback", {"items": feedback}, scope="ingest")[0] == 201

    ingest("alice", True, [("down", "new answer 0"), ("down", "new answer 1"), ("up", None), ("down", None)])
    ingest("pii", True, [("down", "new answer 0")], output="call +44 20 7946 0958")
    ingest("bob", False, [("down", "new answer 0"), ("down", None)])
    ingest("dora", True, [("down", "new answer 0"), ("up", None)], trace_consent=False)  # her traces: no consent
    ingest("carol", True, [("down", "new answer 0"), ("up", None), ("down", None)])
    assert call(collector, "DELETE", "/v1/subjects/carol", scope="admin")[0] == 200

    rows, manifest = export(collector, f"model={model}")
    assert {r["traceId"].rsplit("-", 2)[-2] for r in rows} == {"alice", "pii"}
    assert manifest["withOutput"] == manifest["rows"] == 5 and manifest["withTarget"] == 3
    served = {r["traceId"]: r["output"] for r in rows}
    redacted = served[f"{model}-pii-0"]
    assert served[f"{model}-alice-0"] == "stale answer 0" and "[PHONE]" in redacted and "7946" not in redacted

    # The trainer reads the export as it does in a job, and builds its preference rows from it.
    feedback = load_source(DataSource(uri=f"{collector.url}/v1/export?model={model}"), "feedback",
                           token=TOKENS["read"])
    # The ids hash into the holdout by their random model name: at 0.01 one row in a hundred went there (a flaky
    # test); at 1e-9 none does, and the explicit holdout file is the holdout.
    data = DataSpec(targeted_ratio=1, min_rows=1, holdout_fraction=1e-9)
    holdout = Source("holdout.jsonl", "holdout", "-", (Example(id="h", input="an unrelated question", output="a"),))
    dpo = curate([feedback, holdout], data, Targets(), seed=1, objective="dpo").train
    kto = curate([feedback, holdout], data, Targets(), seed=1, objective="kto").train
    everyone = {r.input.split()[2] for r in dpo + kto}
    assert everyone == {"alice", "pii"}  # never bob (no consent), dora (her traces' subject) nor carol (opted out)
    assert {(r.input, r.target, r.rejected) for r in dpo} == {
        ("refund question alice 0", "new answer 0", "stale answer 0"),
        ("refund question alice 1", "new answer 1", "stale answer 1"),
        ("refund question pii 0", "new answer 0", redacted)}
    rated = {(r.input.split()[-1], r.target, r.desirable) for r in kto if "alice" in r.input}
    assert rated == {("0", "new answer 0", True), ("0", "stale answer 0", False), ("1", "new answer 1", True),
                     ("1", "stale answer 1", False), ("2", "stale answer 2", True), ("3", "stale answer 3", False)}
