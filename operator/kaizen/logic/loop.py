"""The ImprovementLoop's decision engine: from what was observed to one action, with its reason and evidence.

Pure: the controller gathers the world into :class:`Gathered` (signal readings, children, feedback, a user's
request), and :func:`look` returns :class:`Effects` — every effect of one look: the status to write, the child to
create and the ones to delete, the Events, the decision for the audit log, whether the user's request is answered,
and when to look next. The controller applies them and nothing else. Inside, :func:`decide` picks the one action
(a :class:`Plan`: why, on what numbers, the child to create if any).

The order of :func:`decide` is the policy, most important first: paused, a child still running, degraded, a
candidate that passed its gates (roll it out), the signals (healthy, unknown, breached), a breach right after a
promotion (roll back), then the guards on a retrain (cooldown, weekly limit, GPU budget, feedback volume, same data
after a failure) and approval.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from kaizen.api.common import API_GROUP, API_VERSION, ModelRef, parse_duration
from kaizen.api.improvementloop import (
    Budget, Candidate, Decision, ImprovementLoopSpec, ImprovementLoopStatus, LoopPhase, Policy, RequestRecord,
    ServedModel, Signal, SignalStatus,
)
from kaizen.logic import effects as applied
from kaizen.logic.conditions import Event

Action = Literal["Nothing", "Wait", "Retrain", "Rollback", "RollOut", "AwaitApproval", "Paused", "Degraded"]
WEEK = timedelta(days=7)
RETRAIN_FINISHED = ("Succeeded", "Failed")
#: A look that changes nothing else records its time (status.lastObserved) only every this many intervals: a status
#: write per look would be the whole cost of a loop at rest (1,000 loops every 30s: 33 writes/s), the heartbeat
#: anti-pattern Kubernetes moved Node status off (kubelet: unchanged status reported every 5 minutes).
RECORD_EVERY_LOOKS = 5
ROLLOUT_FINISHED = ("Promoted", "RolledBack", "Aborted")


@dataclass(frozen=True)
class Reading:
    """One signal's value as Prometheus returned it (None: no data or an error), and for a signal on the collector's
    drift or evaluation metrics what :func:`companion_evidence` made of its :func:`companion_queries`."""

    name: str
    value: float | None
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Child:
    """A RetrainJob or Rollout owned by the loop, as far as decisions care."""

    kind: Literal["RetrainJob", "Rollout"]
    name: str
    created: datetime
    phase: str | None = None
    verdict: str | None = None
    finished: datetime | None = None
    gpu_seconds: float = 0.0
    candidate: ModelRef | None = None
    retrain_job: str | None = None
    rollback: bool = False
    loop_generation: int | None = None
    decision_id: str | None = None
    summary: str | None = None
    message: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    #: The evidence of the decision that created the child, from its immutable spec.reason.
    reason_evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.phase not in (RETRAIN_FINISHED if self.kind == "RetrainJob" else ROLLOUT_FINISHED)

    @property
    def failed(self) -> bool:
        if self.kind == "RetrainJob":
            return self.phase == "Failed" or (self.phase == "Succeeded" and self.verdict != "Passed")
        return self.phase in ("RolledBack", "Aborted")

    @property
    def passed(self) -> bool:
        return self.kind == "RetrainJob" and self.phase == "Succeeded" and self.verdict == "Passed"

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def action(self) -> Action:
        """The decision that creates a child of this kind and role."""
        return "Retrain" if self.kind == "RetrainJob" else "Rollback" if self.rollback else "RollOut"

    def answers(self, request: Request) -> bool:
        """Whether this child was created on ``request`` (its spec.reason records who asked, and when)."""
        by, at = (("requestedBy", "requestedAt") if request.action == "retrain" else ("approvedBy", "approvedAt"))
        return self.reason_evidence.get(by) == request.by and self.reason_evidence.get(at) == _time(request.at)


@dataclass(frozen=True)
class BacklogItem:
    """A group of negative feedback from the collector's backlog."""

    category: str
    scenario: str | None
    cohort: str | None
    count: int


