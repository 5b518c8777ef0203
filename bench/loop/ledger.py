"""What one policy's collector and Prometheus would hold over the simulated period, and the queries the operator
and the trainer make of them. Pure: no I/O, no torch, time injected.

Each policy has its own ledger, fed by the simulated users' feedback on that policy's answers. It answers:

* the counters Prometheus scrapes from the collector (``kaizen_feedback_total{model, model_version, track, rating,
  category}``) and from the model servers (``kaizen_server_requests_total{model, model_version, track, route,
  code}``): counters count what happened and never go down, so an opt-out does not change them. A small evaluator
  reads the PromQL forms the bench's signals and analysis metrics use, ``TERM``, ``TERM / TERM`` and
  ``TERM - TERM`` with ``TERM = sum(increase(METRIC{label="value",...}[W]))``, as Prometheus would over these
  counters (without its extrapolation at the window's edges);
* the collector's database queries the ImprovementLoop controller makes (``feedback_count`` and ``backlog``:
  consented negative feedback since a time, in some categories, subjects who opted out excluded, as
  ``kaizen.collector.store._feedback_filters`` filters);
* the collector's export (``GET /v1/export``), row for row in its shape (``kaizen.collector.models.ExportRow`` and the
  closing ``ExportManifest``): consented items only, opted-out subjects excluded, filtered by the retrain's targets.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from kaizen.api.common import parse_duration
from kaizen.logic.loop import BacklogItem

NEGATIVE = ("down", "1", "2")
_TERM = re.compile(r"sum\(increase\((?P<metric>\w+)\{(?P<labels>[^}]*)\}\[(?P<window>[0-9smhd.]+)\]\)\)")
#: The label names of each counter family, in the order its keys hold them.
FAMILIES = {
    "kaizen_feedback_total": ("model", "model_version", "track", "rating", "category"),
    "kaizen_server_requests_total": ("model", "model_version", "track", "route", "code"),
}
_LABEL = re.compile(r'(\w+)\s*=\s*"([^"]*)"')


@dataclass(frozen=True)
class FeedbackItem:
    """One feedback item as the collector stores it, joined to the trace it judges."""

    id: str
    trace_id: str
    time: datetime
    model: str
    version: str
    track: str
    subject: str
    consent: bool
    rating: str
    category: str | None
    cohort: str | None
    scenario: str | None
    input: str
    output: str
    correction: str | None = None

    @property
    def negative(self) -> bool:
        return self.rating in NEGATIVE


@dataclass
class Ledger:
    """The feedback of one policy's users, bucketed by time so that windowed queries stay cheap."""

    bucket: timedelta
    start: datetime
    items: list[FeedbackItem] = field(default_factory=list)
    opted_out: dict[str, datetime] = field(default_factory=dict)
    _counters: dict[int, Counter] = field(default_factory=lambda: defaultdict(Counter))

    def _index(self, when: datetime) -> int:
        return int((when - self.start) / self.bucket)

    def add(self, item: FeedbackItem) -> None:
        if item.subject in self.opted_out:
            return  # the collector drops what an opted-out subject sends after the opt-out
        self.items.append(item)
        self._counters[self._index(item.time)][("kaizen_feedback_total", item.model, item.version, item.track,
                                                item.rating, item.category or "none")] += 1

    def served(self, when: datetime, model: str, version: str, track: str, count: int = 1) -> None:
        """Answers a model server returned (route /v1/completions, code 200)."""
        self._counters[self._index(when)][("kaizen_server_requests_total", model, version, track,
                                           "/v1/completions", "200")] += count

    def opt_out(self, subject: str, when: datetime) -> None:
        """A tombstone: the subject's data leaves every query and export from now on (not the counters)."""
        self.opted_out.setdefault(subject, when)

    # ------------------------------------------------------------------------------------------ Prometheus side

    def increase(self, metric: str, labels: dict[str, str], start: datetime, end: datetime) -> float:
        """``increase()`` of the counters of ``metric`` matching ``labels`` over ``[start, end)``, whole buckets."""
        if metric not in FAMILIES:
            raise ValueError(f"unknown metric {metric}: the bench counts {', '.join(FAMILIES)}")
        names = FAMILIES[metric]
        unknown = set(labels) - set(names)
        if unknown:
            raise ValueError(f"{metric} has no label(s) {', '.join(sorted(unknown))}")
        wanted = [(names.index(k) + 1, v) for k, v in labels.items()]
        total = 0
        for index in range(self._index(start), self._index(end)):
            for key, count in self._counters.get(index, {}).items():
                if key[0] == metric and all(key[i] == v for i, v in wanted):
                    total += count
        return float(total)

    def _term(self, text: str, now: datetime) -> float:
        match = _TERM.fullmatch(" ".join(text.split()))
        if match is None:
            raise ValueError(f"unsupported query term {text!r}: the bench evaluates sum(increase(METRIC{{...}}[W])) "
                             "terms, alone, divided or subtracted")
        window = parse_duration(match["window"])
        return self.increase(match["metric"], dict(_LABEL.findall(match["labels"])), now - window, now)

    def query(self, promql: str, now: datetime) -> float | None:
        """Evaluate ``TERM``, ``TERM / TERM`` or ``TERM - TERM`` (see the module docstring) at ``now``; None for a
        ratio over nothing (Prometheus returns an empty vector)."""
        text = " ".join(promql.split())
        for operator in (" / ", " - "):
            if operator in text:
                left, right = text.split(operator, 1)
                a, b = self._term(left, now), self._term(right, now)
                if operator == " - ":
                    return a - b
                return None if b == 0 else a / b
        return self._term(text, now)

    # ---------------------------------------------------------------------------------------- collector side

    def _usable(self, item: FeedbackItem, since: datetime | None, categories: tuple[str, ...] | list[str],
                consented_only: bool) -> bool:
        return ((since is None or item.time > since) and item.subject not in self.opted_out
                and (not categories or item.category in categories) and (item.consent or not consented_only))

    def negative_count(self, model: str, since: datetime | None, categories: tuple[str, ...] | list[str] = (),
                       consented_only: bool = True) -> int:
        """``GET /v1/feedback/count``: negative feedback since ``since``."""
        return sum(1 for i in self.items if i.negative and i.model == model
                   and self._usable(i, since, categories, consented_only))

    def backlog(self, model: str, since: datetime | None, categories: tuple[str, ...] | list[str] = ()
                ) -> tuple[BacklogItem, ...]:
        """``GET /v1/backlog`` (consented only): negative feedback by (category, scenario, cohort), by volume."""
        groups = Counter((i.category, i.scenario, i.cohort) for i in self.items
                         if i.negative and i.model == model and self._usable(i, since, categories, True))
        return tuple(BacklogItem(c or "other", s, h, n) for (c, s, h), n in groups.most_common())

    def export(self, model: str, *, since: datetime | None = None, categories: list[str] | tuple[str, ...] = (),
               scenarios: list[str] | tuple[str, ...] = (), cohorts: list[str] | tuple[str, ...] = ()
               ) -> list[FeedbackItem]:
        """``GET /v1/export``: consented feedback (positive and negative) of the model, filtered as asked."""
        return [i for i in self.items if i.model == model and self._usable(i, since, categories, True)
                and (not scenarios or i.scenario in scenarios) and (not cohorts or i.cohort in cohorts)]

    def corrections(self, model: str, since: datetime | None = None) -> list[FeedbackItem]:
        """Consented negative feedback with a correction: the labelled data a team's pipeline collects."""
        return [i for i in self.export(model, since=since) if i.negative and i.correction]
