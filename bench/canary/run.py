"""Canary analysis benchmark: Kaizen's sequential test against Flagger's and Argo Rollouts' threshold rules and
Wald's SPRT, on the same simulated request streams, side by side.

Each run simulates a canary at 10 % beside its stable (the stable serves 9 requests for every canary request)
for a horizon of intervals; a method that has not rolled back by the horizon lets the canary be promoted. Methods:

- ``kaizen``: :func:`kaizen.logic.stats.judge_ratio` on the cumulative counts after every interval, exactly as the
  controller calls it (alpha 0.01, maxRegression 0, minSamples 100).
- ``flagger``: the interval's canary error rate checked against ``thresholdRange.max``; rollback after
  ``threshold`` = 5 failed checks.
- ``argo``: a measurement per interval with ``successCondition: result <= X``; abort when failed measurements
  exceed ``failureLimit`` = 3 (the value in Argo Rollouts' analysis examples).
- ``wald``: Wald's SPRT of the stable rate against the cell's canary rate (twice the stable rate in A/A cells), both
  known — the bound no method can beat (alpha 0.01, beta 0.1).

Both threshold rules are tuned as their users must tune them: the smallest threshold whose false-rollback rate
at the reference cell (stable 1 %, 200 canary requests per interval) is at most 1 %, computed exactly from the
binomial distribution, then kept fixed for every cell. Kaizen's test is not tuned. Reports, per cell (stable
error rate x canary requests per interval x regression): the rollback rate (false rollbacks in A/A cells,
detections otherwise) and the mean canary requests to a rollback; checks the issue's targets; writes everything,
with the machine it ran on, to ``bench/results/canary.json``.

    .venv/bin/python bench/canary/run.py [--runs 1000] [--horizon 20] [--jobs N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kaizen.dev.simulation import binomial
from kaizen.logic.stats import Counts, judge_ratio

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "canary.json"
STABLE_ERRORS = (0.005, 0.01, 0.05)
CANARY_PER_INTERVAL = (50, 200, 1000)
REGRESSIONS = (("none", 1.0), ("+50%", 1.5), ("+100%", 2.0))
STABLE_PER_CANARY = 9  # canary at 10 %
REFERENCE = (0.01, 200)
ALPHA = 0.01
FLAGGER_FAILED_CHECKS = 5
ARGO_FAILURE_LIMIT = 3
WALD_BETA = 0.1
TUNED_FALSE_ROLLBACK = 0.01


def binomial_tail(n: int, p: float, k: int) -> float:
    """P(Binomial(n, p) >= k)."""
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))


def tune_threshold(horizon: int, failures_to_rollback: int) -> float:
    """The smallest error-rate threshold whose false-rollback rate at the reference cell is at most 1 %."""
    stable_error, n = REFERENCE
    for k in range(n + 1):  # an interval fails when its bad count exceeds k
        per_interval = binomial_tail(n, stable_error, k + 1)
        if binomial_tail(horizon, per_interval, failures_to_rollback) <= TUNED_FALSE_ROLLBACK:
            return k / n
    raise AssertionError("no threshold reaches the target")


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """Every method on ``runs`` simulated rollouts of one cell; returns their rollback rates and mean requests."""
    stable_error, canary_n, regression = cell["stable_error"], cell["canary_per_interval"], cell["regression"]
    canary_error = stable_error * regression
    stable_n = canary_n * STABLE_PER_CANARY
    horizon = cell["horizon"]
    rng = random.Random(f"{stable_error}-{canary_n}-{regression}-{cell['seed']}")
    wald_alternative = canary_error if regression > 1 else 2 * stable_error
    wald_upper, wald_lower = math.log((1 - WALD_BETA) / ALPHA), math.log(WALD_BETA / (1 - ALPHA))
    wald_bad = math.log(wald_alternative / stable_error)
    wald_good = math.log((1 - wald_alternative) / (1 - stable_error))
    rollbacks: dict[str, list[int]] = {m: [] for m in ("kaizen", "flagger", "argo", "wald")}
    for _ in range(cell["runs"]):
        stable, canary, evidence = Counts(0, 0), Counts(0, 0), None
        flagger_failed = argo_failed = 0
        wald, wald_done = 0.0, False
        decided: dict[str, int] = {}
        for interval in range(1, horizon + 1):
            canary_bad = binomial(rng, canary_n, canary_error)
            stable = Counts(stable.good + stable_n - binomial(rng, stable_n, stable_error), stable.total + stable_n)
            canary = Counts(canary.good + canary_n - canary_bad, canary.total + canary_n)
            if "kaizen" not in decided:
                judgement = judge_ratio(stable, canary, max_regression=0.0, alpha=ALPHA, min_samples=100,
                                        evidence=evidence)
                evidence = judgement.evidence
                if judgement.verdict == "Fail":
                    decided["kaizen"] = interval
            rate = canary_bad / canary_n
            if rate > cell["flagger_threshold"]:
                flagger_failed += 1
                if flagger_failed == FLAGGER_FAILED_CHECKS and "flagger" not in decided:
                    decided["flagger"] = interval
            if rate > cell["argo_threshold"]:
                argo_failed += 1
                if argo_failed == ARGO_FAILURE_LIMIT + 1 and "argo" not in decided:
                    decided["argo"] = interval
            if not wald_done:
                wald += canary_bad * wald_bad + (canary_n - canary_bad) * wald_good
                if wald >= wald_upper:
                    decided["wald"] = interval
                wald_done = wald >= wald_upper or wald <= wald_lower
            if len(decided) == 4:
                break
        for method, interval in decided.items():
            rollbacks[method].append(interval * canary_n)
    runs = cell["runs"]
    return {
        "stable_error": stable_error, "canary_per_interval": canary_n, "regression": cell["regression_name"],
        "methods": {m: {"rollback_rate": round(len(r) / runs, 4),
                        "mean_canary_requests_to_rollback": round(sum(r) / len(r)) if r else None}
                    for m, r in rollbacks.items()},
    }


def targets(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, each with the numbers it was judged on."""
    aa = [r for r in results if r["regression"] == "none"]
    worst = max(r["methods"]["kaizen"]["rollback_rate"] for r in aa)
    reference = next(r for r in results if (r["stable_error"], r["canary_per_interval"]) == REFERENCE
                     and r["regression"] == "+100%")["methods"]
    kaizen = reference["kaizen"]["mean_canary_requests_to_rollback"]
    better_rule = min(reference[m]["mean_canary_requests_to_rollback"] or math.inf for m in ("flagger", "argo"))
    wald = reference["wald"]["mean_canary_requests_to_rollback"]
    return {
        "kaizen_false_rollback_at_most_1pct_in_every_cell": {"met": worst <= 0.01, "worst": worst},
        "reference_detection_at_least_90pct": {"met": reference["kaizen"]["rollback_rate"] >= 0.9,
                                               "detection": reference["kaizen"]["rollback_rate"]},
        "reference_requests_at_most_0.7x_better_threshold_rule": {
            "met": kaizen is not None and kaizen <= 0.7 * better_rule,
            "ratio": None if kaizen is None else round(kaizen / better_rule, 3)},
        "reference_requests_at_most_1.4x_wald": {
            "met": kaizen is not None and wald is not None and kaizen <= 1.4 * wald,
            "ratio": None if kaizen is None or wald is None else round(kaizen / wald, 3)},
    }


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "kernel": platform.release(),
            "python": platform.python_version(), "load_average_1m": round(os.getloadavg()[0], 2)}