@dataclass(frozen=True)
class Feedback:
    """Consented negative feedback since the last retrain, and the backlog; ``error`` when the collector failed."""

    new_items: int | None = None
    backlog: tuple[BacklogItem, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class Request:
    """What a user asked for through the CLI (annotations on the loop): ``approve`` or ``retrain``."""

    action: Literal["approve", "retrain"]
    by: str
    at: datetime


@dataclass(frozen=True)
class Observed:
    signals: tuple[SignalStatus, ...]
    children: tuple[Child, ...] = ()
    feedback: Feedback | None = None
    request: Request | None = None
    paused: bool = False
    failures_acknowledged: datetime | None = None
    #: Signal name -> what its reading's companions said (:attr:`Reading.detail`), for the decision evidence.
    details: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class ChildPlan:
    """A child to create: deterministic name, so that a retry or a restart adopts it instead of duplicating it."""

    kind: Literal["RetrainJob", "Rollout"]
    name: str
    spec: dict[str, Any]


@dataclass(frozen=True)
class Plan:
    action: Action
    code: str  # stable CamelCase reason: the log records a decision only when (action, code) changes
    reason: str
    phase: LoopPhase
    evidence: dict[str, Any] = field(default_factory=dict)
    create: ChildPlan | None = None
    consumes_request: bool = False


#: Waits that pass by themselves: a user's request waits through them instead of being answered.
TRANSIENT_WAITS = frozenset({"NoData", "CollectorUnavailable"})


def answer(plan: Plan, request: Request, children: tuple[Child, ...]) -> str | None:
    """What the loop did about a user's request, for status.lastAction; None while it must wait (a transient wait:
    the request is kept, not answered)."""
    done = next((c for c in children if c.answers(request)), None)
    if done is not None:  # acted on before a restart that kept the status from recording it
        return f"{request.action}: created {done.ref}"
    if plan.action == "Wait" and plan.code in TRANSIENT_WAITS:
        return None
    if plan.consumes_request:
        return f"{request.action}: created {plan.create.kind}/{plan.create.name}" if plan.create else request.action
    return f"not needed: {plan.reason}"[:1024]


# ----------------------------------------------------------------------------------------------------- signals


def breached(signal: Signal, value: float) -> bool:
    return (signal.min is not None and value < signal.min) or (signal.max is not None and value > signal.max)


def observe_signals(
    signals: list[Signal], readings: dict[str, Reading], previous: list[SignalStatus], now: datetime
) -> tuple[SignalStatus, ...]:
    """New signal states. A breach counts once sustained for ``for``, and clears only after ``for`` within bounds
    (hysteresis, so a flapping value does not flap the loop). No data is Unknown, never Healthy."""
    before = {s.name: s for s in previous}
    states = []
    for signal in signals:
        reading = readings.get(signal.name, Reading(signal.name, None, "not read"))
        old = before.get(signal.name)
        sustain = parse_duration(signal.for_)
        if reading.value is None:
            # The onset of a breach is kept through a gap in the data (in pending_since), so that a breach that
            # outlives the gap keeps its onset: the rollback window is judged on when it really began.
            state, since = "Unknown", (old.since if old and old.state == "Unknown" else now)
            pending = (old.pending_since if old and old.state == "Unknown"
                       else old.since if old and old.state == "Breached" else None)
        else:
            raw = "Breached" if breached(signal, reading.value) else "Healthy"
            current = old.state if old else "Unknown"
            if current == "Unknown" and old and old.pending_since:
                # A breach went into a gap in the data: it kept its onset, and it clears as it would have without
                # the gap, after ``for`` within bounds (a Prometheus restart does not cut the hysteresis short).
                state, since = "Breached", old.pending_since
                pending = None if raw == "Breached" else now
            elif current == "Unknown" and raw == "Healthy":
                state, since, pending = "Healthy", now, None  # no evidence of a problem: healthy at once
            elif raw == current:
                state, since, pending = current, old.since if old else now, None
            else:
                pending = (old.pending_since if old and old.pending_since else now)
                if now - pending >= sustain:
                    state, since, pending = raw, pending, None
                else:
                    state, since = current, (old.since if old else now)
        states.append(SignalStatus(name=signal.name, value=reading.value, state=state, since=since,
                                   pending_since=pending))
    return tuple(states)


#: The collector's metrics a signal may read whose neighbours the evidence names: a drift gauge's other methods
#: (its p-value beside its effect size) and an evaluation ratio's good and total counts per evaluator. The metric,
#: its label matchers and its range, as written in the (filled-in) query.
_COMPANION_METRIC = re.compile(r"\b(kaizen_input_drift|kaizen_eval_total)\b\s*(?:\{([^}]*)\})?(?:\s*\[([^\]]+)\])?")
_MATCHER = re.compile(r'\s*(\w+)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*")\s*,?')


def companion_queries(query: str) -> dict[str, str]:
    """The queries a look reads beside a signal's own, so that its decision evidence names what the signal stands
    on: for a signal on ``kaizen_input_drift``, every method's gauge of the same model and cohort (``drift``: the
    p-values and effect sizes); for one on ``kaizen_eval_total``, the good and bad verdicts per evaluator over the
    signal's range (``evaluation``). Other signals have none. The first use of each metric in the query is taken."""
    queries: dict[str, str] = {}
    for match in _COMPANION_METRIC.finditer(query):
        metric, matchers, window = match.group(1), match.group(2) or "", match.group(3)
        kind = "drift" if metric == "kaizen_input_drift" else "evaluation"
        if kind in queries:
            continue
        drop = "method" if kind == "drift" else "verdict"
        kept = ",".join(f"{label}{op}{value}" for label, op, value in _MATCHER.findall(matchers) if label != drop)
        selector = f"{metric}{{{kept}}}"
        if kind == "drift":
            queries[kind] = selector
        else:
            counted = f"increase({selector}[{window.strip()}])" if window else selector
            queries[kind] = f"sum by (evaluator, verdict) ({counted})"
    return queries


def companion_evidence(kind: str, series: list[dict[str, Any]]) -> dict[str, Any]:
    """What a companion query's series say, as evidence: ``drift``, a list of ``{model, cohort, <method>: value}``
    (one per model and cohort the signal reads); ``evaluation``, ``{evaluator: {good, total, goodShare}}``."""
    def value(s: dict[str, Any]) -> float | None:
        number = float(s["value"][1])
        return None if math.isnan(number) else round(number, 6)

    if kind == "drift":
        windows: dict[tuple[str, str], dict[str, Any]] = {}
        for s in series:
            labels = s.get("metric", {})
            key = (labels.get("model", ""), labels.get("cohort", ""))
            windows.setdefault(key, {"model": key[0], "cohort": key[1]})[labels.get("method", "value")] = value(s)
        return {"drift": [windows[k] for k in sorted(windows)]}
    counts: dict[str, dict[str, float]] = {}
    for s in series:
        labels = s.get("metric", {})
        verdicts = counts.setdefault(labels.get("evaluator", ""), {"good": 0.0, "total": 0.0})
        number = value(s) or 0.0
        verdicts["total"] += number
        if labels.get("verdict") == "good":
            verdicts["good"] += number
    return {"evaluation": {name: {"good": round(c["good"], 3), "total": round(c["total"], 3),
                                  "goodShare": round(c["good"] / c["total"], 4) if c["total"] else None}
                           for name, c in sorted(counts.items())}}


# ---------------------------------------------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class Outcomes:
    """What the children's results mean for the loop's status."""

    model: ServedModel | None
    previous_model: ServedModel | None
    decisions: list[Decision]
    consecutive_failures: int
    promoted: Child | None = None


def fold_outcomes(
    status: ImprovementLoopStatus, spec: ImprovementLoopSpec, children: tuple[Child, ...],
    failures_acknowledged: datetime | None,
) -> Outcomes:
    """Fill in decisions' outcomes from their children, and make a promoted candidate the served model."""
    first = spec.model or spec.retrain.base_model  # what is served before any promotion
    model = status.model or (ServedModel(version=first.version, uri=first.uri) if first else None)
    previous = status.previous_model
    by_ref = {c.ref: c for c in children}
    decisions = []
    for decision in [*lost_decisions(status.decisions, children), *status.decisions]:
        child = by_ref.get(decision.child or "")
        if child is not None and decision.outcome is None and not child.running:
            decision = decision.model_copy(update={"outcome": describe_outcome(child)})
        decisions.append(decision)
    promoted = None
    for child in sorted((c for c in children if c.kind == "Rollout" and c.phase == "Promoted" and c.candidate),
                        key=lambda c: c.finished or c.created):
        assert child.candidate is not None  # for mypy: the generator keeps only children with a candidate
        when = child.finished or child.created
        if model is not None and (model.version == child.candidate.version or (model.since and when <= model.since)):
            continue  # already folded in on an earlier observation
        previous, model = model, ServedModel(version=child.candidate.version, uri=child.candidate.uri, since=when)
        promoted = child
    finished = sorted((c for c in children if not c.running), key=lambda c: c.finished or c.created)
    failures = 0
    for child in finished:
        if failures_acknowledged and (child.finished or child.created) <= failures_acknowledged:
            continue
        if child.failed:
            failures += 1
        elif child.passed or child.phase == "Promoted":
            failures = 0
    return Outcomes(model, previous, decisions, failures, promoted)


def lost_decisions(decisions: list[Decision], children: tuple[Child, ...]) -> list[Decision]:
    """Decisions that created a child but never reached the status (the operator stopped between creating the child
    and writing the status), rebuilt from the child's immutable spec.reason, newest first.

    A decision's sequence number is one more than the newest logged, so a child whose decision numbers beyond the
    log's newest was created by a decision the log lost; older children were logged (or pruned from the bounded log
    on purpose) and are left alone.
    """
    newest = _sequence(decisions[0]) if decisions else 0
    lost = [c for c in children if c.decision_id and c.summary is not None
            and _sequence_of(c.decision_id) > newest]
    return [Decision(id=c.decision_id, time=c.created, action=c.action, reason=c.summary,
                     evidence=c.reason_evidence, child=c.ref)
            for c in sorted(lost, key=lambda c: _sequence_of(c.decision_id or ""), reverse=True)]


def describe_outcome(child: Child) -> str:
    if child.kind == "RetrainJob":
        if child.passed:
            version = child.candidate.version if child.candidate else "?"
            return f"RetrainJob {child.name} passed its gates: candidate {version}"
        return f"RetrainJob {child.name} {child.phase or 'failed'}" + (f": {child.message}" if child.message else "")
    what = {"Promoted": "promoted", "RolledBack": "rolled back", "Aborted": "aborted"}.get(child.phase or "", "ended")
    return f"Rollout {child.name} {what}" + (f": {child.message}" if child.message else "")


# ------------------------------------------------------------------------------------------------------ decide


def decide(
    spec: ImprovementLoopSpec, observed: Observed, model: ServedModel | None, previous_model: ServedModel | None,
    consecutive_failures: int, now: datetime, *, loop: str, uid: str, generation: int,
) -> Plan:
    """The one thing to do now, why, and on what evidence."""
    policy = spec.policy
    request = observed.request
    if observed.paused:
        return Plan("Paused", "Paused", "The loop is paused: observing and recording only.", "Paused")
    # A running child comes before Degraded: the only child that runs while the loop is degraded is a retrain a user
    # started with `kaizen retrain`, and the loop is retraining, not stopped, until it ends.
    running = [c for c in observed.children if c.running]
    if running:
        child = running[0]
        phase: LoopPhase = "Retraining" if child.kind == "RetrainJob" else "RollingOut"
        return Plan("Wait", "ChildRunning", f"{child.kind} {child.name} is still {child.phase or 'starting'}.",
                    phase, {"child": child.ref, "phase": child.phase})
    if consecutive_failures >= policy.max_consecutive_failures and not (request and request.action == "retrain"):
        return Plan("Degraded", "TooManyFailures",
                    f"{consecutive_failures} retrains or rollouts failed in a row (limit "
                    f"{policy.max_consecutive_failures}); Kaizen stopped acting. Fix the cause, then `kaizen resume`.",
                    "Degraded", {"consecutiveFailures": consecutive_failures})

    rollout_plan = _roll_out_passed_candidate(spec, observed, model, now, loop=loop, uid=uid)
    if rollout_plan is not None:
        return rollout_plan

    signals = {s.name: s for s in observed.signals}
    evidence = {"signals": [_signal_evidence(sig, signals.get(sig.name), observed.details.get(sig.name, {}))
                            for sig in spec.signals]}
    breaches = [s for s in observed.signals if s.state == "Breached"]
    manual = request is not None and request.action == "retrain"
    if not breaches and not manual:
        unknown = [s.name for s in observed.signals if s.state == "Unknown"]
        if unknown:
            return Plan("Wait", "NoData", f"No data for signal(s) {', '.join(unknown)}: missing data is never taken "
                        "as healthy.", "Observing", evidence)
        return Plan("Nothing", "Healthy", f"All {len(observed.signals)} signals are healthy.", "Observing", evidence)

    if breaches and not manual:
        onset = min(s.since for s in breaches if s.since)
        rollback = _rollback(spec, observed, model, previous_model, onset, evidence, loop=loop, uid=uid)
        if rollback is not None:
            return rollback

    return _retrain(spec, observed, model, breaches, evidence, now, loop=loop, uid=uid, generation=generation)


def _roll_out_passed_candidate(spec, observed, model, now, *, loop, uid) -> Plan | None:
    jobs = sorted((c for c in observed.children if c.kind == "RetrainJob"), key=lambda c: c.created)
    if not jobs or not jobs[-1].passed or jobs[-1].candidate is None:
        return None
    job = jobs[-1]
    if any(c.kind == "Rollout" and c.retrain_job == job.name for c in observed.children):
        return None  # already rolled out (or rolled back): its outcome is recorded, not retried
    if model is not None and (model.version == job.candidate.version or (model.since and job.created < model.since)):
        return None  # served already, or older than what is served (e.g. promoted, then rolled back)
    evidence = {"retrainJob": job.name, "candidate": job.candidate.version, **job.evidence}
    if spec.policy.approval.promote == "Manual" and not (observed.request and observed.request.action == "approve"):
        return Plan("AwaitApproval", "PromoteApproval",
                    f"Candidate {job.candidate.version} from {job.name} passed its gates; rolling it out needs "
                    f"approval: `kaizen approve {loop}`.", "AwaitingApproval", evidence)
    approved = _approval_evidence(observed.request)
    name = child_name(loop, "rollout", uid, job.name)
    reason = f"Candidate {job.candidate.version} from RetrainJob {job.name} passed its gates."
    rollout = {
        **spec.rollout.to_wire(),
        "target": spec.target.to_wire(),
        "stableModel": _model_ref(model),
        "canaryModel": job.candidate.to_wire(),
        "retrainJobRef": job.name,
        "prometheus": spec.prometheus.to_wire(),
    }
    return Plan("RollOut", "CandidatePassed", reason, "RollingOut", {**evidence, **approved},
                ChildPlan("Rollout", name, rollout), consumes_request=bool(approved))


def _rollback(spec, observed, model, previous_model, onset, evidence, *, loop, uid) -> Plan | None:
    if model is None or model.since is None or previous_model is None:
        return None
    window = parse_duration(spec.policy.rollback_window)
    if not (model.since <= onset <= model.since + window):
        return None
    for child in observed.children:
        if child.kind == "Rollout" and child.rollback and (
            child.created >= model.since or (child.candidate and child.candidate.version == model.version)
        ):
            return None  # a rollback was tried, or the served model is itself a rollback: what follows is a retrain
    reason = (f"The breach began {_ago(onset - model.since)} after {model.version} was promoted (within the "
              f"rollback window of {spec.policy.rollback_window}): rolling back to {previous_model.version}.")
    rollout = {
        "target": spec.target.to_wire(),
        "stableModel": _model_ref(model),
        "canaryModel": _model_ref(previous_model),
        "steps": [{"setWeight": 100}],
        "trafficRouting": spec.rollout.traffic_routing.to_wire(),
    }
    return Plan("Rollback", "BreachAfterPromotion", reason, "RollingOut",
                {**evidence, "promotedAt": _time(model.since), "breachOnset": _time(onset),
                 "from": model.version, "to": previous_model.version},
                ChildPlan("Rollout", child_name(loop, "rollback", uid, model.version), rollout))


def weekly_use(children: tuple[Child, ...], now: datetime) -> tuple[int, float]:
    """The retrains started in the last seven days and the GPU hours they used: what the weekly limits count, and
    what status.budget shows."""
    recent = [c for c in children if c.kind == "RetrainJob" and now - c.created < WEEK]
    return len(recent), sum(c.gpu_seconds for c in recent) / 3600


def _retrain(spec, observed, model, breaches, evidence, now, *, loop, uid, generation) -> Plan:
    policy = spec.policy
    request = observed.request
    manual = request is not None and request.action == "retrain"
    jobs = sorted((c for c in observed.children if c.kind == "RetrainJob"), key=lambda c: c.created)
    recent, gpu_hours = weekly_use(observed.children, now)
    evidence = {**evidence, "retrainsThisWeek": recent, "gpuHoursThisWeek": round(gpu_hours, 3)}
    if breaches:
        evidence["breached"] = [s.name for s in breaches]
    if manual:
        evidence["requestedBy"], evidence["requestedAt"] = request.by, _time(request.at)

    def wait(code: str, reason: str) -> Plan:
        return Plan("Wait", code, reason, "CoolingDown", evidence)

    if not manual and jobs and now - jobs[-1].created < parse_duration(policy.cooldown):
        ready = jobs[-1].created + parse_duration(policy.cooldown)
        return wait("Cooldown", f"Cooling down: the last retrain ({jobs[-1].name}) started {_time(jobs[-1].created)}; "
                                f"the next is possible after {_time(ready)} (cooldown {policy.cooldown}).")
    if recent >= policy.max_retrains_per_week:
        return wait("WeeklyLimit", f"{recent} retrains in the last 7 days reach the limit of "
                                   f"{policy.max_retrains_per_week} per week.")
    if gpu_hours >= policy.gpu_hours_per_week:
        return wait("GPUBudget", f"{gpu_hours:.2f} GPU hours used in the last 7 days reach the budget of "
                                 f"{policy.gpu_hours_per_week:g} per week.")
    targets: dict[str, list[str]] = {"categories": [], "scenarios": [], "cohorts": []}
    if spec.feedback is not None:
        feedback = observed.feedback or Feedback(error="not observed")
        if feedback.error:
            return wait("CollectorUnavailable", f"The collector could not be read ({feedback.error}); a retrain "
                                                "needs its feedback.")
        evidence["newFeedback"] = feedback.new_items
        if not manual and (feedback.new_items or 0) < spec.feedback.min_new_items:
            return wait("TooLittleFeedback", f"{feedback.new_items or 0} new consented feedback items since the last "
                                             f"retrain; {spec.feedback.min_new_items} are needed.")
        targets = target_slices(feedback.backlog, spec.feedback.categories)
        evidence["targets"] = targets
    elif not manual and jobs and _last_attempt_failed(observed.children) and jobs[-1].loop_generation == generation:
        return wait("SameData", f"The last retrain ({jobs[-1].name}) or its rollout failed, and the data has not "
                                "changed since (no feedback source, same spec); change spec.retrain.data or run "
                                f"`kaizen retrain {loop}`.")
    if policy.approval.retrain == "Manual" and not manual and not (request and request.action == "approve"):
        return Plan("AwaitApproval", "RetrainApproval",
                    f"A retrain is warranted ({_why(breaches)}); it needs approval: `kaizen approve {loop}`.",
                    "AwaitingApproval", evidence)
    baseline = model or spec.retrain.base_model
    if baseline is None:  # validation rejects such a spec; this keeps decide() total
        return wait("NoBaseline", "There is no model to retrain from.")
    approved = _approval_evidence(request)
    # The same trigger names the same child (restarts, retries); the previous attempt is part of the key, so a
    # breach that outlives a retrain can start another one once the guards allow.
    trigger = f"{_time(request.at if request else min(s.since for s in breaches if s.since))}/" \
              f"{jobs[-1].name if jobs else ''}"
    reason = f"Retrain requested by {request.by}." if manual else f"Retraining: {_why(breaches)}."
    if any(targets.values()):
        reason += " Targeting " + "; ".join(f"{k} {', '.join(v)}" for k, v in targets.items() if v) + \
            f" ({evidence['newFeedback']} new consented feedback items)."
    job = {
        **spec.retrain.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"base_model"}),
        "baseline": _model_ref(baseline),
        "targets": {k: v for k, v in targets.items() if v},
        "gates": [g.to_wire() for g in spec.gates],
    }
    if spec.feedback is not None:
        job["feedback"] = {"collectorURL": spec.feedback.collector_url, "model": spec.target.deployment}
        if spec.feedback.token_secret_ref:
            job["feedback"]["tokenSecretRef"] = spec.feedback.token_secret_ref.to_wire()
    else:  # nothing to target without feedback: the retrain refreshes the model on its replay data
        job["data"] = {**job["data"], "targetedRatio": 0, "useFeedback": False}
    return Plan("Retrain", "Retrain", reason, "Retraining", {**evidence, **approved},
                ChildPlan("RetrainJob", child_name(loop, "retrain", uid, trigger), job),
                consumes_request=request is not None)


