"""Curation rules on hand-made rows: pure functions, no model."""

from __future__ import annotations

from collections import Counter

import pytest

from kaizen.api.retrainjob import DataSpec, Targets
from kaizen.api.trainer import Example
from kaizen_trainer.curate import Row, Source, cap_slices, curate, in_holdout, normalise, superseded
from kaizen_trainer.errors import TrainerError


def source(role, rows):
    return Source(uri=f"/data/{role}.jsonl", role=role, sha256="0" * 64,
                  rows=tuple(Example.model_validate(r) for r in rows))


def replay(n, scenario, prefix=None, cohorts=None):
    """``n`` replay rows of ``scenario``; with ``cohorts``, spread over them in turn."""
    prefix = prefix or scenario
    return [{"id": f"{prefix}-{i}", "input": f"{scenario} question {prefix} {i}", "output": "old",
             "scenario": scenario, **({"cohort": cohorts[i % len(cohorts)]} if cohorts else {})} for i in range(n)]


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


COHORTS = ["free", "pro"]


def cohort_feedback(n, scenario="refund"):
    return [{**row, "cohort": COHORTS[i % 2]} for i, row in enumerate(fb(n, scenario))]


def mixed_replay():
    """Replay of three scenarios, each spread over both cohorts: 30 refund, 40 billing, 50 shipping."""
    return (replay(30, "refund", cohorts=COHORTS) + replay(40, "billing", cohorts=COHORTS)
            + replay(50, "shipping", cohorts=COHORTS))


def test_scenarios_and_every_cohort_targeted_supersede_only_the_targeted_scenario():
    # The loop's backlog names the cohorts of the feedback too, here all of them: the intersection with the targeted
    # scenario supersedes the stale refund replay and keeps the replay of every other scenario.
    data = DataSpec(targeted_ratio=0.5, min_rows=1, holdout_fraction=0.1, max_slice_share=1)
    curated = curate([source("feedback", cohort_feedback(60)), source("replay", mixed_replay())],
                     data, Targets(categories=["incorrect"], scenarios=["refund"], cohorts=COHORTS), seed=1)
    replayed = Counter(r.scenario for r in curated.train + curated.holdout if r.origin == "replay")
    assert replayed["refund"] == 0
    assert replayed["billing"] > 0 and replayed["shipping"] > 0
    assert curated.manifest["excluded"]["supersededByFeedback"] == 30
    assert curated.manifest["rows"]["replay"] == curated.manifest["rows"]["targeted"] > 0
    assert curated.manifest["supersessionRule"] == "replay rows of scenarios refund in cohorts free, pro"


def test_targeted_cohorts_narrow_the_supersession_to_those_cohorts():
    data = DataSpec(targeted_ratio=0.5, min_rows=1, holdout_fraction=0.1, max_slice_share=1)
    feedback = [row for row in cohort_feedback(60) if row["cohort"] == "free"]
    curated = curate([source("feedback", feedback), source("replay", mixed_replay())],
                     data, Targets(scenarios=["refund"], cohorts=["free"]), seed=1)
    kept = {r.id: r for r in curated.train + curated.holdout if r.origin == "replay" and r.scenario == "refund"}
    assert curated.manifest["excluded"]["supersededByFeedback"] == 15  # refund rows of the free cohort only
    assert kept and {r.cohort for r in kept.values()} == {"pro"}


def test_cohort_only_targeting_supersedes_no_replay():
    # Feedback matched on cohorts alone says who complained, not which answers went stale: all replay is kept.
    data = DataSpec(targeted_ratio=0.5, min_rows=1, holdout_fraction=0.1, max_slice_share=1)
    curated = curate([source("feedback", cohort_feedback(60)), source("replay", mixed_replay())],
                     data, Targets(cohorts=COHORTS), seed=1)
    assert "supersededByFeedback" not in curated.manifest["excluded"]
    assert curated.manifest["supersessionRule"] == "none: no targeted scenario has corrections"
    assert {r.scenario for r in curated.train if r.origin == "replay"} == {"refund", "billing", "shipping"}
    assert curated.manifest["rows"]["targeted"] == 60 - sum(in_holdout(f"fb-refund-{i}", 0.1) for i in range(60))


