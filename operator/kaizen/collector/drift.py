"""Input drift, as statistics: two-sample tests between a reference window of a model's inputs and a recent one.

Pure functions on arrays and counts, no I/O: :mod:`kaizen.collector.monitor` reads the windows from the store,
embeds them (:mod:`kaizen.collector.embedding`) and exports what these functions find.

- **Embeddings**: the maximum mean discrepancy (MMD², unbiased) under an RBF kernel whose bandwidth is the median
  pairwise distance of the pooled sample (the median heuristic), with a permutation p-value. The effect size (MMD²)
  is reported beside the p-value because with large windows any tiny difference becomes "significant" (the false
  alarms alibi-detect's users report): a signal may threshold either, or both (:func:`drifted`).
- **New kinds of input** (:func:`novelty_test`): the mean distance from a recent input to its nearest reference
  input, with a permutation p-value, and the share of recent inputs unlike any reference input as its effect size.
  A small share of requests of a new kind (a new intent) moves it more than the MMD, which averages over all pairs:
  ``bench/drift`` measures both on that mixture shift.
- **Categorical fields** (scenario/intent, cohort): Pearson's chi-square test of homogeneity, and the population
  stability index (PSI, on shares smoothed by half a count), the effect size the industry thresholds (0.1
  moderate, 0.25 large).
- **Where** the drift is (:func:`witness`): the MMD witness function, high where the recent inputs are denser than the
  reference; the backlog uses it to pick the example traces of a drifted cluster.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable

import numpy as np

#: The smallest share a category is given in PSI, so a category absent from one window counts as rare, not infinite.
PSI_FLOOR = 1e-4


@dataclasses.dataclass(frozen=True)
class MMDResult:
    """An MMD two-sample test: the effect size, its permutation p-value and the kernel bandwidth used."""

    mmd2: float
    p_value: float
    bandwidth: float
    permutations: int


@dataclasses.dataclass(frozen=True)
class NoveltyResult:
    """A nearest-neighbour novelty test: the mean distance from a recent input to its nearest reference input, its
    permutation p-value, and the effect size ``novel_share``."""

    mean_distance: float
    p_value: float
    #: The share of recent inputs farther from every reference input than the quantile ``NOVEL_QUANTILE`` of the
    #: reference's own nearest-neighbour distances (about ``1 - NOVEL_QUANTILE`` without drift).
    novel_share: float
    permutations: int


#: Recent inputs farther from the reference than this quantile of the reference's own nearest-neighbour distances
#: count as novel in :attr:`NoveltyResult.novel_share`.
NOVEL_QUANTILE = 0.99


@dataclasses.dataclass(frozen=True)
class CategoricalResult:
    """A chi-square test and the PSI of one categorical field between two windows."""

    chi2: float
    dof: int
    p_value: float
    psi: float
    #: Category -> (share in the reference, share in the recent window).
    shares: dict[str, tuple[float, float]]


def _sq_distances(z: np.ndarray) -> np.ndarray:
    norms = np.einsum("ij,ij->i", z, z)
    return np.maximum(norms[:, None] + norms[None, :] - 2 * z @ z.T, 0.0)


def median_bandwidth(sq_distances: np.ndarray) -> float:
    """The median heuristic: the median distance between distinct points (1.0 when all points coincide)."""
    off_diagonal = sq_distances[~np.eye(len(sq_distances), dtype=bool)]
    median = float(np.sqrt(np.median(off_diagonal))) if off_diagonal.size else 0.0
    return median if median > 0 else 1.0


def _unbiased_mmd2(kernel: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """MMD² (unbiased) of every split of the pooled sample given by ``masks`` (rows: True for the reference)."""
    x = masks.astype(kernel.dtype)
    y = 1.0 - x
    n, m = x.sum(axis=1), y.sum(axis=1)
    kx, ky = x @ kernel, y @ kernel
    xx = np.einsum("pi,pi->p", kx, x) - n  # the diagonal is exp(0) = 1 for every point
    yy = np.einsum("pi,pi->p", ky, y) - m
    xy = np.einsum("pi,pi->p", kx, y)
    return xx / (n * (n - 1)) + yy / (m * (m - 1)) - 2 * xy / (n * m)


def mmd_test(reference: np.ndarray, recent: np.ndarray, *, permutations: int = 500, seed: int = 0) -> MMDResult:
    """MMD² of two samples of vectors (rows) under an RBF kernel with the median bandwidth, and the permutation
    p-value ``(1 + #{permuted MMD² >= observed}) / (1 + permutations)``, which is exact (valid at any size)."""
    reference, recent = _checked(reference, recent)
    pooled = np.vstack([reference, recent])
    sq = _sq_distances(pooled)
    bandwidth = median_bandwidth(sq)
    kernel = np.exp(-sq / (2 * bandwidth**2))
    observed, masks = _splits(len(reference), len(pooled), permutations, seed)
    stat = float(_unbiased_mmd2(kernel, observed)[0])
    exceed = 0
    for chunk in range(0, permutations, 100):  # bounded memory: 100 x N at a time
        exceed += int((_unbiased_mmd2(kernel, masks[chunk:chunk + 100]) >= stat).sum())
    return MMDResult(mmd2=stat, p_value=(1 + exceed) / (1 + permutations), bandwidth=bandwidth,
                     permutations=permutations)


def _splits(n: int, total: int, permutations: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The observed split of the pooled sample (its first ``n`` points are the reference) and ``permutations``
    random relabellings, as boolean rows: the points whose shuffled label is below ``n`` form the permuted
    reference."""
    observed = np.zeros((1, total), dtype=bool)
    observed[0, :n] = True
    rng = np.random.default_rng(seed)
    return observed, rng.permuted(np.tile(np.arange(total), (permutations, 1)), axis=1) < n


def _checked(reference: np.ndarray, recent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reference, recent = np.asarray(reference, dtype=np.float64), np.asarray(recent, dtype=np.float64)
    if reference.ndim != 2 or recent.ndim != 2 or reference.shape[1] != recent.shape[1]:
        raise ValueError(f"expected two 2-D samples of the same width, got shapes {reference.shape} and "
                         f"{recent.shape}")
    if len(reference) < 2 or len(recent) < 2:
        raise ValueError(f"each sample needs at least 2 points, got {len(reference)} and {len(recent)}")
    return reference, recent


def _mean_nn_distance(distances: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """For each split (rows of ``masks``: True for the reference), the mean over the other points of the distance to
    their nearest reference point."""
    out = np.empty(len(masks))
    for chunk in range(0, len(masks), 16):  # bounded memory: 16 x N x N at a time
        m = masks[chunk:chunk + 16]
        nearest = np.where(m[:, None, :], distances[None], np.inf).min(axis=2)  # (splits, N)
        out[chunk:chunk + 16] = np.where(m, 0.0, nearest).sum(axis=1) / (~m).sum(axis=1)
    return out


def novelty_test(reference: np.ndarray, recent: np.ndarray, *, permutations: int = 500, seed: int = 0
                 ) -> NoveltyResult:
    """Are there recent inputs unlike any reference input? The statistic is the mean distance from a recent input
    to its nearest reference input: a small share of inputs of a new kind (a new intent, the mixture shift a
    served model meets) moves it far more than it moves the MMD, which averages over all pairs. One-sided (it
    looks for new inputs, not for vanished ones); the permutation p-value is exact, as :func:`mmd_test`'s."""
    reference, recent = _checked(reference, recent)
    pooled = np.vstack([reference, recent])
    distances = np.sqrt(_sq_distances(pooled)).astype(np.float32)
    np.fill_diagonal(distances, np.inf)  # a point is not its own neighbour
    n = len(reference)
    observed, masks = _splits(n, len(pooled), permutations, seed)
    stat = float(_mean_nn_distance(distances, observed)[0])
    # >= with a float32 tolerance: ties (duplicate requests are common) count against drift, as exactness needs.
    exceed = int((_mean_nn_distance(distances, masks) >= stat - 1e-6).sum())
    own = distances[:n, :n].min(axis=1)  # each reference input's nearest other reference input
    to_reference = distances[n:, :n].min(axis=1)
    novel = float((to_reference > np.quantile(own, NOVEL_QUANTILE)).mean())
    return NoveltyResult(mean_distance=stat, p_value=(1 + exceed) / (1 + permutations), novel_share=novel,
                         permutations=permutations)


def witness(reference: np.ndarray, recent: np.ndarray, bandwidth: float) -> np.ndarray:
    """The MMD witness function at each recent point: its mean kernel to the recent sample less its mean kernel to
    the reference. High where recent inputs crowd a region the reference had few of."""
    def mean_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        sq = np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0.0)
        return np.exp(-sq / (2 * bandwidth**2)).mean(axis=1)

    reference, recent = np.asarray(reference, dtype=np.float64), np.asarray(recent, dtype=np.float64)
    return mean_kernel(recent, recent) - mean_kernel(recent, reference)


def chi2_sf(statistic: float, dof: int) -> float:
    """P(X >= statistic) for X ~ chi-square with ``dof`` degrees of freedom: the regularised upper incomplete gamma
    Q(dof/2, statistic/2), by its series below a+1 and its continued fraction above (Numerical Recipes' gammq)."""
    if dof < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {dof}")
    a, x = dof / 2.0, statistic / 2.0
    if x <= 0:
        return 1.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    tiny = 1e-300
    b, c, d = x + 1 - a, 1 / tiny, 1 / (x + 1 - a)
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return min(1.0, math.exp(log_front) * h)


def categorical_test(reference: Iterable[str], recent: Iterable[str]) -> CategoricalResult:
    """Chi-square test of homogeneity of two samples of one categorical field, and their PSI."""
    ref, cur = Counter(reference), Counter(recent)
    n_ref, n_cur = sum(ref.values()), sum(cur.values())
    if not n_ref or not n_cur:
        raise ValueError(f"each window needs at least one value, got {n_ref} and {n_cur}")
    categories = sorted(set(ref) | set(cur))
    chi2 = 0.0
    for category in categories:
        total = ref[category] + cur[category]
        for observed, n in ((ref[category], n_ref), (cur[category], n_cur)):
            expected = total * n / (n_ref + n_cur)
            chi2 += (observed - expected) ** 2 / expected
    dof = len(categories) - 1
    shares = {c: (ref[c] / n_ref, cur[c] / n_cur) for c in categories}
    # PSI on shares smoothed by half a count per category: a category one small window happens to lack is then
    # rare, not a near-zero share whose logarithm swamps the index.
    k = len(categories)
    smoothed = [((ref[c] + 0.5) / (n_ref + 0.5 * k), (cur[c] + 0.5) / (n_cur + 0.5 * k)) for c in categories]
    return CategoricalResult(
        chi2=chi2, dof=dof, p_value=chi2_sf(chi2, dof) if dof else 1.0, psi=psi(smoothed), shares=shares,
    )


def psi(shares: Iterable[tuple[float, float]]) -> float:
    """Population stability index, sum of (recent - reference) * ln(recent / reference) over categories, shares
    floored at :data:`PSI_FLOOR`."""
    total = 0.0
    for ref, cur in shares:
        ref, cur = max(ref, PSI_FLOOR), max(cur, PSI_FLOOR)
        total += (cur - ref) * math.log(cur / ref)
    return total


def drifted(p_value: float, effect: float, *, alpha: float, min_effect: float = 0.0) -> bool:
    """The signal: significant at ``alpha`` and at least ``min_effect`` large (an effect floor keeps big windows
    from alarming on differences too small to matter)."""
    return p_value < alpha and effect >= min_effect
