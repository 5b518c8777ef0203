"""Sequential statistics for canary analysis: is the canary's rate worse than stable's by more than a margin?

Two always-valid procedures, both safe to apply after every interval, forever, stopping whenever the data look bad. Each
works on the bad events (``total - good``) of the two tracks, interval by interval.

**Rollback: an e-process** ``E``, a product over intervals of e-variables (nonnegative, expectation at most 1 for every
canary that is not worse, whatever the stable's rate in that interval), averaged over the alternatives
:data:`ALTERNATIVES` with :data:`WEIGHTS`. By Ville's inequality ``P(exists t: E_t >= 1/alpha) <= alpha`` for a canary
that is not worse, so rolling back when ``E_t >= 1/alpha`` keeps the false-rollback probability under ``alpha`` over the
whole rollout, with a look after every interval. The stable's rate may move from interval to interval (time of day, a
changing mix of requests), as long as it moves for both tracks alike. Its e-variables:

- *No margin* (``maxRegression = 0``): a conditional likelihood ratio (Lehmann's conditional test for two binomial or
  Poisson rates, mixed over alternatives as in Robbins 1970, "Statistical methods related to the law of the iterated
  logarithm", Ann. Math. Statist. 41(5)). Given the ``K`` bad events of both tracks, the number ``X`` that came from the
  canary is, when the canary is not worse, at most Binomial(K, w) with ``w`` the canary's share of the interval's events
  (exactly hypergeometric when the rates are equal, which Binomial(K, w) dominates in convex order, Hoeffding 1963).
  Against a relative risk ``rho`` the ratio is ``(pi_1 / pi_0)**X * ((1 - pi_1) / (1 - pi_0))**(K - X)`` with
  ``pi = w rho / (w rho + 1 - w)``, ``pi_0`` at ``rho = 1``. No rate is estimated.
- *A margin* ``d > 0``: the null "the canary's bad rate is at most the stable's plus d" is not about the relative
  risk, so conditioning no longer removes the stable's rate. The e-variable is the likelihood ratio of an alternative
  ``(q_s, q_c)`` against its reverse information projection on the null: the point ``(t, t + d)`` of the null's boundary
  closest to the alternative in Kullback-Leibler divergence, given the interval's event counts (the safe test for 2x2
  tables with a minimal effect size of Turner, Ly & Grunwald 2024, "Generic E-variables for exact sequential k-sample
  tests that allow for optional stopping", J. Statist. Plann. Inference 230; Turner & Grunwald, "Exact anytime-valid
  confidence intervals for contingency tables and beyond", arXiv:2203.09785). Why its expectation is at most 1 over the
  whole null: for binomial counts it is ``(a_s + b_s p_s)**n_s (a_c + b_c p_c)**n_c``, whose logarithm is concave in the
  rates ``(p_s, p_c)``; it is 1 at the projection, where its gradient is normal to the boundary and points out of the
  null (that is what the projection's first-order condition says), so the tangent plane, and with it the logarithm, is
  ``<= 0`` on the whole half-plane ``p_c - p_s <= d``. (Requests of varying difficulty within an interval only lower it,
  by the AM-GM inequality.) The alternative must be fixed before the interval it judges: ``q_s`` is the stable's rate up
  to the previous look (the first interval only teaches it), and ``q_c = q_s + m d`` for the multiples ``m`` of the
  margin in :data:`ALTERNATIVES`. A wrong guess of ``q_s`` costs power, never validity.

Wald's SPRT knowing the stable's rate is the bound no test beats; ``bench/canary`` measures both tests against it.

**Interval and Pass: a confidence sequence** for ``canary - stable`` (good rates) from one beta-binomial mixture
confidence sequence per track (Robbins 1970; Howard, Ramdas, McAuliffe & Sekhon 2021, "Time-uniform, nonparametric,
nonasymptotic confidence sequences", Ann. Statist. 49(2), section 3): ``{p : M_n(p) < 2/alpha}`` with
``M_n(p) = E_{x ~ prior}[(x / p)**S ((1 - x) / (1 - p))**F]`` after ``S`` good and ``F`` bad events covers a track's
rate at every look with probability ``>= 1 - alpha/2``, so the difference of the two holds with ``>= 1 - alpha``. It is
what status shows, and the canary passes a look when the whole interval lies at or above ``-maxRegression``. The prior,
an equal mixture of Beta(99, 1) (tight for rates near 1, such as non-5xx requests) and the uniform Beta(1, 1) (for rates
anywhere, such as a satisfaction near 0.7), shapes only where the interval is tight, never its validity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["Pass", "Fail", "Inconclusive"]

#: The confidence sequences' prior over a good rate: equal-weight Beta(a, b) components (see the module docstring).
PRIORS = ((99.0, 1.0), (1.0, 1.0))
#: The regressions the rollback test is mixed over: relative risks of a bad event (canary over stable) without a
#: margin, multiples of the margin with one (the canary's bad rate ``m * maxRegression`` above stable's). Larger ones
#: are caught by these at once; smaller ones take more data.
ALTERNATIVES = (1.5, 2.0, 3.0, 5.0)
#: Their relative weights in the mixture: half on a doubling (twice the stable's rate, or twice the margin), the
#: regression a canary is sized to catch promptly, the rest evenly. A component's share ``w`` adds ``log(1/w)`` to the
#: ``log(1/alpha)`` it must gather: equal weights take about 8 % more requests to catch a doubling.
WEIGHTS = (1, 3, 1, 1)
_BISECTIONS = 40  # halvings: 2**-40 of the bracket, below any rate a count can resolve
#: The largest e-value said: far beyond any threshold (1/alpha), and still a number JSON (the status) can hold. A
#: canary failing half its requests for minutes gathers a log-evidence past 709, where math.exp overflows.
MAX_EVIDENCE = 1e300


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
        """The e-value: the alternatives' likelihood ratios averaged with :data:`WEIGHTS`. Rollback at ``1/alpha``."""
        top = max(self.log_ratios)
        if top >= math.log(MAX_EVIDENCE):
            return MAX_EVIDENCE  # the weighted mean is at most exp(top)
        weighted = sum(w * math.exp(r - top) for w, r in zip(WEIGHTS, self.log_ratios, strict=True))
        return math.exp(top) * weighted / sum(WEIGHTS)


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
    # The mixture's components share M_n's dependence on p; only its normalising constant mixes them.
    logs = [_log_beta(a + good, b + bad) - _log_beta(a, b) for a, b in PRIORS]
    top = max(logs)
    log_norm = top + math.log(sum(math.exp(x - top) for x in logs) / len(logs))
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