def test_a_targeted_scenario_without_corrections_keeps_its_replay():
    # Billing is targeted, but no usable correction is about billing: nothing there supersedes the replay.
    data = DataSpec(targeted_ratio=0.5, min_rows=1, holdout_fraction=0.1, max_slice_share=1)
    curated = curate([source("feedback", cohort_feedback(60)), source("replay", mixed_replay())],
                     data, Targets(scenarios=["refund", "billing"], cohorts=COHORTS), seed=1)
    assert curated.manifest["excluded"]["supersededByFeedback"] == 30
    assert curated.manifest["supersessionRule"] == "replay rows of scenarios refund in cohorts free, pro"
    assert "billing" in {r.scenario for r in curated.train if r.origin == "replay"}


@pytest.mark.parametrize(("scenario", "cohort", "targets", "expected"), [
    ("refund", "free", Targets(scenarios=["refund"]), True),
    ("refund", None, Targets(scenarios=["refund"]), True),
    ("billing", "free", Targets(scenarios=["refund"]), False),
    ("refund", "free", Targets(scenarios=["refund"], cohorts=["free", "pro"]), True),
    ("refund", "pro", Targets(scenarios=["refund"], cohorts=["free"]), False),
    ("refund", None, Targets(scenarios=["refund"], cohorts=["free"]), False),
    ("billing", "free", Targets(scenarios=["refund"], cohorts=["free", "pro"]), False),
    ("refund", "free", Targets(cohorts=["free", "pro"]), False),
    ("refund", "free", Targets(categories=["incorrect"]), False),
    ("refund", "free", Targets(), False),
    ("shipping", "free", Targets(scenarios=["refund", "shipping"]), False),  # no correction about shipping
    (None, "free", Targets(scenarios=["refund"], cohorts=["free"]), False),
])
def test_supersession_is_the_targeted_scenarios_with_corrections_within_the_targeted_cohorts(
        scenario, cohort, targets, expected):
    row = Row("r-1", "a question", "old", "replay", cohort=cohort, scenario=scenario)
    assert superseded(row, targets, corrected=frozenset({"refund", "billing"})) is expected


def test_targets_that_supersede_every_replay_row_fail_with_what_to_change():
    rows = replay(40, "refund", cohorts=COHORTS)
    sources = [source("feedback", cohort_feedback(60)), source("replay", rows)]
    targets = Targets(scenarios=["refund"], cohorts=COHORTS)
    with pytest.raises(TrainerError) as failure:
        curate(sources, DataSpec(targeted_ratio=0.7, min_rows=1), targets, seed=1)
    assert failure.value.reason == "InvalidData"
    assert str(failure.value) == (
        "no replay rows are left: all 40 replay row(s) are in targeted scenarios with corrections (refund) within the "
        "targeted cohorts (free, pro), so the feedback supersedes every one of them, but targetedRatio 0.7 asks for "
        "30% replay data to prevent forgetting; add replay data of scenarios that are not targeted to data.replay, "
        "narrow targets.scenarios or targets.cohorts, or set data.targetedRatio to 1 to train on the feedback alone"
    )
    # Without targeted cohorts the advice is to add some; with targetedRatio 1 no replay was asked for.
    with pytest.raises(TrainerError, match="limit them to some cohorts with targets.cohorts"):
        curate(sources, DataSpec(targeted_ratio=0.5, min_rows=1), Targets(scenarios=["refund"]), seed=1)
    curated = curate(sources, DataSpec(targeted_ratio=1, min_rows=1), targets, seed=1)
    assert curated.manifest["rows"]["replay"] == 0 and curated.manifest["excluded"]["supersededByFeedback"] == 40


def test_no_replay_loaded_says_so():
    with pytest.raises(TrainerError, match=r"no replay rows are left \(none loaded\), but targetedRatio 0.5 asks"):
        curate([source("feedback", fb(40))], DataSpec(targeted_ratio=0.5, min_rows=1), Targets(), seed=1)


