"""The Rollout step machine and the judgement of one analysis look: pure functions, no I/O, ``now`` injected.

:func:`decide` is one look's every effect (:class:`kaizen.logic.effects.Effects`): from the Rollout's stored status
and what the controller gathered (:class:`Gathered`: the stable and canary Deployments, an analysis look, a user's
request, who holds the target), the canary to apply or delete, the promotion to apply, the status, the Events and
when to look next (:func:`next_due`). Inside it, :func:`next_action` is the step machine.

The controller (:mod:`kaizen.controllers.rollout`) gathers an :class:`Observation` — the stable Deployment's size,
the canary's available replicas, whether a promotion has rolled out, this tick's analysis look (built by
:func:`judge_look` from what Prometheus returned) and a user's action — and :func:`next_action` returns the new
status, the canary size to apply, whether to promote, and the Events to post. Everything it needs to resume after a
restart (step, step start, analysis start, counters) is in the status it returns.

Failure policy: a look with no data or a query error holds the rollout (phase Paused) and never lets a step end;
``consecutiveErrorLimit`` such looks, or ``inconclusiveLimit`` inconclusive looks once only a Pass is missing
(after an ``analysis`` step's duration, or at the promotion gate below), trigger ``onLimit``: Pause (wait for a
human) or Rollback. A Fail rolls back at once.

The promotion gate: when metrics are set, the last step ends only on a passing look taken during it, as if an
``analysis`` step closed the rollout. Without it, steps of timed pauses alone (the default steps an ImprovementLoop
uses when its template names none) promote a canary whose every look was Inconclusive — no traffic, too few
events, a margin never shown — on no evidence at all. Users expect what Argo Rollouts' background analysis does
(Inconclusive stops the rollout for a human) and what Flagger does (every check must pass). Rejecting such specs
instead would reject the default steps; asking for the Pass at the final weight, rather than at any step, also
stops a canary that passed at 10 % and then degraded during a later pause. Once the last step's own work is done
(its weight available, its pause over), Inconclusive looks count towards ``inconclusiveLimit`` as after an
``analysis`` step's duration, so a canary that never decides is not held for ever. A human's ``approve`` or
``promote`` overrides the gate: it is the decision the gate waits for.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from kaizen.api.common import parse_duration
from kaizen.api.rollout import (
    ActionRecord, Analysis, AnalysisMetric, AnalysisRecord, MetricEvidence, MetricResult, RolloutSpec, RolloutStatus,
    Step, TrackSample, UserAction,
)
from kaizen.logic import adapters, deployments
from kaizen.logic.conditions import Event, set_condition
from kaizen.logic.effects import Effects, Failure, blocked
from kaizen.logic.requests import pending
from kaizen.logic.routing import (
    ModelSplit, RouteError, RouteMissing, achieved_weight, canary_size, route_manifest, route_rules, route_share,
)
from kaizen.logic.stats import Counts, Evidence, judge_ratio

TERMINAL = ("Promoted", "RolledBack", "Aborted")
#: Analysis records kept in status, newest first: as many as Argo Rollouts keeps measurements per metric. Each is
#: a few KB as Python objects in the operator's memory (and in the exporter's), for every Rollout analysing; a
#: Rollout's evidence and counters carry its whole history, the records only show the latest looks.
MAX_RECORDS = 10
# The worst verdict of a look's metrics is the look's verdict.
_SEVERITY = {"Pass": 0, "Inconclusive": 1, "Error": 2, "Fail": 3}


@dataclass(frozen=True)
class MetricSample:
    """What Prometheus returned for one metric and one track; ``error`` when the query failed."""

    good: float | None = None
    total: float | None = None
    value: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class Action:
    """A user's request, read from the ``kaizen.dev/action*`` annotations."""

    action: UserAction
    by: str
    at: datetime


@dataclass(frozen=True)
class Look:
    """One analysis interval: its record, and the sequential test's state after it."""

    record: AnalysisRecord
    evidence: tuple[MetricEvidence, ...] = ()


@dataclass(frozen=True)
class Observation:
    """The world as the controller saw it this tick."""

    stable_replicas: int
    canary_available: int = 0
    stable_promoted: bool = False
    look: Look | None = None
    action: Action | None = None
    #: An adapter canary: what the stable's pods are known to serve (None: the canary is a Deployment).
    adapter: adapters.Synced | None = None


@dataclass(frozen=True)
class Decision:
    """What to do: the new status, the canary size (None: remove the canary), whether to promote, Events.

    ``owns_target`` is False for a Rollout refused its target (:func:`wait_for_target`): it touches no Deployment.
    """

    status: RolloutStatus
    canary_replicas: int | None
    promote: bool
    events: tuple[Event, ...] = field(default_factory=tuple)
    owns_target: bool = True


@dataclass(frozen=True)
class Contender:
    """A Rollout of a target Deployment that may hold it (:func:`holds_target`): not deleted, and with a spec that
    can be acted on."""

    name: str
    created: datetime
    phase: str | None = None


def target_holder(name: str, contenders: Sequence[Contender]) -> Contender | None:
    """The Rollout that holds the target Deployment, when it is another than ``name``; None when ``name`` holds it.

    One Rollout at a time owns its target (as in Argo Rollouts): two would overwrite each other's canary and
    promote in turn. The holder is computed, not stored: from the Rollouts of the target that have not ended, one
    that has started (it has a phase) comes before one that has not, so a newcomer never stops a rollout half-way;
    then the oldest, by creation time and then name. Every reader ranks the same list the same way, so an operator
    restart changes nothing, and two Rollouts looked at at once agree on who waits. A holder that ends or is
    deleted leaves the list, and the next in rank goes ahead.
    """
    ranked = sorted(contenders, key=lambda c: (c.phase is None, c.created, c.name))
    if not ranked or ranked[0].name == name:
        return None
    return ranked[0]


