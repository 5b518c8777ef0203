"""The collector's storage: SQLAlchemy 2 (async) on SQLite (WAL) or PostgreSQL.

Every write goes through one writer task that commits before the caller is answered, so a 2xx response always
means the item is on disk (SQLite with ``synchronous=FULL``; PostgreSQL's default ``synchronous_commit``). Writes
that arrive while a commit is in flight are merged into the next transaction - group commit - which is what lets
thousands of single-item requests a second share a few fsyncs. One writer also means SQLite never sees two writers
racing for its lock, and an opt-out is ordered with the ingests around it. Reads use their own pooled connections;
WAL lets them run beside the writer.

Ingested rows take a short path (see "How a group of ingested rows is stored" below): on the writer's own
connection, in autocommit, one insert statement per table and group, each its own transaction. Opt-outs,
retention and the audit log are rare and go through SQLAlchemy transactions on the pool.

Privacy rules live here, next to the queries that must obey them: a tombstoned subject's items are dropped at
ingestion and filtered out of every read, and training exports carry only rows whose feedback and trace were both
consented.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement, Connection, Select, String, Table, Text, and_, bindparam, cast, event, exists, func, or_, select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from kaizen.collector import schema
from kaizen.collector.models import FeedbackQuery

log = logging.getLogger(__name__)
_f, _t, _tomb, _rv = schema.feedback, schema.traces, schema.tombstones, schema.reviews

# How a group of ingested rows is stored. The rows travel to the database in one parameter - one array per column on
# PostgreSQL, one JSON document on SQLite - and the tombstone check, the insert and the lookup of the judged traces
# run there, so a group costs a fixed number of statements whatever its size, on the writer's own connection in
# autocommit (each insert is its own transaction, durable when it returns; no BEGIN or COMMIT to send).
# - PostgreSQL: one statement, one round trip (each wakes a backend process: per-statement round trips, not rows,
#   bounded the writer).
# - SQLite: an answering select, then the insert, on a plain sqlite3 connection in the writer thread: two steps of
#   the database. The sqlite3 module releases the GIL for every step and must win it back from the request
#   handlers' thread each time; with per-row steps (executemany, fetching row by row) and SQLAlchemy's
#   BEGIN/COMMIT, a group commit under load took about three times as long as the same commit alone.
# Every answer is, per input row in input order: whether its subject had opted out (then it was not stored) and, for
# feedback, the judged trace's model, model version, track and cohort (NULLs when the trace is unknown). Only the writer
# changes tombstones and traces, so an answer read before its insert stays true.


def _answer(table: Table, rows: Any, opted_out: Any, trace_id: Any) -> tuple[list[Any], Any]:
    """The answer's columns and the FROM clause that yields them (feedback joins the traces it judges)."""
    if table is _t:
        return [opted_out], rows
    return ([opted_out, _t.c.model, _t.c.model_version, _t.c.track, _t.c.cohort],
            rows.outerjoin(_t, _t.c.id == trace_id))


def _postgres_ingest(table: Table) -> Select[Any]:
    """One statement: insert the rows and answer for each. Its parts share one snapshot, so feedback does not see
    traces inserted by the same statement: the writer stores traces first, in a statement of their own."""
    names = [c.name for c in table.c]
    # Strings travel as TEXT[]: a cast to VARCHAR(n)[] would silently truncate, where the insert rejects overlong.
    arrays = [cast(bindparam(c.name), postgresql.ARRAY(Text if isinstance(c.type, String) else c.type))
              for c in table.c]
    unnested = func.unnest(*arrays).table_valued(*names, with_ordinality="ord").render_derived()
    opted_out = exists().where(_tomb.c.subject_id == unnested.c.subject_id).label("opted_out")
    incoming = select(unnested, opted_out).cte("incoming")
    kept = select(*(incoming.c[n] for n in names)).where(~incoming.c.opted_out)
    inserted = postgresql.insert(table).from_select(names, kept).on_conflict_do_nothing().cte("inserted")
    columns, source = _answer(table, incoming, incoming.c.opted_out, incoming.c.get("trace_id"))
    return select(*columns).select_from(source).order_by(incoming.c.ord).add_cte(inserted)


