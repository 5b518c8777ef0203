"""The model server's HTTP side (aiohttp): OpenAI-compatible routes, errors, Prometheus metrics and traces.

Requests are validated with the models of :mod:`kaizen.api.serving` (a 400 in OpenAI's error shape names the field),
answered by the :class:`~kaizen_server.engine.Engine` on one worker thread (the event loop keeps serving health
probes and metrics meanwhile), and recorded as traces in the Kaizen collector through
:class:`kaizen.sdk.FeedbackRecorder` on a thread pool of their own. The trace id is the server's, returned in
``trace_id`` and ``X-Kaizen-Trace-Id`` once the collector stored it; when the collector fails, the answer is served
without one and ``kaizen_server_trace_errors_total`` counts the failure. :func:`create_app` builds the application;
:mod:`kaizen_server.__main__` runs it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ValidationError

from kaizen.api import serving as s
from kaizen.sdk import CollectorError, FeedbackRecorder
from kaizen_server.errors import ServeError, WrongTask
from kaizen_server.settings import Settings

if TYPE_CHECKING:
    from kaizen_server.engine import Engine

log = logging.getLogger("kaizen_server")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)

#: Largest request body; bigger ones get a 413.
MAX_BODY_BYTES = 1 << 20
#: How long one trace post may take before the answer goes out without its trace id.
TRACE_TIMEOUT_SECONDS = 2.0
TRACE_WORKERS = 4
#: Routes whose requests are not counted: probes and scrapes would drown the traffic canary analysis compares.
UNCOUNTED = frozenset({"/health", "/metrics"})


class Metrics:
    """The server's Prometheus metrics, in a registry of its own, labelled with the served model from the
    environment (so canary analysis can compare versions and tracks)."""

    def __init__(self, settings: Settings) -> None:
        self.registry = CollectorRegistry()
        self.model = (settings.name, settings.version, settings.track)
        labels = ["model", "model_version", "track"]
        self.requests = Counter("kaizen_server_requests", "Requests answered, by route and status code.",
                                [*labels, "route", "code"], registry=self.registry)
        self.duration = Histogram("kaizen_server_request_duration_seconds", "Request latency, by route.",
                                  [*labels, "route"], registry=self.registry,
                                  buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.prompt_tokens = Counter("kaizen_server_prompt_tokens", "Prompt tokens processed.", labels,
                                     registry=self.registry)
        self.generation_tokens = Counter("kaizen_server_generation_tokens", "Tokens generated.", labels,
                                         registry=self.registry)
        self.trace_errors = Counter("kaizen_server_trace_errors", "Traces the collector failed to record; their "
                                    "answers went out without a trace id.", labels, registry=self.registry)

    def observe(self, route: str, code: int, seconds: float) -> None:
        self.requests.labels(*self.model, route, str(code)).inc()
        self.duration.labels(*self.model, route).observe(seconds)


class ApiError(Exception):
    """An error answer in OpenAI's shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return _json(s.ErrorResponse(error=s.ErrorBody(message=message, type=kind, param=param, code=code)), status)


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(body=model.model_dump_json(exclude_none=True).encode(), status=status,
                        content_type="application/json")


def _location(loc: Sequence[int | str]) -> str:
    # Pydantic names the member of a union it tried (prompt.str, prompt.list[...]): not a field the client wrote.
    return ".".join(str(p) for p in loc if isinstance(p, int) or not ("[" in p or p in ("str", "int", "float")))


