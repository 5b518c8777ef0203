"""The collector's drift pass: off the ingest path, now and then, compare each model's recent inputs with a reference
window, per model and per cohort with enough traffic.

Gather (:func:`gather`: the windows, read from the store), assess (:func:`assess`: pure but for the embedder, the
statistics of :mod:`kaizen.collector.drift`), and the service exports the reports as the gauges
``kaizen_input_drift{model,cohort,method}`` and adds their drifted clusters to the backlog.

Windows. The *recent* window is the newest ``sample`` traces of the last ``window_s`` seconds. The *reference* is a
pinned interval (``reference``: the served model's training period, say), or else the first ``sample`` traces that
the model's served version answered (the version of its newest stable-track trace; a cohort's reference: its traces
of that version in that interval); the recent window starts after the reference ends, so they never overlap. So a
promotion moves the reference: a version retrained on the drifted traffic is judged against what it first served,
not against the inputs its predecessor saw (which would keep the drift breached for good).
A model or cohort with fewer than ``min_traces`` in either window is not tested: its gauges are left out.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

from kaizen.collector import drift
from kaizen.collector.models import DriftCluster
from kaizen.collector.store import Store

log = logging.getLogger(__name__)


class Embedder(Protocol):
    def embed(self, texts: list[str]) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class Settings:
    """How the drift pass runs (``kaizen collector --drift-*``)."""

    every_s: float = 300.0
    window_s: float = 3600.0
    sample: int = 200
    min_traces: int = 50
    alpha: float = 0.01
    #: The MMD² below which a significant difference is not called drift.
    min_mmd2: float = 0.0
    #: The PSI below which a significant change of the scenario mix is not called drift.
    min_psi: float = 0.0
    permutations: int = 500
    #: A pinned reference interval, epoch seconds (from, to]; None: the first ``sample`` traces of each model's
    #: served version.
    reference: tuple[float, float] | None = None
    #: Clusters and example traces per drifted window in the backlog.
    clusters: int = 5
    examples: int = 5


@dataclasses.dataclass(frozen=True)
class Windows:
    """The two windows of one model (and cohort: None is all its traffic)."""

    model: str
    cohort: str | None
    reference: list[dict[str, Any]]
    recent: list[dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Report:
    """What one drift test of a window pair found."""

    model: str
    cohort: str | None
    reference_n: int
    recent_n: int
    assessed_at: float
    mmd: drift.MMDResult | None
    scenario: drift.CategoricalResult | None
    cohort_mix: drift.CategoricalResult | None
    drifted: bool
    clusters: tuple[DriftCluster, ...]
    novelty: drift.NoveltyResult | None = None

    def gauges(self) -> dict[str, float]:
        """method -> value of the ``kaizen_input_drift`` gauges."""
        values: dict[str, float] = {"drifted": float(self.drifted)}
        if self.mmd is not None:
            values |= {"mmd2": self.mmd.mmd2, "mmd_p_value": self.mmd.p_value}
        if self.novelty is not None:
            values |= {"novel_share": self.novelty.novel_share, "novelty_p_value": self.novelty.p_value}
        for name, result in (("scenario", self.scenario), ("cohort", self.cohort_mix)):
            if result is not None:
                values |= {f"{name}_psi": result.psi, f"{name}_chi2_p_value": result.p_value}
        return values


async def gather(store: Store, settings: Settings, now: float) -> list[Windows]:
    """The window pairs to test: each model with recent traffic, and each of its cohorts with enough of it. A
    cohort's reference is its traces in the model's reference interval (of the served version)."""
    pairs = []
    traffic = await store.recent_traffic(now - settings.window_s)
    for model, cohorts in sorted(traffic.items()):
        first: list[dict[str, Any]] | None = None
        version: str | None = None
        if settings.reference is not None:
            start, end = settings.reference
        else:
            version = await store.served_version(model)
            first = await store.window_inputs(model, None, after=None, before=None, newest=False,
                                              limit=settings.sample, version=version)
            start, end = None, max((r["created_at"] for r in first), default=now)
        scopes: list[str | None] = [None]
        scopes += sorted(c for c, n in cohorts.items() if c is not None and n >= settings.min_traces)
        for cohort in scopes:
            if cohort is None and first is not None:
                reference = first
            else:
                reference = await store.window_inputs(model, cohort, after=start, before=end, newest=True,
                                                      limit=settings.sample, version=version)
            recent = await store.window_inputs(model, cohort, after=max(end, now - settings.window_s), before=now,
                                               newest=True, limit=settings.sample)
            if min(len(reference), len(recent)) >= settings.min_traces:
                pairs.append(Windows(model, cohort, reference, recent))
    return pairs


def _categorical(
    reference: list[dict[str, Any]], recent: list[dict[str, Any]], key: str
) -> drift.CategoricalResult | None:
    ref = [r[key] for r in reference if r[key] is not None]
    cur = [r[key] for r in recent if r[key] is not None]
    if not ref or not cur or len(set(ref) | set(cur)) < 2:
        return None
    return drift.categorical_test(ref, cur)


def assess(windows: Windows, embedder: Embedder | None, settings: Settings, now: float) -> Report:
    """Test one window pair: MMD on the inputs' embeddings (when there is an embedder), chi-square and PSI on the
    scenario mix, and on the cohort mix for a model's whole traffic; and the drifted clusters."""
    reference, recent = windows.reference, windows.recent
    mmd, novelty, scores = None, None, None
    if embedder is not None:
        ref_vectors = embedder.embed([r["input"] for r in reference])
        cur_vectors = embedder.embed([r["input"] for r in recent])
        mmd = drift.mmd_test(ref_vectors, cur_vectors, permutations=settings.permutations)
        novelty = drift.novelty_test(ref_vectors, cur_vectors, permutations=settings.permutations)
        scores = drift.witness(ref_vectors, cur_vectors, mmd.bandwidth)
    scenario = _categorical(reference, recent, "scenario")
    cohort_mix = _categorical(reference, recent, "cohort") if windows.cohort is None else None
    signals = [
        mmd is not None and drift.drifted(mmd.p_value, mmd.mmd2, alpha=settings.alpha, min_effect=settings.min_mmd2),
        novelty is not None and drift.drifted(novelty.p_value, novelty.novel_share, alpha=settings.alpha),
        scenario is not None and drift.drifted(scenario.p_value, scenario.psi, alpha=settings.alpha,
                                               min_effect=settings.min_psi),
    ]
    drifted = any(signals)
    clusters = _clusters(windows, mmd, scenario, scores, settings, now) if drifted else ()
    return Report(windows.model, windows.cohort, len(reference), len(recent), now, mmd, scenario, cohort_mix, drifted,
                  clusters, novelty)