def table(results: list[dict[str, Any]]) -> str:
    methods = ("kaizen", "flagger", "argo", "wald")
    header = f"{'stable':>6} {'canary/int':>10} {'regression':>10} | " + " | ".join(
        f"{m:>7} rate {'reqs':>6}" for m in methods)
    lines = [header, "-" * len(header)]
    for r in results:
        cells = []
        for m in methods:
            got = r["methods"][m]
            requests = got["mean_canary_requests_to_rollback"]
            cells.append(f"{got['rollback_rate'] * 100:11.1f}% {requests if requests is not None else '-':>6}")
        lines.append(f"{r['stable_error'] * 100:5.1f}% {r['canary_per_interval']:>10} {r['regression']:>10} | "
                     + " | ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="simulated rollouts per cell (default 1000)")
    parser.add_argument("--horizon", type=int, default=20, help="intervals before an undecided canary is promoted")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)), help="worker processes")
    parser.add_argument("--seed", type=int, default=6, help="random seed")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"where to write the JSON (default {RESULTS})")
    args = parser.parse_args(argv)

    flagger = tune_threshold(args.horizon, FLAGGER_FAILED_CHECKS)
    argo = tune_threshold(args.horizon, ARGO_FAILURE_LIMIT + 1)
    cells = [{"stable_error": s, "canary_per_interval": n, "regression": factor, "regression_name": name,
              "runs": args.runs, "horizon": args.horizon, "seed": args.seed, "flagger_threshold": flagger,
              "argo_threshold": argo}
             for s in STABLE_ERRORS for n in CANARY_PER_INTERVAL for name, factor in REGRESSIONS]
    started = time.monotonic()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(run_cell, cells))
    seconds = time.monotonic() - started
    met = targets(results)
    report = {
        "benchmark": "canary analysis",
        "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "seconds": round(seconds, 1),
        "config": {
            "runs_per_cell": args.runs, "horizon_intervals": args.horizon, "seed": args.seed,
            "canary_share": 1 / (1 + STABLE_PER_CANARY), "kaizen": {"alpha": ALPHA, "max_regression": 0,
                                                                     "min_samples": 100},
            "flagger": {"threshold_range_max": flagger, "threshold": FLAGGER_FAILED_CHECKS},
            "argo": {"success_condition": f"result <= {argo}", "failure_limit": ARGO_FAILURE_LIMIT},
            "wald": {"alpha": ALPHA, "beta": WALD_BETA, "alternative": "the cell's canary rate (2x stable in A/A)"},
            "tuned_at": {"stable_error": REFERENCE[0], "canary_per_interval": REFERENCE[1],
                         "false_rollback": TUNED_FALSE_ROLLBACK},
        },
        "results": results,
        "targets": met,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"Canary analysis, {args.runs} runs per cell, horizon {args.horizon} intervals, canary at 10 %; "
          f"rate: rollbacks (false in 'none' rows), reqs: mean canary requests to a rollback. "
          f"Flagger thresholdRange.max {flagger:.3f}, Argo result <= {argo:.3f} (tuned at stable 1 %, 200/interval).")
    print(table(results))
    for name, verdict in met.items():
        print(f"{'met    ' if verdict['met'] else 'NOT MET'} {name}: "
              + ", ".join(f"{k} {v}" for k, v in verdict.items() if k != "met"))
    print(f"Wrote {args.output} ({seconds:.0f}s on {report['machine']['cores']} cores).", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
