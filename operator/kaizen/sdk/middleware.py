"""Request metrics for model servers, labelled with the model version and track that canary analysis compares.

Two metrics, the pair a ratio metric in a Rollout's analysis needs (errors over all, slow over all):
``kaizen_model_requests_total{model_version,track,code}`` and the histogram
``kaizen_model_request_duration_seconds{model_version,track}``. Wrap an ASGI app (FastAPI, Starlette, KServe's
REST server) with :class:`ASGIRequestMetrics` or a WSGI app (Flask) with :class:`WSGIRequestMetrics`, and serve
``prometheus_client``'s registry as usual.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

_metrics: dict[int, tuple[Counter, Histogram]] = {}


def _for(registry: CollectorRegistry) -> tuple[Counter, Histogram]:
    # One pair per registry: prometheus_client refuses to register the same name twice.
    if id(registry) not in _metrics:
        _metrics[id(registry)] = (
            Counter("kaizen_model_requests", "Requests served, by model version, track and status code.",
                    ["model_version", "track", "code"], registry=registry),
            Histogram("kaizen_model_request_duration_seconds", "Request latency by model version and track.",
                      ["model_version", "track"], registry=registry,
                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)),
        )
    return _metrics[id(registry)]


class _Labels:
    def __init__(self, model_version: str | None, track: str | None, registry: CollectorRegistry) -> None:
        self.version = model_version or os.environ.get("KAIZEN_MODEL_VERSION", "unknown")
        self.track = track or os.environ.get("KAIZEN_TRACK", "unknown")
        self.requests, self.duration = _for(registry)

    def observe(self, code: int | str, started: float) -> None:
        self.requests.labels(self.version, self.track, str(code)).inc()
        self.duration.labels(self.version, self.track).observe(time.perf_counter() - started)


class ASGIRequestMetrics:
    """ASGI middleware; an exception escaping the app counts as a 500."""

    def __init__(
        self, app: Any, *, model_version: str | None = None, track: str | None = None,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.app = app
        self.labels = _Labels(model_version, track, registry)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def capture(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            self.labels.observe(status, started)


class WSGIRequestMetrics:
    """WSGI middleware; an exception escaping the app counts as a 500."""

    def __init__(
        self, app: Callable[..., Iterable[bytes]], *, model_version: str | None = None, track: str | None = None,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.app = app
        self.labels = _Labels(model_version, track, registry)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started, status = time.perf_counter(), "500"

        def capture(status_line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            nonlocal status
            status = status_line.split(" ", 1)[0]
            return start_response(status_line, headers, exc_info)

        try:
            return self.app(environ, capture)
        finally:
            self.labels.observe(status, started)