def target_slices(backlog: tuple[BacklogItem, ...], categories: list[str]) -> dict[str, list[str]]:
    """The slices to target: the most reported categories, scenarios and cohorts of negative feedback."""
    items = [b for b in backlog if not categories or b.category in categories]

    def top(values: Counter, n: int) -> list[str]:
        return [v for v, _ in values.most_common(n) if v]

    return {
        "categories": top(_count(items, "category"), 3),
        "scenarios": top(_count(items, "scenario"), 5),
        "cohorts": top(_count(items, "cohort"), 5),
    }


def _count(items: list[BacklogItem], attribute: str) -> Counter:
    counts: Counter = Counter()
    for item in items:
        if getattr(item, attribute):
            counts[getattr(item, attribute)] += item.count
    return counts


def _last_attempt_failed(children: tuple[Child, ...]) -> bool:
    finished = sorted((c for c in children if not c.running), key=lambda c: c.finished or c.created)
    return bool(finished) and finished[-1].failed


def beyond_history_limits(children: tuple[Child, ...], policy: Policy, now: datetime) -> list[Child]:
    """Finished children past the history limits, oldest first. Running ones are never pruned, nor any from the
    last seven days: cooldown, the weekly retrain limit and the GPU budget are counted from them."""
    finished = sorted((c for c in children if not c.running), key=lambda c: c.created, reverse=True)
    prune = []
    for failed, limit in ((True, policy.failed_history_limit), (False, policy.successful_history_limit)):
        for kind in ("RetrainJob", "Rollout"):
            prune += [c for c in [c for c in finished if c.kind == kind and c.failed == failed][limit:]
                      if now - c.created >= WEEK]
    # A Rollout goes with the RetrainJob it released, so that a kept job never looks like it was not rolled out.
    released = {c.retrain_job for c in prune if c.kind == "Rollout"}
    prune += [c for c in finished if c.kind == "RetrainJob" and c.name in released and c not in prune]
    return sorted(prune, key=lambda c: c.created)


