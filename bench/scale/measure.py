"""The pure parts of the scale benchmark: percentiles, counters read from Prometheus' text format (the API server's
and Prometheus' own ``/metrics``), a process's CPU time and RSS from ``/proc``, the due time of each cause, the
growth of a cost with N, and the targets. Nothing here touches a process or the network (tests/unit).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

#: issue 13's targets, at N = 1,000.
TARGETS: dict[str, float] = {
    "apiRequestsPerSecondAtRest": 20.0,
    "operatorRssMiB": 300.0,
    "operatorCpuCores": 0.5,
    "p99CauseToActionSeconds": 2.0,
}
TARGET_N = 1000


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks (numpy's default); None
    for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def counter_sum(text: str, name: str, match: Mapping[str, str | Iterable[str]] | None = None) -> float:
    """The sum of the samples named ``name`` in a Prometheus text exposition whose labels match ``match`` (a value,
    or a collection of accepted values, per label); 0 when none does."""
    wanted = {k: {v} if isinstance(v, str) else set(v) for k, v in (match or {}).items()}
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) in v for k, v in wanted.items()):
                total += sample.value
    return total


def counters_by(text: str, name: str, labels: Sequence[str]) -> dict[str, float]:
    """The samples named ``name`` summed by the values of ``labels``, keyed ``"v1 v2 ..."`` (a missing or empty
    label reads ``-``): e.g. the API server's ``apiserver_request_total`` by verb, resource and subresource."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                key = " ".join(sample.labels.get(label) or "-" for label in labels)
                sums[key] = sums.get(key, 0.0) + sample.value
    return sums


def rates(before: Mapping[str, float], after: Mapping[str, float], seconds: float,
          at_least: float = 0.05) -> dict[str, float]:
    """Per-second rates of the counters that grew between two readings (:func:`counters_by`), largest first; those
    under ``at_least`` per second are left out."""
    grown = {key: (value - before.get(key, 0.0)) / seconds for key, value in after.items()}
    return {key: round(rate, 2) for key, rate in sorted(grown.items(), key=lambda kv: -kv[1]) if rate >= at_least}


def cpu_seconds(stat: str, ticks_per_second: float) -> float:
    """User + system CPU time of a process from its ``/proc/PID/stat`` line. The command name (field 2) may hold
    spaces and parentheses, so fields are counted after its last ``)``."""
    fields = stat[stat.rindex(")") + 2:].split()
    # Fields 14 (utime) and 15 (stime) of proc(5); the first after the name is field 3.
    return (int(fields[11]) + int(fields[12])) / ticks_per_second


def rss_mib(status: str) -> float:
    """Resident set size from ``/proc/PID/status`` (``VmRSS:  123456 kB``), in MiB."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError("no VmRSS line: the process has exited")


def breach_due(looks: Iterable[float], visible_at: float, interval: float) -> float:
    """When the loop was due to see a breach that became visible in Prometheus at ``visible_at``: its first
    scheduled look at or after that. ``looks`` are the loop's recorded looks (status.lastObserved, as the bench saw
    them); a loop looks on the grid of its last recorded look (that time plus whole intervals), recording only a
    look that changes something, or every fifth (:data:`kaizen.logic.loop.RECORD_EVERY_LOOKS`)."""
    before = [t for t in looks if t < visible_at]
    if not before:
        return visible_at
    last = max(before)
    return last + math.ceil((visible_at - last) / interval) * interval


def failing_look(looks: Sequence[tuple[float, str]]) -> float | None:
    """The time of the first failing analysis look, when the operator was due to set the canary's weight to 0:
    ``looks`` are (time, verdict) of status.analysis (the time the look read the metrics); None when none failed.
    (When looks are scheduled is the operator's rule, not the bench's, so a look's own lateness is not counted.)"""
    failed = [time for time, verdict in looks if verdict == "Fail"]
    return min(failed) if failed else None


def latency_summary(latencies: Sequence[float], missed: int = 0) -> dict[str, Any]:
    """p50 / p99 / max of latencies beyond the due time (seconds, 3 decimals), the sample count and the misses."""
    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    return {"p50": rounded(percentile(latencies, 50)), "p99": rounded(percentile(latencies, 99)),
            "max": rounded(max(latencies) if latencies else None), "samples": len(latencies), "missed": missed}


def growth(points: Sequence[tuple[int, float]]) -> dict[str, Any] | None:
    """How a cost grows with N: the exponent b of a least-squares fit of cost = a * N^b on log scales (1: linear,
    0: flat) and the ratio of the costs at the largest and smallest N next to the ratio of the Ns; None with fewer
    than two positive points."""
    usable = sorted((n, v) for n, v in points if n > 0 and v is not None and v > 0)
    if len(usable) < 2 or usable[0][0] == usable[-1][0]:
        return None
    xs = [math.log(n) for n, _ in usable]
    ys = [math.log(v) for _, v in usable]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    exponent = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return {"exponent": round(exponent, 3), "costRatio": round(usable[-1][1] / usable[0][1], 3),
            "nRatio": usable[-1][0] / usable[0][0]}


def parse_time(value: str | None) -> float | None:
    """An RFC 3339 time of a status field as a Unix time; None when absent."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def judge(results: Sequence[Mapping[str, Any]], targets: Mapping[str, float] = TARGETS,
          at: int = TARGET_N) -> dict[str, Any]:
    """Whether the result at N = ``at`` meets each target (None: not measured at that N), and overall."""
    result = next((r for r in results if r["N"] == at), None)
    met: dict[str, Any] = {}
    for key, bound in targets.items():
        value = None if result is None else result.get(key)
        met[key] = None if value is None else bool(value <= bound)
    if result is not None and any(c["missed"] for c in result.get("causes", {}).values()):
        met["p99CauseToActionSeconds"] = False  # an action never taken is not within any bound
    met["all"] = None if result is None else all(v is True for v in met.values())
    return met


def log_errors(log: str, limit: int = 10) -> dict[str, int]:
    """What went wrong in an operator's log: each traceback's last line (the exception), and each ERROR line's
    message, counted (URLs and numbers collapsed), the ``limit`` most frequent."""
    counts: dict[str, int] = {}
    lines = log.splitlines()
    for i, line in enumerate(lines):
        key = None
        if line.startswith("Traceback (most recent call last)"):
            j = i + 1
            # Lines of other threads' logging may come between a traceback's lines ("[2026-...").
            while j < len(lines) and (lines[j].startswith((" ", "Traceback", "[")) or not lines[j].strip()):
                j += 1
            key = lines[j] if j < len(lines) else "Traceback without an exception line"
        elif "[ERROR" in line:  # kopf's format: [time] logger [ERROR   ] message
            key = line.split("[ERROR", 1)[1].lstrip(" ]")
        if key:
            # One line per kind of error, not per object: URLs and numbers (names' indices, ports) collapsed.
            key = re.sub(r"\d+", "N", re.sub(r"https?://[^\s')]+", "URL", key))[:200]
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:limit])
