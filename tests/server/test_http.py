"""The server as a process over HTTP: the OpenAI-compatible routes, errors, metrics, and traces in a real collector
(SQLite), with feedback on the returned trace id joined in the collector's training export."""

from __future__ import annotations

import urllib.request
import uuid

import pytest

from kaizen.api import serving
from kaizen.collector.models import ExportManifest, ExportRow, TraceOut
from kaizen.dev.collector import LocalCollector
from kaizen.sdk import FeedbackRecorder
from tests.server.conftest import NAME, ServerProcess, Trained


@pytest.fixture
def causal_server(servers: dict[str, ServerProcess]) -> ServerProcess:
    return servers["causal"]


def test_health_answers_503_while_the_model_loads_then_200(servers: dict[str, ServerProcess]) -> None:
    # The port opens before torch is imported and the model loaded (seconds), so probes see 503 first.
    for server in servers.values():
        assert server.readiness[0] == 503 and server.readiness[-1] == 200, server.readiness
        assert set(server.readiness) == {503, 200}


def test_completions_answer_the_trained_response(causal_server: ServerProcess, causal: Trained) -> None:
    row = causal.train[0]
    answer = causal_server.post("/v1/completions", {"model": NAME, "prompt": row["input"], "max_tokens": 16})
    assert answer.status == 200, answer.body
    body = serving.CompletionResponse.model_validate(answer.body)
    assert [c.text for c in body.choices] == [row["output"]]
    assert body.choices[0].finish_reason == "stop"
    assert body.model == NAME and body.system_fingerprint == "v1"
    assert body.usage.total_tokens == body.usage.prompt_tokens + body.usage.completion_tokens > 0
    assert answer.headers["X-Kaizen-Model-Version"] == "v1"


def test_several_prompts_get_one_choice_and_one_trace_each(causal_server: ServerProcess, causal: Trained) -> None:
    rows = causal.train[:3]
    answer = causal_server.post("/v1/completions", {"prompt": [r["input"] for r in rows]})
    body = serving.CompletionResponse.model_validate(answer.body)
    assert [(c.index, c.text) for c in body.choices] == [(i, r["output"]) for i, r in enumerate(rows)]
    assert body.trace_id is None and len(set(body.trace_ids or [])) == 3 and None not in body.trace_ids
    assert answer.headers["X-Kaizen-Trace-Id"] == ",".join(body.trace_ids)


def test_chat_answers_the_last_user_message(causal_server: ServerProcess, causal: Trained) -> None:
    first, last = causal.train[1], causal.train[2]
    answer = causal_server.post("/v1/chat/completions", {"model": NAME, "messages": [
        {"role": "system", "content": "you are a support bot"}, {"role": "user", "content": first["input"]},
        {"role": "assistant", "content": first["output"]}, {"role": "user", "content": last["input"]}]})
    assert answer.status == 200, answer.body
    body = serving.ChatResponse.model_validate(answer.body)
    assert body.choices[0].message.content == last["output"]
    assert body.choices[0].message.role == "assistant" and body.object == "chat.completion"


def test_models_lists_the_served_name(servers: dict[str, ServerProcess]) -> None:
    body = serving.ModelList.model_validate(servers["causal"].get("/v1/models").body)
    assert [(m.id, m.owned_by, m.version, m.task) for m in body.data] == [(NAME, "kaizen", "v1", "causal-lm")]
    body = serving.ModelList.model_validate(servers["classifier"].get("/v1/models").body)
    assert [(m.id, m.version, m.task) for m in body.data] == [(NAME, "c3", "sequence-classification")]


def test_classifications(servers: dict[str, ServerProcess], classifier: Trained) -> None:
    rows = classifier.train[:4]
    answer = servers["classifier"].post("/v1/classifications", {"model": NAME, "input": [r["input"] for r in rows]})
    assert answer.status == 200, answer.body
    body = serving.ClassificationResponse.model_validate(answer.body)
    assert [(d.index, d.label) for d in body.data] == [(i, r["output"]) for i, r in enumerate(rows)]
    assert all(0 < d.score <= 1 for d in body.data)
    assert body.system_fingerprint == "c3" and answer.headers["X-Kaizen-Model-Version"] == "c3"
    # No collector configured: answered, without trace ids.
    assert body.trace_ids is None and "X-Kaizen-Trace-Id" not in answer.headers