def child_name(loop: str, role: str, uid: str, key: str) -> str:
    """Deterministic: the same trigger always names the same child, across retries and operator restarts."""
    digest = hashlib.sha256(f"{uid}/{role}/{key}".encode()).hexdigest()[:6]
    return f"{loop[:63 - len(role) - 8]}-{role}-{digest}"


def record(decisions: list[Decision], plan: Plan, now: datetime, *, loop: str, limit: int = 50) -> list[Decision]:
    """The decision log after ``plan``: newest first, bounded, one entry per change of (action, reason code)."""
    newest = decisions[0] if decisions else None
    if newest is not None and newest.action == plan.action and newest.evidence.get("code") == plan.code \
            and plan.create is None:
        return decisions
    decision = Decision(
        id=decision_id(loop, now, _sequence(newest) + 1), time=now, action=plan.action, reason=plan.reason[:1024],
        evidence={"code": plan.code, **plan.evidence},
        child=f"{plan.create.kind}/{plan.create.name}" if plan.create else None,
    )
    return [decision, *decisions][:limit]


def unaudited(decisions: list[Decision], audited_through: str | None) -> list[Decision]:
    """The decisions of a stored log (newest first) that the audit log has not acknowledged, oldest first: those
    numbered after ``audited_through``.

    Only a stored log is sent: a decision sent before the status recording it was written could be lost with the
    status (the operator stopped in between) and made again by the next look under another id, which would leave
    in the audit log a decision the loop never kept. A decision the status lost and rebuilt from its child
    (:func:`lost_decisions`), or one made while the collector was away, is in a later stored log, and sent then.
    """
    done = _sequence_of(audited_through) if audited_through else 0
    return sorted((d for d in decisions if _sequence(d) > done), key=_sequence)


