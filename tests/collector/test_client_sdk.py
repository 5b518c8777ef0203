"""The operator's sync client and the model-server SDK, against a running collector."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from kaizen.collector.client import CollectorClient, CollectorError
from kaizen.dev.cluster import free_ports
from kaizen.sdk import ASGIRequestMetrics, FeedbackRecorder, WSGIRequestMetrics
from tests.collector.harness import TOKENS, Collector, call


def test_recorder_and_client_round_trip(collector: Collector, model: str) -> None:
    recorder = FeedbackRecorder(collector.url, TOKENS["ingest"], model=model, model_version="v7", track="canary")
    before = datetime.now(UTC) - timedelta(seconds=1)
    trace_id = recorder.trace("what is 2+2?", "5", scenario="math", cohort="kids", consent_training=True)
    recorder.feedback(trace_id, "down", category="incorrect", correction="4", consent_training=True)
    recorder.feedback(trace_id, 2, category="tone")  # no consent
    other = recorder.trace("hello", "hi", consent_training=True)
    recorder.feedback(other, "up", consent_training=True)

    client = CollectorClient(collector.url, TOKENS["read"])
    assert client.feedback_count(model) == 1
    assert client.feedback_count(model, consented_only=False) == 2
    assert client.feedback_count(model, categories=["tone"], consented_only=False) == 1
    assert client.feedback_count(model, since=datetime.now(UTC) + timedelta(minutes=1)) == 0
    assert client.feedback_count(model, since=before) == 1
    [item] = client.backlog(model)
    assert (item.category, item.scenario, item.cohort, item.count) == ("incorrect", "math", "kids", 1)
    assert item.example_trace_ids == [trace_id]
    stored = call(collector, "GET", f"/v1/traces/{trace_id}", scope="read")[1]
    assert (stored["modelVersion"], stored["track"]) == ("v7", "canary")

    CollectorClient(collector.url, TOKENS["audit"]).post_audit(
        {"id": f"{model}-decision", "time": datetime.now(UTC), "loop": "ns/loop", "action": "retrain",
         "evidence": {"negative": 1}}
    )
    audit = call(collector, "GET", "/v1/audit?loop=ns/loop&limit=1000", scope="read")[1]["items"]
    assert f"{model}-decision" in [a["id"] for a in audit]


def test_client_errors_say_what_went_wrong(collector: Collector, model: str) -> None:
    with pytest.raises(CollectorError, match=r"HTTP 403: token 'ingest-client' lacks the 'read' scope") as info:
        CollectorClient(collector.url, TOKENS["ingest"]).feedback_count(model)
    assert info.value.status == 403
    with pytest.raises(CollectorError, match=r"HTTP 401: invalid bearer token"):
        CollectorClient(collector.url, "wrong-token-wrong-token").backlog(model)
    with pytest.raises(CollectorError, match=r"HTTP 422: .*query.categories.0"):
        CollectorClient(collector.url, TOKENS["read"]).feedback_count(model, categories=["rude"])
    with pytest.raises(CollectorError, match="invalid audit entry, not sent"):
        CollectorClient(collector.url, TOKENS["audit"]).post_audit({"id": "x"})
    port = free_ports(1)[0]
    with pytest.raises(CollectorError, match=r"cannot reach the collector"):
        CollectorClient(f"http://127.0.0.1:{port}", timeout=2).feedback_count(model)
    with pytest.raises(ValueError, match="must carry a time zone"):
        CollectorClient(collector.url, TOKENS["read"]).backlog(model, since=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="invalid FeedbackIn, not sent"):
        FeedbackRecorder(collector.url, model=model).feedback("t", 9)


def test_asgi_middleware_labels_requests_with_version_and_track() -> None:
    registry = CollectorRegistry()

    async def app(scope: dict, receive: object, send: object) -> None:
        if scope["path"] == "/boom":
            raise RuntimeError("model crashed")
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

    wrapped = ASGIRequestMetrics(app, model_version="v3", track="canary", registry=registry)
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def serve(path: str) -> None:
        await wrapped({"type": "http", "path": path}, None, send)

    asyncio.run(serve("/predict"))
    with pytest.raises(RuntimeError):
        asyncio.run(serve("/boom"))
    labels = {"model_version": "v3", "track": "canary"}
    assert registry.get_sample_value("kaizen_model_requests_total", {**labels, "code": "200"}) == 1
    assert registry.get_sample_value("kaizen_model_requests_total", {**labels, "code": "500"}) == 1
    assert registry.get_sample_value("kaizen_model_request_duration_seconds_count", labels) == 2
    assert sent[0]["status"] == 200


def test_wsgi_middleware_reads_labels_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAIZEN_MODEL_VERSION", "v9")
    monkeypatch.setenv("KAIZEN_TRACK", "stable")
    registry = CollectorRegistry()

    def app(environ: dict, start_response: object) -> list[bytes]:
        start_response("404 Not Found", [])  # type: ignore[operator]
        return [b"no"]

    body = WSGIRequestMetrics(app, registry=registry)({}, lambda status, headers, exc_info=None: None)
    assert body == [b"no"]
    assert registry.get_sample_value(
        "kaizen_model_requests_total", {"model_version": "v9", "track": "stable", "code": "404"}
    ) == 1
