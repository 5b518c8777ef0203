"""ImprovementLoop controller: when a loop is due (one ``spec.interval`` after its last look), gather → look → apply.

Gathering reads the loop's children (from kopf's in-memory indices of RetrainJobs and Rollouts, fed by the watch
streams kopf keeps for their controllers: :func:`gather_children`), the signals from Prometheus, feedback from the
collector and a user's request (:class:`kaizen.logic.loop.Gathered`); :func:`kaizen.logic.loop.look`, pure,
returns every effect of the look (:class:`kaizen.logic.loop.Effects`); :func:`apply` carries them out — the child
with the decision in its ``spec.reason``, the pruned children, the Events — and writes the status once (a look that
changes nothing writes nothing). Every look first sends the collector's audit log the decisions of the stored status
it has not acknowledged (:func:`audit`). A request's annotations are removed only once a status records it
(:mod:`kaizen.logic.requests`). Spec validation (Ready / InvalidSpec) and error classification are the shared
skeleton of :mod:`kaizen.controllers.reconcile`.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import kopf

from kaizen.api import IMPROVEMENT_LOOP
from kaizen.api.actions import FAILURES_ACKNOWLEDGED, PAUSED, parse_time, parse_timestamp
from kaizen.api.common import API_GROUP, ModelRef
from kaizen.api.improvementloop import ImprovementLoopSpec, ImprovementLoopStatus
from kaizen.controllers import notifications, reconcile
from kaizen.controllers.reconcile import apply, classified, register, schedule, take_request
from kaizen.k8s import resources
from kaizen.k8s.errors import ApiError
from kaizen.logic.effects import Effects as Changes
from kaizen.logic.effects import Failure, refused, rejected_for
from kaizen.logic.loop import (
    BacklogItem, Child, Effects, Feedback, Gathered, Reading, Request, companion_evidence, companion_queries,
    fold_outcomes, look, next_look, unaudited,
)
from kaizen.logic.promql import fill
from kaizen.logic.validation import InvalidSpec, parse_spec

register(IMPROVEMENT_LOOP)

STATUS_FIELDS = {field.alias or name for name, field in ImprovementLoopStatus.model_fields.items()}
#: How soon to look again when the cached object is older than the status this operator last wrote.
STALE_RETRY_SECONDS = 0.2
#: The lastObserved each loop's last look wrote, and when, by uid: a cached body older than it is not looked at
#: (for a few seconds at most: a write that failed must not hold the loop).
_written: dict[str, tuple[str, float]] = {}
#: The children each loop's last look created, and when, by uid: a look waits until the indices have them (for a
#: few seconds at most: a child deleted at once may never be seen).
_created: dict[str, tuple[frozenset[tuple[str, str]], float]] = {}
STALE_FOR_AT_MOST = 5.0
LOOP_LABEL = resources.LOOP_LABEL
#: The collector's answers to an audit entry that sending it again cannot change: another entry has its id (409),
#: or it is invalid (422).
REFUSED_FOR_GOOD = (409, 422)


def look_now(obj: dict[str, Any], patch: kopf.Patch, logger: kopf.Logger, retry: int) -> datetime | None:
    """The loop's look when it is due (:func:`kaizen.controllers.reconcile.schedule` calls it with the cached body)."""
    meta, status = obj["metadata"], obj.get("status") or {}
    written, at = _written.get(meta["uid"], ("", 0.0))
    if written > str(status.get("lastObserved") or "") and time.monotonic() - at < STALE_FOR_AT_MOST:
        return reconcile.clock.now() + timedelta(seconds=STALE_RETRY_SECONDS)  # our last write is not seen yet
    created, at = _created.get(meta["uid"], (frozenset(), 0.0))
    if time.monotonic() - at < STALE_FOR_AT_MOST and not created <= {
            (c.kind, c.name) for c in gather_children(meta["namespace"], meta["name"])}:
        return reconcile.clock.now() + timedelta(seconds=STALE_RETRY_SECONDS)  # our last child is not indexed yet
    try:
        due = observe_and_decide(body=obj, spec=obj.get("spec") or {}, status=status, meta=meta, patch=patch,
                                 logger=logger, retry=retry)
    finally:
        if (patch.get("status") or {}).get("lastObserved"):
            _written[meta["uid"]] = (patch["status"]["lastObserved"], time.monotonic())
    return notifications.deliver(obj, patch, logger, due)  # the events this look's decision log holds


# A loop looks once more after a status write that recorded a decision (as after a request: schedule), as soon as
# the watch delivers it: that look sends the decision to the audit log (audit), which must not wait for the next
# interval. Any other own write wakes nothing (1,000 loops at rest: 7 a second).
scheduler = schedule(IMPROVEMENT_LOOP, look_now, follow_up=lambda fields: "decisions" in fields)


