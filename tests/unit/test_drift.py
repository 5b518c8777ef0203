"""The drift statistics (kaizen.collector.drift) and the drift pass's assessment (kaizen.collector.monitor.assess):
false alarms near alpha on unshifted samples, power on real shifts, and the drifted clusters."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from kaizen.collector import drift, monitor


@pytest.mark.parametrize(("statistic", "dof", "expected"), [
    (3.841458820694124, 1, 0.05),
    (6.634896601021214, 1, 0.01),
    (9.210340371976182, 2, 0.01),  # dof 2: exactly exp(-x/2)
    (23.209251158954356, 10, 0.01),
    (18.307038053275146, 10, 0.05),
    (0.0, 3, 1.0),
    (124.34211340400407, 100, 0.05),
])
def test_chi2_sf_matches_known_quantiles(statistic: float, dof: int, expected: float) -> None:
    assert drift.chi2_sf(statistic, dof) == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_chi2_sf_refuses_no_degrees_of_freedom() -> None:
    with pytest.raises(ValueError, match="degrees of freedom"):
        drift.chi2_sf(1.0, 0)


def test_mmd_false_alarms_stay_near_alpha_on_unshifted_samples() -> None:
    rng = np.random.default_rng(1)
    trials, alpha = 200, 0.05
    p_values = [
        drift.mmd_test(rng.normal(size=(60, 8)), rng.normal(size=(60, 8)), permutations=200, seed=i).p_value
        for i in range(trials)
    ]
    rate = sum(p < alpha for p in p_values) / trials
    # Binomial(200, 0.05): mean 10, sd 3.1; 0.1 is 3 sd above it. A test that always alarms, or never could not,
    # fails one of the two bounds.
    assert rate <= 0.1, rate
    assert 0.2 < float(np.mean(p_values)) < 0.8, "p-values of a valid test are uniform under no shift"


def test_mmd_detects_a_real_shift_and_its_effect_grows_with_it() -> None:
    rng = np.random.default_rng(2)
    reference, base = rng.normal(size=(60, 8)), rng.normal(size=(60, 8))
    results = [drift.mmd_test(reference, base + np.eye(8)[0] * shift, permutations=200) for shift in (0, 1, 2)]
    assert results[0].mmd2 < results[1].mmd2 < results[2].mmd2
    assert results[0].p_value > 0.01 and results[1].p_value < 0.01
    power = sum(
        drift.mmd_test(rng.normal(size=(60, 8)), rng.normal(size=(60, 8)) + np.eye(8)[0], permutations=200,
                       seed=i).p_value < 0.01
        for i in range(30)
    ) / 30
    assert power >= 0.9, power


def test_novelty_false_alarms_stay_near_alpha_on_unshifted_samples() -> None:
    rng = np.random.default_rng(3)
    trials, alpha = 200, 0.05
    p_values = [drift.novelty_test(rng.normal(size=(60, 8)), rng.normal(size=(60, 8)), permutations=200,
                                   seed=i).p_value for i in range(trials)]
    assert sum(p < alpha for p in p_values) / trials <= 0.1
    assert 0.2 < float(np.mean(p_values)) < 0.8, "p-values of a valid test are uniform under no shift"


def test_novelty_finds_a_small_share_of_new_points_that_the_mmd_misses() -> None:
    # A mixture shift: 8 of 80 recent points from a place the reference never visits, the rest as before.
    rng = np.random.default_rng(4)
    found = {"novelty": 0, "mmd": 0}
    shares = []
    for i in range(20):
        reference, recent = rng.normal(size=(80, 8)), rng.normal(size=(80, 8))
        recent[:8] = rng.normal(size=(8, 8)) * 0.3 + 6 * np.eye(8)[0]
        novelty = drift.novelty_test(reference, recent, permutations=200, seed=i)
        found["novelty"] += novelty.p_value < 0.01
        found["mmd"] += drift.mmd_test(reference, recent, permutations=200, seed=i).p_value < 0.01
        shares.append(novelty.novel_share)
    assert found["novelty"] >= 18 and found["novelty"] > found["mmd"], found
    assert 0.05 <= float(np.median(shares)) <= 0.15, shares  # about the 8/80 that are new


def test_novelty_refuses_mismatched_or_tiny_samples() -> None:
    with pytest.raises(ValueError, match="same width"):
        drift.novelty_test(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2 points"):
        drift.novelty_test(np.zeros((1, 3)), np.zeros((5, 3)))


def test_mmd_p_value_is_bounded_by_its_permutations() -> None:
    rng = np.random.default_rng(3)
    result = drift.mmd_test(rng.normal(size=(40, 4)), rng.normal(size=(40, 4)) + 5, permutations=99)
    assert result.p_value == pytest.approx(1 / 100)
    assert result.bandwidth > 0


def test_mmd_refuses_mismatched_or_tiny_samples() -> None:
    with pytest.raises(ValueError, match="same width"):
        drift.mmd_test(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        drift.mmd_test(np.zeros((1, 3)), np.zeros((5, 3)))


def test_witness_is_highest_on_the_new_region() -> None:
    rng = np.random.default_rng(4)
    reference = rng.normal(size=(80, 2))
    recent = np.vstack([rng.normal(size=(60, 2)), rng.normal(size=(20, 2)) + [6, 6]])
    scores = drift.witness(reference, recent, drift.mmd_test(reference, recent, permutations=50).bandwidth)
    assert set(np.argsort(-scores)[:20]) == set(range(60, 80))


def test_categorical_test_flags_a_changed_mix_and_not_the_same_one() -> None:
    rnd = random.Random(5)
    names = ["refund", "shipping", "account"]
    same = drift.categorical_test(rnd.choices(names, k=300), rnd.choices(names, k=300))
    assert same.p_value > 0.01 and same.psi < 0.05 and same.dof == 2
    changed = drift.categorical_test(rnd.choices(names, k=300),
                                     rnd.choices(names, weights=[4, 1, 1], k=300))
    assert changed.p_value < 1e-6 and changed.psi > 0.25
    assert changed.shares["refund"][1] > changed.shares["refund"][0]


def test_psi_by_hand_and_a_new_category_counts_as_rare_not_infinite() -> None:
    assert drift.psi([(0.5, 0.25), (0.5, 0.75)]) == pytest.approx(
        (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5))
    result = drift.categorical_test(["a"] * 50 + ["b"] * 50, ["a"] * 50 + ["b"] * 40 + ["c"] * 10)
    assert math.isfinite(result.psi) and result.shares["c"] == (0.0, 0.1)


def test_drifted_needs_significance_and_the_effect_floor() -> None:
    assert drift.drifted(0.001, 0.02, alpha=0.01)
    assert not drift.drifted(0.02, 0.5, alpha=0.01)
    assert not drift.drifted(0.001, 0.001, alpha=0.01, min_effect=0.01)


class _WordEmbedder:
    """A bag-of-words embedder: the pure-unit stand-in for the sentence model (tests/collector uses the real one)."""

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors = np.zeros((len(texts), 64))
        for row, text in enumerate(texts):
            for word in text.split():
                vectors[row, sum(map(ord, word)) % 64] += 1
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)


def _rows(prefix: str, n: int, mix: dict[str, float], seed: int) -> list[dict[str, object]]:
    texts = {"refund": "return my order please", "shipping": "where is my parcel", "plan": "pause my plan now"}
    rnd = random.Random(seed)
    scenarios = rnd.choices(list(mix), weights=list(mix.values()), k=n)
    return [{"id": f"{prefix}-{i}", "cohort": "free", "scenario": s, "input": texts[s], "created_at": float(i)}
            for i, s in enumerate(scenarios)]


def test_assess_finds_the_new_intent_as_a_cluster_with_its_traces() -> None:
    settings = monitor.Settings(permutations=200)
    reference = _rows("ref", 120, {"refund": 1, "shipping": 1}, 6)
    recent = _rows("cur", 120, {"refund": 1, "shipping": 1, "plan": 1}, 7)
    report = monitor.assess(monitor.Windows("m", None, reference, recent), _WordEmbedder(), settings, now=100.0)
    assert report.drifted and report.mmd is not None and report.mmd.p_value < 0.01
    assert report.scenario is not None and report.scenario.p_value < 0.01
    top = report.clusters[0]
    assert top.scenario == "plan" and top.reference_share == 0 and top.recent_share > 0.2
    plan_ids = {r["id"] for r in recent if r["scenario"] == "plan"}
    assert top.example_trace_ids and set(top.example_trace_ids) <= plan_ids
    gauges = report.gauges()
    assert gauges["drifted"] == 1.0 and gauges["mmd_p_value"] < 0.01 and gauges["scenario_psi"] > 0.25
    assert "cohort_psi" not in gauges, "a single cohort's mix cannot drift"


def test_assess_is_quiet_on_the_same_traffic_and_works_without_embeddings() -> None:
    settings = monitor.Settings(permutations=200)
    reference = _rows("ref", 150, {"refund": 1, "shipping": 1}, 8)
    recent = _rows("cur", 150, {"refund": 1, "shipping": 1}, 9)
    quiet = monitor.assess(monitor.Windows("m", None, reference, recent), _WordEmbedder(), settings, now=1.0)
    assert not quiet.drifted and quiet.clusters == ()
    assert quiet.mmd is not None and quiet.mmd.p_value > 0.01
    shifted = _rows("cur", 150, {"refund": 1, "shipping": 1, "plan": 1}, 9)
    categorical = monitor.assess(monitor.Windows("m", None, reference, shifted), None, settings, now=1.0)
    assert categorical.mmd is None and categorical.drifted
    assert "mmd2" not in categorical.gauges() and categorical.clusters[0].scenario == "plan"
    assert categorical.clusters[0].mmd2 is None
