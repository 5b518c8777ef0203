"""Collector ingest benchmark: events/s and p50/p99 latency at 64 concurrent clients, on SQLite and PostgreSQL,
against the raw batched-insert rate of the same database (the ceiling), in one table.

Runs everything on loopback: a real collector process (``python -m kaizen.collector``), a throwaway PostgreSQL
(:mod:`kaizen.dev.postgres`), and a load generator: 64 concurrent clients on keep-alive connections, each sending
its next request as soon as the last is answered. The load generator shares the machine with the collector, so it
is ``wrk`` (C; Debian package ``wrk``: ``apt-get install -y wrk``) when it is installed, driven by a generated Lua
script, and otherwise an aiohttp client in this process, which takes about as much CPU as the collector itself and
so understates what the collector sustains; the table and the results file say which one ran. Every run is bounded
in time (and the aiohttp one also in request count). Prints the table and writes it, with the machine it ran on, to
``bench/results/collector.json``.

    .venv/bin/python bench/collector/run.py [--seconds 10] [--clients 64] [--repeat 5]
                                            [--backends sqlite,postgresql] [--generator wrk|aiohttp]
                                            [--collector-arg=--eval-share --collector-arg=1 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from sqlalchemy.engine import make_url

from kaizen.collector.schema import feedback
from kaizen.collector.store import Store
from kaizen.dev.collector import TOKENS, LocalCollector
from kaizen.dev.postgres import PostgresServer, find_bin_dir

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "collector.json"
TOKEN = TOKENS["ingest"]  # the local collector's ingest token
MAX_REQUESTS = 400_000  # a bound on any one run, whatever --seconds says
TRACES = 1000


def _feedback(trace: int, n: int) -> dict[str, Any]:
    return {"traceId": f"bench-{trace}", "rating": "down" if n % 3 else "up", "category": "incorrect",
            "comment": "the total is wrong", "subjectId": f"user-{n % 5000}", "consent": {"training": True}}


HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def _bodies(batch: int) -> list[bytes]:
    """Request bodies, serialised up front so the load generator spends its CPU on HTTP only."""
    return [json.dumps(_feedback(n % TRACES, n) if batch == 1 else {
        "items": [_feedback((n * batch + j) % TRACES, n * batch + j) for j in range(batch)]}).encode()
        for n in range(2048)]


async def _add_traces(url: str) -> None:
    """The traces the feedback judges, so that every feedback item takes the known-trace path."""
    traces = [{"id": f"bench-{i}", "model": "bench", "modelVersion": "v1", "track": "stable", "input": "2+2?",
               "output": "5", "consent": {"training": True}} for i in range(TRACES)]
    async with aiohttp.ClientSession(headers=HEADERS) as session:
        for i in range(0, TRACES, 500):
            async with session.post(f"{url}/v1/traces", json={"items": traces[i:i + 500]}) as response:
                assert response.status == 201, await response.text()


# wrk calls request() for every request and done() once; done() prints one JSON line for _load_wrk to read.
_WRK_SCRIPT = """
local bodies = {%s}
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
request = function()
  n = n %% #bodies + 1
  return wrk.format(nil, "/v1/feedback", nil, bodies[n])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %%d, "failed": %%d, "errors": %%d, "us": %%d, "p50_us": %%d, "p99_us": %%d}\\n',
    summary.requests, e.status, e.connect + e.read + e.write + e.status + e.timeout, summary.duration,
    latency:percentile(50), latency:percentile(99)))
