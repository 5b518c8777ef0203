"""Versioned migrations on real SQLite and PostgreSQL: applied once, in order, matching the query-side tables."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError

from kaizen.collector import schema
from kaizen.collector.store import Store
from tests.collector.conftest import BACKENDS, database_url


async def _migrate_twice(url: str) -> tuple[list[int], list[int], dict[str, set[str]]]:
    store = Store(url)
    await store.open()
    assert store.engine is not None
    try:
        async with store.engine.begin() as conn:
            again = await schema.migrate(conn)
            versions = sorted((await conn.execute(text("SELECT version FROM schema_migrations"))).scalars())
            columns = await conn.run_sync(
                lambda sync: {t: {c["name"] for c in inspect(sync).get_columns(t)} for t in schema.metadata.tables}
            )
    finally:
        await store.close()
    return versions, again, columns


@pytest.mark.parametrize("backend", BACKENDS)
def test_migrations_apply_once_and_match_the_tables(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    versions, again, columns = asyncio.run(_migrate_twice(database_url(backend, tmp_path, request)))
    assert versions == [v for v, _, _ in schema.MIGRATIONS] and versions[-1] == schema.LATEST
    assert again == []
    for name, table in schema.metadata.tables.items():
        assert columns[name] == {c.name for c in table.columns}, name


def test_a_database_from_a_newer_collector_is_refused(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = database_url("sqlite", tmp_path, request)
    asyncio.run(_migrate_twice(url))
    with sqlite3.connect(tmp_path / "collector.db") as db:
        db.execute("INSERT INTO schema_migrations VALUES (999, 'from the future', 0)")
    with pytest.raises(RuntimeError, match=r"schema versions \[999\].*newer collector"):
        asyncio.run(_migrate_twice(url))


async def _tamper_with_audit(url: str) -> list[str]:
    store = Store(url)
    await store.open()
    assert store.engine is not None
    errors = []
    try:
        await store.append_audit("d1", "ns/loop", {"id": "d1", "action": "retrain"})
        for statement in ("UPDATE audit SET loop = 'rewritten'", "DELETE FROM audit"):
            try:
                async with store.engine.begin() as conn:
                    await conn.execute(text(statement))
            except DBAPIError as error:
                errors.append(str(error))
        async with store.engine.connect() as conn:
            assert (await conn.execute(text("SELECT loop FROM audit"))).scalar_one() == "ns/loop"
    finally:
        await store.close()
    return errors


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_database_itself_keeps_the_audit_log_append_only(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    errors = asyncio.run(_tamper_with_audit(database_url(backend, tmp_path, request)))
    assert len(errors) == 2 and all("append-only" in e for e in errors), errors
