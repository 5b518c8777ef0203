"""The collector's HTTP API over real HTTP: validation, scopes, ingestion outcomes, CORS, OpenAPI and metrics."""

from __future__ import annotations

import json
import random
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.collector.conftest import database_url
from tests.collector.harness import TOKENS, Collector, call, export


def _trace(model: str, **fields: object) -> dict[str, object]:
    return {"model": model, "modelVersion": "v1", "track": "stable", "input": "hi", "output": "hello", **fields}


BAD_BODIES = [
    (b"{not json", 400, "body"),
    (b"[1, 2]", 422, "body"),
    (b'"a string"', 422, "body"),
    (json.dumps({"traceId": "t", "rating": "meh"}).encode(), 422, "rating"),
    (json.dumps({"traceId": "t", "rating": 6}).encode(), 422, "rating"),
    (json.dumps({"traceId": "t", "rating": True}).encode(), 422, "rating"),
    (json.dumps({"traceId": 5, "rating": "up"}).encode(), 422, "traceId"),
    (json.dumps({"traceId": "has space", "rating": "up"}).encode(), 422, "traceId"),
    (json.dumps({"rating": "up"}).encode(), 422, "traceId"),
    (json.dumps({"traceId": "t", "rating": "up", "category": "rude"}).encode(), 422, "category"),
    (json.dumps({"traceId": "t", "rating": "up", "consent": {"training": "maybe"}}).encode(), 422, "consent.training"),
    # A coerced "yes", 1 or "true" is not consent (issue 13): only JSON true is.
    *[(json.dumps({"traceId": "t", "rating": "up", "consent": {"training": value}}).encode(), 422, "consent.training")
      for value in ("yes", "true", 1, 0)],
    (json.dumps({"traceId": "t", "rating": "up", "surprise": 1}).encode(), 422, "surprise"),
    (json.dumps({"traceId": "t", "rating": "up", "comment": "x" * 5000}).encode(), 422, "comment"),
    (json.dumps({"items": []}).encode(), 422, "items"),
    (json.dumps({"items": [{"traceId": "t", "rating": "up"}] * 501}).encode(), 422, "items"),
    (json.dumps({"items": [{"traceId": "t", "rating": "up"}, {"traceId": "t", "rating": 0}]}).encode(), 422,
     "items.1.rating"),
]


@pytest.mark.parametrize(("raw", "status", "loc"), BAD_BODIES, ids=[str(i) for i in range(len(BAD_BODIES))])
def test_invalid_feedback_gets_a_4xx_naming_the_field(collector: Collector, raw: bytes, status: int, loc: str) -> None:
    code, body = call(collector, "POST", "/v1/feedback", raw=raw, scope="ingest")
    assert code == status, body
    assert body["error"]
    if status == 422:
        assert any(f["loc"].startswith(loc) for f in body["fields"]), body


def test_invalid_traces_and_queries_get_4xx(collector: Collector) -> None:
    cases = [
        ("POST", "/v1/traces", {"model": "m"}, "modelVersion"),
        ("POST", "/v1/traces", {"model": "m", "modelVersion": "v", "track": "blue"}, "track"),
        ("POST", "/v1/traces", {"model": "m", "modelVersion": "v", "latencyMs": -1}, "latencyMs"),
        ("POST", "/v1/traces", {"model": "", "modelVersion": "v"}, "model"),
        ("POST", "/v1/traces", {"model": "m", "modelVersion": "v", "input": "x" * 70_000}, "input"),
    ]
    for method, path, body, loc in cases:
        code, answer = call(collector, method, path, body, scope="ingest")
        assert code == 422 and any(f["loc"] == loc for f in answer["fields"]), (body, answer)
    for query, loc in [
        ("", "query.model"), ("model=m&since=yesterday", "query.since"),
        ("model=m&since=2026-01-01T00:00:00", "query.since"),
        ("model=m&categories=incorrect,rude", "query.categories.1"), ("model=m&limit=0", "query.limit"),
        ("model=m&bogus=1", "query.bogus"),
        # An empty list item is none of the values, not "all" (issue 13).
        ("model=m&categories=", "query.categories.0"), ("model=m&categories=incorrect,", "query.categories.1"),
        ("model=m&cohorts=", "query.cohorts.0"),
    ]:
        code, answer = call(collector, "GET", f"/v1/backlog?{query}", scope="read")
        assert code == 422 and any(f["loc"] == loc for f in answer["fields"]), (query, answer)
    code, answer = call(collector, "GET", "/v1/export?model=m&negativeOnly=perhaps", scope="read")
    assert code == 422 and answer["fields"][0]["loc"] == "query.negativeOnly"
    code, answer = call(collector, "GET", "/v1/traces/" + "x" * 200, scope="read")
    assert code == 422 and answer["fields"][0]["loc"] == "path.id"
    # Past a 64-bit database integer: a 422, not the 500 of an OverflowError in the driver (issue 13).
    for after in (2**63, 10**30):
        code, answer = call(collector, "GET", f"/v1/audit?after={after}", scope="read")
        assert code == 422 and answer["fields"][0]["loc"] == "query.after", answer
    code, answer = call(collector, "GET", f"/v1/audit?after={2**63 - 1}", scope="read")
    assert code == 200 and answer == {"items": []}


