"""ImprovementLoop controller: every ``spec.interval``, observe → decide → act → write status once.

Observation gathers the signals from Prometheus, feedback from the collector, the loop's children and a user's
request; :mod:`kaizen.logic.loop` decides; this module carries out the one action (create a child, record the
decision as an Event, in the child's ``spec.reason`` and in the collector's audit log) and writes the status.
Spec validation (Ready / InvalidSpec) is the shared handler of :mod:`kaizen.controllers.reconcile`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import kopf

from kaizen.api import IMPROVEMENT_LOOP
from kaizen.api.actions import FAILURES_ACKNOWLEDGED, PAUSED, REQUEST_KEYS, parse_time
from kaizen.api.common import API_GROUP, API_VERSION, ModelRef, parse_duration
from kaizen.api.improvementloop import Budget, Candidate, ImprovementLoopSpec, ImprovementLoopStatus, RequestRecord
from kaizen.controllers.reconcile import (
    blocked, classified, classify, register, reject, rejected_for, unblocked, write_status,
)
from kaizen.k8s import resources
from kaizen.k8s.errors import ApiError, NotOwned
from kaizen.logic.loop import (
    WEEK, BacklogItem, Child, Feedback, Observed, Plan, Reading, Request, answer, beyond_history_limits, decide,
    fold_outcomes, observe_signals, record,
)
from kaizen.logic.promql import fill
from kaizen.logic.requests import consumable, pending
from kaizen.logic.validation import InvalidSpec, parse_spec

register(IMPROVEMENT_LOOP)

#: How often each loop is looked at; it acts only when its spec.interval has passed since the last observation.
TICK_SECONDS = 1.0
STATUS_FIELDS = {field.alias or name for name, field in ImprovementLoopStatus.model_fields.items()}


@kopf.timer(API_GROUP, API_VERSION, IMPROVEMENT_LOOP.plural, interval=TICK_SECONDS)
@classified
def observe_and_decide(
    body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, patch: kopf.Patch,
    logger: kopf.Logger, **_: Any,
) -> None:
    now = datetime.now(timezone.utc)
    try:
        loop: ImprovementLoopSpec = parse_spec(IMPROVEMENT_LOOP, dict(spec))  # type: ignore[assignment]
    except InvalidSpec:
        return  # the spec handler reports it; nothing can be decided on it
    if status.get("observedGeneration") != meta.get("generation"):
        return  # the spec handler has not judged this generation yet: writing conditions now would race its write
    if rejected_for(dict(status), meta.get("generation")):
        return  # the API server refused a child this spec describes; the InvalidSpec condition says so
    current = ImprovementLoopStatus.model_validate({k: v for k, v in dict(status).items() if k in STATUS_FIELDS})
    namespace, name, uid, generation = meta["namespace"], meta["name"], meta["uid"], meta.get("generation", 1)
    annotations = dict(meta.get("annotations") or {})
    try:
        request = parse_request(annotations, current)
    except ValueError as problem:
        kopf.warn(body, reason="InvalidAction", message=str(problem))
        request = None
    if consumable(annotations, request):
        # Recorded in status.lastAction on an earlier look (or unusable): consumed only now, so that a crash between
        # acting on it and writing the status can never lose it.
        resources.remove_annotations("ImprovementLoop", namespace, name, REQUEST_KEYS)
    if current.last_observed and now - current.last_observed < parse_duration(loop.interval):
        return

    children = tuple(gather_children(namespace, name))
    acknowledged = parse_time(annotations.get(FAILURES_ACKNOWLEDGED))
    outcomes = fold_outcomes(current, loop, children, acknowledged)
    version = outcomes.model.version if outcomes.model else ""
    readings = read_signals(loop, namespace, version, logger)
    observed = Observed(
        signals=observe_signals(loop.signals, readings, current.signals, now),
        children=children,
        feedback=read_feedback(loop, namespace, children, logger) if loop.feedback else None,
        request=request,
        paused=loop.policy.paused or annotations.get(PAUSED) == "true",
        failures_acknowledged=acknowledged,
    )
    plan = decide(loop, observed, outcomes.model, outcomes.previous_model, outcomes.consecutive_failures, now,
                  loop=name, uid=uid, generation=generation)
    decisions = record(outcomes.decisions, plan, now, loop=name)
    if decisions is not outcomes.decisions:
        decision = decisions[0]
        if plan.create is not None:
            try:
                create_child(plan, decision.id, decision.evidence, namespace, name, uid, generation)
            except (NotOwned, ApiError) as error:
                failure = classify(error, f"{plan.create.kind} {namespace}/{plan.create.name}")
                if failure is None:
                    raise
                if not failure.final:
                    blocked(body, dict(status), patch, logger, failure, now, generation)
                reject(body, dict(status), patch, logger, failure, now, generation)
                return
        kopf.event(body, type="Warning" if plan.action == "Degraded" else "Normal", reason=plan.action,
                   message=f"{plan.reason} [decision {decision.id}]"[:1024])
        logger.info(f"Decided action={plan.action} code={plan.code} decision={decision.id}")
        audit(loop, namespace, name, decision.model_dump(mode="json", by_alias=True, exclude_none=True), logger)
    if outcomes.promoted is not None:
        kopf.info(body, reason="Promoted", message=f"{outcomes.model.version} is now served (Rollout "
                                                    f"{outcomes.promoted.name}).")
    last_action = current.last_action
    outcome = answer(plan, request, children) if request is not None else None
    if request is not None and outcome is not None:
        last_action = RequestRecord(action=request.action, by=request.by, at=request.at, outcome=outcome)
        if outcome.startswith("not needed"):
            kopf.info(body, reason="RequestIgnored", message=f"{request.action} by {request.by} was not needed: "
                                                             f"{plan.reason}"[:1024])
    prune_history(loop, namespace, children, now)

    recent = [c for c in children if c.kind == "RetrainJob" and now - c.created < WEEK]
    new = ImprovementLoopStatus(
        phase=plan.phase,
        model=outcomes.model,
        previous_model=outcomes.previous_model,
        candidate=candidate(children, outcomes.model),
        signals=list(observed.signals),
        budget=Budget(retrains=len(recent), gpu_hours=round(sum(c.gpu_seconds for c in recent) / 3600, 3)),
        last_observed=now,
        consecutive_failures=outcomes.consecutive_failures,
        decisions=decisions,
        last_action=last_action,
    ).to_wire()
    write_status(dict(status), patch, {**unblocked(dict(status)), **{k: new.get(k) for k in (
        "phase", "model", "previousModel", "candidate", "signals", "budget", "lastObserved", "consecutiveFailures",
        "decisions", "lastAction",
    )}})


def parse_request(annotations: dict[str, str], status: ImprovementLoopStatus) -> Request | None:
    """The user's request; None when there is none or status.lastAction shows it handled. ValueError if unusable."""
    request = pending(annotations, ("approve", "retrain"), status.last_action,
                      "an ImprovementLoop: use approve or retrain (kaizen approve|retrain LOOP)")
    return None if request is None else Request(request.action, request.by, request.at)  # type: ignore[arg-type]


