"""Curation rules on hand-made rows: pure functions, no model."""

from __future__ import annotations

from collections import Counter

import pytest

from kaizen.api.retrainjob import DataSpec, Targets
from kaizen.api.trainer import Example
from kaizen_trainer.curate import Row, Source, cap_slices, curate, in_holdout, normalise
from kaizen_trainer.errors import TrainerError


def source(role, rows):
    return Source(uri=f"/data/{role}.jsonl", role=role, sha256="0" * 64,
                  rows=tuple(Example.model_validate(r) for r in rows))


def replay(n, scenario, prefix=None):
    prefix = prefix or scenario
    return [{"id": f"{prefix}-{i}", "input": f"{scenario} question {prefix} {i}", "output": "old",
             "scenario": scenario} for i in range(n)]


def fb(n, scenario="refund", **extra):
    return [{"id": f"fb-{scenario}-{i}", "input": f"{scenario} complaint {i}", "output": "old", "target": "new",
             "category": "incorrect", "consent": True, "scenario": scenario, **extra} for i in range(n)]


def test_holdout_membership_is_a_stable_hash_of_the_id():
    ids = [f"example-{i}" for i in range(10_000)]
    held = {i for i in ids if in_holdout(i, 0.1)}
    assert 900 < len(held) < 1100
    assert held == {i for i in ids if in_holdout(i, 0.1)}
    assert held <= {i for i in ids if in_holdout(i, 0.2)}  # growing the fraction never moves a row out


def test_corrections_become_targets_and_supersede_stale_replay():
    data = DataSpec(targeted_ratio=0.5, min_rows=1, holdout_fraction=0.2, max_slice_share=1)
    curated = curate([source("feedback", fb(40)), source("replay", replay(40, "refund") + replay(60, "billing"))],
                     data, Targets(scenarios=["refund"]), seed=1)
    train = {r.id: r for r in curated.train}
    assert all(r.target == "new" for r in train.values() if r.scenario == "refund")
    assert not any(i.startswith("refund-") for i in train)
    assert curated.manifest["excluded"]["supersededByFeedback"] == 40
    targeted = curated.manifest["rows"]["targeted"]
    assert curated.manifest["rows"]["replay"] == targeted  # mixed half and half


def test_normalised_duplicates_are_dropped_feedback_first():
    rows = fb(30) + [{**fb(1)[0], "id": "dup", "input": "REFUND   complaint 0!!", "target": "other"}]
    data = DataSpec(targeted_ratio=1, min_rows=1, holdout_fraction=0.05)
    curated = curate([source("feedback", rows)], data, Targets(), seed=1)
    assert normalise("REFUND   complaint 0!!") == "refund complaint 0"
    assert "dup" not in {r.id for r in curated.train + curated.holdout}
    assert curated.manifest["excluded"]["duplicate"] == 1


def test_no_slice_exceeds_its_share():
    rows = [Row(f"{s}-{i}", f"{s} {i}", "t", "replay", scenario=s) for s, n in (("big", 90), ("a", 5), ("b", 5))
            for i in range(n)]
    capped = cap_slices(rows, 0.5, seed=3)
    counts = Counter(r.scenario for r in capped)
    assert counts["a"] == counts["b"] == 5 and counts["big"] == 10
    assert max(counts.values()) <= 0.5 * len(capped)
    with pytest.raises(TrainerError, match="maxSliceShare 0.2 cannot be met with 3 slices"):
        cap_slices(rows, 0.2, seed=3)


def test_feedback_without_target_or_off_target_is_not_used():
    rows = fb(20) + [{**fb(1)[0], "id": "no-target", "target": None, "sentiment": "negative"},
                     {**fb(1)[0], "id": "liked", "input": "refund praise", "target": None, "sentiment": "positive"},
                     *fb(3, scenario="billing")]
    data = DataSpec(targeted_ratio=1, min_rows=1, holdout_fraction=0.05)
    curated = curate([source("feedback", rows)], data, Targets(scenarios=["refund"]), seed=1)
    used = {r.id: r for r in curated.train + curated.holdout}
    assert "no-target" not in used and used["liked"].target == "old"
    assert curated.manifest["excluded"]["noTarget"] == 1 and curated.manifest["excluded"]["offTarget"] == 3