def test_a_trace_stored_without_consent_or_with_coerced_consent(collector: Collector, model: str) -> None:
    code, answer = call(collector, "POST", "/v1/traces", _trace(model, consent={"training": "yes"}), scope="ingest")
    assert code == 422 and answer["fields"][0]["loc"] == "consent.training"
    code, answer = call(collector, "POST", "/v1/traces", _trace(model, id=f"{model}-t", consent={"training": True}),
                        scope="ingest")
    assert code == 201
    assert call(collector, "GET", f"/v1/traces/{model}-t", scope="read")[1]["consent"] == {"training": True}


def test_oversized_urls_and_headers_get_json_errors(collector: Collector) -> None:
    code, answer = call(collector, "GET", "/v1/backlog?model=" + "m" * 9000, scope="read")
    assert code == 414 and "longer than 8190 bytes" in answer["error"], answer
    code, answer = call(collector, "GET", "/v1/backlog?model=m", scope="read", headers={"X-Big": "b" * 9000})
    assert code == 431 and "X-Big" in answer["error"], answer


def test_wrong_content_type_oversized_body_and_unknown_routes(collector: Collector) -> None:
    code, body = call(collector, "POST", "/v1/feedback", raw=b"traceId=t", scope="ingest",
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert code == 415 and "application/json" in body["error"]
    huge = json.dumps({"traceId": "t", "rating": "up", "comment": "x" * (2 << 20)}).encode()
    code, body = call(collector, "POST", "/v1/feedback", raw=huge, scope="ingest")
    assert code == 413 and "larger than the limit" in body["error"]
    code, body = call(collector, "GET", "/v1/nothing", scope="read")
    assert code == 404 and body["error"]
    code, body = call(collector, "PUT", "/v1/feedback", {}, scope="ingest")
    assert code == 405 and body["error"]


#: (method, path, body, scope needed)
def _endpoints(model: str) -> list[tuple[str, str, object, str]]:
    return [
        ("POST", "/v1/traces", _trace(model), "ingest"),
        ("POST", "/v1/feedback", {"traceId": "t-" + model, "rating": "up"}, "ingest"),
        ("GET", f"/v1/export?model={model}", None, "read"),
        ("GET", f"/v1/backlog?model={model}", None, "read"),
        ("GET", f"/v1/feedback/count?model={model}", None, "read"),
        ("GET", "/v1/audit", None, "read"),
        ("POST", "/v1/audit", {"id": f"d-{uuid.uuid4().hex}", "time": "2026-01-01T00:00:00Z", "loop": "ns/loop",
                               "action": "skip"}, "audit"),
        ("DELETE", f"/v1/subjects/s-{model}", None, "admin"),
    ]


def test_scope_matrix(collector: Collector, model: str) -> None:
    for method, path, body, needed in _endpoints(model):
        code, answer = call(collector, method, path, body)
        assert code == 401 and "missing bearer token" in answer["error"], (method, path)
        code, answer = call(collector, method, path, body, headers={"Authorization": "Bearer not-a-real-token-x"})
        assert code == 401 and answer["error"] == "invalid bearer token", (method, path)
        for scope in TOKENS:
            code, answer = call(collector, method, path, body, scope=scope)
            allowed = scope in (needed, "admin")
            assert (200 <= code < 300) == allowed, (method, path, scope, code, answer)
            if not allowed:
                assert code == 403 and f"lacks the '{needed}' scope" in answer["error"]
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert call(collector, "GET", path)[0] == 200, path


def test_feedback_for_an_unknown_trace_is_kept_and_flagged(collector: Collector, model: str) -> None:
    code, stored = call(collector, "POST", "/v1/feedback",
                        {"traceId": f"ghost-{model}", "rating": 1, "category": "incorrect", "model": model,
                         "consent": {"training": True}}, scope="ingest")
    assert code == 201 and stored["stored"] and stored["traceKnown"] is False
    rows, manifest = export(collector, f"model={model}")
    assert rows == [] and manifest["excluded"]["unknownTrace"] == 1
    code, backlog = call(collector, "GET", f"/v1/backlog?model={model}", scope="read")
    assert backlog["items"][0]["exampleTraceIds"] == [f"ghost-{model}"]
    metrics = call(collector, "GET", "/metrics")[1]
    assert f'kaizen_feedback_unknown_trace_total{{model="{model}"}} 1.0' in metrics


def test_batches_are_answered_item_by_item_and_ids_are_idempotent(collector: Collector, model: str) -> None:
    items = [_trace(model, id=f"{model}-{i}", scenario="s") for i in range(3)]
    code, answer = call(collector, "POST", "/v1/traces", {"items": items}, scope="ingest")
    assert code == 201 and [i["id"] for i in answer["items"]] == [f"{model}-{i}" for i in range(3)]
    code, again = call(collector, "POST", "/v1/traces", _trace(model, id=f"{model}-0", input="changed"), scope="ingest")
    assert code == 201 and again["stored"]
    assert call(collector, "GET", f"/v1/traces/{model}-0", scope="read")[1]["input"] == "hi"
    generated = {call(collector, "POST", "/v1/traces", _trace(model), scope="ingest")[1]["id"] for _ in range(3)}
    assert len(generated) == 3
    assert all(call(collector, "GET", f"/v1/traces/{i}", scope="read")[0] == 200 for i in generated)
    code, missing = call(collector, "GET", "/v1/traces/never-recorded", scope="read")
    assert code == 404 and "never recorded" in missing["error"]


def test_metrics_count_feedback_by_model_version_track_rating_and_category(collector: Collector, model: str) -> None:
    call(collector, "POST", "/v1/traces", _trace(model, id=f"{model}-c", track="canary", modelVersion="v2"),
         scope="ingest")
    for rating in ("down", "down", 5):
        call(collector, "POST", "/v1/feedback", {"traceId": f"{model}-c", "rating": rating, "category": "tone"},
             scope="ingest")
    metrics = call(collector, "GET", "/metrics")[1]
    labels = f'category="tone",cohort="",model="{model}",model_version="v2"'
    assert f'kaizen_feedback_total{{{labels},rating="down",track="canary"}} 2.0' in metrics
    assert f'kaizen_feedback_total{{{labels},rating="5",track="canary"}} 1.0' in metrics
    assert f'kaizen_traces_total{{model="{model}",model_version="v2",track="canary"}} 1.0' in metrics
    assert 'kaizen_collector_request_duration_seconds_count{code="201",method="POST",route="/v1/feedback"}' in metrics


def test_metrics_count_feedback_by_the_judged_traces_cohort(collector: Collector, model: str) -> None:
    call(collector, "POST", "/v1/traces", _trace(model, id=f"{model}-p", track="canary", cohort="pro"), scope="ingest")
    for _ in range(2):
        call(collector, "POST", "/v1/feedback", {"traceId": f"{model}-p", "rating": "down"}, scope="ingest")
    call(collector, "POST", "/v1/feedback", {"traceId": f"{model}-unknown", "rating": "up", "model": model},
         scope="ingest")
    metrics = call(collector, "GET", "/metrics")[1]
    assert (f'kaizen_feedback_total{{category="none",cohort="pro",model="{model}",model_version="v1",rating="down",'
            'track="canary"} 2.0') in metrics
    assert (f'kaizen_feedback_total{{category="none",cohort="",model="{model}",model_version="unknown",rating="up",'
            'track="unknown"} 1.0') in metrics


def test_openapi_document_says_what_the_service_answers(collector: Collector) -> None:
    doc = call(collector, "GET", "/openapi.json")[1]
    traces = doc["paths"]["/v1/traces"]["post"]["responses"]
    assert traces["201"]["content"]["application/json"]["schema"] == {"oneOf": [
        {"$ref": "#/components/schemas/Stored"}, {"$ref": "#/components/schemas/IngestResponse"}]}
    assert {"400", "401", "403", "413", "414", "415", "422", "431", "503"} <= set(traces)
    assert {"404", "422"} <= set(doc["paths"]["/v1/traces/{id}"]["get"]["responses"])
    assert {"200", "201", "409"} <= set(doc["paths"]["/v1/audit"]["post"]["responses"])
    [path_id] = doc["paths"]["/v1/traces/{id}"]["get"]["parameters"]
    assert path_id["schema"]["pattern"] == "^[A-Za-z0-9][A-Za-z0-9_.:@/+=-]{0,127}$"
    after = next(p for p in doc["paths"]["/v1/audit"]["get"]["parameters"] if p["name"] == "after")
    assert after["schema"]["maximum"] == 2**63 - 1
    for path in doc["paths"].values():
        for operation in path.values():
            for status, response in operation["responses"].items():
                if status >= "400":
                    assert response["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/ErrorResponse"}


def test_openapi_document_covers_every_route_with_model_schemas(collector: Collector) -> None:
    code, doc = call(collector, "GET", "/openapi.json")
    assert code == 200 and doc["openapi"].startswith("3.")
    assert {"/v1/traces", "/v1/feedback", "/v1/subjects/{id}", "/v1/export", "/v1/backlog", "/v1/audit",
            "/v1/feedback/count", "/metrics", "/healthz", "/readyz"} <= set(doc["paths"])
    schemas = doc["components"]["schemas"]
    assert schemas["FeedbackIn"]["properties"]["category"]["anyOf"][0]["enum"] == [
        "incorrect", "unhelpful", "unsafe", "tone", "feature_request", "other"]
    assert "ExportRow" in schemas and "ErrorResponse" in schemas
    assert doc["paths"]["/v1/subjects/{id}"]["delete"]["security"] == [{"bearer": ["admin"]}]


def test_no_raw_text_stores_and_exports_no_text(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    service = Collector(database_url("sqlite", tmp_path, request), tmp_path, "--no-raw-text").start()
    try:
        trace = _trace("m", id="t1", input="mail me: a@b.example.com", consent={"training": True})
        assert call(service, "POST", "/v1/traces", trace, scope="ingest")[0] == 201
        stored = call(service, "GET", "/v1/traces/t1", scope="read")[1]
        assert stored.get("input") is None and stored.get("output") is None
        call(service, "POST", "/v1/feedback", {"traceId": "t1", "rating": "down", "correction": "secret",
                                               "consent": {"training": True}}, scope="ingest")
        rows, manifest = export(service, "model=m")
        assert rows == [] and manifest["excluded"]["noText"] == 1
    finally:
        service.stop()


def test_cors_allows_only_configured_origins(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    service = Collector(database_url("sqlite", tmp_path, request), tmp_path,
                        "--cors-origin", "https://app.example.com").start()
    try:
        preflight = urllib.request.Request(service.url + "/v1/feedback", method="OPTIONS", headers={
            "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"})
        with urllib.request.urlopen(preflight) as response:
            assert response.status == 204
            assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
        for origin, allowed in (("https://app.example.com", "https://app.example.com"), ("https://evil.example", None)):
            probe = urllib.request.Request(service.url + "/healthz", headers={"Origin": origin})
            with urllib.request.urlopen(probe) as response:
                assert response.headers.get("Access-Control-Allow-Origin") == allowed
    finally:
        service.stop()


def test_mutated_bodies_never_get_a_5xx(collector: Collector, model: str) -> None:
    """Deterministic fuzzing: values of the wrong type, size or shape in every field of both ingest bodies."""
    rng = random.Random(4)
    weird: list[object] = [None, True, -1, 2**70, 1e308, "", "x" * 70_000, "\x00", "\ud800", [], {}, [1], {"a": 1},
                           "2026-13-45T99:00:00Z", "up", 3, "😀" * 10]
    bases = [("/v1/traces", _trace(model, id=f"{model}-f", subjectId="s", consent={"training": True}, latencyMs=5)),
             ("/v1/feedback", {"traceId": f"{model}-f", "rating": "down", "category": "tone", "comment": "c",
                               "consent": {"training": True}})]
    statuses = []
    for i in range(150):
        path, base = bases[i % 2]
        body = dict(base)
        for _ in range(rng.randint(1, 3)):
            body[rng.choice([*base, "extra"])] = rng.choice(weird)
        batch = {"items": [body, base]} if i % 5 == 0 else body
        raw = json.dumps(batch).encode("utf-8", "surrogatepass")
        if i % 7 == 0:
            raw = raw[: rng.randint(0, len(raw))]  # cut short
        code, answer = call(collector, "POST", path, raw=raw, scope="ingest")
        assert code < 500, (path, raw[:300], answer)
        statuses.append(code)
    assert 201 in statuses and 422 in statuses and 400 in statuses


def test_nul_characters_are_refused_on_every_backend(collector: Collector, model: str) -> None:
    code, answer = call(collector, "POST", "/v1/traces", _trace(model, input="a\x00b"), scope="ingest")
    assert code == 422 and answer["fields"][0]["loc"] == "input" and "NUL" in answer["fields"][0]["message"]
