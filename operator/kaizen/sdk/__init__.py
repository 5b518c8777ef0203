"""The Kaizen SDK for model servers: record traces and user feedback, export request metrics.

``FeedbackRecorder`` sends to the collector (synchronously, standard library only; call it off the request path
or from a thread if latency matters); :mod:`kaizen.sdk.middleware` labels a server's request metrics with the
model version and track that canary analysis compares.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import ValidationError

from kaizen.collector.client import CollectorClient, CollectorError
from kaizen.collector.models import Consent, FeedbackIn, Stored, TraceIn
from kaizen.sdk.middleware import ASGIRequestMetrics, WSGIRequestMetrics

__all__ = ["ASGIRequestMetrics", "CollectorError", "FeedbackRecorder", "WSGIRequestMetrics"]


class FeedbackRecorder:
    """Records one model's traces and feedback in the collector at ``url``.

    ``model_version`` and ``track`` default to ``$KAIZEN_MODEL_VERSION`` and ``$KAIZEN_TRACK``, which a pod can set
    from its ``kaizen.dev/model-version`` and ``kaizen.dev/track`` labels through the downward API.
    """

    def __init__(
        self, url: str, token: str | None = None, *, model: str, model_version: str | None = None,
        track: str | None = None, timeout: float = 5,
    ) -> None:
        self.client = CollectorClient(url, token, timeout)
        self.model = model
        self.model_version = model_version or os.environ.get("KAIZEN_MODEL_VERSION", "unknown")
        self.track = track or os.environ.get("KAIZEN_TRACK", "unknown")

    def trace(
        self, input: str | None = None, output: str | None = None, *, consent_training: bool = False,
        **fields: Any,
    ) -> str:
        """Record one served output; returns the trace id to attach to the response (for feedback later).

        ``fields`` are the other :class:`~kaizen.collector.models.TraceIn` fields in snake_case: ``id``,
        ``request_id``, ``cohort``, ``scenario``, ``latency_ms``, ``subject_id``.
        """
        item = _build(TraceIn, model=self.model, model_version=self.model_version, track=self.track, input=input,
                      output=output, consent=Consent(training=consent_training), **fields)
        return self._post("/v1/traces", item)

    def feedback(self, trace_id: str, rating: str | int, *, consent_training: bool = False, **fields: Any) -> str:
        """Record a user's rating of a trace ('up'/'down' or 1-5); returns the feedback id.

        ``fields``: ``category``, ``comment``, ``correction``, ``subject_id``, ``id``.
        """
        item = _build(FeedbackIn, trace_id=trace_id, rating=rating, model=self.model,
                      consent=Consent(training=consent_training), **fields)
        return self._post("/v1/feedback", item)

    def _post(self, path: str, item: TraceIn | FeedbackIn) -> str:
        body = self.client.request("POST", path, item.to_wire())
        try:
            return Stored.model_validate(body).id
        except ValidationError as error:
            raise CollectorError(f"the collector answered POST {path} unexpectedly: {error}") from None


def _build(kind: type[TraceIn] | type[FeedbackIn], **fields: Any) -> Any:
    try:
        return kind(**fields)
    except ValidationError as error:
        raise ValueError(f"invalid {kind.__name__}, not sent: {error}") from None
