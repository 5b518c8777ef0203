"""Rollout controller: when a Rollout is due, gather → decide (:func:`kaizen.logic.rollout.next_action`) → act →
write status, and say when it is next due (:func:`kaizen.logic.rollout.next_due`).

Gathering reads the Rollout fresh (so a look never decides on a status older than the last write), the stable and
canary Deployments, the ``kaizen.dev/action`` request, and — when an analysis interval is due — both tracks'
metrics from Prometheus. Acting applies the canary's size, promotes by server-side apply of the model variable
alone, removes the canary once the rollout has ended, and posts the Events the step machine produced. All of it is
declarative (sizes and values, never increments), so a restart or a retried look repeats nothing. One Rollout at a
time holds a target Deployment (:func:`kaizen.logic.rollout.target_holder`); the others wait and touch nothing.

Looks are scheduled by :func:`kaizen.controllers.reconcile.schedule`: at the next analysis look, a timed step's
end, a poll while a Deployment is rolling out, or when the Rollout changes (a user's action); a Rollout paused for
approval without metrics costs nothing until then. Spec validation (Ready / InvalidSpec) is the shared handler of
:mod:`kaizen.controllers.reconcile`.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import kopf

from kaizen.api import ROLLOUT
from kaizen.api.actions import ACTION, REQUEST_KEYS, parse_time
from kaizen.api.common import parse_duration
from kaizen.api.rollout import RolloutSpec, RolloutStatus
from kaizen.controllers.reconcile import (
    Failure, blocked, classified, classify, register, reject, rejected_for, schedule, write_status,
)
from kaizen.k8s import deployments, resources, rollouts
from kaizen.k8s.errors import ApiError, NotOwned
from kaizen.logic.conditions import set_condition
from kaizen.logic.promql import fill
from kaizen.logic.requests import consumable, pending
from kaizen.logic.rollout import (
    TERMINAL, Action, Contender, Decision, Look, MetricSample, Observation, analysis_window, judge_look, look_due,
    next_action, next_due, target_holder, wait_for_target,
)
from kaizen.logic.validation import InvalidSpec, parse_spec
from kaizen.metrics.prometheus import PrometheusClient, PrometheusError

register(ROLLOUT)

#: How soon a Rollout that waits for something that is not a change of its own looks again: its target Deployment
#: to appear, or another Rollout to release it.
RECHECK = timedelta(seconds=5)
STATUS_FIELDS = {field.alias or name for name, field in RolloutStatus.model_fields.items()}
# Written by the spec handler (reconcile.accept), not by the step machine.
_SPEC_HANDLER_FIELDS = {"observedGeneration", "conditions"}


def look_now(obj: dict[str, Any], patch: kopf.Patch, logger: kopf.Logger, retry: int) -> datetime | None:
    """The Rollout's look (:func:`kaizen.controllers.reconcile.schedule` calls it when it is due, or changed)."""
    return step(body=obj, meta=obj["metadata"], status=obj.get("status") or {}, patch=patch, logger=logger,
                retry=retry)