@classified
def observe_and_decide(
    body: dict[str, Any], spec: dict[str, Any], status: dict[str, Any], meta: dict[str, Any], patch: kopf.Patch,
    logger: kopf.Logger, **_: Any,
) -> datetime | None:
    now = reconcile.clock.now()
    namespace, name, uid, generation = meta["namespace"], meta["name"], meta["uid"], meta.get("generation", 1)
    try:
        loop: ImprovementLoopSpec = parse_spec(IMPROVEMENT_LOOP, dict(spec), name)  # type: ignore[assignment]
    except InvalidSpec:
        return None  # the spec handler reports it; nothing can be decided on it until the spec changes
    if status.get("observedGeneration") != meta.get("generation"):
        return None  # the spec handler has not judged this generation yet; its status write wakes us
    if rejected_for(dict(status), meta.get("generation")):
        return None  # the API server refused a child this spec describes; the InvalidSpec condition says so
    current = ImprovementLoopStatus.model_validate({k: v for k, v in dict(status).items() if k in STATUS_FIELDS})
    audit(loop, current, namespace, name, patch, logger)
    annotations = dict(meta.get("annotations") or {})
    request = take_request(IMPROVEMENT_LOOP, dict(body), ("approve", "retrain"), current.last_action,
                           "an ImprovementLoop: use approve or retrain (kaizen approve|retrain LOOP)")
    due = next_look(loop, current)
    if due is not None and now < due:
        return due

    children = tuple(gather_children(namespace, name))
    acknowledged = parse_time(annotations.get(FAILURES_ACKNOWLEDGED))
    outcomes = fold_outcomes(current, loop, children, acknowledged)
    gathered = Gathered(
        readings=read_signals(loop, namespace, outcomes.model.version if outcomes.model else "", logger),
        children=children,
        feedback=read_feedback(loop, namespace, children, logger) if loop.feedback else None,
        request=None if request is None else Request(request.action, request.by, request.at),  # type: ignore[arg-type]
        paused=loop.policy.paused or annotations.get(PAUSED) == "true",
        failures_acknowledged=acknowledged,
    )
    effects = look(loop, current, outcomes, gathered, now, loop=name, uid=uid, generation=generation)
    return apply_look(effects, loop, dict(body), patch, logger)


def apply_look(effects: Effects, loop: ImprovementLoopSpec, obj: dict[str, Any], patch: kopf.Patch,
               logger: kopf.Logger) -> datetime | None:
    """Carry out one look's effects (:func:`kaizen.controllers.reconcile.apply`), then send its decision to the
    audit log.

    The child comes first and the status last: a crash in between leaves a child whose spec.reason rebuilds the
    decision the status lost (:func:`kaizen.logic.loop.lost_decisions`), and a request still on the loop that its
    child answers. A child the API server refuses, or whose name is taken, ends the look there with a condition,
    and the decision is not made.
    """
    failures: list[Failure] = []

    def refusal(stored: dict[str, Any], failure: Failure, now: datetime, generation: int | None) -> Changes:
        failures.append(failure)
        return refused(stored, failure, now, generation)

    due = apply(obj, effects.changes, patch, logger, refused=refusal)
    if effects.changes.create and not failures:
        _created[obj["metadata"]["uid"]] = (
            frozenset((c["kind"], c["metadata"]["name"]) for c in effects.changes.create), time.monotonic())
    return due


def read_signals(loop: ImprovementLoopSpec, namespace: str, version: str, logger: kopf.Logger) -> dict[str, Reading]:
    from kaizen.k8s.client import CONCURRENCY
    from kaizen.metrics.prometheus import PrometheusError, shared

    token = None
    if loop.prometheus.bearer_token_secret_ref:
        ref = loop.prometheus.bearer_token_secret_ref
        try:
            token = resources.read_secret_key(namespace, ref.name, ref.key)
        except (ApiError, KeyError) as error:
            problem = f"cannot read the Prometheus token from Secret {ref.name}: {_reason(error)}"
            logger.warning(f"Failed to read signals: {problem}")
            return {s.name: Reading(s.name, None, problem) for s in loop.signals}
    client = shared(loop.prometheus.url, bearer_token=token,
                    insecure_skip_verify=loop.prometheus.insecure_skip_verify, connections=CONCURRENCY)
    readings = {}
    for signal in loop.signals:
        query = fill(signal.query, namespace=namespace, target=loop.target.deployment, version=version)
        try:
            value = client.scalar(query)
        except PrometheusError as error:
            logger.warning(f"Failed to read signal={signal.name}: {error}")
            readings[signal.name] = Reading(signal.name, None, str(error))
            continue
        detail: dict[str, Any] = {}
        for kind, companion in companion_queries(query).items():
            try:  # evidence only: a companion that fails to read leaves the signal's value standing
                detail |= companion_evidence(kind, [s for s in client.query(companion) if isinstance(s, dict)])
            except PrometheusError as error:
                logger.warning(f"Failed to read signal={signal.name} companion={kind}: {error}")
        readings[signal.name] = Reading(signal.name, value, detail=detail)
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