def test_the_wrong_route_for_the_task_is_a_400(servers: dict[str, ServerProcess]) -> None:
    answer = servers["classifier"].post("/v1/completions", {"prompt": "hello"})
    assert answer.status == 400 and "/v1/classifications" in answer.body["error"]["message"]
    assert answer.body["error"]["code"] == "wrong_task"
    answer = servers["causal"].post("/v1/classifications", {"input": "hello"})
    assert answer.status == 400 and "/v1/completions" in answer.body["error"]["message"]


@pytest.mark.parametrize("body, param", [
    ({}, "prompt"),
    ({"prompt": 3}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "hi", "max_tokens": "many"}, "max_tokens"),
    ({"prompt": "hi", "temperature": 3}, "temperature"),
    ({"prompt": "hi", "top_p": 0.5}, "top_p"),
    ({"prompt": "hi", "stream": True}, "stream"),
    ({"prompt": "hi", "user": "an e-mail@example.com with spaces"}, "user"),
    ({"prompt": "hi", "metadata": {"consent_training": "yes"}}, "metadata.consent_training"),
    ({"prompt": "hi", "metadata": {"cohort": ""}}, "metadata.cohort"),
    ({"prompt": "hi", "metadata": {"campaign": {"nested": 1}}}, "metadata.campaign"),
])
def test_a_bad_completion_body_is_a_400_naming_the_field(causal_server: ServerProcess, body: dict,
                                                         param: str) -> None:
    answer = causal_server.post("/v1/completions", body)
    assert answer.status == 400, answer.body
    error = serving.ErrorResponse.model_validate(answer.body).error
    assert (error.type, error.param) == ("invalid_request_error", param)
    assert param in error.message


@pytest.mark.parametrize("body, param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "system", "content": "be nice"}]}, "messages"),
])
def test_a_bad_chat_body_is_a_400_naming_the_field(causal_server: ServerProcess, body: dict, param: str) -> None:
    answer = causal_server.post("/v1/chat/completions", body)
    assert answer.status == 400 and answer.body["error"]["param"] == param, answer.body


def test_a_body_that_is_not_json_is_a_400(causal_server: ServerProcess) -> None:
    answer = causal_server.post("/v1/completions", raw=b"{not json")
    assert answer.status == 400 and "invalid request body" in answer.body["error"]["message"]


def test_an_unknown_model_is_a_404_as_openai_answers(causal_server: ServerProcess) -> None:
    answer = causal_server.post("/v1/completions", {"model": "gpt-9", "prompt": "hi"})
    assert answer.status == 404
    assert answer.body["error"] == {"message": answer.body["error"]["message"], "type": "invalid_request_error",
                                    "param": "model", "code": "model_not_found"}
    assert NAME in answer.body["error"]["message"]


def test_unknown_routes_methods_and_big_bodies(causal_server: ServerProcess) -> None:
    answer = causal_server.get("/v1/engines")
    assert answer.status == 404 and answer.body["error"]["type"] == "invalid_request_error"
    assert "/v1/completions" in answer.body["error"]["message"]
    assert causal_server.get("/v1/completions").status == 405
    answer = causal_server.post("/v1/completions", {"prompt": "hi " * 700_000})
    assert answer.status == 413 and "limit" in answer.body["error"]["message"]


def test_metrics_count_by_route_and_code_with_the_models_labels(servers: dict[str, ServerProcess]) -> None:
    server = servers["classifier"]
    labels = {"model": NAME, "model_version": "c3", "track": "stable"}
    route = {**labels, "route": "/v1/classifications"}

    def sample(name: str, **more: str) -> float:
        return server.metric(name, **labels, **more)

    before = {"ok": sample("kaizen_server_requests_total", route="/v1/classifications", code="200"),
              "bad": sample("kaizen_server_requests_total", route="/v1/classifications", code="400"),
              "wrong": sample("kaizen_server_requests_total", route="/v1/completions", code="400"),
              "count": server.metric("kaizen_server_request_duration_seconds_count", **route),
              "prompt": sample("kaizen_server_prompt_tokens_total")}
    for text in ("hello refund money", "hi shipping late order"):
        assert server.post("/v1/classifications", {"input": text}).status == 200
    assert server.post("/v1/classifications", {"input": 5}).status == 400
    assert server.post("/v1/completions", {"prompt": "hi"}).status == 400
    server.get("/health")
    assert sample("kaizen_server_requests_total", route="/v1/classifications", code="200") == before["ok"] + 2
    assert sample("kaizen_server_requests_total", route="/v1/classifications", code="400") == before["bad"] + 1
    assert sample("kaizen_server_requests_total", route="/v1/completions", code="400") == before["wrong"] + 1
    assert server.metric("kaizen_server_request_duration_seconds_count", **route) == before["count"] + 3
    assert server.metric("kaizen_server_request_duration_seconds_bucket", **route, le="+Inf") >= 3
    assert sample("kaizen_server_prompt_tokens_total") == before["prompt"] + 7
    # Probes are not requests: they would drown the traffic canary analysis compares.
    assert sample("kaizen_server_requests_total", route="/health", code="200") == 0