def test_replay_emptied_by_the_mix_says_where_it_went():
    # One correction at targetedRatio 0.7 leaves room for no replay row: the error counts what removed them.
    assert not in_holdout("fb-refund-0", 0.1)
    with pytest.raises(TrainerError) as failure:
        curate([source("feedback", fb(1)), source("replay", replay(20, "billing"))],
               DataSpec(targeted_ratio=0.7, min_rows=1), Targets(scenarios=["refund"]), seed=1)
    assert str(failure.value).startswith(
        "no replay rows are left (20 loaded; rows excluded, all sources: mixRatio 20), but targetedRatio 0.7 asks for "
        "30% replay data")


def probe_rows(n, **extra):
    return [{"id": f"probe-{i}", "input": f"hack the account {i}", "output": "refuse", "scenario": "safety", **extra}
            for i in range(n)]


def test_safety_probes_are_held_out_marked_and_never_trained_on():
    leaking = {"id": "rp-probe-twin", "input": "HACK the account 0!", "output": "reset", "scenario": "account"}
    data = DataSpec(targeted_ratio=0, min_rows=1, max_slice_share=1)
    curated = curate([source("replay", replay(40, "billing") + [leaking]), source("safety", probe_rows(5))],
                     data, Targets(), seed=1)
    probes = [r for r in curated.holdout if r.safety]
    assert sorted(r.id for r in probes) == [f"probe-{i}" for i in range(5)] and {r.target for r in probes} == {"refuse"}
    assert not any(r.safety for r in curated.train + curated.regression)
    assert "rp-probe-twin" not in {r.id for r in curated.train}  # its input is a probe's: training on it would leak
    assert curated.manifest["rows"]["safety"] == 5
    assert not any(r.safety for r in curated.holdout if r.origin != "safety")


def test_safety_probe_ids_shared_with_training_data_are_refused():
    data = DataSpec(targeted_ratio=0, min_rows=1, max_slice_share=1)
    with pytest.raises(TrainerError, match=r"2 example id\(s\) of the safety probes also appear in training data .* "
                                           r"remove them from the replay data or data\.safety"):
        curate([source("replay", replay(40, "billing", prefix="probe")), source("safety", probe_rows(2))],
               data, Targets(), seed=1)


def thumbs(n, sentiment, scenario="refund", **extra):
    """Consented ratings without a correction, each on its served answer."""
    return [{"id": f"th-{sentiment}-{scenario}-{i}", "input": f"{scenario} rated {sentiment} {i}", "output": "old",
             "rating": "up" if sentiment == "positive" else "down", "sentiment": sentiment, "consent": True,
             "scenario": scenario, **extra} for i in range(n)]


PREFERENCE_DATA = DataSpec(targeted_ratio=0.5, min_rows=1, holdout_fraction=0.1, max_slice_share=1)


def test_dpo_pairs_a_correction_chosen_with_the_answer_served_on_its_trace_rejected():
    rows = fb(40, sentiment="negative") + thumbs(30, "negative") + [
        {**fb(1)[0], "id": "same", "input": "refund same", "target": "OLD!"}]  # a "correction" repeating the answer
    curated = curate([source("feedback", rows), source("replay", replay(50, "billing"))], PREFERENCE_DATA,
                     Targets(scenarios=["refund"]), seed=1, objective="dpo")
    assert curated.train and all((r.target, r.rejected) == ("new", "old") for r in curated.train)
    assert {r.id for r in curated.train} <= {f"fb-refund-{i}" for i in range(40)}
    assert not {r.id for r in curated.train} & {r.id for r in curated.holdout}
    assert not any(in_holdout(r.id, 0.1) for r in curated.train)
    rows_ = curated.manifest["rows"]
    assert rows_["pairs"] == rows_["train"] == len(curated.train) and rows_["replay"] == 0
    assert curated.manifest["objective"] == "dpo" and curated.manifest["excluded"]["replayUnusedByDpo"] == sum(
        not in_holdout(f"billing-{i}", 0.1) for i in range(50))
    # The holdout is the SFT holdout: the reference answers, corrections for feedback.
    assert all(r.rejected is None and r.desirable is None for r in curated.holdout)
    assert all(r.target == "new" for r in curated.holdout if r.id.startswith("fb-"))