def _sqlite_ingest(table: Table) -> tuple[tuple[str, dict[str, Any]], tuple[str, dict[str, Any]]]:
    """The answering select (one row: a JSON array of ``[index, opted_out, ...]``) and the insert, each compiled to
    SQL with its constant parameters; the rows go in as ``:rows``."""
    document = func.json_each(bindparam("rows", type_=Text)).table_valued("key", "value")
    fields = {c.name: func.json_extract(document.c.value, f"$.{c.name}") for c in table.c}
    opted_out = exists().where(_tomb.c.subject_id == fields["subject_id"])
    columns, source = _answer(table, document, opted_out, fields.get("trace_id"))
    answer = select(func.json_group_array(func.json_array(document.c.key, *columns))).select_from(source)
    kept = select(*fields.values()).where(~opted_out)  # SQLite's upsert needs the WHERE: it parses ON as a join's
    insert = sqlite.insert(table).from_select(list(fields), kept).on_conflict_do_nothing()
    named = sqlite.dialect(paramstyle="named")
    answering, inserting = answer.compile(dialect=named), insert.compile(dialect=named)
    return (answering.string, dict(answering.params)), (inserting.string, dict(inserting.params))


_POSTGRES_INGEST = {table: _postgres_ingest(table) for table in (_t, _f)}
_SQLITE_INGEST = {table: _sqlite_ingest(table) for table in (_t, _f)}


def _results(table: Table, answers: Sequence[Sequence[Any]]) -> list[IngestResult]:
    if table is _t:
        return [IngestResult(not answer[0]) for answer in answers]
    return [
        IngestResult(not opted_out, None if model is None else
                     {"model": model, "model_version": version, "track": track, "cohort": cohort})
        for opted_out, model, version, track, cohort in answers
    ]


class StoreUnavailable(Exception):
    """The database refused or failed a write; nothing of the request was stored."""


class AuditConflict(Exception):
    """An audit entry with this id exists with different content; the log is append-only."""


class ReviewConflict(Exception):
    """The review was answered before, with another verdict or correction."""


class ReviewNotFound(Exception):
    """No review of this trace is queued (never flagged, or its subject opted out)."""


