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

**The margin grid** (``marginGrid``): the default ``maxRegression`` 0.01, stable error rates 0.5 % to 10 %, the canary
worse by 1, 2 and 4 times the margin (1x is the boundary of "not worse by more than the margin": every rollback
there is a false one). Kaizen's test (``judge_ratio`` with ``max_regression`` 0.01) beside Wald's SPRT of the
margin (stable + margin) against the cell's canary rate (stable + 2 x margin at 1x), the stable rate known. Each
cell's canary requests per interval are a tenth of Wald's expected sample size at twice the margin, and its
horizon is long (``--margin-horizon`` intervals, 6x that size by default), so detections are nearly complete and
the false-rollback rate is that of a long rollout judged every interval.

Both threshold rules are tuned as their users must tune them: the smallest threshold whose false-rollback rate
at the reference cell (stable 1 %, 200 canary requests per interval) is at most 1 %, computed exactly from the
binomial distribution, then kept fixed for every cell. Kaizen's test is not tuned. Reports, per cell (stable
error rate x canary requests per interval x regression): the rollback rate (false rollbacks in A/A cells,
detections otherwise) and the mean canary requests to a rollback; checks the issue's targets; writes everything,
with the machine it ran on, to ``bench/results/canary.json``.

    .venv/bin/python bench/canary/run.py [--runs 1000] [--horizon 20] [--margin-runs 2000] [--jobs N]
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
MARGIN = 0.01
MARGIN_STABLE_ERRORS = (0.005, 0.01, 0.02, 0.05, 0.1)
MARGIN_REGRESSIONS = (1, 2, 4)  # the canary's error rate minus stable's, in margins
MARGIN_TARGET_VS_WALD = 1.5


def kl_bernoulli(p: float, q: float) -> float:
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def wald_sample_size(p0: float, p1: float) -> float:
    """Wald's approximation of his SPRT's expected sample size under the alternative ``p1``."""
    upper, lower = math.log((1 - WALD_BETA) / ALPHA), math.log(WALD_BETA / (1 - ALPHA))
    return ((1 - WALD_BETA) * upper + WALD_BETA * lower) / kl_bernoulli(p1, p0)


def margin_canary_per_interval(stable_error: float) -> int:
    """A tenth of Wald's expected sample size at twice the margin, in fifties: about ten looks for Wald."""
    return max(50, round(wald_sample_size(stable_error + MARGIN, stable_error + 2 * MARGIN) / 10 / 50) * 50)


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


def run_margin_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """Kaizen's test under the margin and Wald's SPRT on ``runs`` simulated rollouts of one margin-grid cell."""
    stable_error, multiple, horizon = cell["stable_error"], cell["regression"], cell["horizon"]
    canary_error = stable_error + multiple * MARGIN
    canary_n = margin_canary_per_interval(stable_error)
    stable_n = canary_n * STABLE_PER_CANARY
    rng = random.Random(f"margin-{stable_error}-{multiple}-{cell['seed']}")
    null, alternative = stable_error + MARGIN, stable_error + max(multiple, 2) * MARGIN
    wald_upper, wald_lower = math.log((1 - WALD_BETA) / ALPHA), math.log(WALD_BETA / (1 - ALPHA))
    wald_bad, wald_good = math.log(alternative / null), math.log((1 - alternative) / (1 - null))
    rollbacks: dict[str, list[int]] = {"kaizen": [], "wald": []}
    for _ in range(cell["runs"]):
        stable, canary, evidence = Counts(0, 0), Counts(0, 0), None
        wald, wald_done, kaizen_done = 0.0, False, False
        for interval in range(1, horizon + 1):
            canary_bad = binomial(rng, canary_n, canary_error)
            stable = Counts(stable.good + stable_n - binomial(rng, stable_n, stable_error), stable.total + stable_n)
            canary = Counts(canary.good + canary_n - canary_bad, canary.total + canary_n)
            if not kaizen_done:
                judgement = judge_ratio(stable, canary, max_regression=MARGIN, alpha=ALPHA, min_samples=100,
                                        evidence=evidence)
                evidence = judgement.evidence
                if judgement.verdict == "Fail":
                    rollbacks["kaizen"].append(interval * canary_n)
                    kaizen_done = True
            if not wald_done:
                wald += canary_bad * wald_bad + (canary_n - canary_bad) * wald_good
                if wald >= wald_upper:
                    rollbacks["wald"].append(interval * canary_n)
                wald_done = wald >= wald_upper or wald <= wald_lower
            if kaizen_done and wald_done:
                break
    runs = cell["runs"]
    kaizen, wald_requests = rollbacks["kaizen"], rollbacks["wald"]
    mean = round(sum(kaizen) / len(kaizen)) if kaizen else None
    wald_mean = round(sum(wald_requests) / len(wald_requests)) if wald_requests else None
    rate = round(len(kaizen) / runs, 4)
    return {
        "stableRate": stable_error, "regression": multiple,
        "fpr": rate if multiple == 1 else None,
        "requestsVsWald": round(mean / wald_mean, 3) if multiple > 1 and mean and wald_mean else None,
        "canaryPerInterval": canary_n, "runs": runs,
        "rollbackRate": rate, "meanCanaryRequestsToRollback": mean,
        "waldRollbackRate": round(len(wald_requests) / runs, 4), "waldMeanCanaryRequestsToRollback": wald_mean,
    }