def _conditional_log_ratios(
    log_ratios: tuple[float, ...], share: float, canary_bad: float, bad: float
) -> tuple[float, ...]:
    """No margin: the likelihood ratio of the canary's share of the interval's bad events (module docstring)."""
    pi_0 = share
    updated = []
    for rho, log_ratio in zip(ALTERNATIVES, log_ratios, strict=True):
        pi_1 = share * rho / (share * rho + 1 - share)
        updated.append(log_ratio + canary_bad * math.log(pi_1 / pi_0)
                       + (bad - canary_bad) * math.log((1 - pi_1) / (1 - pi_0)))
    return tuple(updated)


def _projection(q_s: float, q_c: float, n_s: float, n_c: float, margin: float) -> float:
    """The stable rate ``t`` of the null's boundary point ``(t, t + margin)`` closest to the alternative
    ``(q_s, q_c)`` (``q_c > q_s + margin``) in Kullback-Leibler divergence, for ``n_s`` and ``n_c`` events.

    The divergence is convex along the boundary; its derivative is positive below ``q_s`` and negative above
    ``q_c - margin``, so bisection between the two finds its zero.
    """
    low, high = q_s, q_c - margin
    for _ in range(_BISECTIONS):
        t = (low + high) / 2
        slope = n_s * (q_s - t) / (t * (1 - t)) + n_c * (q_c - t - margin) / ((t + margin) * (1 - t - margin))
        if slope > 0:
            low = t
        else:
            high = t
    return (low + high) / 2


def _margin_log_ratios(
    log_ratios: tuple[float, ...], previous_stable: Counts, margin: float,
    n_s: float, bad_s: float, n_c: float, bad_c: float,
) -> tuple[float, ...]:
    """A margin: each alternative's likelihood ratio against its projection on the null (module docstring)."""
    if previous_stable.total <= 0:
        return log_ratios  # no stable rate known before this interval to aim the alternatives at: it only teaches
    q_s = (previous_stable.bad + 0.5) / (previous_stable.total + 1)  # shrunk so that it is never 0 or 1
    updated = []
    for multiple, log_ratio in zip(ALTERNATIVES, log_ratios, strict=True):
        q_c = q_s + multiple * margin
        if q_c >= 1:
            updated.append(log_ratio)  # no rate above the null is left for this alternative
            continue
        t_s = _projection(q_s, q_c, n_s, n_c, margin)
        t_c = t_s + margin
        updated.append(log_ratio + bad_s * math.log(q_s / t_s) + (n_s - bad_s) * math.log((1 - q_s) / (1 - t_s))
                       + bad_c * math.log(q_c / t_c) + (n_c - bad_c) * math.log((1 - q_c) / (1 - t_c)))
    return tuple(updated)


def update_evidence(
    evidence: Evidence | None, stable: Counts, canary: Counts, *, max_regression: float
) -> Evidence:
    """Fold the events since the last look into the rollback test."""
    previous = evidence or Evidence((0.0,) * len(ALTERNATIVES), Counts(0, 0), Counts(0, 0))
    # Differences of cumulative counts read from Prometheus can dip below zero by its extrapolation; clamp them.
    stable_n = max(stable.total - previous.stable.total, 0.0)
    canary_n = max(canary.total - previous.canary.total, 0.0)
    stable_bad = min(max(stable.bad - previous.stable.bad, 0.0), stable_n)
    canary_bad = min(max(canary.bad - previous.canary.bad, 0.0), canary_n)
    log_ratios = previous.log_ratios
    if stable_n > 0 and canary_n > 0:
        if max_regression == 0:
            if stable_bad + canary_bad > 0:
                log_ratios = _conditional_log_ratios(log_ratios, canary_n / (canary_n + stable_n), canary_bad,
                                                     stable_bad + canary_bad)
        else:
            log_ratios = _margin_log_ratios(log_ratios, previous.stable, max_regression, stable_n, stable_bad,
                                            canary_n, canary_bad)
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
    evidence = update_evidence(evidence, stable, canary, max_regression=max_regression)
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
    threshold = 1 / alpha
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