def test_generation_tokens_are_counted(causal_server: ServerProcess, causal: Trained) -> None:
    labels = {"model": NAME, "model_version": "v1", "track": "canary"}
    before = causal_server.metric("kaizen_server_generation_tokens_total", **labels)
    body = causal_server.post("/v1/completions", {"prompt": causal.train[0]["input"]}).body
    after = causal_server.metric("kaizen_server_generation_tokens_total", **labels)
    assert after - before == body["usage"]["completion_tokens"] > 0


def _read(collector: LocalCollector, path: str) -> bytes:
    request = urllib.request.Request(collector.url + path,
                                     headers={"Authorization": f"Bearer {collector.tokens['read']}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


def test_each_answer_is_a_trace_and_feedback_on_it_is_exported(causal_server: ServerProcess, causal: Trained,
                                                               collector: LocalCollector) -> None:
    row, subject = causal.train[3], f"user-{uuid.uuid4().hex[:8]}"
    answer = causal_server.post("/v1/completions", {
        "model": NAME, "prompt": row["input"], "user": subject,
        "metadata": {"cohort": "pro", "scenario": row["scenario"], "consent_training": "true", "session": "s1"}})
    trace_id = answer.body["trace_id"]
    assert trace_id and answer.headers["X-Kaizen-Trace-Id"] == trace_id
    trace = TraceOut.model_validate_json(_read(collector, f"/v1/traces/{trace_id}"))
    assert (trace.model, trace.model_version, trace.track) == (NAME, "v1", "canary")
    assert (trace.input, trace.output, trace.cohort, trace.scenario) == (row["input"], row["output"], "pro",
                                                                         row["scenario"])
    assert trace.consent.training and trace.latency_ms is not None and trace.latency_ms > 0
    assert trace.request_id == answer.body["id"]

    FeedbackRecorder(collector.url, collector.tokens["ingest"], model=NAME).feedback(
        trace_id, "down", category="incorrect", correction="chat with an agent first", consent_training=True,
        subject_id=subject)
    lines = _read(collector, f"/v1/export?model={NAME}").decode().splitlines()
    exported = [ExportRow.model_validate_json(line) for line in lines[:-1]]
    ExportManifest.model_validate_json(lines[-1])
    [joined] = [r for r in exported if r.trace_id == trace_id]
    assert (joined.input, joined.output, joined.target) == (row["input"], row["output"], "chat with an agent first")
    assert (joined.model_version, joined.track, joined.cohort) == ("v1", "canary", "pro")


def test_without_consent_the_trace_says_so(causal_server: ServerProcess, causal: Trained,
                                           collector: LocalCollector) -> None:
    answer = causal_server.post("/v1/chat/completions", {"messages": [
        {"role": "user", "content": causal.train[4]["input"]}], "user": "user-no-consent"})
    trace = TraceOut.model_validate_json(_read(collector, f"/v1/traces/{answer.body['trace_id']}"))
    assert not trace.consent.training and trace.output == causal.train[4]["output"]


def test_with_the_collector_down_answers_are_served_and_failures_counted(
        servers: dict[str, ServerProcess], causal: Trained, late_collector: LocalCollector) -> None:
    server = servers["down"]
    labels = {"model": NAME, "model_version": "v1", "track": "stable"}
    before = server.metric("kaizen_server_trace_errors_total", **labels)
    for row in causal.train[:3]:
        answer = server.post("/v1/completions", {"prompt": row["input"], "user": "user-1"})
        assert answer.status == 200 and answer.body["choices"][0]["text"] == row["output"]
        assert "trace_id" not in answer.body and "X-Kaizen-Trace-Id" not in answer.headers
    assert server.metric("kaizen_server_trace_errors_total", **labels) == before + 3
    # Logged once per burst of failures, not once per request.
    assert server.log.read_text().count("Failed to record a trace") == 1

    late_collector.start()
    answer = server.post("/v1/completions", {"prompt": causal.train[0]["input"]})
    assert answer.body["trace_id"] and answer.headers["X-Kaizen-Trace-Id"] == answer.body["trace_id"]
    assert server.metric("kaizen_server_trace_errors_total", **labels) == before + 3
    assert "Recorded traces again failures=3" in server.log.read_text()