@classified
def step(body: kopf.Body, meta: kopf.Meta, status: kopf.Status, patch: kopf.Patch, logger: kopf.Logger,
         **_: Any) -> datetime | None:
    """One look; returns when the next is due (:func:`kaizen.logic.rollout.next_due`), None: only on a change."""
    namespace, name = meta["namespace"], meta["name"]
    if status.get("phase") in TERMINAL and ACTION not in (meta.get("annotations") or {}):
        return None  # ended: nothing to do, and no need to read anything
    try:
        fresh = rollouts.read(namespace, name)
    except ApiError as error:
        if error.not_found:
            return None
        raise
    try:
        spec: RolloutSpec = parse_spec(ROLLOUT, fresh.get("spec", {}))  # type: ignore[assignment]
    except InvalidSpec:
        return None  # the spec handler reports it; nothing can be rolled out on it until the spec changes
    stored = dict(fresh.get("status") or {})
    if stored.get("observedGeneration") != fresh["metadata"].get("generation"):
        return None  # the spec handler has not judged this generation yet; its status write wakes us
    if rejected_for(stored, fresh["metadata"].get("generation")):
        return None  # the API server refused what this spec asks for; the InvalidSpec condition says so
    current = RolloutStatus.model_validate({k: v for k, v in stored.items() if k in STATUS_FIELDS})
    annotations = fresh["metadata"].get("annotations") or {}
    try:
        action = parse_action(annotations, current)
    except ValueError as problem:
        kopf.warn(body, reason="InvalidAction", message=str(problem))
        action = None
    if consumable(annotations, action):
        # Handled on an earlier tick (status.lastAction records it) or unusable: consume it only now, so that a
        # crash between acting and writing the status can never lose a request.
        resources.remove_annotations(ROLLOUT.kind, namespace, name, REQUEST_KEYS)
    if current.phase in TERMINAL and action is None:
        return None
    now = datetime.now(timezone.utc)
    target = spec.target.deployment
    generation = fresh["metadata"].get("generation")

    # A Rollout that has not started asks who holds its target before anything else; one under way asks only when
    # it is about to touch a Deployment (below), so that a Rollout at rest costs no list of Rollouts per look.
    if current.phase is None and refused(spec, current, namespace, name, action, now, body, stored, patch, logger,
                                         generation):
        return now + RECHECK  # the holder's end is not a change of this Rollout: look again

    stable = deployments.read(namespace, target)
    if stable is None:
        hold(stored, patch, body, f"The target Deployment {namespace}/{target} does not exist; waiting for it.")
        return now + RECHECK
    try:
        container = deployments.container_name(stable, spec.target.container)
    except ValueError as problem:
        hold(stored, patch, body, str(problem))
        return now + RECHECK
    canary = deployments.read(namespace, deployments.canary_name(target))
    if canary is not None and not deployments.owned_by_rollout(canary):
        conflict = NotOwned("Deployment", namespace, deployments.canary_name(target), "a Kaizen Rollout")
        blocked(body, stored, patch, logger, Failure("NameConflict", str(conflict), final=False), now, generation)
    look = analyse(spec, current, namespace, now, logger) if look_due(spec, current, now) else None
    serving = deployments.serves(stable, container=container, model_env=spec.target.model_env,
                                 uri=spec.canary_model.uri)
    observation = Observation(
        stable_replicas=stable["spec"].get("replicas", 1), canary_available=deployments.available(canary),
        stable_promoted=serving and deployments.rolled_out(stable), look=look, action=action,
    )
    decision = next_action(spec, current, observation, now)
    resize = decision.canary_replicas is not None and (
        canary is None or canary["spec"].get("replicas") != decision.canary_replicas)
    remove = decision.canary_replicas is None and canary is not None
    if current.phase is not None and (resize or remove or (decision.promote and not serving)) and refused(
            spec, current, namespace, name, action, now, body, stored, patch, logger, generation):
        return now + RECHECK

    what = f"Deployment {namespace}/{deployments.canary_name(target)}"
    try:
        if decision.canary_replicas is None:
            if canary is not None and deployments.delete(namespace, deployments.canary_name(target)):
                logger.info(f"Removed canary deployment={deployments.canary_name(target)}")
        elif resize:
            deployments.apply(deployments.canary_manifest(
                stable, fresh, container=container, model_env=spec.target.model_env, model=spec.canary_model,
                replicas=decision.canary_replicas))
            logger.info(f"Scaled canary deployment={deployments.canary_name(target)} "
                        f"replicas={decision.canary_replicas}")
        if decision.promote and not serving:
            what = f"the promotion of Deployment {namespace}/{target}"
            deployments.apply(deployments.model_patch(stable, container=container, model_env=spec.target.model_env,
                                                      model=spec.canary_model))
            logger.info(f"Promoted deployment={target} model={spec.canary_model.version}")
    except ApiError as error:
        failure = classify(error, what)
        if failure is None:
            raise
        if not failure.final:
            blocked(body, stored, patch, logger, failure, now, generation)
        reject(body, stored, patch, logger, failure, now, generation)
        return None

    conclude(body, stored, patch, logger, current, decision, now, generation)
    return next_due(spec, decision.status, now)


def conclude(body: kopf.Body, stored: dict[str, Any], patch: kopf.Patch, logger: kopf.Logger,
             current: RolloutStatus, decision: Decision, now: datetime, generation: int | None) -> None:
    """Write the decided status (once, only what changed) and post its Events."""
    new = decision.status.to_wire()
    fields: dict[str, Any] = {key: new.get(key) for key in STATUS_FIELDS - _SPEC_HANDLER_FIELDS}
    fields["conditions"] = progressing(stored, decision, now, generation)
    write_status(stored, patch, fields)
    for event in decision.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1024])
    if decision.status.phase != current.phase:
        logger.info(f"Rollout phase={decision.status.phase} step={decision.status.current_step} "
                    f"message={decision.status.message!r}")
    elif not decision.owns_target and decision.events:
        logger.info(f"Refused target={body['spec']['target']['deployment']} message={decision.status.message!r}")


def refused(spec: RolloutSpec, current: RolloutStatus, namespace: str, name: str, action: Action | None,
            now: datetime, body: kopf.Body, stored: dict[str, Any], patch: kopf.Patch, logger: kopf.Logger,
            generation: int | None) -> bool:
    """Whether another Rollout holds the target; if so, say so (and handle the user's action) without touching it."""
    holder = target_holder(name, contenders(namespace, spec.target.deployment))
    if holder is None:
        return False
    conclude(body, stored, patch, logger, current, wait_for_target(spec, current, holder, namespace, action, now),
             now, generation)
    return True