#: kopf's indices of the loops' children (RetrainJobs, Rollouts) by (namespace, loop), the same objects kopf
#: gives the indexing functions below; set at startup (:func:`keep_indices`), filled by kopf's watch streams, and
#: complete before any look runs (kopf starts no handler until every index has had its first listing).
_indices: dict[str, Any] = {}


@kopf.index("kaizen.dev", "v1alpha1", "retrainjobs", labels={LOOP_LABEL: kopf.PRESENT}, id="loop_retrainjobs")
def loop_retrainjobs(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any) -> dict[Any, Child]:
    return {(namespace, labels[LOOP_LABEL]): to_child("RetrainJob", dict(body))}


@kopf.index("kaizen.dev", "v1alpha1", "rollouts", labels={LOOP_LABEL: kopf.PRESENT}, id="loop_rollouts")
def loop_rollouts(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any) -> dict[Any, Child]:
    return {(namespace, labels[LOOP_LABEL]): to_child("Rollout", dict(body))}


# kopf passes its indices by name, which its ActivityFn protocol has no parameter for.
@kopf.on.startup(id="keep_loop_indices")  # type: ignore[arg-type]
def keep_indices(loop_retrainjobs: kopf.Index, loop_rollouts: kopf.Index, **_: Any) -> None:
    _indices.update(retrainjobs=loop_retrainjobs, rollouts=loop_rollouts)


def gather_children(namespace: str, loop: str) -> list[Child]:
    """The loop's children as kopf's watches last saw them, not listed from the API server: a look at rest costs the
    API server nothing.

    Why a cached read is safe here: a child this operator has just created is waited for (:func:`look_now`), and one
    it would create again from a stale view gets the same deterministic name (:func:`kaizen.logic.loop.child_name`),
    which create-or-adopt answers with the existing child (409); a child's status (a RetrainJob's phase, a Rollout's
    outcome) seen a watch event late is seen at the next look, as it would be had it changed just after a listing.
    """
    children: list[Child] = []
    for kind in ("retrainjobs", "rollouts"):
        index = _indices[kind]
        try:
            # list() of the store runs in C under the GIL: a consistent copy although kopf's event loop thread
            # updates the store (this runs in a worker thread).
            children += list(index[(namespace, loop)])
        except KeyError:  # no child of this kind
            pass
    return children


def to_child(kind: str, obj: dict[str, Any]) -> Child:
    meta, spec, status = obj["metadata"], obj.get("spec", {}), obj.get("status", {})
    labels = meta.get("labels", {})
    created = parse_timestamp(meta["creationTimestamp"])
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


def audit(loop: ImprovementLoopSpec, status: ImprovementLoopStatus, namespace: str, name: str, patch: kopf.Patch,
          logger: kopf.Logger) -> None:
    """Send the collector's audit log the stored decisions it has not acknowledged (:func:`kaizen.logic.loop
    .unaudited`), oldest first, and record the newest it acknowledged in ``status.auditedThrough``.

    Every look does this first, also one that is not due yet: the one that follows a look's own status write sends
    the decision that write recorded. Best effort, as the status and the Events already hold the decisions: what
    the collector refuses or cannot take now is sent again by the next look (the audit log takes a decision once;
    sent again, it is acknowledged). The decision log keeps its last 50 decisions: older ones not acknowledged by
    then, after a long outage of the collector, do not reach it.
    """
    if loop.feedback is None:
        return
    from kaizen.collector.client import CollectorError

    pending = unaudited(status.decisions, status.audited_through)
    if not pending:
        return
    try:
        client = collector(loop, namespace)
    except (KeyError, ApiError) as error:
        logger.warning(f"Failed to write decision={pending[0].id} to the audit log: {_reason(error)}")
        return
    acknowledged = None
    for decision in pending:
        # Without its outcome, which a later look may fill in: sent again, the entry is the same.
        entry = decision.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"child", "outcome"})
        if decision.child:
            entry["evidence"] = {**entry.get("evidence", {}), "child": decision.child}
        try:
            client.post_audit({"loop": f"{namespace}/{name}", **entry})
        except CollectorError as error:
            if error.status not in REFUSED_FOR_GOOD:
                logger.warning(f"Failed to write decision={decision.id} to the audit log: {_reason(error)}")
                break
            # Sending it again cannot change the answer: it is passed over, once, not retried at every look.
            logger.warning(f"Skipped decision={decision.id}, which the audit log refused: {_reason(error)}")
        acknowledged = decision.id
    if acknowledged is not None:
        patch.status["auditedThrough"] = acknowledged


def _reason(error: Exception) -> str:
    """What went wrong, in one line."""
    if isinstance(error, ApiError):
        return "not found" if error.not_found else str(error)
    return str(error)