end
"""


def _load_wrk(url: str, clients: int, seconds: float, batch: int, workdir: Path) -> dict[str, Any]:
    """``clients`` closed-loop wrk connections posting feedback (``batch`` items per request) for ``seconds``."""
    bodies = ", ".join(f"[==[{body.decode()}]==]" for body in _bodies(batch))  # Lua long strings; JSON has no ]==]
    script = workdir / "feedback.lua"
    script.write_text(_WRK_SCRIPT % (bodies, TOKEN))
    # One wrk thread drives tens of thousands of requests a second; more would only take CPU from the collector.
    completed = subprocess.run(
        ["wrk", "--threads", "1", "--connections", str(clients), "--duration", f"{seconds:g}s", "--timeout", "10s",
         "--script", str(script), url], capture_output=True, text=True, timeout=seconds + 60, check=True,
    )
    out = json.loads(completed.stdout.strip().splitlines()[-1])
    elapsed = out["us"] / 1e6
    ok = out["requests"] - out["failed"]  # wrk counts answered requests, 4xx and 5xx included
    return {
        "requests": ok, "errors": out["errors"], "seconds": round(elapsed, 2),
        "events_per_s": round(ok * batch / elapsed), "p50_ms": round(out["p50_us"] / 1000, 2),
        "p99_ms": round(out["p99_us"] / 1000, 2),
    }


async def _load(url: str, clients: int, seconds: float, batch: int) -> dict[str, Any]:
    """``clients`` closed-loop clients posting feedback (``batch`` items per request) for ``seconds``."""
    bodies = _bodies(batch)
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, headers=HEADERS) as session:
        started = time.perf_counter()
        deadline = started + seconds
        counter = 0

        async def client() -> None:
            nonlocal counter, errors
            while time.perf_counter() < deadline and counter < MAX_REQUESTS:
                counter += 1
                body = bodies[counter % len(bodies)]
                sent = time.perf_counter()
                async with session.post(f"{url}/v1/feedback", data=body) as response:
                    await response.read()
                    if response.status != 201:
                        errors += 1
                        continue
                latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "requests": len(latencies), "errors": errors, "seconds": round(elapsed, 2),
        "events_per_s": round(len(latencies) * batch / elapsed), "p50_ms": round(quantiles[49] * 1000, 2),
        "p99_ms": round(quantiles[98] * 1000, 2),
    }


async def _raw_ceiling(db: str, seconds: float, batch: int = 1000) -> dict[str, Any]:
    """The database's own rate: batches of feedback rows inserted straight through the driver (sqlite3 or asyncpg,
    no SQLAlchemy, no HTTP), one commit per batch, with the collector's schema and durability settings."""
    store = Store(db)  # creates the schema, then steps aside
    await store.open()
    await store.close()
    columns = [c.name for c in feedback.c]
    url = make_url(db)
    if url.get_backend_name() == "sqlite":
        conn = sqlite3.connect(url.database, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        sql = f"INSERT INTO feedback ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"

        async def insert(rows: list[tuple[Any, ...]]) -> None:
            conn.execute("BEGIN")
            conn.executemany(sql, rows)
            conn.execute("COMMIT")

        async def close() -> None:
            conn.close()
    else:
        conn = await asyncpg.connect(url.render_as_string(hide_password=False))
        sql = (f"INSERT INTO feedback ({', '.join(columns)}) "
               f"VALUES ({', '.join(f'${i + 1}' for i in range(len(columns)))})")

        async def insert(rows: list[tuple[Any, ...]]) -> None:
            async with conn.transaction():
                await conn.executemany(sql, rows)

        close = conn.close

    # The rows differ only in their ids, which are cheap to make: the loop measures the database, not Python.
    row = {"trace_id": "bench-0", "model": None, "rating": "down", "negative": True, "category": "incorrect",
           "comment": "the total is wrong", "correction": None, "subject_id": "user-0", "consent_training": True,
           "redactions": "{}", "created_at": time.time(), "reviewer": None}
    rest = tuple(row[c] for c in columns[1:])
    assert columns[0] == "id"
    rows, started = 0, time.perf_counter()
    try:
        while time.perf_counter() - started < seconds and rows < MAX_REQUESTS * 10:
            await insert([(f"raw-{rows + i}", *rest) for i in range(batch)])
            rows += batch
    finally:
        await close()
    elapsed = time.perf_counter() - started
    return {"rows": rows, "seconds": round(elapsed, 2), "events_per_s": round(rows / elapsed)}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (the collector)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _fsync_ms(directory: Path, seconds: float = 5) -> dict[str, float]:
    """The disk's commit latency: small writes, each followed by fsync, as a database commit does."""
    times = []
    with open(directory / "fsync-probe", "wb", buffering=0) as f:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            f.write(b"x" * 8192)
            os.fsync(f.fileno())
            times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"p50": round(times[len(times) // 2], 2), "p99": round(times[int(len(times) * 0.99)], 2),
            "max": round(times[-1], 1), "over_50": sum(t > 50 for t in times), "samples": len(times)}


def _machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    pg = subprocess.run([find_bin_dir() / "postgres", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "cpu": cpu, "cores": len(os.sched_getaffinity(0)), "memory_gib": round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(), "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
        "postgresql": pg,
        # Other work on the machine takes cores from both the collector and the load generator: recorded, not hidden.
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="duration of each load run (default 10)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (default 64)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per scenario; medians are reported (5)")
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results file (default {RESULTS})")
    parser.add_argument("--generator", choices=("wrk", "aiohttp"), default="wrk" if shutil.which("wrk") else "aiohttp",
                        help="load generator (default: wrk when installed, else aiohttp in this process)")
    parser.add_argument("--collector-arg", action="append", default=[], metavar="ARG",
                        help="pass ARG to every collector, e.g. --collector-arg=--eval-share --collector-arg=1 to "
                        "measure ingestion with the sampled evaluation on (repeatable)")
    args = parser.parse_args()
    generator = _generator(args.generator)
    with tempfile.TemporaryDirectory(prefix="kaizen-bench-") as tmp:
        fsync = _fsync_ms(Path(tmp))  # where the databases live: the same file system
    results = []
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory(prefix="kaizen-bench-") as tmp:
            workdir = Path(tmp)
            pg = PostgresServer().start() if backend == "postgresql" else None
            try:
                for scenario, batch in (("feedback, 1 per request", 1), ("feedback, 20 per request", 20)):
                    runs = [_run_once(args, pg, workdir, f"b{batch}r{n}", batch) for n in range(args.repeat)]
                    # Each figure is the median over the runs: a stall of the machine's disk (see machine.fsync_ms)
                    # or its other work can wreck one run's p99. Every run is in the results file.
                    median = {key: round(statistics.median(run[key] for run in runs), digits) for key, digits in (
                        ("events_per_s", None), ("p50_ms", 2), ("p99_ms", 2), ("collector_cpu_us_per_event", 1))}
                    results.append({"backend": backend, "scenario": scenario, "clients": args.clients, **median,
                                    "runs": runs})
                    print(f"{backend:10} {scenario:26} {median['events_per_s']:>8} ev/s  p50 {median['p50_ms']:6} ms  "
                          f"p99 {median['p99_ms']:6} ms  (medians of {len(runs)} runs)", file=sys.stderr)
                raw = asyncio.run(_raw_ceiling(_fresh(pg, workdir, "raw"), args.seconds))
                results.append({"backend": backend, "scenario": "raw batched insert, driver (1000/commit)", **raw})
            finally:
                if pg is not None:
                    pg.stop()
    report = {
        "benchmark": "collector ingest", "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {**_machine(), "fsync_ms": fsync}, "load_generator": generator,
        **({"collector_args": args.collector_arg} if args.collector_arg else {}),
        "target": {"events_per_s": 5000, "p99_ms": 25, "clients": 64}, "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    return 0


def _run_once(args: argparse.Namespace, pg: PostgresServer | None, workdir: Path, name: str,
              batch: int) -> dict[str, Any]:
    """One load run against a fresh collector on an empty database."""
    collector = LocalCollector(_fresh(pg, workdir, name), workdir / name, *args.collector_arg).start(timeout=120)
    assert collector.process is not None
    try:
        asyncio.run(_add_traces(collector.url))
        if "--eval-share" in args.collector_arg:
            _wait_for_evaluation(collector.url)
        cpu_before = _cpu_seconds(collector.process.pid)
        if args.generator == "wrk":
            load = _load_wrk(collector.url, args.clients, args.seconds, batch, workdir)
        else:
            load = asyncio.run(_load(collector.url, args.clients, args.seconds, batch))
        cpu = _cpu_seconds(collector.process.pid) - cpu_before
    finally:
        collector.stop()
    # CPU time per event does not depend on what else the machine runs: it bounds the rate one collector core can
    # sustain (1e6 / cpu_us_per_event) even when the wall-clock figures are noisy.
    load["collector_cpu_us_per_event"] = round(cpu / (load["requests"] * batch) * 1e6, 1)
    return load


def _wait_for_evaluation(url: str, timeout: float = 300) -> None:
    """With the sampled evaluation on, the load starts once the evaluators have loaded and judged a first trace of
    those just added (the rest wait in its queue), so that it runs beside them."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
            if 'kaizen_eval_samples_total{outcome="evaluated"}' in response.read().decode():
                return
        time.sleep(0.5)
    raise RuntimeError(f"the collector evaluated no trace within {timeout:g} s: see its log")


def _generator(name: str) -> str:
    """The load generator as the results name it: wrk with its version, or the in-process aiohttp client."""
    if name == "aiohttp":
        return f"aiohttp {aiohttp.__version__} client in the bench process (Python)"
    banner = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()  # "wrk <version> ..."
    return f"wrk {banner[1] if len(banner) > 1 else '(version unknown)'}, 1 thread"


def _fresh(pg: PostgresServer | None, workdir: Path, name: str) -> str:
    """An empty database for one run."""
    return f"sqlite:///{workdir / name}.db" if pg is None else pg.create_database(name)


def table(report: dict[str, Any]) -> str:
    machine, target, fsync = report["machine"], report["target"], report["machine"]["fsync_ms"]
    lines = [
        f"Collector ingest, {machine['cores']} cores ({machine['cpu']}), {machine['python']}, SQLite "
        f"{machine['sqlite']}, {machine['postgresql']}; load generator: {report.get('load_generator', 'aiohttp')}",
        f"disk: 8 KiB write + fsync p50 {fsync['p50']} ms, p99 {fsync['p99']} ms, max {fsync['max']} ms "
        f"({fsync['over_50']} of {fsync['samples']} over 50 ms)",
        f"{'backend':<11} {'scenario':<33} {'clients':>7} {'events/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'CPU us/event':>12}  {'events/s of each run':<20}",
    ]
    for r in report["results"]:
        runs = ", ".join(str(run["events_per_s"]) for run in r.get("runs", []))
        lines.append(f"{r['backend']:<11} {r['scenario']:<33} {r.get('clients', ''):>7} {r['events_per_s']:>9} "
                     f"{r.get('p50_ms', ''):>7} {r.get('p99_ms', ''):>7} {r.get('collector_cpu_us_per_event', ''):>12}"
                     f"  {runs}")
    for r in report["results"]:
        if r["scenario"] == "feedback, 1 per request":
            met = r["events_per_s"] >= target["events_per_s"] and r["p99_ms"] <= target["p99_ms"]
            lines.append(f"target {target['events_per_s']} events/s at p99 <= {target['p99_ms']} ms, one event per "
                         f"request, {target['clients']} clients: {r['backend']} {'met' if met else 'NOT met'}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