def decision_id(loop: str, now: datetime, sequence: int) -> str:
    """Unique within the loop: a sequence number that keeps counting when the bounded log drops old entries."""
    return f"{loop}-{now:%Y%m%dT%H%M%S}-{sequence}"


def _sequence(decision: Decision | None) -> int:
    return _sequence_of(decision.id) if decision else 0


def _sequence_of(decision_id: str) -> int:
    suffix = decision_id.rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else 0


def _why(breaches: list[SignalStatus]) -> str:
    return ", ".join(f"{s.name} breached since {_time(s.since)} (value {s.value:.4g})" for s in breaches
                     if s.since and s.value is not None) or "requested"


def _signal_evidence(signal: Signal, status: SignalStatus | None, detail: dict[str, Any]) -> dict[str, Any]:
    return {"name": signal.name, "value": status.value if status else None,
            "state": status.state if status else "Unknown", "min": signal.min, "max": signal.max,
            "for": signal.for_, "since": _time(status.since) if status and status.since else None, **detail}


def _approval_evidence(request: Request | None) -> dict[str, Any]:
    if request is None or request.action != "approve":
        return {}
    return {"approvedBy": request.by, "approvedAt": _time(request.at)}


def _model_ref(model: ModelRef) -> dict[str, str]:
    return {"version": model.version, "uri": model.uri}