def read_signals(loop: ImprovementLoopSpec, namespace: str, version: str, logger: kopf.Logger) -> dict[str, Reading]:
    from kaizen.metrics.prometheus import PrometheusClient, PrometheusError

    token = None
    if loop.prometheus.bearer_token_secret_ref:
        ref = loop.prometheus.bearer_token_secret_ref
        try:
            token = resources.read_secret_key(namespace, ref.name, ref.key)
        except (ApiError, KeyError) as error:
            problem = f"cannot read the Prometheus token from Secret {ref.name}: {_reason(error)}"
            logger.warning(f"Failed to read signals: {problem}")
            return {s.name: Reading(s.name, None, problem) for s in loop.signals}
    client = PrometheusClient(loop.prometheus.url, bearer_token=token,
                              insecure_skip_verify=loop.prometheus.insecure_skip_verify)
    readings = {}
    for signal in loop.signals:
        query = fill(signal.query, namespace=namespace, target=loop.target.deployment, version=version)
        try:
            readings[signal.name] = Reading(signal.name, client.scalar(query))
        except PrometheusError as error:
            logger.warning(f"Failed to read signal={signal.name}: {error}")
            readings[signal.name] = Reading(signal.name, None, str(error))
    return readings


def collector(loop: ImprovementLoopSpec, namespace: str) -> Any:
    """A client of the loop's collector, with its token from the referenced Secret."""
    from kaizen.collector.client import CollectorClient

    assert loop.feedback is not None
    ref = loop.feedback.token_secret_ref
    token = resources.read_secret_key(namespace, ref.name, ref.key) if ref else None
    return CollectorClient(loop.feedback.collector_url, token=token)


