"""The sequential test of canary analysis: its false-rollback bound holds under a look every interval, and it
detects a real regression."""

from __future__ import annotations

import random

import pytest

from kaizen.dev.simulation import binomial
from kaizen.logic.stats import Counts, judge_ratio, rate_interval


def simulate(rng, *, stable_error, canary_error, canary_per_look, looks, alpha, max_regression=0.0, weights=(10,)):
    """Cumulative counts judged at every look, as the controller does; returns the look that failed, or None.

    ``weights``: the canary's traffic share in percent, the looks split evenly between them (10 -> 50 -> ...).
    """
    stable, canary, evidence = Counts(0, 0), Counts(0, 0), None
    for look in range(1, looks + 1):
        weight = weights[(look - 1) * len(weights) // looks]
        stable_per_look = round(canary_per_look * (100 - weight) / weight)
        stable = Counts(stable.good + stable_per_look - binomial(rng, stable_per_look, stable_error),
                        stable.total + stable_per_look)
        canary = Counts(canary.good + canary_per_look - binomial(rng, canary_per_look, canary_error),
                        canary.total + canary_per_look)
        judgement = judge_ratio(stable, canary, max_regression=max_regression, alpha=alpha, min_samples=1,
                                evidence=evidence)
        evidence = judgement.evidence
        if judgement.verdict == "Fail":
            return look
    return None


@pytest.mark.parametrize("error_rate, per_look", [(0.01, 50), (0.05, 200), (0.2, 100)])
def test_a_a_false_rollback_rate_stays_below_alpha_with_a_look_every_interval(error_rate, per_look):
    rng = random.Random(6)
    runs, alpha = 400, 0.05
    failures = sum(simulate(rng, stable_error=error_rate, canary_error=error_rate, canary_per_look=per_look,
                            looks=30, alpha=alpha) is not None for _ in range(runs))
    # alpha bounds the rate over all 30 looks; 400 runs resolve it to about +-2 points.
    assert failures / runs <= alpha


def test_a_a_bound_holds_across_weight_changes_and_with_a_margin():
    rng = random.Random(9)
    runs, alpha = 400, 0.05
    stepped = sum(simulate(rng, stable_error=0.02, canary_error=0.02, canary_per_look=100, looks=30, alpha=alpha,
                           weights=(10, 50, 90)) is not None for _ in range(runs))
    # Worse, but exactly by the margin: the boundary of "not worse by more than maxRegression".
    at_margin = sum(simulate(rng, stable_error=0.01, canary_error=0.02, canary_per_look=200, looks=30, alpha=alpha,
                             max_regression=0.01) is not None for _ in range(runs))
    assert stepped / runs <= alpha and at_margin / runs <= alpha


def test_a_canary_worse_by_less_than_the_margin_is_not_rolled_back():
    rng = random.Random(7)
    failures = sum(simulate(rng, stable_error=0.01, canary_error=0.015, canary_per_look=500, looks=30, alpha=0.05,
                            max_regression=0.01) is not None for _ in range(200))
    assert failures == 0


def test_power_against_a_doubled_error_rate():
    rng = random.Random(8)
    runs = 200
    detected = [simulate(rng, stable_error=0.01, canary_error=0.02, canary_per_look=200, looks=20, alpha=0.05)
                for _ in range(runs)]
    assert sum(d is not None for d in detected) / runs >= 0.9
    # Within about 1,500 canary requests on average (Wald's SPRT, knowing both rates, needs about 800 here).
    assert sum(d for d in detected if d) / sum(1 for d in detected if d) * 200 <= 1500


def test_the_interval_covers_the_estimate_and_narrows_with_data():
    low, high = rate_interval(Counts(good=990, total=1000), 0.05)
    assert low < 0.99 < high
    wide = high - low
    low, high = rate_interval(Counts(good=99_000, total=100_000), 0.05)
    assert low < 0.99 < high and high - low < wide / 5
    assert rate_interval(Counts(0, 0), 0.05) == (0.0, 1.0)


def test_verdicts_name_the_numbers():
    stable = Counts(good=99_000, total=100_000)
    # With a margin, the test needs the stable rate bounded before the interval it judges: a first look.
    first = judge_ratio(Counts(good=49_500, total=50_000), Counts(good=4_500, total=5_000), max_regression=0.01,
                        alpha=0.05, min_samples=100)
    assert first.verdict == "Inconclusive" and first.evidence.value == 1.0
    fail = judge_ratio(stable, Counts(good=9_000, total=10_000), max_regression=0.01, alpha=0.05, min_samples=100,
                       evidence=first.evidence)
    assert fail.verdict == "Fail" and fail.ci_high < -0.01 and fail.evidence.value >= 2 / 0.05
    assert "canary 0.9000 (9000/10000) vs stable 0.9900 (99000/100000)" in fail.message
    assert f"evidence {fail.evidence.value:.3g} of 40 to roll back" in fail.message
    ok = judge_ratio(stable, Counts(good=9_900, total=10_000), max_regression=0.01, alpha=0.05, min_samples=100)
    assert ok.verdict == "Pass" and ok.ci_low >= -0.01
    early = judge_ratio(stable, Counts(good=50, total=50), max_regression=0.01, alpha=0.05, min_samples=100)
    assert early.verdict == "Inconclusive" and "waiting for 100 events per track" in early.message
    undecided = judge_ratio(stable, Counts(good=985, total=1000), max_regression=0.0, alpha=0.05, min_samples=100)
    assert undecided.verdict == "Inconclusive" and undecided.ci_low < 0 < undecided.ci_high