def _time(when: datetime) -> str:
    return when.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _ago(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    return f"{seconds // 3600}h{seconds % 3600 // 60}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60}s"


# -------------------------------------------------------------------------------------------------------- look


@dataclass(frozen=True)
class Gathered:
    """What the controller read for one look: signal readings, children, feedback, and the user's annotations."""

    readings: dict[str, Reading]
    children: tuple[Child, ...] = ()
    feedback: Feedback | None = None
    request: Request | None = None
    paused: bool = False
    failures_acknowledged: datetime | None = None


@dataclass(frozen=True)
class Effects:
    """Every effect of one look: create ``create`` (named by ``decision``, whose id and evidence go into its
    spec.reason), delete ``delete``, post ``events``, send ``decision`` to the audit log, write ``status`` once, and
    look again at ``next_look``. ``plan`` says why, for the log; ``changes`` is all of it but the audit log, as the
    shared apply carries it out."""

    plan: Plan
    status: ImprovementLoopStatus
    next_look: datetime
    decision: Decision | None = None
    create: ChildPlan | None = None
    delete: tuple[Child, ...] = ()
    events: tuple[Event, ...] = ()
    changes: applied.Effects = field(default_factory=applied.Effects)


#: The status fields a look writes: observedGeneration and the conditions are the spec handler's (and a blocked
#: child's).
LOOK_FIELDS = frozenset(info.alias or name for name, info in ImprovementLoopStatus.model_fields.items()) - {
    "observedGeneration", "conditions"}


def child_manifest(child: ChildPlan, action: Action, decision: Decision, *, loop: str, uid: str,
                   generation: int) -> dict[str, Any]:
    """The child as created: labelled with its loop, role and the loop's generation, owned by the loop, and with the
    decision's own evidence in its spec.reason, which is where a decision the status lost is rebuilt from."""
    role = {"Retrain": "retrain", "Rollback": "rollback"}.get(action, "rollout")
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": child.kind,
        "metadata": {
            "name": child.name,
            "labels": {f"{API_GROUP}/loop": loop, f"{API_GROUP}/role": role,
                       f"{API_GROUP}/loop-generation": str(generation)},
            "ownerReferences": [{"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "ImprovementLoop",
                                 "name": loop, "uid": uid, "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": {**child.spec, "reason": {"decisionId": decision.id, "summary": decision.reason,
                                          "evidence": decision.evidence}},
    }


def next_look(spec: ImprovementLoopSpec, status: ImprovementLoopStatus) -> datetime | None:
    """When the loop is next due: one ``spec.interval`` after its last look; None if it never looked."""
    return status.last_observed + parse_duration(spec.interval) if status.last_observed else None


def candidate(children: tuple[Child, ...], model: ModelRef | None) -> Candidate | None:
    """The newest candidate not yet served: in training, or on its way out."""
    for child in sorted(children, key=lambda c: c.created, reverse=True):
        if child.kind == "RetrainJob" and child.running:
            return None
        if child.kind == "RetrainJob" and child.passed and child.candidate and (
            model is None or child.candidate.version != model.version
        ):
            rollout = next((c.name for c in children if c.kind == "Rollout" and c.retrain_job == child.name), None)
            return Candidate(version=child.candidate.version, uri=child.candidate.uri, retrain_job=child.name,
                             rollout=rollout)
    return None


def look(spec: ImprovementLoopSpec, current: ImprovementLoopStatus, outcomes: Outcomes, gathered: Gathered,
         now: datetime, *, loop: str, uid: str, generation: int) -> Effects:
    """One look at the loop: what it observed becomes a decision, and every effect of it.

    ``outcomes`` is :func:`fold_outcomes` of the same children (the controller needs the served version to read the
    signals). The status is rebuilt whole; the controller writes only what differs from what is stored.
    """
    children = gathered.children
    # A request a child already answers was acted on by a look whose status was never written: it is recorded now
    # (answer), not acted on again -- an approval of a retrain must not also approve the candidate's rollout.
    acted_on = gathered.request is not None and any(c.answers(gathered.request) for c in children)
    observed = Observed(
        signals=observe_signals(spec.signals, gathered.readings, current.signals, now), children=children,
        feedback=gathered.feedback, request=None if acted_on else gathered.request, paused=gathered.paused,
        failures_acknowledged=gathered.failures_acknowledged,
        details={name: r.detail for name, r in gathered.readings.items() if r.detail},
    )
    plan = decide(spec, observed, outcomes.model, outcomes.previous_model, outcomes.consecutive_failures, now,
                  loop=loop, uid=uid, generation=generation)
    decisions = record(outcomes.decisions, plan, now, loop=loop)
    # A decision the status lost and its child's spec.reason gave back was never announced either: a look's Events
    # are posted only once its status is written.
    stored = {d.id for d in current.decisions}
    events = [Event("Normal", d.action, f"{d.reason} [decision {d.id}]"[:1024])
              for d in reversed(outcomes.decisions) if d.id not in stored]
    decision = decisions[0] if decisions is not outcomes.decisions else None
    if decision is not None:
        events.append(Event("Warning" if plan.action == "Degraded" else "Normal", plan.action,
                            f"{plan.reason} [decision {decision.id}]"[:1024]))
    if outcomes.promoted is not None and outcomes.model is not None:
        events.append(Event("Normal", "Promoted", f"{outcomes.model.version} is now served (Rollout "
                                                  f"{outcomes.promoted.name})."))
    last_action = current.last_action
    request = gathered.request
    outcome = answer(plan, request, children) if request is not None else None
    if request is not None and outcome is not None:
        last_action = RequestRecord(action=request.action, by=request.by, at=request.at, outcome=outcome)
        if outcome.startswith("not needed"):
            events.append(Event("Normal", "RequestIgnored",
                                f"{request.action} by {request.by} was not needed: {plan.reason}"[:1024]))
    retrains, gpu_hours = weekly_use(children, now)
    status = current.model_copy(update=dict(
        phase=plan.phase, model=outcomes.model, previous_model=outcomes.previous_model,
        candidate=candidate(children, outcomes.model), signals=list(observed.signals),
        budget=Budget(retrains=retrains, gpu_hours=round(gpu_hours, 3)), last_observed=now,
        consecutive_failures=outcomes.consecutive_failures,
        decisions=decisions, last_action=last_action,
    ))
    interval = parse_duration(spec.interval)
    if current.last_observed is not None and now - current.last_observed < RECORD_EVERY_LOOKS * interval and \
            status.model_copy(update={"last_observed": current.last_observed}) == current:
        status = current  # nothing changed but the time: nothing to write
    create = plan.create if decision is not None else None
    delete = tuple(beyond_history_limits(children, spec.policy, now))
    # Looks keep to the grid of the last recorded look (lastObserved + k intervals), so that an unrecorded look's
    # lateness does not carry over to the next, and anyone can tell from the status when the loop looks next.
    assert status.last_observed is not None
    due = status.last_observed + ((now - status.last_observed) // interval + 1) * interval
    wire = status.to_wire()
    changes = applied.Effects(
        status={key: wire.get(key) for key in LOOK_FIELDS},
        create=(child_manifest(create, plan.action, decision, loop=loop, uid=uid, generation=generation),)
        if create is not None and decision is not None else (),
        delete=tuple((c.kind, c.name) for c in delete), events=tuple(events),
        log=(f"Decided action={plan.action} code={plan.code} decision={decision.id}",) if decision else (),
        next_due=due,
    )
    return Effects(plan=plan, status=status, next_look=due, decision=decision, create=create, delete=delete,
                   events=tuple(events), changes=changes)