def contenders(namespace: str, target: str) -> list[Contender]:
    """The Rollouts of ``target`` that may hold it: not ended, not being deleted, with a spec that can be acted on.

    Read fresh from the API server (not a cache), so that two Rollouts looked at one after the other rank the same
    list."""
    found = []
    for obj in rollouts.list_in(namespace):
        meta, status = obj["metadata"], obj.get("status") or {}
        if (obj.get("spec") or {}).get("target", {}).get("deployment") != target or meta.get("deletionTimestamp") \
                or status.get("phase") in TERMINAL:
            continue
        try:
            parse_spec(ROLLOUT, obj.get("spec") or {})
        except InvalidSpec:
            continue  # it will never act; it must not keep its target from others
        found.append(Contender(name=meta["name"], created=parse_time(meta["creationTimestamp"]),
                               phase=status.get("phase")))
    return found


def parse_action(annotations: dict[str, str], status: RolloutStatus) -> Action | None:
    """The user's request; None when there is none or status.lastAction shows it handled. ValueError if unusable."""
    request = pending(annotations, ("promote", "abort", "approve"), status.last_action,
                      "a Rollout: use promote, abort or approve (kaizen promote|abort|approve ROLLOUT)")
    return None if request is None else Action(request.action, request.by, request.at)  # type: ignore[arg-type]


def analyse(spec: RolloutSpec, status: RolloutStatus, namespace: str, now: datetime,
            logger: kopf.Logger) -> Look:
    """Query every metric for both tracks over the window since the canary first served, and judge it."""
    window = analysis_window(status, now, parse_duration(spec.analysis.interval))
    samples: dict[str, tuple[MetricSample, MetricSample]] = {}
    try:
        client = prometheus_client(spec, namespace)
    except (ApiError, KeyError) as error:
        problem = MetricSample(error=f"cannot read the Prometheus bearer token: {error}")
        samples = {m.name: (problem, problem) for m in spec.analysis.metrics}
    else:
        for metric in spec.analysis.metrics:
            pair = []
            for track, model in (("stable", spec.stable_model), ("canary", spec.canary_model)):
                values = dict(track=track, version=model.version, namespace=namespace,
                              target=spec.target.deployment, window=window)
                try:
                    if metric.ratio:
                        pair.append(MetricSample(good=client.scalar(fill(metric.ratio.good, **values)),
                                                 total=client.scalar(fill(metric.ratio.total, **values))))
                    else:
                        assert metric.threshold is not None
                        pair.append(MetricSample(value=client.scalar(fill(metric.threshold.query, **values))))
                except PrometheusError as error:
                    pair.append(MetricSample(error=str(error)))
            samples[metric.name] = (pair[0], pair[1])
    look = judge_look(spec.analysis, samples, step=status.current_step or 0, weight=status.canary_weight or 0,
                      now=now, evidence=status.evidence)
    logger.info(f"Analysed step={look.record.step} weight={look.record.weight} verdict={look.record.verdict} "
                f"window={window}")
    return look


def prometheus_client(spec: RolloutSpec, namespace: str) -> PrometheusClient:
    prometheus = spec.prometheus
    assert prometheus is not None  # the CRD requires it whenever metrics are set
    token = None
    if prometheus.bearer_token_secret_ref is not None:
        ref = prometheus.bearer_token_secret_ref
        token = resources.read_secret_key(namespace, ref.name, ref.key)
    return PrometheusClient(prometheus.url, bearer_token=token, insecure_skip_verify=prometheus.insecure_skip_verify)


def progressing(stored: dict[str, Any], decision: Decision, now: datetime,
                generation: int | None) -> list[dict[str, Any]]:
    """The conditions with ``Progressing``: True while the rollout runs, False with the outcome once it ended, and
    False with reason ``TargetInUse`` while another Rollout holds the target."""
    status = decision.status
    ended = status.phase in TERMINAL
    reason = status.phase or "Progressing"
    if not decision.owns_target and not ended:
        reason = "TargetInUse"
    return set_condition(list(stored.get("conditions") or []), type="Progressing",
                         status="True" if decision.owns_target and not ended else "False", reason=reason,
                         message=status.message or "", now=now, generation=generation)


def hold(stored: dict[str, Any], patch: kopf.Patch, body: kopf.Body, message: str) -> None:
    """Wait for the target: say why in status, and once in a Warning Event (not every tick)."""
    if stored.get("message") != message:
        kopf.warn(body, reason="TargetUnavailable", message=message)
    write_status(stored, patch, {"message": message})



schedule(ROLLOUT, look_now)
