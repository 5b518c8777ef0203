"""Sequential statistics for canary analysis: is the canary's rate worse than stable's by more than a margin?

Two always-valid procedures, both safe to apply after every interval, forever, stopping whenever the data look bad:

**Rollback: a conditional mixture SPRT** (Wald's sequential probability ratio test with a mixture over alternatives,
Robbins 1970, "Statistical methods related to the law of the iterated logarithm", Ann. Math. Statist. 41(5); made
two-sample by conditioning on the bad events, as in Lehmann's conditional test for two Poisson or binomial rates).
Within one interval, given the ``K`` bad events of both tracks, the number ``X`` that came from the canary is, when
the canary is not worse, at most Binomial(K, w) with ``w`` the canary's share of the interval's events (exactly
hypergeometric when the rates are equal, which Binomial(K, w) dominates in convex order, Hoeffding 1963, so the
likelihood ratios below keep expectation <= 1). Against a canary whose bad-event rate is ``rho`` times the
null's, the interval's likelihood ratio is ``(pi_1 / pi_0)**X * ((1 - pi_1) / (1 - pi_0))**(K - X)`` with
``pi = w rho / (w rho + 1 - w)``. The running product over intervals, averaged over the alternatives
:data:`ALTERNATIVES`, is a test supermartingale ``E`` (an e-process); by Ville's inequality
``P(exists t: E_t >= 1/alpha) <= alpha`` for a canary that is not worse, so rolling back when ``E_t >= 1/alpha``
keeps the false-rollback probability under ``alpha`` over the whole rollout. The stable rate never has to be
estimated, which makes the test nearly as fast as Wald's SPRT with that rate known (see ``bench/canary``).

With a margin ``maxRegression = d > 0`` (absolute, on the rates), "not worse by more than d" means a relative risk
below ``1 + d / p_stable``. The stable's bad rate is bounded below by the confidence sequence below at ``alpha/2``
(from the previous look, so the bound is fixed before the interval it judges), the test runs at ``alpha/2`` against
that relative risk, and the union bound keeps the total at ``alpha``. (For ``d > 0`` the Binomial(K, w) split is
the Poisson approximation of the exact noncentral hypergeometric one, accurate for the rare bad events judged here.)

**Interval and Pass: a confidence sequence** for ``canary - stable`` from one beta-binomial mixture confidence
sequence per track (Robbins 1970; Howard, Ramdas, McAuliffe & Sekhon 2021, "Time-uniform, nonparametric,
nonasymptotic confidence sequences", Ann. Statist. 49(2), section 3): ``{p : M_n(p) < 2/alpha}`` with
``M_n(p) = B(a + S, b + F) / (B(a, b) p**S (1 - p)**F)`` covers a track's rate at every look with probability
``>= 1 - alpha/2``, so the difference of the two holds with ``>= 1 - alpha``. It is what status shows, and the
canary passes a look when the whole interval lies at or above ``-maxRegression``. Its prior Beta(99, 1) (mean 0.99,
for "good" rates near 1 such as non-5xx requests) shapes only where it is tight, never its validity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["Pass", "Fail", "Inconclusive"]

#: Beta prior of each track's confidence sequence over its good rate (see the module docstring).
PRIOR_A = 99.0
PRIOR_B = 1.0
#: Relative risks of a bad event (canary over stable) the rollback test is mixed over, with equal weights:
#: regressions of +50 % to +400 %. Larger ones are caught by these at once; smaller ones take more data.
ALTERNATIVES = (1.5, 2.0, 3.0, 5.0)
_BISECTIONS = 60


@dataclass(frozen=True)
class Counts:
    """Good and total events of one track since the analysis began."""

    good: float
    total: float

    @property
    def rate(self) -> float | None:
        return self.good / self.total if self.total > 0 else None

    @property
    def bad(self) -> float:
        return max(self.total - self.good, 0.0)


@dataclass(frozen=True)
class Evidence:
    """The rollback test's state after a look: the log likelihood ratio of each alternative, and the cumulative
    counts it was computed from (the next look judges only what came after them)."""

    log_ratios: tuple[float, ...]
    stable: Counts
    canary: Counts

    @property
    def value(self) -> float:
        """The e-value: the alternatives' likelihood ratios averaged. Rollback at ``1/alpha`` (``2/alpha`` with a
        margin)."""
        top = max(self.log_ratios)
        return math.exp(top) * sum(math.exp(r - top) for r in self.log_ratios) / len(self.log_ratios)


@dataclass(frozen=True)
class RatioJudgement:
    """One look at a ratio metric: the rates, their difference, its confidence interval, the e-value, the verdict."""

    verdict: Verdict
    stable_rate: float | None
    canary_rate: float | None
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    evidence: Evidence
    message: str


def _log_mixture(p: float, good: float, bad: float, log_norm: float) -> float:
    """log M_n(p); ``log_norm`` is ``log B(a+S, b+F) - log B(a, b)``, computed once per look."""
    if (p <= 0.0 and good > 0) or (p >= 1.0 and bad > 0):
        return math.inf
    log_likelihood = (good * math.log(p) if good > 0 else 0.0) + (bad * math.log1p(-p) if bad > 0 else 0.0)
    return log_norm - log_likelihood


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def rate_interval(counts: Counts, level: float) -> tuple[float, float]:
    """The beta-binomial confidence sequence for one rate: holds at every look with probability ``>= 1 - level``."""
    total = max(counts.total, 0.0)
    good = min(max(counts.good, 0.0), total)
    bad = total - good
    if total == 0:
        return 0.0, 1.0
    log_norm = _log_beta(PRIOR_A + good, PRIOR_B + bad) - _log_beta(PRIOR_A, PRIOR_B)
    threshold = math.log(1.0 / level)
    centre = good / total  # M_n is smallest here (at most 1), so the sequence is an interval around it.

    def boundary(inside: float, outside: float) -> float:
        if _log_mixture(outside, good, bad, log_norm) < threshold:
            return outside
        for _ in range(_BISECTIONS):
            middle = (inside + outside) / 2
            if _log_mixture(middle, good, bad, log_norm) < threshold:
                inside = middle
            else:
                outside = middle
        return inside

    return boundary(centre, 0.0), boundary(centre, 1.0)


def null_relative_risk(previous_stable: Counts, max_regression: float, alpha: float) -> float | None:
    """The largest relative risk "not worse by more than ``max_regression``" allows; None: unbounded as yet."""
    if max_regression == 0:
        return 1.0
    good_high = rate_interval(previous_stable, alpha / 2)[1]
    bad_low = 1.0 - good_high
    return None if bad_low <= 0 else 1.0 + max_regression / bad_low


def update_evidence(
    evidence: Evidence | None, stable: Counts, canary: Counts, *, max_regression: float, alpha: float
) -> Evidence:
    """Fold the events since the last look into the rollback test."""
    previous = evidence or Evidence((0.0,) * len(ALTERNATIVES), Counts(0, 0), Counts(0, 0))
    # Differences of cumulative counts read from Prometheus can dip below zero by its extrapolation; clamp them.
    stable_n = max(stable.total - previous.stable.total, 0.0)
    canary_n = max(canary.total - previous.canary.total, 0.0)
    stable_bad = min(max(stable.bad - previous.stable.bad, 0.0), stable_n)
    canary_bad = min(max(canary.bad - previous.canary.bad, 0.0), canary_n)
    bad = stable_bad + canary_bad
    rho_0 = null_relative_risk(previous.stable, max_regression, alpha)
    log_ratios = previous.log_ratios
    if bad > 0 and stable_n > 0 and canary_n > 0 and rho_0 is not None:
        share = canary_n / (canary_n + stable_n)
        pi_0 = share * rho_0 / (share * rho_0 + 1 - share)
        updated = []
        for multiple, log_ratio in zip(ALTERNATIVES, log_ratios, strict=True):
            rho = rho_0 * multiple
            pi_1 = share * rho / (share * rho + 1 - share)
            updated.append(log_ratio + canary_bad * math.log(pi_1 / pi_0)
                           + (bad - canary_bad) * math.log((1 - pi_1) / (1 - pi_0)))
        log_ratios = tuple(updated)
    return Evidence(log_ratios, stable, canary)


def judge_ratio(
    stable: Counts, canary: Counts, *, max_regression: float, alpha: float, min_samples: int,
    evidence: Evidence | None = None,
) -> RatioJudgement:
    """Judge "the canary's good rate is below stable's by more than ``max_regression``" at one look.

    ``stable`` and ``canary`` are cumulative; ``evidence`` is the previous look's (None at the first). Fail: the
    rollback test's e-value reached its threshold. Pass: the confidence interval for ``canary - stable`` lies at or
    above ``-max_regression``. Otherwise, or before ``min_samples`` events per track, Inconclusive.
    """
    evidence = update_evidence(evidence, stable, canary, max_regression=max_regression, alpha=alpha)
    stable_rate, canary_rate = stable.rate, canary.rate
    delta = None if stable_rate is None or canary_rate is None else canary_rate - stable_rate
    if delta is None or min(stable.total, canary.total) < min_samples:
        seen = f"stable {stable.total:.0f}, canary {canary.total:.0f}"
        return RatioJudgement("Inconclusive", stable_rate, canary_rate, delta, None, None, evidence,
                              f"waiting for {min_samples} events per track ({seen} so far)")
    assert stable_rate is not None and canary_rate is not None
    stable_low, stable_high = rate_interval(stable, alpha / 2)
    canary_low, canary_high = rate_interval(canary, alpha / 2)
    ci_low, ci_high = canary_low - stable_high, canary_high - stable_low
    threshold = (1 if max_regression == 0 else 2) / alpha
    numbers = (f"canary {canary_rate:.4f} ({canary.good:.0f}/{canary.total:.0f}) vs stable {stable_rate:.4f} "
               f"({stable.good:.0f}/{stable.total:.0f}), delta {delta:+.4f}, "
               f"{100 * (1 - alpha):g}% always-valid CI [{ci_low:+.4f}, {ci_high:+.4f}], "
               f"evidence {evidence.value:.3g} of {threshold:g} to roll back")
    if evidence.value >= threshold:
        return RatioJudgement("Fail", stable_rate, canary_rate, delta, ci_low, ci_high, evidence,
                              f"{numbers}: worse than stable by more than {max_regression:g}")
    if ci_low >= -max_regression:
        return RatioJudgement("Pass", stable_rate, canary_rate, delta, ci_low, ci_high, evidence,
                              f"{numbers}: not worse than stable by more than {max_regression:g}")
    return RatioJudgement("Inconclusive", stable_rate, canary_rate, delta, ci_low, ci_high, evidence,
                          f"{numbers}: not yet decided at margin {max_regression:g}")