def wait_for_target(spec: RolloutSpec, status: RolloutStatus, holder: Contender, namespace: str,
                    action: Action | None, now: datetime) -> Decision:
    """A Rollout refused its target: it says which Rollout holds it and what to do, and touches nothing.

    The Warning Event is posted when the holder changes, not on every look. ``abort`` ends the waiting Rollout (it
    never started); ``promote`` and ``approve`` have nothing to act on yet and are recorded as ignored.
    """
    s = status.model_copy(deep=True)
    events: list[Event] = []
    target = f"{namespace}/{spec.target.deployment}"
    message = (f"Deployment {target} is held by Rollout {holder.name}, which has not ended; this Rollout waits and "
               f"touches nothing until it does. To go ahead sooner: `kaizen abort {holder.name}` or delete it; or "
               f"delete this Rollout.")
    if s.message != message:
        events.append(Event("Warning", "TargetInUse", message))
    s.message = message
    if action is not None:
        if action.action == "abort":
            outcome = "aborted: it never started, nothing was touched"
            s.phase = "Aborted"
            s.message = (f"Aborted by {action.by} at {action.at.isoformat()} before it started (Rollout "
                         f"{holder.name} held {target}); stable untouched.")
            events.append(Event("Normal", "Aborted", s.message))
        else:
            outcome = f"ignored: Rollout {holder.name} holds the target"
        s.last_action = ActionRecord(action=action.action, by=action.by, at=action.at, outcome=outcome)
        events.append(Event("Normal", "UserAction", f"{action.action} by {action.by}: {outcome}."))
    return Decision(status=s, canary_replicas=None, promote=False, events=tuple(events), owns_target=False)


def look_due(spec: RolloutSpec, status: RolloutStatus, now: datetime) -> bool:
    """Whether this look should read the metrics: the canary has served for an interval, and an interval has passed
    since the last look (:data:`LOOK_EARLY` before it will do).

    The first interval is left alone because Prometheus has not yet discovered and scraped a canary that just
    started, and that "no data" is no sign of trouble. A look is due an interval after the last (:func:`next_due`),
    so a restart right after a look does not look twice. (Looks were half an interval apart, when a 1 s timer drove
    them, so that a tick firing early never skipped an interval: at 500 Rollouts analysing, twice the work.)
    """
    if not spec.analysis.metrics or status.phase in TERMINAL or status.analysis_started_at is None:
        return False
    if status.current_step is not None and status.current_step >= len(spec.steps):
        return False
    interval = parse_duration(spec.analysis.interval)
    if now - status.analysis_started_at < interval:
        return False
    last = status.analysis[0].time if status.analysis else None
    return last is None or now - last >= interval - early(interval)


#: How early a look may read the metrics: a scheduler waking a hair before the due time (its timer and the clock are
#: not one) must not skip the look and wake again a moment later.
LOOK_EARLY = timedelta(seconds=1)


def early(interval: timedelta) -> timedelta:
    """:data:`LOOK_EARLY`, or a twentieth of a shorter interval's length."""
    return min(LOOK_EARLY, interval / 20)


def analysis_window(status: RolloutStatus, now: datetime, interval: timedelta) -> str:
    """The PromQL range ({{window}}) a look reads: everything since the canary first served, at least 2 intervals."""
    assert status.analysis_started_at is not None
    seconds = max((now - status.analysis_started_at).total_seconds(), 2 * interval.total_seconds())
    return f"{math.ceil(seconds)}s"


def _to_stats(evidence: MetricEvidence | None) -> Evidence | None:
    if evidence is None:
        return None
    stable, canary = evidence.stable, evidence.canary
    return Evidence(tuple(evidence.log_likelihood_ratios), Counts(stable.good or 0, stable.total or 0),
                    Counts(canary.good or 0, canary.total or 0))


def _to_api(name: str, evidence: Evidence) -> MetricEvidence:
    return MetricEvidence(
        name=name, log_likelihood_ratios=list(evidence.log_ratios),
        stable=TrackSample(good=evidence.stable.good, total=evidence.stable.total),
        canary=TrackSample(good=evidence.canary.good, total=evidence.canary.total),
    )


def judge_metric(
    metric: AnalysisMetric, stable: MetricSample, canary: MetricSample, alpha: float,
    evidence: MetricEvidence | None = None,
) -> tuple[MetricResult, MetricEvidence | None]:
    """One metric's verdict from both tracks' samples, and its sequential test's new state (ratio metrics).

    ``alpha`` is this metric's share of the bound; ``evidence`` the state after the previous look.
    """
    for track, sample in (("stable", stable), ("canary", canary)):
        if sample.error:
            return MetricResult(name=metric.name, verdict="Error",
                                message=f"{track} query failed: {sample.error}"), evidence
    if metric.ratio:
        missing = [t for t, s in (("stable", stable), ("canary", canary)) if s.good is None or s.total is None]
        if missing:
            return MetricResult(name=metric.name, verdict="Error",
                                message=f"no data for the {' and '.join(missing)} track: the queries returned "
                                "nothing (is the track scraped, and labelled?)"), evidence
        assert stable.good is not None and stable.total is not None
        assert canary.good is not None and canary.total is not None
        judgement = judge_ratio(Counts(stable.good, stable.total), Counts(canary.good, canary.total),
                                max_regression=metric.max_regression, alpha=alpha, min_samples=metric.min_samples,
                                evidence=_to_stats(evidence))
        return MetricResult(
            name=metric.name,
            stable=TrackSample(good=stable.good, total=stable.total, value=judgement.stable_rate),
            canary=TrackSample(good=canary.good, total=canary.total, value=judgement.canary_rate),
            delta=judgement.delta, ci_low=judgement.ci_low, ci_high=judgement.ci_high,
            evidence=judgement.evidence.value, verdict=judgement.verdict, message=judgement.message,
        ), _to_api(metric.name, judgement.evidence)
    return _judge_threshold(metric, stable, canary), None