def with_margin_fpr(grid: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every cell's ``fpr``: the false-rollback rate at its stable rate, measured where the canary sits exactly on
    the margin (the 1x cell; above the margin every rollback is right)."""
    at_margin = {c["stableRate"]: c["rollbackRate"] for c in grid if c["regression"] == 1}
    return [{**c, "fpr": at_margin[c["stableRate"]]} for c in grid]


def margin_targets(grid: list[dict[str, Any]]) -> dict[str, Any]:
    worst_fpr = max(c["fpr"] for c in grid)
    twice = [c["requestsVsWald"] for c in grid if c["regression"] == 2]
    worst_ratio = None if None in twice else max(twice)
    return {
        "margin_false_rollback_at_most_alpha_in_every_cell": {"met": worst_fpr <= ALPHA, "worst": worst_fpr},
        f"margin_2x_requests_at_most_{MARGIN_TARGET_VS_WALD}x_wald_in_every_cell": {
            "met": worst_ratio is not None and worst_ratio <= MARGIN_TARGET_VS_WALD, "worst": worst_ratio},
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


def margin_table(grid: list[dict[str, Any]]) -> str:
    header = (f"{'stable':>6} {'regression':>10} {'canary/int':>10} | {'kaizen rate':>11} {'reqs':>6} | "
              f"{'wald rate':>9} {'reqs':>6} | {'fpr':>6} {'vs wald':>7}")
    lines = [header, "-" * len(header)]
    for c in grid:
        ratio = c["requestsVsWald"]
        lines.append(
            f"{c['stableRate'] * 100:5.1f}% {str(c['regression']) + 'x margin':>10} {c['canaryPerInterval']:>10} | "
            f"{c['rollbackRate'] * 100:10.1f}% {c['meanCanaryRequestsToRollback'] or '-':>6} | "
            f"{c['waldRollbackRate'] * 100:8.1f}% {c['waldMeanCanaryRequestsToRollback'] or '-':>6} | "
            f"{c['fpr'] * 100:5.2f}% {'-' if ratio is None else f'{ratio:.2f}x':>7}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="simulated rollouts per cell (default 1000)")
    parser.add_argument("--horizon", type=int, default=20, help="intervals before an undecided canary is promoted")
    parser.add_argument("--margin-runs", type=int, default=2000,
                        help="simulated rollouts per margin-grid cell (default 2000)")
    parser.add_argument("--margin-horizon", type=int, default=60,
                        help="intervals of a margin-grid rollout (default 60, about 6x Wald's sample size at 2x)")
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
    margin_cells = [{"stable_error": s, "regression": m, "runs": args.margin_runs, "horizon": args.margin_horizon,
                     "seed": args.seed} for s in MARGIN_STABLE_ERRORS for m in MARGIN_REGRESSIONS]
    started = time.monotonic()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        margin_futures = [pool.submit(run_margin_cell, c) for c in margin_cells]  # the longest first
        results = list(pool.map(run_cell, cells))
        grid = with_margin_fpr([f.result() for f in margin_futures])
    seconds = time.monotonic() - started
    met = {**targets(results), **margin_targets(grid)}
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
            "margin_grid": {
                "max_regression": MARGIN, "runs_per_cell": args.margin_runs, "horizon_intervals": args.margin_horizon,
                "regression": "the canary's error rate minus stable's, in margins",
                "canary_per_interval": "a tenth of Wald's expected sample size at 2x the margin, in fifties",
                "fpr": "rollbacks with the canary exactly at the margin (the 1x cell of the stable rate)",
                "requestsVsWald": "mean canary requests to a rollback, Kaizen over Wald's SPRT (margin against the "
                                  "cell's rate, stable rate known, alpha 0.01, beta 0.1), each over its rollbacks",
            },
        },
        "results": results,
        "marginGrid": grid,
        "targets": met,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"Canary analysis, {args.runs} runs per cell, horizon {args.horizon} intervals, canary at 10 %; "
          f"rate: rollbacks (false in 'none' rows), reqs: mean canary requests to a rollback. "
          f"Flagger thresholdRange.max {flagger:.3f}, Argo result <= {argo:.3f} (tuned at stable 1 %, 200/interval).")
    print(table(results))
    print(f"\nMargin grid: maxRegression {MARGIN}, alpha {ALPHA}, {args.margin_runs} runs per cell, horizon "
          f"{args.margin_horizon} intervals; baseline Wald's SPRT of the margin, stable rate known, same streams.")
    print(margin_table(grid))
    m = report["machine"]
    print(f"\nMachine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, load {m['load_average_1m']}; "
          f"{seconds:.0f}s.")
    for name, verdict in met.items():
        print(f"{'met    ' if verdict['met'] else 'NOT MET'} {name}: "
              + ", ".join(f"{k} {v}" for k, v in verdict.items() if k != "met"))
    print(f"Wrote {args.output} ({seconds:.0f}s on {report['machine']['cores']} cores).", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
