"""Fixtures of the collector tests: a running collector on SQLite, and on PostgreSQL (``integration``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.collector.harness import Collector
from tests.fixtures.postgres import postgres  # noqa: F401

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]


def database_url(backend: str, workdir: Path, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database of ``backend``."""
    if backend == "sqlite":
        return f"sqlite:///{workdir / 'collector.db'}"
    return request.getfixturevalue("postgres").create_database(f"c_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="module", params=BACKENDS)
def collector(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    """A collector shared by a module's tests (which keep apart by unique model and subject names)."""
    workdir = tmp_path_factory.mktemp(f"collector-{request.param}")
    service = Collector(database_url(request.param, workdir, request), workdir).start()
    yield service
    service.stop()


@pytest.fixture
def model() -> str:
    """A model name no other test uses."""
    return f"model-{uuid.uuid4().hex[:8]}"