def read_feedback(loop: ImprovementLoopSpec, namespace: str, children: tuple[Child, ...],
                  logger: kopf.Logger) -> Feedback:
    """Consented negative feedback since the last retrain started, and the backlog it falls into."""
    from kaizen.collector.client import CollectorError

    assert loop.feedback is not None
    jobs = sorted((c for c in children if c.kind == "RetrainJob"), key=lambda c: c.created)
    since = jobs[-1].created if jobs else None
    categories = tuple(loop.feedback.categories)
    try:
        client = collector(loop, namespace)
        count = client.feedback_count(loop.target.deployment, since=since, categories=categories,
                                      consented_only=loop.feedback.require_consent)
        backlog = client.backlog(loop.target.deployment, since=since, categories=categories)
    except (CollectorError, KeyError, ApiError) as error:
        logger.warning(f"Failed to read feedback collector={loop.feedback.collector_url}: {_reason(error)}")
        return Feedback(error=_reason(error))
    return Feedback(new_items=count, backlog=tuple(
        BacklogItem(item.category, item.scenario, item.cohort, item.count) for item in backlog
    ))


def gather_children(namespace: str, loop: str) -> list[Child]:
    children = []
    for kind in ("RetrainJob", "Rollout"):
        for obj in resources.list_owned(kind, namespace, loop):
            children.append(to_child(kind, obj))
    return children


def to_child(kind: str, obj: dict[str, Any]) -> Child:
    meta, spec, status = obj["metadata"], obj.get("spec", {}), obj.get("status", {})
    labels = meta.get("labels", {})
    created = parse_time(meta["creationTimestamp"])
    candidate = status.get("candidate") if kind == "RetrainJob" else spec.get("canaryModel")
    transitions = [parse_time(c.get("lastTransitionTime")) for c in status.get("conditions", [])]
    finished = parse_time(status.get("completionTime")) or max((t for t in transitions if t), default=None)
    generation = labels.get(f"{API_GROUP}/loop-generation", "")
    return Child(
        kind=kind,  # type: ignore[arg-type]
        name=meta["name"],
        created=created,
        phase=status.get("phase"),
        verdict=status.get("verdict"),
        finished=finished,
        gpu_seconds=float(status.get("gpuSeconds") or 0),
        candidate=ModelRef(version=candidate["version"], uri=candidate["uri"]) if candidate else None,
        retrain_job=spec.get("retrainJobRef"),
        rollback=labels.get(f"{API_GROUP}/role") == "rollback",
        loop_generation=int(generation) if generation.isdigit() else None,
        decision_id=(spec.get("reason") or {}).get("decisionId"),
        summary=(spec.get("reason") or {}).get("summary"),
        reason_evidence=dict((spec.get("reason") or {}).get("evidence") or {}),
        message=status.get("message"),
        evidence={"gates": [g for g in status.get("gates", [])]} if status.get("gates") else {},
    )


def create_child(plan: Plan, decision_id: str, evidence: dict[str, Any], namespace: str, loop: str, uid: str,
                 generation: int) -> None:
    assert plan.create is not None
    role = {"Retrain": "retrain", "Rollback": "rollback"}.get(plan.action, "rollout")
    body = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": plan.create.kind,
        "metadata": {
            "name": plan.create.name,
            "namespace": namespace,
            "labels": {f"{API_GROUP}/loop": loop, f"{API_GROUP}/role": role,
                       f"{API_GROUP}/loop-generation": str(generation)},
            "ownerReferences": [{"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": IMPROVEMENT_LOOP.kind,
                                 "name": loop, "uid": uid, "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": {**plan.create.spec,
                 # The decision's own evidence: the child is where a decision the status lost is rebuilt from.
                 "reason": {"decisionId": decision_id, "summary": plan.reason[:1024], "evidence": evidence}},
    }
    resources.create_or_adopt(plan.create.kind, namespace, body, uid)


def candidate(children: tuple[Child, ...], model: Any) -> Candidate | None:
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


def prune_history(loop: ImprovementLoopSpec, namespace: str, children: tuple[Child, ...], now: datetime) -> None:
    for child in beyond_history_limits(children, loop.policy, now):
        resources.delete(child.kind, namespace, child.name)


def audit(loop: ImprovementLoopSpec, namespace: str, name: str, decision: dict[str, Any], logger: kopf.Logger) -> None:
    """Best effort: the status and the Event already hold the decision; the collector keeps it for good."""
    if loop.feedback is None:
        return
    from kaizen.collector.client import CollectorError

    try:
        entry = {k: v for k, v in decision.items() if k != "child"}
        if decision.get("child"):
            entry["evidence"] = {**entry.get("evidence", {}), "child": decision["child"]}
        collector(loop, namespace).post_audit({"loop": f"{namespace}/{name}", **entry})
    except (CollectorError, KeyError, ApiError) as error:
        logger.warning(f"Failed to write decision={decision['id']} to the audit log: {_reason(error)}")


def _reason(error: Exception) -> str:
    """What went wrong, in one line."""
    if isinstance(error, ApiError):
        return "not found" if error.not_found else str(error)
    return str(error)