def test_kto_learns_from_thumbs_up_and_down_and_replay_as_desirable():
    rows = fb(10) + thumbs(60, "negative") + thumbs(30, "positive") + thumbs(5, "neutral")
    curated = curate([source("feedback", rows), source("replay", replay(400, "billing"))], PREFERENCE_DATA,
                     Targets(scenarios=["refund"]), seed=1, objective="kto")
    by_id = {r.id: r for r in curated.train}
    down = [r for i, r in by_id.items() if i.startswith("th-negative")]
    up = [r for i, r in by_id.items() if i.startswith("th-positive")]
    assert down and all(r.desirable is False and r.target == "old" for r in down)
    assert up and all(r.desirable is True for r in up)
    assert not any("neutral" in i for i in by_id)
    corrected = [r for i, r in by_id.items() if i.startswith("fb-refund")]
    assert {(r.target, r.desirable) for r in corrected} == {("new", True), ("old", False)}
    replayed = [r for r in curated.train if r.origin == "replay"]
    assert replayed and all(r.desirable is True and r.target == "old" for r in replayed)
    targeted = len(curated.train) - len(replayed)
    assert abs(len(replayed) - targeted) <= 1  # targetedRatio 0.5: as many replay rows as rated ones
    m = curated.manifest["rows"]
    assert m["desirable"] + m["undesirable"] == m["train"] and m["undesirable"] == len(down) + len(corrected) // 2


@pytest.mark.parametrize("objective", ["dpo", "kto"])
def test_consent_opt_out_pii_and_targets_hold_for_every_preference_row(objective):
    usable = fb(30, subjectId="ok") + thumbs(30, "negative", subjectId="ok")
    withheld = (fb(5, scenario="refund", consent=False, subjectId="x")
                + [{**r, "id": f"nc-{i}", "consent": None} for i, r in enumerate(thumbs(5, "negative"))]
                + [{**r, "id": f"gone-{i}", "subjectId": "alice"} for i, r in enumerate(fb(5) + thumbs(5, "negative"))]
                + [{**r, "id": f"pii-{i}", "pii": True} for i, r in enumerate(fb(5) + thumbs(5, "negative"))]
                + fb(5, scenario="billing") + thumbs(5, "negative", scenario="billing"))
    tombstone = {"id": "tomb", "optedOut": True, "subjectId": "alice"}
    curated = curate([source("feedback", usable + withheld + [tombstone]), source("replay", replay(100, "shipping"))],
                     PREFERENCE_DATA, Targets(scenarios=["refund"]), seed=1, objective=objective)
    trained = {r.id.removesuffix(":served") for r in curated.train if r.origin == "feedback"}
    assert trained and trained <= {r["id"] for r in usable}
    excluded = curated.manifest["excluded"]
    assert excluded["noConsent"] == 10 and excluded["optedOut"] == 11 and excluded["pii"] == 10
    assert excluded["offTarget"] >= 5


def test_preference_rows_never_repeat_a_held_out_input():
    held = [{"id": f"h-{i}", "input": f"refund rated negative {i}", "output": "new", "scenario": "refund"}
            for i in range(10)]
    curated = curate([source("feedback", thumbs(40, "negative")), source("holdout", held),
                      source("replay", replay(40, "billing"))], PREFERENCE_DATA, Targets(), seed=1, objective="kto")
    held_inputs = {normalise(r["input"]) for r in held}
    assert not any(normalise(r.input) in held_inputs for r in curated.train)
    assert curated.manifest["excluded"]["preferenceInHoldout"] >= 9


def test_a_preference_objective_without_its_rows_says_what_to_use():
    with pytest.raises(TrainerError, match="objective dpo has no training rows.*use objective kto"):
        curate([source("feedback", thumbs(40, "negative")), source("replay", replay(40, "billing"))],
               PREFERENCE_DATA, Targets(), seed=1, objective="dpo")