def _judge_threshold(metric: AnalysisMetric, stable: MetricSample, canary: MetricSample) -> MetricResult:
    threshold = metric.threshold
    assert threshold is not None
    if canary.value is None:
        return MetricResult(name=metric.name, verdict="Error",
                            message="no data for the canary track: the query returned nothing")
    samples = dict(stable=TrackSample(value=stable.value), canary=TrackSample(value=canary.value),
                   delta=None if stable.value is None else canary.value - stable.value)
    if threshold.min is not None and canary.value < threshold.min:
        return MetricResult(name=metric.name, verdict="Fail", **samples,
                            message=f"canary {canary.value:g} is below the minimum {threshold.min:g}")
    if threshold.max is not None and canary.value > threshold.max:
        return MetricResult(name=metric.name, verdict="Fail", **samples,
                            message=f"canary {canary.value:g} is above the maximum {threshold.max:g}")
    return MetricResult(name=metric.name, verdict="Pass", **samples, message=f"canary {canary.value:g} within bounds")


def judge_look(
    analysis: Analysis, samples: dict[str, tuple[MetricSample, MetricSample]], *, step: int, weight: int,
    now: datetime, evidence: list[MetricEvidence] | None = None, achieved_weight: float | None = None,
) -> Look:
    """One analysis interval: every metric judged, the look's verdict the worst of them.

    ``samples`` maps a metric name to its (stable, canary) samples; ``evidence`` is the sequential tests' state
    from status. The ratio metrics share ``alpha`` equally (Bonferroni), so the false-rollback bound holds for the
    rollout as a whole.
    """
    ratios = sum(1 for m in analysis.metrics if m.ratio)
    alpha = analysis.alpha / max(ratios, 1)
    previous = {e.name: e for e in evidence or []}
    judged = [judge_metric(m, *samples[m.name], alpha, previous.get(m.name)) for m in analysis.metrics]
    results = [result for result, _ in judged]
    verdict = max((r.verdict for r in results), key=_SEVERITY.__getitem__, default="Inconclusive")
    return Look(AnalysisRecord(time=now, step=step, weight=weight, achieved_weight=achieved_weight, verdict=verdict,
                               metrics=results),
                tuple(state for _, state in judged if state is not None))


def _summary(record: AnalysisRecord) -> str:
    return "; ".join(f"{m.name}: {m.verdict} ({m.message})" if m.message else f"{m.name}: {m.verdict}"
                     for m in record.metrics)


def _share(record: AnalysisRecord) -> str:
    """The canary's share in a look, as Events say it: the achieved share, and the weight asked when it differs."""
    if record.achieved_weight is None or record.achieved_weight == record.weight:
        return f"{record.weight}%"
    return f"{record.achieved_weight:g}% of traffic ({record.weight}% asked)"