def async_url(url: str) -> str:
    """Map a plain database URL (``sqlite:///path``, ``postgresql://...``) to its async driver."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ValueError("SQLite needs a file path, e.g. sqlite:////var/lib/kaizen/collector.db (not :memory:)")
        return str(parsed.set(drivername="sqlite+aiosqlite"))
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise ValueError(f"unsupported database URL scheme {parsed.drivername!r}: use sqlite:/// or postgresql://")


def _now() -> float:
    return time.time()


def _time(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


@dataclasses.dataclass
class _Job:
    """A unit of work for the writer: ingest rows (merged with others) or a callable run in its own transaction."""

    future: asyncio.Future[Any]
    traces: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    feedback: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    run: Callable[[Connection], Any] | None = None


@dataclasses.dataclass
class IngestResult:
    """What happened to one ingested row."""

    stored: bool
    trace: dict[str, Any] | None = None  # feedback only: model, model_version, track, cohort of the judged trace


class Store:
    """The database behind the collector; :meth:`open` before use, :meth:`close` after."""

    def __init__(self, url: str, *, max_batch: int = 1024) -> None:
        self.url = async_url(url)
        self.max_batch = max_batch
        self.engine: AsyncEngine | None = None
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._insert = sqlite.insert if self.dialect == "sqlite" else postgresql.insert
        # The writer's own connection for ingests, in autocommit, reopened after a failure: asyncpg on PostgreSQL;
        # on SQLite, sqlite3 in a thread of its own, beside a task that checkpoints the WAL.
        self._ingest_conn: AsyncConnection | None = None
        self._sqlite: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._checkpointer: asyncio.Task[None] | None = None

    @property
    def dialect(self) -> str:
        return make_url(self.url).get_backend_name()

    async def open(self) -> None:
        if self.dialect == "sqlite":
            engine = create_async_engine(self.url, pool_size=8, max_overflow=0)
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collector-writer")
        else:
            engine = create_async_engine(self.url, pool_size=8, max_overflow=4, pool_pre_ping=True)
        self.engine = engine
        async with engine.begin() as conn:
            applied = await schema.migrate(conn)
        if applied:
            log.info("Migrated collector schema versions=%s", applied)
        self._writer = asyncio.create_task(self._write_loop(), name="collector-writer")
        if self._thread is not None:
            self._checkpointer = asyncio.create_task(self._checkpoint_loop(), name="collector-checkpointer")

    async def close(self) -> None:
        for task in (self._writer, self._checkpointer):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._ingest_conn is not None:
            await self._ingest_conn.close()
        if self.engine is not None:
            await self.engine.dispose()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._close_sqlite)
            self._thread.shutdown()

    async def ping(self) -> None:
        """Raise unless the database answers and the writer runs."""
        if self._writer is None or self._writer.done():
            raise StoreUnavailable("the writer task is not running")
        async with self._engine().connect() as conn:
            await conn.execute(text("SELECT 1"))

    def _engine(self) -> AsyncEngine:
        if self.engine is None:
            raise StoreUnavailable("the store is not open")
        return self.engine

    # Writes

    async def add_traces(self, rows: list[dict[str, Any]]) -> list[IngestResult]:
        """Store trace rows durably; rows of opted-out subjects are dropped."""
        return await self._submit(_Job(asyncio.get_running_loop().create_future(), traces=rows))

    async def add_feedback(self, rows: list[dict[str, Any]]) -> list[IngestResult]:
        """Store feedback rows durably, looking up the traces they judge."""
        return await self._submit(_Job(asyncio.get_running_loop().create_future(), feedback=rows))

    async def delete_subject(self, subject_id: str) -> tuple[int, int, float]:
        """Opt-out: tombstone the subject, delete its traces and its feedback and all feedback on its traces."""

        def run(conn: Connection) -> tuple[int, int, float]:
            conn.execute(self._insert(_tomb).values(subject_id=subject_id, deleted_at=_now()).on_conflict_do_nothing())
            deleted_at = conn.execute(select(_tomb.c.deleted_at).where(_tomb.c.subject_id == subject_id)).scalar_one()
            own_traces = select(_t.c.id).where(_t.c.subject_id == subject_id)
            fb = conn.execute(_f.delete().where(or_(_f.c.subject_id == subject_id, _f.c.trace_id.in_(own_traces))))
            tr = conn.execute(_t.delete().where(_t.c.subject_id == subject_id))
            conn.execute(_rv.delete().where(_rv.c.subject_id == subject_id))
            return tr.rowcount, fb.rowcount, deleted_at

        return await self._submit(_Job(asyncio.get_running_loop().create_future(), run=run))

    async def purge(self, before: float) -> tuple[int, int]:
        """Retention: delete traces and feedback stored before ``before`` (epoch seconds). The audit log is kept."""

        def run(conn: Connection) -> tuple[int, int]:
            fb = conn.execute(_f.delete().where(_f.c.created_at < before))
            tr = conn.execute(_t.delete().where(_t.c.created_at < before))
            conn.execute(_rv.delete().where(_rv.c.created_at < before))
            return tr.rowcount, fb.rowcount

        return await self._submit(_Job(asyncio.get_running_loop().create_future(), run=run))

    async def append_audit(self, entry_id: str, loop: str, entry: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Append an audit entry; return the stored record and whether it is new. Identical re-sends are no-ops."""
        payload = json.dumps(entry, sort_keys=True, separators=(",", ":"))
        a = schema.audit

        def run(conn: Connection) -> tuple[dict[str, Any], bool]:
            result = conn.execute(
                self._insert(a).values(id=entry_id, loop=loop, entry=payload, received_at=_now())
                .on_conflict_do_nothing()
            )
            row = conn.execute(select(a).where(a.c.id == entry_id)).mappings().one()
            if result.rowcount == 0 and row["entry"] != payload:
                raise AuditConflict(
                    f"audit entry {entry_id!r} already exists with different content; the log is append-only: "
                    "record a change as a new entry with a new id"
                )
            return dict(row), result.rowcount == 1

        return await self._submit(_Job(asyncio.get_running_loop().create_future(), run=run))

    async def add_review(self, row: dict[str, Any]) -> bool:
        """Queue a flagged trace for review; False when it is queued already (or its subject opted out)."""

        def run(conn: Connection) -> bool:
            if conn.execute(select(_tomb.c.subject_id).where(_tomb.c.subject_id == row["subject_id"])).first():
                return False
            return conn.execute(self._insert(_rv).values(**row).on_conflict_do_nothing()).rowcount == 1

        return await self._submit(_Job(asyncio.get_running_loop().create_future(), run=run))

    async def answer_review(
        self, trace_id: str, *, reviewer: str, verdict: str, correction: str | None, category: str | None,
        feedback_id: str, redactions: str,
    ) -> tuple[dict[str, Any], bool]:
        """Record a reviewer's verdict, and store it as feedback on the trace, with the reviewer, the trace's subject
        and the trace's consent (a reviewer cannot consent for the user). Returns the review and whether it is new;
        the same answer again is a no-op, another one a :class:`ReviewConflict`."""

        def run(conn: Connection) -> tuple[dict[str, Any], bool]:
            review = conn.execute(_review_select().where(_rv.c.trace_id == trace_id)).mappings().first()
            if review is None:
                raise ReviewNotFound(trace_id)
            if review["verdict"] is not None:
                if (review["verdict"], review["correction"]) != (verdict, correction):
                    raise ReviewConflict(
                        f"the review of trace {trace_id!r} was answered before ({review['verdict']} by "
                        f"{review['reviewer']}); a review is answered once"
                    )
                return dict(review), False
            now = _now()
            conn.execute(self._insert(_f).values(
                id=feedback_id, trace_id=trace_id, model=review["model"], rating="up" if verdict == "good" else "down",
                negative=verdict == "bad", category=category, comment=None, correction=correction,
                subject_id=review["t_subject_id"], consent_training=bool(review["t_consent"]),
                redactions=redactions, created_at=now, reviewer=reviewer,
            ).on_conflict_do_nothing())
            conn.execute(_rv.update().where(_rv.c.trace_id == trace_id).values(
                reviewer=reviewer, verdict=verdict, correction=correction, feedback_id=feedback_id, reviewed_at=now))
            return dict(conn.execute(_review_select().where(_rv.c.trace_id == trace_id)).mappings().one()), True

        return await self._submit(_Job(asyncio.get_running_loop().create_future(), run=run))

    async def _submit(self, job: _Job) -> Any:
        if self._writer is None or self._writer.done():
            raise StoreUnavailable("the collector's database writer is not running")
        self._queue.put_nowait(job)
        # Cancelling this wait (a client that went away) cancels only the job's future: the writer still commits the
        # rows with the rest of their group and skips settling a future that is already done (see _settle).
        return await job.future

    async def _write_loop(self) -> None:
        while True:
            first = await self._queue.get()
            if first.run is not None:
                await self._run_jobs([first])
                continue
            jobs, size = [first], len(first.traces) + len(first.feedback)
            held: _Job | None = None
            while size < self.max_batch and not self._queue.empty():
                job = self._queue.get_nowait()
                if job.run is not None:
                    held = job  # runs alone, after this batch
                    break
                jobs.append(job)
                size += len(job.traces) + len(job.feedback)
            await self._run_jobs(jobs)
            if held is not None:
                await self._run_jobs([held])

    async def _run_jobs(self, jobs: list[_Job]) -> None:
        """Write ``jobs`` (one callable job, or a group of ingests) and settle their futures."""
        run = jobs[0].run
        try:
            result = await (self._transact(run) if run is not None else self._commit(jobs))
        except (AuditConflict, ReviewConflict, ReviewNotFound) as error:
            _settle(jobs, error=error)
        except Exception as error:  # noqa: BLE001 - any database failure fails the requests, never the writer
            if len(jobs) > 1:
                # One bad job must not fail its neighbours: retry each alone (ingests are idempotent by id).
                for job in jobs:
                    await self._run_jobs([job])
                return
            log.error("Failed to write to the collector database error=%r", error)
            _settle(jobs, error=StoreUnavailable(f"the database write failed: {error.__class__.__name__}"))
        else:
            _settle(jobs, result=result)

    async def _checkpoint_loop(self, every: float = 1.0) -> None:
        """SQLite: copy the WAL into the database every ``every`` seconds, beside the writer.

        The writer's connection does not checkpoint (``wal_autocheckpoint=0``): SQLite's automatic checkpoint
        runs inside the commit that crosses its threshold, which made one group commit in a dozen several times
        slower - the p99 of every request in it. A PASSIVE checkpoint on a reader's connection (its own thread)
        never blocks the writer, and running every second keeps the WAL to about a second of writes.
        """
        while True:
            await asyncio.sleep(every)
            try:
                async with self._engine().connect() as conn:
                    await conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            except Exception as error:  # noqa: BLE001 - the next round retries; writes do not depend on it
                log.warning("WAL checkpoint failed error=%r", error)

    async def _transact(self, work: Callable[[Connection], Any]) -> Any:
        """Run ``work`` (opt-out, retention, audit) in one write transaction."""
        async with self._engine().begin() as conn:
            return await conn.run_sync(work)

    async def _commit(self, jobs: Sequence[_Job]) -> list[list[IngestResult]]:
        """Store a group of ingest jobs durably; one list of results per job."""
        # Traces first, so that feedback in the same group finds the traces it judges.
        groups = [(table, rows) for table, rows in ((_t, [r for j in jobs for r in j.traces]),
                                                     (_f, [r for j in jobs for r in j.feedback])) if rows]
        if self._thread is not None:
            answers = await asyncio.get_running_loop().run_in_executor(self._thread, self._ingest_sqlite, groups)
        else:
            answers = await self._ingest_postgres(groups)
        results = {table: iter(_results(table, answer)) for (table, _), answer in zip(groups, answers, strict=True)}
        return [[next(results[_t]) for _ in job.traces] + [next(results[_f]) for _ in job.feedback] for job in jobs]

    async def _ingest_postgres(self, groups: list[tuple[Table, list[dict[str, Any]]]]) -> list[Sequence[Any]]:
        """Each group in one statement on the writer's own connection; autocommit makes each its own transaction."""
        if self._ingest_conn is None:
            self._ingest_conn = await (await self._engine().connect()).execution_options(isolation_level="AUTOCOMMIT")
        try:
            return [
                (await self._ingest_conn.execute(
                    _POSTGRES_INGEST[table], {c.name: [r.get(c.name) for r in rows] for c in table.c}
                )).all()
                for table, rows in groups
            ]
        except Exception:
            conn, self._ingest_conn = self._ingest_conn, None
            await conn.invalidate()  # a connection in an unknown state is not reused
            raise

    def _ingest_sqlite(self, groups: list[tuple[Table, list[dict[str, Any]]]]) -> list[Sequence[Any]]:
        """Each group as an answering select and an insert, on the writer's own connection (in the writer thread)."""
        if self._sqlite is None:
            database = make_url(self.url).database
            assert database, "async_url refuses a SQLite URL without a file path"
            conn = sqlite3.connect(database, isolation_level=None)  # autocommit
            _sqlite_pragmas(conn, None)
            conn.execute("PRAGMA wal_autocheckpoint=0")  # see _checkpoint_loop
            self._sqlite = conn
        try:
            answers: list[Sequence[Any]] = []
            for table, rows in groups:
                (answer, answer_params), (insert, insert_params) = _SQLITE_INGEST[table]
                document = json.dumps(rows)
                (found,) = self._sqlite.execute(answer, {**answer_params, "rows": document}).fetchone()
                self._sqlite.execute(insert, {**insert_params, "rows": document})
                answers.append([a[1:] for a in sorted(json.loads(found))])
            return answers
        except Exception:
            self._close_sqlite()  # a connection in an unknown state is not reused
            raise

    def _close_sqlite(self) -> None:
        if self._sqlite is not None:
            conn, self._sqlite = self._sqlite, None
            conn.close()

    # Reads

    async def get_trace(self, trace_id: str) -> dict[str, Any] | None:
        async with self._engine().connect() as conn:
            row = (await conn.execute(select(_t).where(_t.c.id == trace_id))).mappings().first()
        return dict(row) if row else None

    async def count_negative(self, query: FeedbackQuery, consented_only: bool) -> int:
        where = _feedback_filters(query, negative=True, consented=consented_only)
        statement = select(func.count()).select_from(_joined()).where(*where)
        async with self._engine().connect() as conn:
            return int((await conn.execute(statement)).scalar_one())

    async def backlog(
        self, query: FeedbackQuery, consented_only: bool, limit: int, examples: int
    ) -> list[dict[str, Any]]:
        """Negative feedback grouped by (category, scenario, cohort): by volume, then recency."""
        where = _feedback_filters(query, negative=True, consented=consented_only)
        keys = (_f.c.category, _t.c.scenario, _t.c.cohort)
        count, last_at = func.count().label("count"), func.max(_f.c.created_at).label("last_at")
        groups = (
            select(*keys, count, last_at).select_from(_joined()).where(*where).group_by(*keys)
            .order_by(count.desc(), last_at.desc()).limit(limit)
        )
        rank = func.row_number().over(partition_by=keys, order_by=(_f.c.created_at.desc(), _f.c.id.desc()))
        ranked = select(*keys, _f.c.trace_id, rank.label("rank")).select_from(_joined()).where(*where).subquery()
        newest = select(ranked).where(ranked.c.rank <= examples).order_by(ranked.c.rank)
        async with self._engine().connect() as conn:
            items = [dict(r._mapping) for r in await conn.execute(groups)]
            samples: dict[tuple[Any, ...], list[str]] = {}
            if examples and items:
                for r in await conn.execute(newest):
                    samples.setdefault((r.category, r.scenario, r.cohort), []).append(r.trace_id)
        for item in items:
            item["example_trace_ids"] = samples.get((item["category"], item["scenario"], item["cohort"]), [])
            item["last_at"] = _time(item["last_at"])
        return items

    async def recent_traffic(self, since: float) -> dict[str, dict[str | None, int]]:
        """Traces with text stored after ``since``, per model and cohort: which windows a drift pass can test."""
        statement = (
            select(_t.c.model, _t.c.cohort, func.count()).where(_t.c.created_at > since, _t.c.input.is_not(None))
            .group_by(_t.c.model, _t.c.cohort)
        )
        traffic: dict[str, dict[str | None, int]] = {}
        async with self._engine().connect() as conn:
            for model, cohort, count in await conn.execute(statement):
                traffic.setdefault(model, {})[cohort] = int(count)
        return traffic

    async def served_version(self, model: str) -> str | None:
        """The version of ``model`` that served its newest stable-track trace (None: no stable trace yet)."""
        statement = (
            select(_t.c.model_version).where(_t.c.model == model, _t.c.track == "stable")
            .order_by(_t.c.created_at.desc(), _t.c.id.desc()).limit(1)
        )
        async with self._engine().connect() as conn:
            return (await conn.execute(statement)).scalar_one_or_none()

    async def window_inputs(
        self, model: str, cohort: str | None, *, after: float | None, before: float | None, newest: bool, limit: int,
        version: str | None = None,
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` traces of ``model`` (and ``cohort``, and the model ``version`` that served them, when
        given) with text, stored in (after, before]: the newest or the oldest. Opted-out subjects' traces are left
        out, as from every read."""
        where = [_t.c.model == model, _t.c.input.is_not(None), ~exists().where(_tomb.c.subject_id == _t.c.subject_id)]
        if cohort is not None:
            where.append(_t.c.cohort == cohort)
        if version is not None:
            where.append(_t.c.model_version == version)
        if after is not None:
            where.append(_t.c.created_at > after)
        if before is not None:
            where.append(_t.c.created_at <= before)
        order = (_t.c.created_at.desc(), _t.c.id.desc()) if newest else (_t.c.created_at, _t.c.id)
        statement = (
            select(_t.c.id, _t.c.cohort, _t.c.scenario, _t.c.input, _t.c.created_at).where(*where)
            .order_by(*order).limit(limit)
        )
        async with self._engine().connect() as conn:
            return [dict(r) for r in (await conn.execute(statement)).mappings()]

    async def export(self, query: FeedbackQuery, negative_only: bool) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Yield ``("example", row)`` for each exportable row, then ``("excluded", counts)`` once.

        One statement, so the rows and the counts come from the same snapshot of the database.
        """
        where = _feedback_filters(query, negative=negative_only or None, consented=False)
        statement = (
            select(
                _f.c.id, _f.c.trace_id, _f.c.rating, _f.c.negative, _f.c.category, _f.c.comment, _f.c.correction,
                _f.c.reviewer,
                _f.c.redactions.label("f_redactions"), _f.c.created_at, _f.c.consent_training.label("f_consent"),
                _t.c.id.label("t_id"), _t.c.model, _t.c.model_version, _t.c.track, _t.c.cohort, _t.c.scenario,
                _t.c.input, _t.c.output, _t.c.redactions.label("t_redactions"),
                _t.c.consent_training.label("t_consent"),
            )
            .select_from(_joined()).where(*where).order_by(_f.c.created_at, _f.c.id)
        )
        excluded = {"noConsent": 0, "unknownTrace": 0, "noText": 0}
        async with self._engine().connect() as conn:
            result = await conn.stream(statement.execution_options(yield_per=500))
            async for row in result.mappings():
                if row["t_id"] is None:
                    excluded["unknownTrace"] += 1
                elif not (row["f_consent"] and row["t_consent"]):
                    excluded["noConsent"] += 1
                elif row["input"] is None:
                    excluded["noText"] += 1
                else:
                    yield "example", dict(row)
            opted_out = (await conn.execute(select(func.count()).select_from(_tomb))).scalar_one()
        yield "excluded", {**excluded, "subjectsOptedOut": int(opted_out)}

    async def reviews(self, model: str | None, state: str, limit: int) -> list[dict[str, Any]]:
        """Queued reviews, oldest first, with their traces' (redacted) texts: ``state`` open, answered or all."""
        statement = _review_select().order_by(_rv.c.created_at, _rv.c.trace_id).limit(limit)
        if model is not None:
            statement = statement.where(_rv.c.model == model)
        if state != "all":
            statement = statement.where(_rv.c.verdict.is_(None) if state == "open" else _rv.c.verdict.is_not(None))
        async with self._engine().connect() as conn:
            return [dict(r) for r in (await conn.execute(statement)).mappings()]

    async def audit_page(self, loop: str | None, after: int, limit: int) -> list[dict[str, Any]]:
        a = schema.audit
        statement = select(a).where(a.c.seq > after).order_by(a.c.seq).limit(limit)
        if loop is not None:
            statement = statement.where(a.c.loop == loop)
        async with self._engine().connect() as conn:
            return [dict(r) for r in (await conn.execute(statement)).mappings()]


def _settle(jobs: Sequence[_Job], *, result: Any = None, error: Exception | None = None) -> None:
    for index, job in enumerate(jobs):
        if job.future.done():
            continue
        if error is not None:
            job.future.set_exception(error)
        elif job.run is not None:
            job.future.set_result(result)
        else:
            job.future.set_result(result[index])


def _review_select() -> Select[Any]:
    """Reviews joined to their traces; opted-out subjects' are left out, as from every read."""
    return (
        select(_rv, _t.c.input, _t.c.output, _t.c.cohort, _t.c.scenario, _t.c.subject_id.label("t_subject_id"),
               _t.c.consent_training.label("t_consent"))
        .select_from(_rv.join(_t, _t.c.id == _rv.c.trace_id))
        .where(~exists().where(_tomb.c.subject_id == _t.c.subject_id))
    )


def _joined() -> Any:
    return _f.outerjoin(_t, _t.c.id == _f.c.trace_id)


def _feedback_filters(query: FeedbackQuery, *, negative: bool | None, consented: bool) -> list[ColumnElement[bool]]:
    """WHERE clauses over feedback LEFT JOIN traces. Opted-out subjects are always excluded."""
    where: list[ColumnElement[bool]] = [
        func.coalesce(_t.c.model, _f.c.model) == query.model,
        ~exists().where(_tomb.c.subject_id == _f.c.subject_id),
        ~exists().where(_tomb.c.subject_id == _t.c.subject_id),
    ]
    if negative:
        where.append(_f.c.negative.is_(True))
    if consented:
        where.append(and_(_f.c.consent_training.is_(True), or_(_t.c.id.is_(None), _t.c.consent_training.is_(True))))
    if query.since is not None:
        where.append(_f.c.created_at > query.since.timestamp())
    if query.categories:
        where.append(_f.c.category.in_(query.categories))
    if query.cohorts:
        where.append(_t.c.cohort.in_(query.cohorts))
    if query.scenarios:
        where.append(_t.c.scenario.in_(query.scenarios))
    return where


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the writer; FULL syncs the WAL on every commit, so an acknowledged write survives
    # a power cut and not just a crash of this process.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()

