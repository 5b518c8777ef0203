"""The model server's HTTP side (aiohttp): OpenAI-compatible routes, errors, Prometheus metrics and traces.

Requests are validated with the models of :mod:`kaizen.api.serving` (a 400 in OpenAI's error shape names the field),
answered by the :class:`~kaizen_server.engine.Engine` on one worker thread (the event loop keeps serving health
probes and metrics meanwhile), and recorded as traces in the Kaizen collector through
:class:`kaizen.sdk.FeedbackRecorder` on a thread pool of their own. The trace id is the server's, returned in
``trace_id`` and ``X-Kaizen-Trace-Id`` once the collector stored it; when the collector fails, the answer is served
without one and ``kaizen_server_trace_errors_total`` counts the failure. :func:`create_app` builds the application;
:mod:`kaizen_server.__main__` runs it.

Adapters: the server holds LoRA adapters beside its own model, named as requests ask for them (a request's
``model``, or the gateway's model-name header, ``X-Gateway-Model-Name``, which wins): those the watched file names
(``KAIZEN_ADAPTERS_FILE``, an :class:`~kaizen.api.adapters.AdapterSet`, a ConfigMap the operator writes), and
those loaded through vLLM's runtime endpoints (with ``KAIZEN_ALLOW_RUNTIME_LORA_UPDATING=true``). The file's
aliases split a served name between models by weight (:mod:`kaizen_server.models`). Every answer's metrics, trace
and ``X-Kaizen-Model-Version`` carry the version and track of the model that answered: an adapter's own.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
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
from kaizen.api.adapters import Adapter, AdapterSet, LoadAdapterRequest, UnloadAdapterRequest
from kaizen.sdk import CollectorError, FeedbackRecorder
from kaizen_server.errors import ServeError, WrongTask
from kaizen_server.models import FILE, RUNTIME, Held, NotServed, Registry, Resolved, Served
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
#: Where the middleware finds the model that answered a request, for its labels.
ANSWERED = "kaizen_served"


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

    def observe(self, route: str, code: int, seconds: float, labels: tuple[str, str, str] | None = None) -> None:
        labels = labels or self.model
        self.requests.labels(*labels, route, str(code)).inc()
        self.duration.labels(*labels, route).observe(seconds)


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
        self.settings = settings
        #: One recorder per (version, track) that answered: an adapter's traces carry its own.
        self.recorders: dict[tuple[str, str], FeedbackRecorder] = {}
        self.metrics = metrics
        self.pool = ThreadPoolExecutor(TRACE_WORKERS, thread_name_prefix="kaizen-trace")
        self.failures = 0

    def _recorder(self, served: Served) -> FeedbackRecorder:
        key = (served.version, served.track)
        if key not in self.recorders:
            settings = self.settings
            assert settings.collector_url is not None
            self.recorders[key] = FeedbackRecorder(settings.collector_url, settings.collector_token,
                                                   model=settings.name, model_version=served.version,
                                                   track=served.track, timeout=TRACE_TIMEOUT_SECONDS)
        return self.recorders[key]

    async def record(self, body: s.Request, request_id: str, pairs: Sequence[tuple[str, str]],
                     latency_ms: float, served: Served) -> list[str | None]:
        """One trace per (input, output) of the answer ``request_id`` by ``served``; the id of each one stored,
        None where it failed or none is recorded."""
        if self.settings.collector_url is None:
            return [None] * len(pairs)
        loop = asyncio.get_running_loop()
        post = functools.partial(self._post, self._recorder(served), body, request_id, latency_ms=latency_ms)
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
            self.metrics.trace_errors.labels(*served.labels).inc()
        return [r if isinstance(r, str) else None for r in results]

    @staticmethod
    def _post(recorder: FeedbackRecorder, body: s.Request, request_id: str, text_in: str, text_out: str, *,
              latency_ms: float) -> str | Exception:
        try:
            return recorder.trace(
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
        self.registry = Registry(Served(settings.name, None, settings.version, settings.track))
        #: Adapters being loaded, by name: a request for one waits for its load.
        self.loading: dict[str, asyncio.Future[None]] = {}
        #: Why an adapter the file names could not be loaded, by name.
        self.failed: dict[str, str] = {}
        self._seen: str | None = None  # the watched file's content last applied (its digest)
        self._said: str | None = None  # the last problem with the file, said once
        self._syncing: asyncio.Lock | None = None
        #: Set once the model and the adapters the file names at start are loaded: /health answers 200 from then.
        self.ready = False

    async def load(self) -> Engine:
        """Load the model on the worker thread, then the adapters the watched file names; raises
        :class:`ServeError` with one line when the model cannot be loaded. Torch is imported there too (seconds),
        so the port is open, and /health answers 503, while it is."""
        engine = await asyncio.get_running_loop().run_in_executor(
            self.worker, _load, self.settings.model_uri, self.settings.base_model_uri, self.settings.holds_adapters)
        self.engine = engine
        if self.settings.adapters_file is not None:
            await self.sync_adapters()  # before the pod is ready: a route may already name these adapters
        self.ready = True
        return engine

    async def watch(self) -> None:
        """Apply the watched file whenever it changes (a mounted ConfigMap is updated in place), until cancelled."""
        while True:
            await asyncio.sleep(self.settings.adapters_poll_seconds)
            if self.engine is not None:
                await self.sync_adapters()

    def _read_wanted(self) -> tuple[str, AdapterSet] | None:
        """The watched file's digest and content, or None when it is unchanged or unusable (said once)."""
        path = self.settings.adapters_file
        assert path is not None
        try:
            raw = path.read_bytes() if path.exists() else b'{}'
        except OSError as error:
            self._say(f"cannot read KAIZEN_ADAPTERS_FILE={path}: {error.strerror or error}")
            return None
        digest = hashlib.sha256(raw).hexdigest()
        if digest == self._seen:
            return None
        try:
            wanted = AdapterSet.model_validate_json(raw or b'{}')
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}"
                                 for e in error.errors(include_url=False))
            self._say(f"KAIZEN_ADAPTERS_FILE={path} is not an adapter set ({problems}); holding the adapters as "
                      "they are until it is fixed")
            return None
        return digest, wanted

    def _say(self, problem: str) -> None:
        if problem != self._said:
            log.warning("Ignored adapters file: %s", problem)
            self._said = problem

    async def sync_adapters(self) -> None:
        """Load and unload adapters to hold what the watched file names, then serve its aliases."""
        self._syncing = self._syncing or asyncio.Lock()
        async with self._syncing:
            read = self._read_wanted()
            if read is None:
                return
            digest, wanted = read
            plan = self.registry.plan(wanted)
            for problem in plan.problems:
                log.warning("Ignored part of the adapters file: %s", problem)
            for name in plan.unload:
                await self._unload(name)
            loads = [asyncio.ensure_future(self._load_adapter(a, FILE)) for a in plan.load]
            # The aliases change once the adapters they name are loaded: until then the old split holds.
            await asyncio.gather(*loads)
            usable = [a for a in plan.aliases if all(t.model not in self.failed for t in a.targets)]
            for alias in plan.aliases:
                if alias not in usable:
                    log.warning("Ignored alias name=%s: a model it names failed to load", alias.name)
            self.registry.aliases = {a.name: a for a in usable}
            self._seen, self._said = digest, None
            log.info("Synced adapters file adapters=%s aliases=%s", ",".join(self.registry.adapters) or "-",
                     ",".join(f"{a.name}({'/'.join(f'{t.model}:{t.weight}' for t in a.targets)})"
                              for a in usable) or "-")

    async def _load_adapter(self, adapter: Adapter, origin: str) -> bool:
        """Load one adapter on the worker thread; requests for it wait meanwhile. False (said) when it failed."""
        assert self.engine is not None
        future = asyncio.get_running_loop().create_future()
        self.loading[adapter.name] = future
        self.failed.pop(adapter.name, None)
        try:
            await asyncio.get_running_loop().run_in_executor(self.worker, self.engine.load_adapter, adapter.name,
                                                             adapter.uri)
        except ServeError as error:
            self.failed[adapter.name] = str(error)
            log.error("Failed to load adapter name=%s uri=%s error=%s", adapter.name, adapter.uri, error)
            return False
        finally:
            del self.loading[adapter.name]
            future.set_result(None)
        self.registry.adapters[adapter.name] = Held(adapter, origin)
        log.info("Loaded adapter name=%s uri=%s version=%s track=%s", adapter.name, adapter.uri, adapter.version,
                 adapter.track)
        return True

    async def _unload(self, name: str) -> None:
        assert self.engine is not None
        self.registry.adapters.pop(name, None)
        self.registry.aliases = {n: a for n, a in self.registry.aliases.items()
                                 if all(t.model != name for t in a.targets)}
        self.failed.pop(name, None)
        await asyncio.get_running_loop().run_in_executor(self.worker, self.engine.unload_adapter, name)
        log.info("Unloaded adapter name=%s", name)

    async def _ready(self, body: s.Request, request: web.Request) -> tuple[Engine, Resolved]:
        """The engine and the model that answers the request (an alias picks one), its labels noted for the
        middleware; a 404 naming what is served otherwise."""
        if self.engine is None:
            raise ApiError(503, "the model is still loading; retry when GET /health answers 200")
        name = request.headers.get(self.settings.model_name_header) or body.model
        if name in self.loading:
            await asyncio.shield(self.loading[name])
        try:
            resolved = self.registry.resolve(name, request.headers)
        except NotServed as error:
            message = str(error)
            failed = self.failed.get(name or "")
            if failed:
                message = f"the adapter {name!r} failed to load: {failed}"
            raise ApiError(404, message, "model", "model_not_found") from None
        pending = self.loading.get(resolved.served.name)
        if pending is not None:
            await asyncio.shield(pending)
        request[ANSWERED] = resolved
        return self.engine, resolved

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

    def _asked(self, body: s.Request, request: web.Request) -> str:
        """The name the answer reports: the one asked for (as OpenAI and vLLM do), the served name by default."""
        return request.headers.get(self.settings.model_name_header) or body.model or self.settings.name

    def _traced(self, ids: list[str | None]) -> dict[str, Any]:
        if len(ids) == 1:
            return {"trace_id": ids[0]}
        return {"trace_ids": ids} if any(ids) else {}

    def _count(self, served: Served, prompt_tokens: int, generated: int) -> None:
        self.metrics.prompt_tokens.labels(*served.labels).inc(prompt_tokens)
        self.metrics.generation_tokens.labels(*served.labels).inc(generated)

    async def _generate(self, body: s.Generation, request: web.Request, request_id: str, prompts: list[str]):
        engine, resolved = await self._ready(body, request)
        served = resolved.served
        started = time.perf_counter()
        completions = await self._run(engine.complete, prompts, body.max_tokens, served.adapter)
        latency_ms = (time.perf_counter() - started) * 1000
        ids = await self.traces.record(body, request_id, [(p, c.text) for p, c in zip(prompts, completions)],
                                       latency_ms, served)
        prompt_tokens = sum(c.prompt_tokens for c in completions)
        generated = sum(c.completion_tokens for c in completions)
        self._count(served, prompt_tokens, generated)
        usage = s.Usage(prompt_tokens=prompt_tokens, completion_tokens=generated,
                        total_tokens=prompt_tokens + generated)
        return completions, ids, usage

    async def completions(self, request: web.Request) -> web.Response:
        body = parse(s.CompletionRequest, await request.read())
        answer_id = f"cmpl-{secrets.token_hex(12)}"
        completions, ids, usage = await self._generate(body, request, answer_id, body.prompts)
        answer = s.CompletionResponse(
            id=answer_id, created=int(time.time()), model=self._asked(body, request),
            choices=[s.CompletionChoice(index=i, text=c.text, finish_reason=c.finish_reason)
                     for i, c in enumerate(completions)],
            usage=usage, system_fingerprint=request[ANSWERED].served.version, **self._traced(ids))
        return self._headers(_json(answer), ids)

    async def chat(self, request: web.Request) -> web.Response:
        body = parse(s.ChatRequest, await request.read())
        prompt = body.prompt
        if prompt is None:
            raise ApiError(400, "no message has the role 'user': the prompt is the last user message", "messages")
        answer_id = f"chatcmpl-{secrets.token_hex(12)}"
        completions, ids, usage = await self._generate(body, request, answer_id, [prompt])
        answer = s.ChatResponse(
            id=answer_id, created=int(time.time()), model=self._asked(body, request),
            choices=[s.ChatChoice(index=0, message=s.AssistantMessage(content=completions[0].text),
                                  finish_reason=completions[0].finish_reason)],
            usage=usage, system_fingerprint=request[ANSWERED].served.version, **self._traced(ids))
        return self._headers(_json(answer), ids)

    async def classifications(self, request: web.Request) -> web.Response:
        body = parse(s.ClassificationRequest, await request.read())
        engine, resolved = await self._ready(body, request)
        served = resolved.served
        texts, answer_id = body.texts, f"cls-{secrets.token_hex(12)}"
        started = time.perf_counter()
        labels = await self._run(engine.classify, texts, served.adapter)
        latency_ms = (time.perf_counter() - started) * 1000
        ids = await self.traces.record(body, answer_id, [(t, label.label) for t, label in zip(texts, labels)],
                                       latency_ms, served)
        prompt_tokens = sum(label.prompt_tokens for label in labels)
        self._count(served, prompt_tokens, 0)
        answer = s.ClassificationResponse(
            id=answer_id, created=int(time.time()), model=self._asked(body, request),
            data=[s.Classification(index=i, label=label.label, score=label.score) for i, label in enumerate(labels)],
            usage=s.Usage(prompt_tokens=prompt_tokens, completion_tokens=0, total_tokens=prompt_tokens),
            system_fingerprint=served.version, **self._traced(ids))
        return self._headers(_json(answer), ids)

    async def models(self, request: web.Request) -> web.Response:
        if self.engine is None:
            raise ApiError(503, "the model is still loading; retry when GET /health answers 200")
        task, own = self.engine.task, self.settings.name
        cards = [s.ModelCard(id=own, created=self.created, version=self.settings.version, task=task)]
        cards += [s.ModelCard(id=name, created=self.created, version=held.adapter.version, task=task, parent=own,
                              root=held.adapter.uri) for name, held in self.registry.adapters.items()]
        cards += [s.ModelCard(id=name, created=self.created, version=",".join(
                      f"{self.registry.served(t.model).version}:{t.weight}" for t in alias.targets),
                              task=task, parent=own) for name, alias in self.registry.aliases.items() if name != own]
        return _json(s.ModelList(data=cards))

    async def load_adapter(self, request: web.Request) -> web.Response:
        """vLLM's POST /v1/load_lora_adapter: add an adapter under a name (Kaizen's ``version`` and ``track`` label
        its answers)."""
        self._runtime()
        body = parse(LoadAdapterRequest, await request.read())
        name = body.lora_name
        if name == self.settings.name or name in self.registry.adapters or name in self.loading:
            raise ApiError(400, f"the model {name!r} is loaded already; unload it first "
                           "(POST /v1/unload_lora_adapter)", "lora_name")
        adapter = Adapter(name=name, uri=body.lora_path, version=body.version or name, track=body.track)
        if not await self._load_adapter(adapter, RUNTIME):
            raise ApiError(400, f"cannot load the adapter {name!r}: {self.failed.pop(name)}", "lora_path")
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def unload_adapter(self, request: web.Request) -> web.Response:
        """vLLM's POST /v1/unload_lora_adapter."""
        self._runtime()
        body = parse(UnloadAdapterRequest, await request.read())
        held = self.registry.adapters.get(body.lora_name)
        if held is None:
            raise ApiError(404, f"no adapter {body.lora_name!r} is loaded (GET /v1/models)", "lora_name",
                           "model_not_found")
        if held.origin == FILE:
            raise ApiError(400, f"the adapter {body.lora_name!r} is held because KAIZEN_ADAPTERS_FILE names it; "
                           "remove it from that file (the Rollout's ConfigMap) instead", "lora_name")
        await self._unload(body.lora_name)
        return web.Response(text=f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    def _runtime(self) -> None:
        if not self.settings.runtime_adapters:
            raise ApiError(404, "loading adapters at run time is off: set KAIZEN_ALLOW_RUNTIME_LORA_UPDATING=true "
                           "(or list them in KAIZEN_ADAPTERS_FILE)")
        if self.engine is None:
            raise ApiError(503, "the model is still loading; retry when GET /health answers 200")

    async def health(self, request: web.Request) -> web.Response:
        if not self.ready:
            return web.json_response({"status": "loading"}, status=503)
        return web.json_response({"status": "ok"})

    async def prometheus(self, request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(self.metrics.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    def close(self) -> None:
        self.traces.close()
        self.worker.shutdown(wait=False, cancel_futures=True)


def _load(uri: str, base_uri: str | None, keep_adapters: bool) -> Engine:
    from kaizen_server.engine import Engine, limit_threads

    limit_threads()
    return Engine.load(uri, base_uri=base_uri, keep_adapters=keep_adapters)


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
        resolved: Resolved | None = request.get(ANSWERED)
        response.headers["X-Kaizen-Model-Version"] = resolved.served.version if resolved else server.settings.version
        if resolved is not None and resolved.marker is not None:
            response.headers.add(*resolved.marker)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        if route not in UNCOUNTED:
            server.metrics.observe(route, response.status, time.perf_counter() - started,
                                   resolved.served.labels if resolved else None)
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
    app.router.add_post("/v1/load_lora_adapter", server.load_adapter)
    app.router.add_post("/v1/unload_lora_adapter", server.unload_adapter)
    app.router.add_get("/health", server.health)
    app.router.add_get("/metrics", server.prometheus)

    async def close(_: web.Application) -> None:
        server.close()

    app.on_cleanup.append(close)
    return app


__all__ = ["ApiError", "Metrics", "Server", "ServeError", "Settings", "create_app"]
