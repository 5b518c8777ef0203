"""The collector's database schema: the tables as SQLAlchemy Core objects and the versioned migrations.

Migrations are frozen DDL, numbered, applied in order inside one transaction each and recorded in
``schema_migrations``; a database is never changed behind the version table's back. The Core tables below describe
the schema the latest migration produces (``tests/collector/test_schema.py`` checks that they agree) and are what
the queries use. Times are epoch seconds (``DOUBLE PRECISION``), which compare and index the same way on SQLite and
PostgreSQL; JSON columns are text, for the same reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import (
    BigInteger, Boolean, Column, Float, Integer, MetaData, String, Table, Text, text,
)
from sqlalchemy.ext.asyncio import AsyncConnection

metadata = MetaData()

traces = Table(
    "traces", metadata,
    Column("id", String(128), primary_key=True),
    Column("request_id", String(128)),
    Column("model", String(128), nullable=False),
    Column("model_version", String(128), nullable=False),
    Column("track", String(16), nullable=False),
    Column("cohort", String(128)),
    Column("scenario", String(128)),
    Column("input", Text),
    Column("output", Text),
    Column("latency_ms", Float),
    Column("subject_id", String(128)),
    Column("consent_training", Boolean, nullable=False),
    Column("redactions", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

feedback = Table(
    "feedback", metadata,
    Column("id", String(128), primary_key=True),
    Column("trace_id", String(128), nullable=False),
    Column("model", String(128)),
    Column("rating", String(8), nullable=False),
    Column("negative", Boolean, nullable=False),
    Column("category", String(32)),
    Column("comment", Text),
    Column("correction", Text),
    Column("subject_id", String(128)),
    Column("consent_training", Boolean, nullable=False),
    Column("redactions", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("reviewer", String(128)),
)

tombstones = Table(
    "tombstones", metadata,
    Column("subject_id", String(128), primary_key=True),
    Column("deleted_at", Float, nullable=False),
)

audit = Table(
    "audit", metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("id", String(128), nullable=False, unique=True),
    Column("loop", String(128), nullable=False),
    Column("entry", Text, nullable=False),
    Column("received_at", Float, nullable=False),
)

#: The review queue: traces an evaluator of the sampled evaluation flagged (see kaizen.collector.evaluation), one row
#: per trace, open until a reviewer answers; the answer is also stored as feedback (``feedback_id``).
reviews = Table(
    "reviews", metadata,
    Column("trace_id", String(128), primary_key=True),
    Column("model", String(128), nullable=False),
    Column("model_version", String(128), nullable=False),
    Column("track", String(16), nullable=False),
    Column("subject_id", String(128)),
    Column("reasons", Text, nullable=False),
    Column("results", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("reviewer", String(128)),
    Column("verdict", String(8)),
    Column("correction", Text),
    Column("feedback_id", String(128)),
    Column("reviewed_at", Float),
)

_V1 = [
    """CREATE TABLE traces (
        id VARCHAR(128) PRIMARY KEY, request_id VARCHAR(128), model VARCHAR(128) NOT NULL,
        model_version VARCHAR(128) NOT NULL, track VARCHAR(16) NOT NULL, cohort VARCHAR(128), scenario VARCHAR(128),
        input TEXT, output TEXT, latency_ms DOUBLE PRECISION, subject_id VARCHAR(128),
        consent_training BOOLEAN NOT NULL, redactions TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX traces_subject ON traces (subject_id)",
    "CREATE INDEX traces_model_created ON traces (model, created_at)",
    """CREATE TABLE feedback (
        id VARCHAR(128) PRIMARY KEY, trace_id VARCHAR(128) NOT NULL, model VARCHAR(128), rating VARCHAR(8) NOT NULL,
        negative BOOLEAN NOT NULL, category VARCHAR(32), comment TEXT, correction TEXT, subject_id VARCHAR(128),
        consent_training BOOLEAN NOT NULL, redactions TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX feedback_trace ON feedback (trace_id)",
    "CREATE INDEX feedback_subject ON feedback (subject_id)",
    "CREATE INDEX feedback_created ON feedback (created_at)",
    "CREATE TABLE tombstones (subject_id VARCHAR(128) PRIMARY KEY, deleted_at DOUBLE PRECISION NOT NULL)",
]

_V1_AUDIT = {
    "sqlite": """CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, id VARCHAR(128) NOT NULL UNIQUE,
        loop VARCHAR(128) NOT NULL, entry TEXT NOT NULL, received_at DOUBLE PRECISION NOT NULL)""",
    "postgresql": """CREATE TABLE audit (seq BIGSERIAL PRIMARY KEY, id VARCHAR(128) NOT NULL UNIQUE,
        loop VARCHAR(128) NOT NULL, entry TEXT NOT NULL, received_at DOUBLE PRECISION NOT NULL)""",
}

# The audit log is append-only in the database itself, not just in the API: an UPDATE or DELETE fails.
_V2_APPEND_ONLY = {
    "sqlite": [
        """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
           BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
        """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
           BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    ],
    "postgresql": [
        """CREATE FUNCTION kaizen_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$""",
        """CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
           FOR EACH ROW EXECUTE FUNCTION kaizen_audit_append_only()""",
    ],
}


_V3_REVIEWS = [
    """CREATE TABLE reviews (
        trace_id VARCHAR(128) PRIMARY KEY, model VARCHAR(128) NOT NULL, model_version VARCHAR(128) NOT NULL,
        track VARCHAR(16) NOT NULL, subject_id VARCHAR(128), reasons TEXT NOT NULL, results TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, reviewer VARCHAR(128), verdict VARCHAR(8), correction TEXT,
        feedback_id VARCHAR(128), reviewed_at DOUBLE PRECISION)""",
    "CREATE INDEX reviews_model_created ON reviews (model, created_at)",
    "CREATE INDEX reviews_subject ON reviews (subject_id)",
    # Who gave a feedback item when a reviewer did (the review queue's answers); NULL for users' own feedback.
    "ALTER TABLE feedback ADD COLUMN reviewer VARCHAR(128)",
]


def _statements(*parts: list[str] | dict[str, str] | dict[str, list[str]]) -> Callable[[str], list[str]]:
    def for_dialect(dialect: str) -> list[str]:
        out: list[str] = []
        for part in parts:
            chosen = part[dialect] if isinstance(part, dict) else part
            out.extend([chosen] if isinstance(chosen, str) else chosen)
        return out

    return for_dialect


#: (version, description, statements for a dialect). Append new migrations; never edit an applied one.
MIGRATIONS: tuple[tuple[int, str, Callable[[str], list[str]]], ...] = (
    (1, "traces, feedback, tombstones, audit", _statements(_V1, _V1_AUDIT)),
    (2, "audit log append-only triggers", _statements(_V2_APPEND_ONLY)),
    (3, "review queue; reviewer of feedback", _statements(_V3_REVIEWS)),
)
LATEST = MIGRATIONS[-1][0]


async def migrate(conn: AsyncConnection) -> list[int]:
    """Apply the migrations ``conn``'s database lacks, in order; return the versions applied.

    On PostgreSQL an advisory lock serialises replicas starting together; SQLite's write lock does the same.
    """
    dialect = conn.dialect.name
    if dialect not in ("sqlite", "postgresql"):
        raise ValueError(f"unsupported database {dialect!r}: use sqlite or postgresql")
    if dialect == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(4004004)"))  # an arbitrary, fixed key
    await conn.execute(text(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
        "applied_at DOUBLE PRECISION NOT NULL)"
    ))
    applied = set((await conn.execute(text("SELECT version FROM schema_migrations"))).scalars())
    unknown = applied - {v for v, _, _ in MIGRATIONS}
    if unknown:
        raise RuntimeError(
            f"the database has schema versions {sorted(unknown)} that this collector does not know: it was migrated "
            "by a newer collector; run that version or a newer one"
        )
    done = []
    for version, description, statements in MIGRATIONS:
        if version in applied:
            continue
        for statement in statements(dialect):
            await conn.execute(text(statement))
        await conn.execute(
            text("INSERT INTO schema_migrations (version, description, applied_at) VALUES (:v, :d, :t)"),
            {"v": version, "d": description, "t": time.time()},
        )
        done.append(version)
    return done
