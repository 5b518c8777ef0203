"""The bench's measurements, pure: served-answer tallies, time to recovery after a drift, worse promotions, the
scheduled pipeline's timetable, and the issue's targets. No I/O, no torch; everything is computed from answers the
real models gave and the simulated users judged.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any


@dataclass
class Tally:
    """Answers served by one policy, per tick: all, bad, per cohort, and those of a canary track."""

    ticks: int
    total: list[int] = field(default_factory=list)
    bad: list[int] = field(default_factory=list)
    cohorts: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    canary_total: int = 0
    canary_bad: int = 0

    def __post_init__(self) -> None:
        self.total = self.total or [0] * self.ticks
        self.bad = self.bad or [0] * self.ticks

    def record(self, tick: int, cohort: str, correct: bool, canary: bool) -> None:
        self.total[tick] += 1
        self.bad[tick] += not correct
        self.cohorts[cohort][0] += 1
        self.cohorts[cohort][1] += not correct
        if canary:
            self.canary_total += 1
            self.canary_bad += not correct

    @property
    def bad_answers(self) -> int:
        return sum(self.bad)

    def bad_by_cohort(self) -> dict[str, int]:
        return {c: bad for c, (_, bad) in sorted(self.cohorts.items())}


def quality(total: list[int], bad: list[int], start: int, end: int) -> float | None:
    """Share of right answers over ticks ``[start, end)``; None when nothing was served."""
    served = sum(total[start:end])
    return None if served == 0 else 1 - sum(bad[start:end]) / served


def recovery_ticks(total: list[int], bad: list[int], onsets: list[int], *, window: int, reference: int,
                   tolerance: float) -> list[int | None]:
    """Per drift, ticks from its onset until the served quality is back for good.

    The reference level is the quality served in the ``reference`` ticks before the onset. The policy has recovered
    at the first tick ``s >= onset`` from which every sliding window of ``window`` ticks, up to the next drift's
    onset (or the horizon), is within ``tolerance`` of that level: a lucky window followed by more bad answers does
    not count. None when it never recovers before the next drift (or the horizon).
    """
    horizon = len(total)
    result: list[int | None] = []
    for i, onset in enumerate(onsets):
        end = onsets[i + 1] if i + 1 < len(onsets) else horizon
        level = quality(total, bad, max(0, onset - reference), onset)
        last = end - window  # the last window that fits before the next drift
        if level is None or last < onset:
            result.append(None)
            continue
        recovered: int | None = None
        for start in range(last, onset - 1, -1):  # from the end backwards: the start of the final good run
            value = quality(total, bad, start, start + window)
            if value is None or value < level - tolerance:
                break
            recovered = start
        result.append(None if recovered is None else recovered - onset)
    return result


@dataclass(frozen=True)
class Promotion:
    """A model replacing another as the served (stable) model, with both measured on the same evaluation."""

    time: datetime
    replaced: str
    promoted: str
    replaced_quality: float
    promoted_quality: float
    how: str  # "canary", "direct", "rollback"

    @property
    def worse(self) -> bool:
        return self.promoted_quality < self.replaced_quality

    def to_json(self) -> dict[str, Any]:
        return {"time": _iso(self.time), "replaced": self.replaced, "promoted": self.promoted,
                "replacedQuality": round(self.replaced_quality, 4), "promotedQuality": round(self.promoted_quality, 4),
                "how": self.how, "worse": self.worse}


def worse_promotions(promotions: list[Promotion]) -> int:
    """Promotions of a model that answered the evaluation of the world at that time worse than the one it replaced
    (on the same requests, so the comparison is paired). A rollback counts too: it is a promotion of the old model."""
    return sum(p.worse for p in promotions)


def timetable(start: datetime, horizon: timedelta, every: timedelta, first: timedelta) -> list[datetime]:
    """When a cron-style pipeline runs: at ``start + first``, then every ``every``, within the horizon."""
    if every <= timedelta(0):
        raise ValueError("the schedule's period must be positive")
    times, when = [], start + first
    while when < start + horizon:
        times.append(when)
        when += every
    return times


def targets(policies: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The issue's targets, each with the numbers it is judged on."""
    kaizen, scheduled, oracle = policies["kaizen"], policies["scheduled"], policies["oracle"]
    bad_ratio = _ratio(kaizen["badAnswers"], scheduled["badAnswers"])
    compute_ratio = _ratio(kaizen["trainingSeconds"], scheduled["trainingSeconds"])
    oracle_ratio = _ratio(kaizen["badAnswers"], oracle["badAnswers"])
    return {
        "badAnswersAtMostHalfOfScheduled": {"met": bad_ratio is not None and bad_ratio <= 0.5,
                                            "ratio": bad_ratio, "limit": 0.5},
        "trainingComputeAtMost30PercentOfScheduled": {"met": compute_ratio is not None and compute_ratio <= 0.3,
                                                      "ratio": compute_ratio, "limit": 0.3},
        "badAnswersAtMost1.5xOracle": {"met": oracle_ratio is not None and oracle_ratio <= 1.5,
                                       "ratio": oracle_ratio, "limit": 1.5},
        "neverPromotesAWorseModel": {"met": kaizen["worsePromotions"] == 0,
                                     "worsePromotions": kaizen["worsePromotions"]},
    }


def _ratio(a: float, b: float) -> float | None:
    return None if not b else round(a / b, 4)


def _iso(when: datetime) -> str:
    return when.replace(microsecond=0).isoformat().replace("+00:00", "Z")
