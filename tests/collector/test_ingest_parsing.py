"""Ingest body parsing: the single-item fast path (pydantic on the raw bytes) decides exactly as decoding the JSON
and then validating it did, for single items, batches and every kind of invalid body."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from kaizen.collector import models as m
from kaizen.collector.service import ClientError, _parse_ingest

TRACE = {"id": "t-1", "model": "m", "modelVersion": "v1", "track": "stable", "input": "hi", "output": "hello",
         "subjectId": "s", "consent": {"training": True}, "latencyMs": 5}
FEEDBACK = {"traceId": "t-1", "rating": "down", "category": "tone", "comment": "c", "consent": {"training": True}}
WEIRD: list[object] = [None, True, -1, 2**70, 1e308, "", "x" * 70_000, "\x00", "\ud800", [], {}, [1], {"a": 1},
                       "up", 3, 5.0, "😀", "5", {"training": "yes"}]
# Bodies where a JSON parser could disagree with json.loads: duplicate keys, a BOM, UTF-16, NaN, trailing data.
ODD_BODIES = [
    b"", b"{not json", b"[1, 2]", b'"a string"', b"null", b"{} x", b"\xff\xfe{", b'{"items": 1}',
    b'{"traceId": "t", "rating": "up", "rating": "bogus"}', b'{"traceId": "t", "rating": "bogus", "rating": "up"}',
    b'\xef\xbb\xbf{"traceId": "t", "rating": "up"}', '{"traceId": "t", "rating": "up"}'.encode("utf-16"),
    b'{"model": "m", "modelVersion": "v", "latencyMs": NaN}', b'{"traceId": "t", "rating": "up"}\n',
]


def _reference(raw: bytes, single: type[BaseModel], batch: type[BaseModel]) -> Any:
    """The decision before the fast path: json.loads, then validate the object, or the batch if it has items, strictly
    (a value of the wrong JSON type is an error, never coerced)."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return 400, []
    if not isinstance(data, dict):
        return 422, ["body"]
    try:
        if "items" in data:
            items, is_batch = batch.model_validate(data, strict=True).items, True  # type: ignore[attr-defined]
        else:
            items, is_batch = [single.model_validate(data, strict=True)], False
    except ValidationError as error:
        return 422, [".".join(str(part) for part in e["loc"]) or "body" for e in error.errors()]
    return "ok", [item.model_dump() for item in items], is_batch


def _decision(raw: bytes, single: type[BaseModel], batch: type[BaseModel]) -> Any:
    try:
        items, is_batch = _parse_ingest(raw, single, batch)
    except ClientError as error:
        return error.status, [field.loc for field in error.fields]
    return "ok", [item.model_dump() for item in items], is_batch


def _bodies() -> list[bytes]:
    """Deterministic mutations of valid bodies: wrong types, sizes and shapes, batches, bodies cut short."""
    rng = random.Random(11)
    bodies = list(ODD_BODIES)
    for i in range(400):
        base = (TRACE, FEEDBACK)[i % 2]
        body = dict(base)
        for _ in range(rng.randint(0, 3)):
            body[rng.choice([*base, "extra"])] = rng.choice(WEIRD)
        raw = json.dumps({"items": [body, base]} if i % 5 == 0 else body).encode("utf-8", "surrogatepass")
        bodies.append(raw[: rng.randint(0, len(raw))] if i % 7 == 0 else raw)
    return bodies


@pytest.mark.parametrize(("single", "batch"), [(m.TraceIn, m.TraceBatch), (m.FeedbackIn, m.FeedbackBatch)])
def test_the_fast_path_decides_as_decoding_then_validating(single: type[BaseModel], batch: type[BaseModel]) -> None:
    decisions = []
    for raw in _bodies():
        expected = _reference(raw, single, batch)
        assert _decision(raw, single, batch) == expected, raw[:200]
        decisions.append(expected[0])
    assert {400, 422, "ok"} <= set(decisions)
