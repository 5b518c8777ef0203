"""The store below the HTTP layer, on real SQLite and PostgreSQL: retention and group commit."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from kaizen.collector.models import FeedbackQuery
from kaizen.collector.store import Store
from tests.collector.conftest import BACKENDS, database_url


def _trace(i: int, created_at: float) -> dict[str, Any]:
    return {"id": f"t{i}", "request_id": None, "model": "m", "model_version": "v1", "track": "stable",
            "cohort": None, "scenario": None, "input": "q", "output": "a", "latency_ms": None, "subject_id": None,
            "consent_training": True, "redactions": "{}", "created_at": created_at}


def _feedback(i: int, created_at: float) -> dict[str, Any]:
    return {"id": f"f{i}", "trace_id": f"t{i}", "model": None, "rating": "down", "negative": True,
            "category": "tone", "comment": None, "correction": None, "subject_id": None, "consent_training": True,
            "redactions": "{}", "created_at": created_at}


async def _retention(url: str) -> tuple[tuple[int, int], int]:
    store = Store(url)
    await store.open()
    try:
        now = time.time()
        ages = [now - 40 * 86400, now - 31 * 86400, now - 86400, now]
        await store.add_traces([_trace(i, t) for i, t in enumerate(ages)])
        await store.add_feedback([_feedback(i, t) for i, t in enumerate(ages)])
        purged = await store.purge(now - 30 * 86400)
        left = await store.count_negative(FeedbackQuery(model="m"), consented_only=True)
    finally:
        await store.close()
    return purged, left


@pytest.mark.parametrize("backend", BACKENDS)
def test_retention_deletes_only_what_is_older(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    purged, left = asyncio.run(_retention(database_url(backend, tmp_path, request)))
    assert purged == (2, 2) and left == 2


async def _concurrent_writes(url: str, n: int) -> tuple[int, int]:
    store = Store(url)
    await store.open()
    transactions = 0
    original = store._commit

    async def counting(jobs: Any) -> Any:
        nonlocal transactions
        transactions += 1
        return await original(jobs)

    store._commit = counting  # type: ignore[method-assign]
    try:
        now = time.time()
        await asyncio.gather(*(store.add_traces([_trace(i, now)]) for i in range(n)))
        async with store._engine().connect() as conn:
            stored = (await conn.execute(text("SELECT count(*) FROM traces"))).scalar_one()
    finally:
        await store.close()
    return transactions, stored


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_writes_share_commits(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    transactions, stored = asyncio.run(_concurrent_writes(database_url(backend, tmp_path, request), 200))
    assert stored == 200
    assert transactions <= 20, f"{transactions} transactions for 200 concurrent writes: group commit is not working"