def parse(model: type[M], raw: bytes) -> M:
    """The body as ``model``; a 400 naming the first field at fault (and listing every problem) otherwise."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        problems = error.errors(include_url=False)
        where = [_location(e["loc"]) for e in problems]
        listed = "; ".join(dict.fromkeys(f"{w or 'body'}: {e['msg']}" for w, e in zip(where, problems)))
        raise ApiError(400, f"invalid request body: {listed}", where[0] or None) from None


class TraceRecorder:
    """Posts traces off the event loop and says which were stored; counts failures, logging once per burst."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.recorder = None
        if settings.collector_url is not None:
            self.recorder = FeedbackRecorder(settings.collector_url, settings.collector_token, model=settings.name,
                                             model_version=settings.version, track=settings.track,
                                             timeout=TRACE_TIMEOUT_SECONDS)
        self.errors = metrics.trace_errors.labels(*metrics.model)
        self.pool = ThreadPoolExecutor(TRACE_WORKERS, thread_name_prefix="kaizen-trace")
        self.failures = 0

    async def record(self, body: s.Request, request_id: str, pairs: Sequence[tuple[str, str]],
                     latency_ms: float) -> list[str | None]:
        """One trace per (input, output) of the answer ``request_id``; the id of each one stored, None where it
        failed or none is recorded."""
        if self.recorder is None:
            return [None] * len(pairs)
        loop = asyncio.get_running_loop()
        post = functools.partial(self._post, body, request_id, latency_ms=latency_ms)
        posts = [loop.run_in_executor(self.pool, post, text_in, text_out) for text_in, text_out in pairs]
        results = await asyncio.gather(*posts)
        for result in results:
            if isinstance(result, str):
                if self.failures:
                    log.info("Recorded traces again failures=%d", self.failures)
                    self.failures = 0
                continue
            if not self.failures:
                log.warning("Failed to record a trace; answering without trace ids until the collector is back "
                            "error=%s", result)
            self.failures += 1
            self.errors.inc()
        return [r if isinstance(r, str) else None for r in results]

    def _post(self, body: s.Request, request_id: str, text_in: str, text_out: str, *,
              latency_ms: float) -> str | Exception:
        assert self.recorder is not None
        try:
            return self.recorder.trace(
                text_in, text_out, id=f"tr-{secrets.token_hex(12)}", request_id=request_id,
                cohort=body.metadata.cohort, scenario=body.metadata.scenario, subject_id=body.user,
                consent_training=body.consent, latency_ms=latency_ms)
        except (CollectorError, ValueError) as error:
            return error

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class Server:
    """The handlers, bound to one model (loaded by :meth:`load`), its metrics and its trace recorder."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics(settings)
        self.traces = TraceRecorder(settings, self.metrics)
        # One worker: the model is small, and torch already spreads one batch over its threads.
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="kaizen-infer")
        self.engine: Engine | None = None
        self.created = int(time.time())

    async def load(self) -> Engine:
        """Load the model on the worker thread; raises :class:`ServeError` with one line when it cannot. Torch is
        imported there too (seconds), so the port is open, and /health answers 503, while it is."""
        self.engine = await asyncio.get_running_loop().run_in_executor(self.worker, _load, self.settings.model_uri,
                                                                     self.settings.base_model_uri)
        return self.engine

    def _ready(self, body: s.Request) -> Engine:
        if self.engine is None:
            raise ApiError(503, "the model is still loading; retry when GET /health answers 200")
        if body.model is not None and body.model != self.settings.name:
            raise ApiError(404, f"the model {body.model!r} is not served here; this server serves "
                           f"{self.settings.name!r} (GET /v1/models)", "model", "model_not_found")
        return self.engine

    async def _run(self, call: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self.worker, functools.partial(call, *args))
        except WrongTask as error:
            raise ApiError(400, str(error), None, "wrong_task") from None

    def _headers(self, response: web.Response, ids: list[str | None]) -> web.Response:
        recorded = [i for i in ids if i]
        if recorded:
            response.headers["X-Kaizen-Trace-Id"] = ",".join(recorded)
        return response

    def _traced(self, ids: list[str | None]) -> dict[str, Any]:
        if len(ids) == 1:
            return {"trace_id": ids[0]}
        return {"trace_ids": ids} if any(ids) else {}

    def _count(self, prompt_tokens: int, generated: int) -> None:
        self.metrics.prompt_tokens.labels(*self.metrics.model).inc(prompt_tokens)
        self.metrics.generation_tokens.labels(*self.metrics.model).inc(generated)

    async def _generate(self, body: s.Generation, request_id: str, prompts: list[str]):
        engine = self._ready(body)
        started = time.perf_counter()
        completions = await self._run(engine.complete, prompts, body.max_tokens)
        latency_ms = (time.perf_counter() - started) * 1000
        ids = await self.traces.record(body, request_id, [(p, c.text) for p, c in zip(prompts, completions)],
                                       latency_ms)
        prompt_tokens = sum(c.prompt_tokens for c in completions)
        generated = sum(c.completion_tokens for c in completions)
        self._count(prompt_tokens, generated)
        usage = s.Usage(prompt_tokens=prompt_tokens, completion_tokens=generated,
                        total_tokens=prompt_tokens + generated)
        return completions, ids, usage

    async def completions(self, request: web.Request) -> web.Response:
        body = parse(s.CompletionRequest, await request.read())
        answer_id = f"cmpl-{secrets.token_hex(12)}"
        completions, ids, usage = await self._generate(body, answer_id, body.prompts)
        answer = s.CompletionResponse(
            id=answer_id, created=int(time.time()), model=self.settings.name,
            choices=[s.CompletionChoice(index=i, text=c.text, finish_reason=c.finish_reason)
                     for i, c in enumerate(completions)],
            usage=usage, system_fingerprint=self.settings.version, **self._traced(ids))
        return self._headers(_json(answer), ids)

    async def chat(self, request: web.Request) -> web.Response:
        body = parse(s.ChatRequest, await request.read())
        prompt = body.prompt
        if prompt is None:
            raise ApiError(400, "no message has the role 'user': the prompt is the last user message", "messages")
        answer_id = f"chatcmpl-{secrets.token_hex(12)}"
        completions, ids, usage = await self._generate(body, answer_id, [prompt])
        answer = s.ChatResponse(
            id=answer_id, created=int(time.time()), model=self.settings.name,
            choices=[s.ChatChoice(index=0, message=s.AssistantMessage(content=completions[0].text),
                                  finish_reason=completions[0].finish_reason)],
            usage=usage, system_fingerprint=self.settings.version, **self._traced(ids))
        return self._headers(_json(answer), ids)

    async def classifications(self, request: web.Request) -> web.Response:
        body = parse(s.ClassificationRequest, await request.read())
        engine = self._ready(body)
        texts, answer_id = body.texts, f"cls-{secrets.token_hex(12)}"
        started = time.perf_counter()
        labels = await self._run(engine.classify, texts)
        latency_ms = (time.perf_counter() - started) * 1000
        ids = await self.traces.record(body, answer_id, [(t, label.label) for t, label in zip(texts, labels)],
                                       latency_ms)
        prompt_tokens = sum(label.prompt_tokens for label in labels)
        self._count(prompt_tokens, 0)
        answer = s.ClassificationResponse(
            id=answer_id, created=int(time.time()), model=self.settings.name,
            data=[s.Classification(index=i, label=label.label, score=label.score) for i, label in enumerate(labels)],
            usage=s.Usage(prompt_tokens=prompt_tokens, completion_tokens=0, total_tokens=prompt_tokens),
            system_fingerprint=self.settings.version, **self._traced(ids))
        return self._headers(_json(answer), ids)

    async def models(self, request: web.Request) -> web.Response:
        if self.engine is None:
            raise ApiError(503, "the model is still loading; retry when GET /health answers 200")
        card = s.ModelCard(id=self.settings.name, created=self.created, version=self.settings.version,
                           task=self.engine.task)
        return _json(s.ModelList(data=[card]))

    async def health(self, request: web.Request) -> web.Response:
        if self.engine is None:
            return web.json_response({"status": "loading"}, status=503)
        return web.json_response({"status": "ok"})

    async def prometheus(self, request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(self.metrics.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    def close(self) -> None:
        self.traces.close()
        self.worker.shutdown(wait=False, cancel_futures=True)


def _load(uri: str, base_uri: str | None) -> Engine:
    from kaizen_server.engine import Engine, limit_threads

    limit_threads()
    return Engine.load(uri, base_uri=base_uri)


def _middleware(server: Server) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            response = await handler(request)
        except ApiError as error:
            response = error_response(error.status, error.message, error.param, error.code)
        except web.HTTPRequestEntityTooLarge:
            response = error_response(413, f"the body is larger than the limit of {MAX_BODY_BYTES} bytes; send "
                                      "fewer or shorter prompts")
        except web.HTTPException as error:
            hint = "; the routes are /v1/models, /v1/completions, /v1/chat/completions, /v1/classifications, " \
                   "/health and /metrics"
            response = error_response(error.status, f"{error.reason}: {request.method} {request.path}{hint}")
        except Exception:
            log.exception("Failed to answer a request method=%s path=%s", request.method, request.path)
            response = error_response(500, "internal error; the server's log has the details")
        response.headers["X-Kaizen-Model-Version"] = server.settings.version
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        if route not in UNCOUNTED:
            server.metrics.observe(route, response.status, time.perf_counter() - started)
        return response

    return middleware


def create_app(server: Server) -> web.Application:
    """The application of ``server``; its thread pools close on cleanup (the model is loaded by the caller, see
    :meth:`Server.load`, so that the port is open, and /health answers 503, while it loads)."""
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_middleware(server)])
    app.router.add_get("/v1/models", server.models)
    app.router.add_post("/v1/completions", server.completions)
    app.router.add_post("/v1/chat/completions", server.chat)
    app.router.add_post("/v1/classifications", server.classifications)
    app.router.add_get("/health", server.health)
    app.router.add_get("/metrics", server.prometheus)

    async def close(_: web.Application) -> None:
        server.close()

    app.on_cleanup.append(close)
    return app


__all__ = ["ApiError", "Metrics", "Server", "ServeError", "Settings", "create_app"]
