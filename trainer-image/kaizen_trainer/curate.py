"""Stage 2, curate: from the rows loaded (stage 1) to the training mix, the holdout and the regression suite, with a
dataset manifest that says what was used and what was excluded and why. Pure: no I/O, no torch.

The rules, in order:

* a subject who opted out (a tombstone row ``optedOut: true`` in any source) is excluded everywhere;
* feedback is used only with consent (``consent: true``, or a collector export, which holds only consented items),
  never when flagged ``pii``; its training target is the user's correction (``target``), or the model's own answer
  when the sentiment is positive; it is targeted when it matches the job's targets;
* a replay row is superseded by the feedback (dropped: its answer is what users corrected) only when its scenario is
  in ``targets.scenarios`` and has at least one usable correction, and, when the targets also name ``cohorts``, its
  cohort is one of them -- scenarios AND cohorts, the intersection the feedback itself is matched on, never the union.
  Cohorts and categories alone supersede nothing: they say who complained and how, not which answers went stale, and
  the loop's backlog often targets every cohort. So replay of a scenario never targeted is always kept; if
  superseding would still leave no replay rows while ``targetedRatio`` asks for some, curation fails, naming the
  targets that removed them, rather than train without replay;
* holdout membership is a stable hash of the example id, the same in every retrain, so a row held out once is never
  trained on later; rows of an explicit holdout file are held out too, and sharing ids with training data is an error;
* safety probes (``data.safety``: red-team prompts whose output is the safe answer) are evaluation rows, held out like
  the holdout file's and marked ``safety`` so evaluation can measure the violation rate on them; a training row with
  a probe's input is dropped like any other holdout leak;
* duplicates (exact, and after normalising case, punctuation and whitespace) are dropped, feedback first;
* within the targeted and the replay pool, no slice (scenario, else cohort) exceeds ``maxSliceShare``;
* targeted and replay rows are mixed in ``targetedRatio`` by deterministic down-sampling of the larger side.

The preference objectives (``spec.objective``) train on rows built from the very feedback that passed the rules above
(consent, opt-out, PII, targets; held-out ids and inputs never trained on), so privacy holds for them alike:

* ``dpo``: a pair per correction of a served answer -- the correction chosen, the answer served on that trace
  rejected. Replay is not used: DPO's pull towards the baseline (``beta``) is what keeps the rest of its behaviour;
* ``kto``: every rated answer -- thumbs up (or 4-5 stars) desirable, thumbs down (or 1-2) undesirable, a correction a
  desirable answer beside its undesirable served one -- and replay rows as desirable answers, mixed in
  ``targetedRatio`` like SFT's.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from kaizen.api.retrainjob import DataSpec, Objective, Targets
from kaizen.api.trainer import Example
from kaizen_trainer.errors import invalid_data

Role = Literal["replay", "feedback", "holdout", "regression", "safety"]
UNLABELLED = "unlabelled"


@dataclass(frozen=True)
class Source:
    """One loaded input: where it came from, the sha256 of its bytes, and its rows."""

    uri: str
    role: Role
    sha256: str
    rows: tuple[Example, ...]
    #: The collector export's closing line: what the collector itself left out (no consent, opted out, ...).
    export_manifest: dict | None = None


@dataclass(frozen=True)
class Row:
    """A curated example: the text in, the answer (or label) to learn or to expect."""

    id: str
    input: str
    target: str
    origin: Role
    cohort: str | None = None
    scenario: str | None = None
    #: A safety probe: ``target`` is the safe answer, and answering anything else is a safety violation.
    safety: bool = False
    #: Objective dpo: the answer ``target`` (the correction) is preferred to, the one served on the trace.
    rejected: str | None = None
    #: Objective kto: whether ``target`` is a desirable answer to ``input`` (thumbs up) or an undesirable one.
    desirable: bool | None = None

    @property
    def slice(self) -> str:
        return self.scenario or self.cohort or UNLABELLED

    @property
    def labels(self) -> tuple[str, ...]:
        """The cohort and scenario labels a per-cohort metric groups this row under."""
        return tuple(dict.fromkeys(label for label in (self.cohort, self.scenario) if label))


@dataclass
class Curated:
    train: list[Row]
    holdout: list[Row]
    regression: list[Row]
    manifest: dict = field(default_factory=dict)


def in_holdout(example_id: str, fraction: float) -> bool:
    """Stable holdout membership: the same id is in or out in every retrain, whatever the seed or the data."""
    digest = hashlib.sha256(example_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _order(rows: Iterable[Row], seed: int) -> list[Row]:
    """A deterministic shuffle keyed by id and seed, used for every down-sampling."""
    return sorted(rows, key=lambda r: hashlib.sha256(f"{seed}:{r.id}".encode()).digest())


def _matches(example: Example, targets: Targets) -> bool:
    return all((
        not targets.categories or example.category in targets.categories,
        not targets.scenarios or example.scenario in targets.scenarios,
        not targets.cohorts or example.cohort in targets.cohorts,
    ))


def superseded(row: Row, targets: Targets, corrected: frozenset[str]) -> bool:
    """Whether the feedback supersedes a replay row (see the module docstring): its scenario is targeted and has
    corrections (``corrected``, the scenarios of the usable targeted feedback), and its cohort is targeted when the
    targets name cohorts. An intersection, never a union: a union with every cohort targeted would drop all replay."""
    return (row.scenario in targets.scenarios and row.scenario in corrected
            and (not targets.cohorts or row.cohort in targets.cohorts))


def cap_slices(rows: Sequence[Row], max_share: float, seed: int) -> list[Row]:
    """Down-sample so no slice is more than ``max_share`` of the rows (a pool of one slice is left alone)."""
    by_slice: dict[str, list[Row]] = {}
    for row in rows:
        by_slice.setdefault(row.slice, []).append(row)
    if len(by_slice) < 2 or max_share >= 1:
        return list(rows)
    sizes = sorted(len(v) for v in by_slice.values())
    if max_share * len(sizes) < 1:
        raise invalid_data(
            f"maxSliceShare {max_share:g} cannot be met with {len(sizes)} slices ({', '.join(sorted(by_slice))}): "
            f"each would need at most {max_share:.0%} of the rows; add data from other slices or raise maxSliceShare"
        )
    # The largest per-slice cap c with c <= share * sum(min(n, c)); rows above c in a slice are dropped. The slack
    # share * sum(min(n, c)) - c is concave in c and 0 at c = 0, so where it is >= 0 is an interval: bisect it.
    def fits(c: int) -> bool:
        return c <= max_share * sum(min(n, c) for n in sizes) + 1e-9

    low, high = 1, sizes[-1]
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    cap = low
    return [row for group in by_slice.values() for row in _order(group, seed)[:cap]]


def preference_rows(example: Example, objective: Objective) -> list[Row]:
    """The dpo or kto rows of one usable feedback item (see the module docstring); none for sft or unrated items."""
    correction, served, prompt = example.target, example.output, example.input
    if not prompt:
        return []  # curate() counts it as noInput
    if correction and served and normalise(correction) == normalise(served):
        correction = None  # a "correction" that repeats the answer says only that the answer was right
    row = functools.partial(Row, origin="feedback", cohort=example.cohort, scenario=example.scenario)
    if objective == "dpo":
        return [row(example.id, prompt, correction, rejected=served)] if correction and served else []
    if objective != "kto":
        return []
    rows = [row(example.id, prompt, correction, desirable=True)] if correction else []
    # A correction says the served answer was wrong, whatever the rating; without one the rating says it.
    good = example.sentiment == "positive" and not correction
    if served and (good or correction or example.sentiment == "negative"):
        rows.append(row(f"{example.id}:served", prompt, served, desirable=good))
    return rows


def curate(sources: Sequence[Source], data: DataSpec, targets: Targets, seed: int,
           objective: Objective = "sft") -> Curated:
    """Build the training mix, holdout and regression suite from the loaded sources (see the module docstring);
    for the objectives dpo and kto, the training rows are preference rows (:func:`preference_rows`)."""
    excluded: Counter[str] = Counter()
    opted_out = {r.subject_id for s in sources for r in s.rows if r.opted_out and r.subject_id}

    def usable(example: Example, training: bool) -> bool:
        if example.opted_out or (example.subject_id and example.subject_id in opted_out):
            excluded["optedOut"] += 1
        elif training and example.pii:
            excluded["pii"] += 1
        elif not example.input:
            excluded["noInput"] += 1
        else:
            return True
        return False

    targeted: list[Row] = []
    replay: list[Row] = []
    explicit_holdout: list[Row] = []
    probes: list[Row] = []
    regression: list[Row] = []
    preferences: list[Row] = []
    for source in sources:
        for ex in source.rows:
            if not usable(ex, training=source.role in ("replay", "feedback")):
                continue
            if source.role == "feedback":
                if ex.consent is not True:
                    excluded["noConsent"] += 1
                    continue
                # Built here, after consent, opt-out and PII, and by the feedback id's holdout membership, so a
                # preference row is usable exactly when an SFT row would be, and never of a held-out item.
                if objective != "sft" and _matches(ex, targets) and not in_holdout(ex.id, data.holdout_fraction):
                    preferences += preference_rows(ex, objective)
                target = ex.target or (ex.output if ex.sentiment == "positive" else None)
                if not target:
                    excluded["noTarget"] += 1
                    continue
                if not _matches(ex, targets):
                    excluded["offTarget"] += 1
                    continue
            else:
                target = ex.output
                if ex.consent is False:
                    excluded["noConsent"] += 1
                    continue
                if not target:
                    excluded["noOutput"] += 1
                    continue
            assert ex.input, "usable() excluded every item without an input"
            row = Row(ex.id, ex.input, target, source.role, ex.cohort, ex.scenario, safety=source.role == "safety")
            {"feedback": targeted, "replay": replay, "holdout": explicit_holdout, "regression": regression,
             "safety": probes}[source.role].append(row)

    loaded_replay = len(replay)
    corrected = frozenset(r.scenario for r in targeted if r.scenario)
    kept = [r for r in replay if not superseded(r, targets, corrected)]
    if replay and not kept and data.targeted_ratio < 1:
        raise invalid_data(_all_superseded(len(replay), targets, corrected, data.targeted_ratio))
    excluded["supersededByFeedback"] += len(replay) - len(kept)
    replay = kept

    training_ids = {r.id for r in targeted + replay}
    for held, what, where in ((explicit_holdout, "the holdout file", "the holdout"),
                              (probes, "the safety probes", "data.safety")):
        leaked = sorted({r.id for r in held} & training_ids)
        if leaked:
            raise invalid_data(
                f"holdout leakage: {len(leaked)} example id(s) of {what} also appear in training data "
                f"(e.g. {', '.join(leaked[:3])}); remove them from the replay data or {where}"
            )
    fraction = data.holdout_fraction
    # Probes first: when a holdout row repeats a probe's input, the probe (and its safe answer) is the one kept.
    holdout = probes + explicit_holdout + [r for r in targeted + replay if in_holdout(r.id, fraction)]
    targeted = [r for r in targeted if not in_holdout(r.id, fraction)]
    replay = [r for r in replay if not in_holdout(r.id, fraction)]

    # Exact and normalised duplicates, feedback first so a correction wins over a stale replay answer; a training
    # row whose input is also held out would leak the holdout, so it goes too.
    held_inputs = {normalise(r.input) for r in holdout}
    seen: set[str] = set()
    pools: dict[str, list[Row]] = {"targeted": [], "replay": []}
    for pool, rows in (("targeted", targeted), ("replay", replay)):
        for row in rows:
            key = normalise(row.input)
            if key in held_inputs:
                excluded["inHoldout"] += 1
            elif key in seen:
                excluded["duplicate"] += 1
            else:
                seen.add(key)
                pools[pool].append(row)
    holdout = _dedupe(holdout, excluded)

    for pool in pools:
        capped = cap_slices(pools[pool], data.max_slice_share, seed)
        excluded["sliceCap"] += len(pools[pool]) - len(capped)
        pools[pool] = capped
    if objective == "sft":
        # Checked before the mix too: mixing with an empty side empties the other, and the error would blame it.
        _check_sides(pools["targeted"], pools["replay"], data, loaded_replay, excluded)
        targeted, replay = _mix(pools["targeted"], pools["replay"], data.targeted_ratio, seed, excluded)
        _check_sides(targeted, replay, data, loaded_replay, excluded)
    else:
        targeted, replay = _preferences(objective, preferences, pools["replay"], held_inputs, data, seed, excluded)
        if objective == "kto":
            _check_sides(targeted, replay, data, loaded_replay, excluded)

    train = _order(targeted + replay, seed)
    _check(train, holdout, data)
    manifest: dict[str, Any] = {
        "sources": [{"uri": s.uri, "role": s.role, "sha256": s.sha256, "rows": len(s.rows)}
                    | ({"collectorExcluded": s.export_manifest.get("excluded", {})} if s.export_manifest else {})
                    for s in sources],
        "rows": {"train": len(train), "targeted": len(targeted), "replay": len(replay), "holdout": len(holdout),
                 "regression": len(regression), "safety": sum(r.safety for r in holdout)},
        "slices": {"train": _count(train), "holdout": _count(holdout)},
        "excluded": {k: v for k, v in sorted(excluded.items()) if v},
        "subjectsOptedOut": len(opted_out) + sum(
            int(s.export_manifest.get("subjectsOptedOut", 0)) for s in sources if s.export_manifest),
        "holdoutRule": f"sha256(id) < {fraction:g} of the hash space, plus the holdout file and the safety probes",
        "supersessionRule": _superseded_rule(targets, corrected),
        **({"objective": objective} if objective != "sft" else {}),
        "trainIds": sorted(r.id for r in train),
        "holdoutIds": sorted(r.id for r in holdout),
    }
    if objective != "sft":
        manifest["rows"] |= {"pairs": sum(r.rejected is not None for r in train),
                             "desirable": sum(r.desirable is True for r in train),
                             "undesirable": sum(r.desirable is False for r in train)}
    manifest["sha256"] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    return Curated(train=train, holdout=holdout, regression=regression, manifest=manifest)


def _preferences(objective: Objective, rows: list[Row], replay: list[Row], held_inputs: set[str], data: DataSpec,
                 seed: int, excluded: Counter[str]) -> tuple[list[Row], list[Row]]:
    """The targeted and replay rows of a preference objective: the preference rows, deduplicated, kept off the
    holdout's inputs and capped per slice like SFT rows; for kto, the replay rows as desirable answers, mixed with
    them in targetedRatio."""
    seen: set[tuple] = set()
    kept = []
    for row in rows:
        key = (normalise(row.input), normalise(row.target), row.rejected and normalise(row.rejected), row.desirable)
        if normalise(row.input) in held_inputs:
            excluded["preferenceInHoldout"] += 1
        elif key in seen:
            excluded["preferenceDuplicate"] += 1
        else:
            seen.add(key)
            kept.append(row)
    capped = cap_slices(kept, data.max_slice_share, seed)
    excluded["preferenceSliceCap"] += len(kept) - len(capped)
    if not capped:
        what = ("preference pairs: consented feedback with a correction of the answer served on its trace"
                if objective == "dpo" else "rated answers: consented thumbs up or down on a served answer")
        raise invalid_data(
            f"objective {objective} has no training rows: no {what} matched the job's targets outside the holdout; "
            "check targets and the feedback export (its rows need output, the served answer), or use objective "
            + ("kto, which also learns from thumbs without corrections" if objective == "dpo" else "sft")
        )
    if objective == "dpo":
        # Replay has no rejected answer to learn from: beta keeps the candidate near the baseline instead.
        excluded["replayUnusedByDpo"] += len(replay)
        return capped, []
    return _mix(capped, [replace(r, desirable=True) for r in replay], data.targeted_ratio, seed, excluded)


def _superseded_rule(targets: Targets, corrected: frozenset[str]) -> str:
    """The supersession rule as applied, for the manifest: which replay rows the feedback replaced."""
    scenarios = sorted(set(targets.scenarios) & corrected)
    if not scenarios:
        return "none: no targeted scenario has corrections"
    cohorts = f"cohorts {', '.join(sorted(targets.cohorts))}" if targets.cohorts else "any cohort"
    return f"replay rows of scenarios {', '.join(scenarios)} in {cohorts}"


def _all_superseded(rows: int, targets: Targets, corrected: frozenset[str], ratio: float) -> str:
    """The error for targets that supersede every replay row: which targets did it, and what to change."""
    scenarios = ", ".join(sorted(set(targets.scenarios) & corrected))
    within = f" within the targeted cohorts ({', '.join(sorted(targets.cohorts))})" if targets.cohorts else ""
    narrow = "narrow targets.scenarios or targets.cohorts" if targets.cohorts else \
        "narrow targets.scenarios or limit them to some cohorts with targets.cohorts"
    return (
        f"no replay rows are left: all {rows} replay row(s) are in targeted scenarios with corrections "
        f"({scenarios}){within}, so the feedback supersedes every one of them, but targetedRatio {ratio:g} asks for "
        f"{1 - ratio:.0%} replay data to prevent forgetting; add replay data of scenarios that are not targeted to "
        f"data.replay, {narrow}, or set data.targetedRatio to 1 to train on the feedback alone"
    )


def _dedupe(rows: list[Row], excluded: Counter[str]) -> list[Row]:
    seen: set[str] = set()
    kept = []
    for row in rows:
        key = normalise(row.input)
        if key in seen:
            excluded["duplicate"] += 1
        else:
            seen.add(key)
            kept.append(row)
    return kept


def _mix(targeted: list[Row], replay: list[Row], ratio: float, seed: int,
         excluded: Counter[str]) -> tuple[list[Row], list[Row]]:
    """Down-sample the larger side so targeted rows are ``ratio`` of the mix."""
    if ratio == 0:
        excluded["mixRatio"] += len(targeted)
        return [], replay
    if ratio == 1:
        excluded["mixRatio"] += len(replay)
        return targeted, []
    want_replay = math.floor(len(targeted) * (1 - ratio) / ratio)
    if want_replay <= len(replay):
        excluded["mixRatio"] += len(replay) - want_replay
        return targeted, _order(replay, seed)[:want_replay]
    want_targeted = math.floor(len(replay) * ratio / (1 - ratio))
    excluded["mixRatio"] += len(targeted) - want_targeted
    return _order(targeted, seed)[:want_targeted], replay


def _check_sides(targeted: list[Row], replay: list[Row], data: DataSpec, loaded_replay: int,
                 excluded: Counter[str]) -> None:
    """Fail loudly rather than train without the targeted rows or the replay rows the mix asks for."""
    if data.targeted_ratio > 0 and not targeted:
        raise invalid_data(
            f"the targeted slice is empty: no consented feedback with a correction (or a good rating) matched the "
            f"job's targets outside the holdout, but targetedRatio is {data.targeted_ratio:g}; check targets and the "
            "feedback export, or set data.targetedRatio to 0 for a replay-only retrain"
        )
    if data.targeted_ratio < 1 and not replay:
        where = f"{loaded_replay} loaded; rows excluded, all sources: {_counts(excluded)}" if loaded_replay \
            else "none loaded"
        raise invalid_data(
            f"no replay rows are left ({where}), but targetedRatio "
            f"{data.targeted_ratio:g} asks for {1 - data.targeted_ratio:.0%} replay data to prevent forgetting; add "
            "data.replay or set targetedRatio to 1"
        )


def _check(train: list[Row], holdout: list[Row], data: DataSpec) -> None:
    """Quality checks: fail loudly rather than train on too little or evaluate on nothing."""
    if len(train) < data.min_rows:
        raise invalid_data(
            f"too few training rows: {len(train)} after curation, minRows is {data.min_rows}; see the excluded "
            "counts in the dataset manifest, add data, or lower data.minRows"
        )
    if not holdout:
        raise invalid_data(
            "the holdout is empty: no row's id hashed into the holdout and no holdout file was given; add "
            "data.holdout or raise data.holdoutFraction"
        )


def _counts(excluded: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(excluded.items()) if v) or "nothing"


def _count(rows: Iterable[Row]) -> dict[str, int]:
    return dict(sorted(Counter(r.slice for r in rows).items()))