def _clusters(
    windows: Windows, mmd: drift.MMDResult | None, scenario: drift.CategoricalResult | None,
    scores: np.ndarray | None, settings: Settings, now: float,
) -> tuple[DriftCluster, ...]:
    """The scenarios whose share rose, by their part of the PSI, each with its recent traces least like the
    reference (highest witness first; newest first without embeddings). Without scenarios: one cluster of the
    recent inputs least like the reference."""
    order = list(np.argsort(-scores, kind="stable")) if scores is not None else list(range(len(windows.recent)))
    ranked = [windows.recent[i] for i in order]
    common: dict[str, Any] = {
        "cohort": windows.cohort, "mmd2": None if mmd is None else mmd.mmd2,
        "p_value": None if mmd is None else mmd.p_value, "scenario_psi": None if scenario is None else scenario.psi,
        "assessed_at": datetime.fromtimestamp(now, UTC),
    }
    if scenario is None:
        if scores is None:
            return ()
        return (DriftCluster(example_trace_ids=[r["id"] for r in ranked[:settings.examples]], **common),)
    floor = drift.PSI_FLOOR
    risen = sorted(
        ((name, ref, cur) for name, (ref, cur) in scenario.shares.items() if cur > ref),
        key=lambda s: -(s[2] - s[1]) * math.log(max(s[2], floor) / max(s[1], floor)),
    )
    return tuple(
        DriftCluster(scenario=name, reference_share=ref, recent_share=cur,
                     example_trace_ids=[r["id"] for r in ranked if r["scenario"] == name][:settings.examples],
                     **common)
        for name, ref, cur in risen[:settings.clusters]
    )