class _Machine:
    """One transition's working state: the status being rebuilt and the Events it produced."""

    def __init__(self, spec: RolloutSpec, status: RolloutStatus, observation: Observation, now: datetime):
        self.spec, self.observation, self.now = spec, observation, now
        self.status = status.model_copy(deep=True)
        self.events: list[Event] = []

    def event(self, type: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.events.append(Event(type, reason, message))

    @property
    def step(self) -> Step | None:
        index = self.status.current_step or 0
        return self.spec.steps[index] if index < len(self.spec.steps) else None

    @property
    def gated(self) -> bool:
        """Whether the current step is the last one and metrics are set: the promotion gate."""
        return bool(self.spec.analysis.metrics) and self.status.current_step == len(self.spec.steps) - 1

    @property
    def needs_pass(self) -> bool:
        """Whether the current step ends only on a passing look: an analysis step, or the promotion gate."""
        step = self.step
        return step is not None and (step.analysis is not None or self.gated)

    def finish(self, phase: Literal["Promoted", "RolledBack", "Aborted"], message: str) -> None:
        self.status.phase, self.status.message, self.status.awaiting_approval = phase, message, None
        self.status.canary_replicas, self.status.canary_weight, self.status.achieved_weight = 0, 0, 0.0
        self.event("Warning" if phase == "RolledBack" else "Normal", phase, message)

    def start_step(self, index: int) -> None:
        self.status.current_step, self.status.step_started_at = index, self.now
        self.status.consecutive_inconclusive = 0
        if index >= len(self.spec.steps):
            self.status.message = f"Promoting {self.spec.canary_model.version}: updating the stable Deployment."
            self.event("Normal", "Promoting", self.status.message)
            return
        step = self.spec.steps[index]
        if step.set_weight is not None:
            routing, stable = self.spec.traffic_routing, self.observation.stable_replicas
            adapter = adapters.routing(self.spec)
            self.status.canary_weight = step.set_weight
            self.status.canary_replicas = canary_size(routing, stable, step.set_weight, adapter is not None)
            self.status.achieved_weight = achieved_weight(routing, stable, self.status.canary_replicas,
                                                          step.set_weight, adapter is not None)
            replicas = self.status.canary_replicas
            if adapter is not None:
                where = (f"HTTPRoute {routing.gateway_api.http_route}" if routing.gateway_api is not None
                         else f"the servers' alias {adapter.served_model_name}")
                name = adapters.adapter_name(adapter, self.spec.canary_model)
                how = f"set by model name on {where}: adapter {name} on the stable's own pods, no canary Deployment"
            elif routing.gateway_api is not None:
                how = (f"set on HTTPRoute {routing.gateway_api.http_route} ({replicas} canary "
                       f"replica{'s' * (replicas != 1)} sized for it)")
            else:
                how = (f"asked; {self.status.achieved_weight:g}% achieved: {replicas} canary "
                       f"replica{'s' * (replicas != 1)} beside {stable} stable")
            self.event("Normal", "WeightSet", f"Step {index}: canary weight {step.set_weight}% {how}.")
        elif step.pause is not None and step.pause.duration is None:
            self.status.phase, self.status.awaiting_approval = "Paused", True
            self.status.message = f"Step {index}: paused until `kaizen approve` or `kaizen promote`."
            self.event("Normal", "AwaitingApproval", self.status.message)

    def limit(self, what: str) -> None:
        policy = self.spec.analysis.failure_policy
        if policy.on_limit == "Rollback":
            self.finish("RolledBack", f"Rolled back: {what}.")
        else:
            self.status.phase, self.status.awaiting_approval = "Paused", True
            self.status.message = f"Paused: {what}; `kaizen approve` resumes, `kaizen abort` ends it."
            self.event("Warning", "AwaitingApproval", self.status.message)

    def apply_action(self, action: Action) -> None:
        s = self.status
        if s.phase in TERMINAL:
            outcome = f"ignored: the rollout is already {s.phase}"
        elif (s.current_step or 0) >= len(self.spec.steps) and action.action in ("abort", "promote"):
            # Past the last step the stable Deployment already carries the candidate: an abort could no longer
            # leave it untouched, so the promotion completes (a rollback is a new Rollout).
            outcome = "ignored: the promotion is already applied to the stable Deployment"
        elif action.action == "abort":
            outcome = "aborted: canary removed, stable untouched"
            self.finish("Aborted", f"Aborted by {action.by} at {action.at.isoformat()}; stable untouched.")
        elif action.action == "promote":
            outcome = "promoting: remaining steps skipped"
            s.phase, s.awaiting_approval, s.consecutive_errors = "Progressing", None, 0
            self.start_step(len(self.spec.steps))
        elif not s.awaiting_approval:
            outcome = "ignored: the rollout is not waiting for approval"
        else:
            outcome = f"approved: step {s.current_step} completed"
            s.phase, s.awaiting_approval, s.consecutive_errors = "Progressing", None, 0
            self.start_step((s.current_step or 0) + 1)
        s.last_action = ActionRecord(action=action.action, by=action.by, at=action.at, outcome=outcome)
        self.event("Normal", "UserAction", f"{action.action} by {action.by}: {outcome}.")

    def record(self, observed: Look) -> None:
        s, policy, look = self.status, self.spec.analysis.failure_policy, observed.record
        previous = s.analysis[0].verdict if s.analysis else None
        s.analysis = [look, *s.analysis][:MAX_RECORDS]
        s.evidence = list(observed.evidence)
        summary = _summary(look)
        # A Warning at every look that finds trouble; a Normal verdict only when it changes: the status records every
        # look, and an Event per look (1,000 Rollouts looking every 10s: 100 Event writes/s) says nothing new.
        if look.verdict in ("Fail", "Error") or look.verdict != previous:
            self.event("Warning" if look.verdict in ("Fail", "Error") else "Normal", f"Analysis{look.verdict}",
                       f"Step {look.step} at {_share(look)}: {summary}"[:1024])
        if look.verdict == "Fail":
            failed = [m for m in look.metrics if m.verdict == "Fail"]
            self.finish("RolledBack", "Rolled back: " + "; ".join(f"metric {m.name} failed: {m.message}"
                                                                  for m in failed))
            return
        if look.verdict == "Error":
            s.consecutive_errors = (s.consecutive_errors or 0) + 1
            if s.consecutive_errors >= policy.consecutive_error_limit:
                if policy.on_limit == "Rollback" or not s.awaiting_approval:  # already waiting: say it once
                    self.limit(f"{s.consecutive_errors} analysis intervals in a row without data ({summary})")
            elif not s.awaiting_approval:
                s.phase = "Paused"
                s.message = (f"Holding: no usable metrics ({s.consecutive_errors} of "
                             f"{policy.consecutive_error_limit} intervals): {summary}")
            return
        s.consecutive_errors = 0
        if not s.awaiting_approval:
            s.phase = "Progressing"
        step = self.step
        if look.verdict == "Inconclusive" and step is not None and self.waiting_for_pass():
            s.consecutive_inconclusive = (s.consecutive_inconclusive or 0) + 1
            if s.consecutive_inconclusive >= policy.inconclusive_limit and (
                    policy.on_limit == "Rollback" or not s.awaiting_approval):
                after = (f"after step {s.current_step}'s {step.analysis.duration}" if step.analysis is not None
                         else f"at the last step ({s.current_step}), where promotion needs a passing look")
                self.limit(f"{s.consecutive_inconclusive} inconclusive analysis intervals {after} ({summary})")
        elif look.verdict == "Pass":
            s.consecutive_inconclusive = 0

    def elapsed(self, duration: str) -> bool:
        assert self.status.step_started_at is not None
        return self.now - self.status.step_started_at >= parse_duration(duration)

    def passed_here(self) -> bool:
        """Whether the latest look passed, and was taken during the current step."""
        s = self.status
        latest = s.analysis[0] if s.analysis else None
        assert s.step_started_at is not None
        return (latest is not None and latest.verdict == "Pass" and latest.step == s.current_step
                and latest.time >= s.step_started_at)

    def own_work_done(self) -> bool:
        """Whether the current step did what it is for: its weight is available, its duration over."""
        step, s = self.step, self.status
        assert step is not None
        if step.set_weight is not None:
            synced = self.observation.adapter
            if synced is not None:  # the pods hold the adapter, and the alias's weight is this step's
                return synced.listed and synced.weight in (None, s.canary_weight)
            return self.observation.canary_available >= (s.canary_replicas or 0)
        if step.analysis is not None:
            return self.elapsed(step.analysis.duration)
        assert step.pause is not None
        return step.pause.duration is not None and self.elapsed(step.pause.duration)

    def waiting_for_pass(self) -> bool:
        """Whether only a passing look keeps the current step from ending (so an Inconclusive one counts)."""
        return self.needs_pass and self.own_work_done()

    def step_done(self) -> bool:
        return self.own_work_done() and (not self.needs_pass or self.passed_here())

    def advance(self) -> None:
        s = self.status
        while s.phase == "Progressing" and (s.current_step or 0) < len(self.spec.steps) and self.step_done():
            step = self.step
            if step is not None and step.set_weight is not None and s.analysis_started_at is None:
                s.analysis_started_at = self.now
            self.start_step((s.current_step or 0) + 1)
        if s.phase == "Progressing" and (s.current_step or 0) >= len(self.spec.steps) \
                and self.observation.stable_promoted:
            self.finish("Promoted", f"Promoted {self.spec.canary_model.version}: the stable Deployment serves "
                        f"{self.spec.canary_model.uri}.")
        elif s.phase == "Progressing" and (s.current_step or 0) < len(self.spec.steps):
            s.message = f"Step {s.current_step} of {len(self.spec.steps)} at canary weight {s.canary_weight or 0}%."
            if self.waiting_for_pass():
                latest = s.analysis[0].verdict if s.analysis else "none yet"
                before = "promoting" if self.gated else "the next step"
                s.message += f" Holding for a passing analysis look before {before} (latest: {latest})."


def next_action(spec: RolloutSpec, status: RolloutStatus, observation: Observation, now: datetime) -> Decision:
    """One transition of the step machine.

    The canary size and the promotion it returns are targets to apply, not increments, and the status carries the
    step and its start: a retried or restarted reconcile re-applies the same targets and never scales or promotes
    twice.
    """
    m = _Machine(spec, status, observation, now)
    s = m.status
    if s.phase is None:
        s.phase, s.canary_weight, s.canary_replicas, s.achieved_weight = "Progressing", 0, 0, 0.0
        s.consecutive_errors = s.consecutive_inconclusive = 0
        m.event("Normal", "Started", f"Rolling out {spec.canary_model.version} beside {spec.stable_model.version}.")
        m.start_step(0)
    if observation.action is not None:
        m.apply_action(observation.action)
    if observation.look is not None and s.phase not in TERMINAL:
        m.record(observation.look)
    if s.phase not in TERMINAL:
        m.advance()
    promoting = s.phase not in TERMINAL and (s.current_step or 0) >= len(spec.steps)
    canary = None if s.phase in TERMINAL else s.canary_replicas or 0
    return Decision(status=s, canary_replicas=canary, promote=promoting, events=tuple(m.events))


#: How soon a Rollout waiting on a Deployment looks again (its canary becoming available, a promotion rolling out):
#: Deployments are not watched, so this is polled.
DEPLOYMENT_POLL = timedelta(seconds=1)
#: The longest a Rollout under way goes without a look when nothing else is due (a safety net, not a schedule).
IDLE_LOOK = timedelta(seconds=30)


def next_due(spec: RolloutSpec, status: RolloutStatus, now: datetime) -> datetime | None:
    """When the step machine next needs to look: the next analysis look, the end of a timed step, or a poll while it
    waits on a Deployment. Once the rollout has ended: the canary's removal while it is still to come, else None;
    None also for an untimed pause without metrics, which only a user's action (a change to the Rollout, which
    wakes it) ends."""
    if status.phase in TERMINAL:
        return status.canary_removal_at
    if status.phase is None:
        return now
    index = status.current_step or 0
    if index >= len(spec.steps):
        return now + DEPLOYMENT_POLL  # promoting: until the stable Deployment has rolled out
    due: list[datetime] = []
    step = spec.steps[index]
    if step.set_weight is not None:
        due.append(now + DEPLOYMENT_POLL)
    duration = step.analysis.duration if step.analysis else step.pause.duration if step.pause else None
    if duration is not None and status.step_started_at is not None:
        due.append(status.step_started_at + parse_duration(duration))
    if spec.analysis.metrics and status.analysis_started_at is not None:
        interval = parse_duration(spec.analysis.interval)
        first = status.analysis_started_at + interval
        due.append(max(first, status.analysis[0].time + interval) if status.analysis else first)
    future = [t for t in due if t > now]
    if future:
        return min(future)
    if step.pause is not None and step.pause.duration is None and not spec.analysis.metrics:
        return None
    return now + min(IDLE_LOOK, DEPLOYMENT_POLL * 5)


# --------------------------------------------------------------------------------------------------- a look

#: The requests a Rollout takes (the ``kaizen.dev/action`` annotation), and what to say of any other.
ACTIONS = ("promote", "abort", "approve")
ACTIONS_USAGE = "a Rollout: use promote, abort or approve (kaizen promote|abort|approve ROLLOUT)"
#: How soon a Rollout that waits for something that is not a change of its own looks again: its target Deployment
#: to appear, or its HTTPRoute to be fixed.
RECHECK = timedelta(seconds=5)
#: How soon a Rollout waiting for another Rollout to release its target looks again unwoken: a safety net, as the
#: holder's end wakes it (``kaizen.controllers.rollout.free_target``). Polled every RECHECK, k Rollouts waiting on one
#: target cost 2k/5 requests a second at rest (the fuzz test with the operator running measured 12 for 29 of them).
TARGET_RECHECK = timedelta(minutes=5)
#: Reason of the InvalidSpec condition while the HTTPRoute cannot be routed as the spec says.
INVALID_ROUTE = "InvalidRoute"
STATUS_FIELDS = frozenset(info.alias or name for name, info in RolloutStatus.model_fields.items())
#: Written by the spec handler (reconcile.accept), not by the step machine.
_SPEC_HANDLER_FIELDS = frozenset({"observedGeneration", "conditions"})


def parse_action(annotations: dict[str, str], status: RolloutStatus) -> Action | None:
    """The user's request; None when there is none or status.lastAction shows it handled. ValueError if unusable."""
    request = pending(annotations, ACTIONS, status.last_action, ACTIONS_USAGE)
    return None if request is None else Action(request.action, request.by, request.at)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Gathered:
    """What the controller read for one look at a Rollout, beside the Rollout itself.

    ``holder`` is another Rollout holding the target (None: this one may touch it), and is known only when
    ``holder_known``: the target's Rollouts are listed only when the look is about to touch a Deployment, so that a
    Rollout at rest lists none.
    """

    stable: dict[str, Any] | None
    canary: dict[str, Any] | None = None
    look: Look | None = None
    action: Action | None = None
    holder: Contender | None = None
    holder_known: bool = False
    #: With Gateway API routing: the HTTPRoute as read (None: there is none).
    route: dict[str, Any] | None = None
    #: An adapter canary's ConfigMap as read (None: there is none).
    configmap: dict[str, Any] | None = None


def status_of(stored: dict[str, Any]) -> RolloutStatus:
    return RolloutStatus.model_validate({k: v for k, v in stored.items() if k in STATUS_FIELDS})


def decide(spec: RolloutSpec, stored: dict[str, Any], gathered: Gathered, now: datetime, *,
           rollout: dict[str, Any]) -> Effects | None:
    """One look at a Rollout (``rollout``: its apiVersion, kind and metadata; ``stored``: its status as stored).

    None when the look would touch a Deployment (or the Rollout has not started) and who holds the target is not
    known: the controller lists the target's Rollouts into ``gathered`` and decides again.
    """
    current = status_of(stored)
    meta = rollout["metadata"]
    namespace, generation = meta["namespace"], meta.get("generation")
    if current.phase is None and not gathered.holder_known:
        return None
    if gathered.holder is not None:
        return _conclude(spec, stored, current, wait_for_target(spec, current, gathered.holder, namespace,
                                                                gathered.action, now),
                         now, generation, due=now + TARGET_RECHECK)
    target = spec.target.deployment
    stable, canary = gathered.stable, gathered.canary
    if stable is None:
        return _hold(stored, now, f"The target Deployment {namespace}/{target} does not exist; waiting for it.")
    try:
        container = deployments.container_name(stable, spec.target.container)
    except ValueError as problem:
        return _hold(stored, now, str(problem))
    canary_name = deployments.canary_name(target)
    if canary is not None and not deployments.owned_by_rollout(canary):
        message = (f"Deployment {namespace}/{canary_name} exists and is not owned by a Kaizen Rollout; Kaizen will "
                   "not take it over: delete or rename it")
        return blocked(stored, Failure("NameConflict", message, final=False), now, generation)
    model_env = spec.target.model_env
    serving = deployments.serves(stable, container=container, model_env=model_env, uri=spec.canary_model.uri)
    adapter = adapters.routing(spec)
    cm_name = adapters.configmap_name(target)
    if adapter is not None and gathered.configmap is not None and not deployments.owned_by_rollout(
            gathered.configmap):
        message = (f"ConfigMap {namespace}/{cm_name} exists and is not owned by a Kaizen Rollout; Kaizen will not "
                   "take it over for the adapter canary: delete or rename it")
        return blocked(stored, Failure("NameConflict", message, final=False), now, generation)
    observation = Observation(
        stable_replicas=stable["spec"].get("replicas", 1), canary_available=deployments.available(canary),
        stable_promoted=serving and deployments.rolled_out(stable), look=gathered.look, action=gathered.action,
        adapter=None if adapter is None else adapters.synced(gathered.configmap, spec, stable, container, now),
    )
    decision = next_action(spec, current, observation, now)
    if adapter is not None:  # the canary is an adapter on the stable's pods: no canary Deployment
        decision = dataclasses.replace(decision, canary_replicas=None)
    route_effect = None
    if spec.traffic_routing.gateway_api is not None:
        try:
            route_effect = _route_change(spec, decision, observation, gathered.route, namespace, meta["name"])
        except RouteError as problem:
            return _invalid_route(stored, str(problem), now, generation)
        if route_effect[1] is not None:
            decision.status.achieved_weight = route_effect[1]
    resize = decision.canary_replicas is not None and (
        canary is None or canary["spec"].get("replicas") != decision.canary_replicas)
    remove = decision.canary_replicas is None and _canary_goes(spec, current, decision, canary, now)
    promote = decision.promote and not serving
    manifest = route_effect[0] if route_effect else None
    pool: list[dict[str, Any]] = []  # an adapter canary's ConfigMap and the stable's mount of it
    if adapter is not None:
        ended = decision.status.phase in TERMINAL
        wanted = adapters.adapter_set(spec, decision.status.canary_weight or 0, ended)
        if not adapters.written(gathered.configmap, wanted) and not (ended and gathered.configmap is None):
            pool.append(adapters.configmap_manifest(rollout, target, wanted, now))
        if not ended and not promote and not adapters.mounted(stable, container, adapter):
            model = adapters.current_model(stable, container, model_env, spec.stable_model)
            pool.append(adapters.stable_patch(stable, container=container, model_env=model_env, model=model,
                                              adapter=adapter))
    if (resize or remove or promote or manifest or pool) and not gathered.holder_known:
        return None
    apply: list[dict[str, Any]] = []
    log: list[str] = []
    for body in pool:
        if body["kind"] == "ConfigMap":
            # Before the route (for the canary's weight) and after it (for its end) alike: a route that sends the
            # adapter traffic waits for syncPeriod after this write (adapters.synced), and at the end the route
            # is restored in this same look, while the pods still hold the adapter.
            log.append(f"Wrote adapters configmap={cm_name} adapters="
                       f"{','.join(a.name for a in wanted.adapters) or '-'} aliases="
                       f"{','.join(f'{a.name}({a.targets[-1].weight}%)' for a in wanted.aliases) or '-'}")
        else:
            log.append(f"Mounted adapters deployment={target} configmap={cm_name}")
    apply.extend(pool)
    if manifest is not None:
        # Before the canary goes (apply precedes delete): the route never sends traffic to a removed canary.
        apply.append(manifest)
        log.append(f"Routed httproute={spec.traffic_routing.gateway_api.http_route} "  # type: ignore[union-attr]
                   f"canaryWeight={route_effect[1]:g}")  # type: ignore[index]
    if resize:
        assert decision.canary_replicas is not None
        apply.append(deployments.canary_manifest(stable, rollout, container=container, model_env=model_env,
                                                 model=spec.canary_model, replicas=decision.canary_replicas))
        log.append(f"Scaled canary deployment={canary_name} replicas={decision.canary_replicas}")
    if promote:
        apply.append(deployments.model_patch(stable, container=container, model_env=model_env, model=spec.canary_model)
                     if adapter is None else
                     adapters.stable_patch(stable, container=container, model_env=model_env, model=spec.canary_model,
                                           adapter=adapter))
        log.append(f"Promoted deployment={target} model={spec.canary_model.version}")
    if remove:
        log.append(f"Removed canary deployment={canary_name}")
    if spec.traffic_routing.gateway_api is not None:
        stored = _route_valid(stored, now, generation)
    concluded = _conclude(spec, stored, current, decision, now, generation, due=next_due(spec, decision.status, now))
    return Effects(status=concluded.status, apply=tuple(apply), delete=(("Deployment", canary_name),) if remove else (),
                   events=concluded.events, log=(*log, *concluded.log), next_due=concluded.next_due)


def _canary_goes(spec: RolloutSpec, current: RolloutStatus, decision: Decision, canary: dict[str, Any] | None,
                 now: datetime) -> bool:
    """Whether the canary Deployment (``canary``, as read), which the decision no longer wants, is removed in this
    look; ``decision.status.canaryRemovalAt`` says when it will be, while it is still to come.

    With Gateway API routing the look that ends the rollout writes the route back to 100/0, and the gateway loads
    it some time later (Traefik, about 2 s): a canary removed in that look would fail the requests the gateway still
    sends it. So the canary stays for the route's ``scaleDownDelay``, with its removal time in status, so that a
    restarted operator keeps it (and the Rollout holds its target until then, :func:`holds_target`).
    """
    routing = spec.traffic_routing.gateway_api
    if canary is None:
        decision.status.canary_removal_at = None
        return False
    if routing is None or decision.status.phase not in TERMINAL:
        return True
    if current.phase not in TERMINAL:  # ended in this look
        decision.status.canary_removal_at = now + parse_duration(routing.scale_down_delay)
    due = decision.status.canary_removal_at
    if due is not None and now < due:
        return False
    decision.status.canary_removal_at = None
    return True


def holds_target(status: Mapping[str, Any]) -> bool:
    """Whether a Rollout (its status as stored) holds its target against others that have not started: one under
    way or not started yet, and one that ended but whose canary Deployment is still to be removed (a newcomer
    would take over that very Deployment, :func:`_canary_goes`)."""
    return status.get("phase") not in TERMINAL or status.get("canaryRemovalAt") is not None


def _route_change(spec: RolloutSpec, decision: Decision, observation: Observation, route: dict[str, Any] | None,
                  namespace: str, rollout: str) -> tuple[dict[str, Any] | None, float | None]:
    """Gateway API routing: (the route's apply configuration, or None when it is right already; the canary's
    share in the route after this look). Raises :class:`RouteError`.

    The route follows the step's weight once the canary Deployment is available at its size, so that no request
    is routed to a canary that cannot answer it yet; an ended rollout restores 100/0 (and the canary goes).
    """
    routing = spec.traffic_routing.gateway_api
    assert routing is not None
    if route is None:
        raise RouteMissing(namespace, routing)
    rules = (route.get("spec") or {}).get("rules") or []
    status = decision.status
    adapter = adapters.routing(spec)
    model = None if adapter is None else ModelSplit(adapter.model_name_header, adapter.served_model_name,
                                                    adapters.adapter_name(adapter, spec.canary_model))
    if status.phase in TERMINAL:
        weight: int | None = 0
    elif observation.adapter.listed if observation.adapter is not None else \
            observation.canary_available >= max(1, decision.canary_replicas or 0):
        weight = status.canary_weight or 0
    else:
        weight = None  # the canary is not ready at its size (or its adapter not loaded): the route stays as it is
    # Judged on every look, also while the route stays as it is: a route that cannot be routed is said at once.
    desired = route_rules(rules, routing, route=f"{namespace}/{routing.http_route}", rollout=rollout,
                          weight=weight or 0, canary_version=spec.canary_model.version, model=model)
    if weight is None:
        # The route sends the canary what it did; a route without the canary's backendRef yet sends it nothing.
        share = route_share(rules, routing, model)
        return None, 0.0 if share is None else share
    return (None if desired == rules else route_manifest(route, desired)), float(weight)


def _route_valid(stored: dict[str, Any], now: datetime, generation: int | None) -> dict[str, Any]:
    """``stored`` with an InvalidRoute condition cleared (the route can be routed again), as the spec handler would
    have left the conditions for a valid spec."""
    conditions = list(stored.get("conditions") or [])
    invalid = next((c for c in conditions if c.get("type") == "InvalidSpec"), None)
    if invalid is None or invalid.get("reason") != INVALID_ROUTE:
        return stored
    conditions = [c for c in conditions if c.get("type") != "InvalidSpec"]
    conditions = set_condition(conditions, type="Ready", status="True", reason="SpecAccepted",
                               message="The Rollout spec is valid.", now=now, generation=generation)
    return {**stored, "conditions": conditions}


def _invalid_route(stored: dict[str, Any], message: str, now: datetime, generation: int | None) -> Effects:
    """The route cannot be routed as the spec says: InvalidSpec (reason InvalidRoute) with what to do, a Warning
    Event once, nothing touched, and a look again later (a route created or fixed later is picked up)."""
    conditions = list(stored.get("conditions") or [])
    before = next((c for c in conditions if c.get("type") == "InvalidSpec"), None)
    conditions = set_condition(conditions, type="InvalidSpec", status="True", reason=INVALID_ROUTE, message=message,
                               now=now, generation=generation)
    conditions = set_condition(conditions, type="Ready", status="False", reason="InvalidSpec",
                               message="The spec cannot be acted on; see the InvalidSpec condition.", now=now,
                               generation=generation)
    said = before is not None and before.get("message") == message
    return Effects(status={"conditions": conditions, "message": message},
                   events=() if said else (Event("Warning", INVALID_ROUTE, message[:1024]),),
                   log=() if said else (f"Refused route: {message}",), next_due=now + RECHECK)


def _conclude(spec: RolloutSpec, stored: dict[str, Any], current: RolloutStatus, decision: Decision, now: datetime,
              generation: int | None, *, due: datetime | None) -> Effects:
    """The decided status (every field the step machine owns, and ``Progressing``), its Events and its log line."""
    new = decision.status.to_wire()
    fields: dict[str, Any] = {key: new.get(key) for key in STATUS_FIELDS - _SPEC_HANDLER_FIELDS}
    fields["conditions"] = _progressing(stored, decision, now, generation)
    log: tuple[str, ...] = ()
    if decision.status.phase != current.phase:
        log = (f"Rollout phase={decision.status.phase} step={decision.status.current_step} "
               f"message={decision.status.message!r}",)
    elif not decision.owns_target and decision.events:
        log = (f"Refused target={spec.target.deployment} message={decision.status.message!r}",)
    return Effects(status=fields, events=decision.events, log=log, next_due=due)


def _progressing(stored: dict[str, Any], decision: Decision, now: datetime,
                 generation: int | None) -> list[dict[str, Any]]:
    """The conditions with ``Progressing``: True while the rollout runs, False with the outcome once it ended, and
    False with reason ``TargetInUse`` while another Rollout holds the target."""
    status = decision.status
    ended = status.phase in TERMINAL
    reason: str = status.phase or "Progressing"
    if not decision.owns_target and not ended:
        reason = "TargetInUse"
    return set_condition(list(stored.get("conditions") or []), type="Progressing",
                         status="True" if decision.owns_target and not ended else "False", reason=reason,
                         message=status.message or "", now=now, generation=generation)


def _hold(stored: dict[str, Any], now: datetime, message: str) -> Effects:
    """Wait for the target: say why in status, and once in a Warning Event (not on every look)."""
    said = stored.get("message") == message
    return Effects(status={"message": message},
                   events=() if said else (Event("Warning", "TargetUnavailable", message),), next_due=now + RECHECK)
