"""Rollout controller: when a Rollout is due, gather → decide (:func:`kaizen.logic.rollout.decide`, pure) → apply
(:func:`kaizen.controllers.reconcile.apply`), and say when it is next due (:func:`kaizen.logic.rollout.next_due`).

Gathering takes the Rollout as the watch last delivered it, or reads it fresh while the watch has not yet delivered
the last status write of its looks (so a look never decides on a status older than that write), the user's
request (:func:`kaizen.controllers.reconcile.take_request`), the stable and canary Deployments (as a watch delivered
them, :class:`kaizen.k8s.deployments.Watched`: never a GET at a look), the HTTPRoute with
Gateway API routing (whose new rules are an effect like the canary's size), an adapter canary's ConfigMap (the
adapters the stable's pods hold, :mod:`kaizen.logic.adapters`), and — when an
analysis interval is due — both tracks' metrics from Prometheus (:func:`analyse`). The decision's effects are
declarative (the canary's size, the promotion's model variable by server-side apply, the canary removed once the
rollout has ended, Events), so a restart or a retried look repeats nothing. One Rollout at a time holds a target
Deployment (:func:`kaizen.logic.rollout.target_holder`); the target's Rollouts are found (:func:`contenders`) only
when a look is about to touch a Deployment, or before the Rollout starts; the others wait and touch nothing.

Looks are scheduled by :func:`kaizen.controllers.reconcile.schedule`: at the next analysis look, a timed step's
end, a poll while a Deployment is rolling out, or when the Rollout changes (a user's action); a Rollout paused for
approval without metrics costs nothing until then. Spec validation (Ready / InvalidSpec) is the shared handler of
:mod:`kaizen.controllers.reconcile`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime
from typing import Any

import kopf

from kaizen.api import ROLLOUT
from kaizen.api.actions import ACTION, parse_timestamp
from kaizen.api.common import parse_duration
from kaizen.api.rollout import RolloutSpec, RolloutStatus
from kaizen.controllers import reconcile
from kaizen.controllers.reconcile import apply, classified, register, schedule, take_request
from kaizen.k8s import configmaps, deployments, httproutes, resources, rollouts
from kaizen.logic import adapters
from kaizen.k8s.errors import ApiError
from kaizen.logic.deployments import canary_name
from kaizen.logic.effects import rejected_for
from kaizen.logic.promql import fill
from kaizen.logic.routing import ModelSplit, RouteError
from kaizen.logic.rollout import (
    ACTIONS, ACTIONS_USAGE, Action, Contender, Gathered, Look, MetricSample, analysis_window, decide,
    holds_target, judge_look, look_due, status_of, target_holder,
)
from kaizen.logic.validation import InvalidSpec, parse_spec
from kaizen.k8s.client import CONCURRENCY
from kaizen.metrics import prometheus as prometheus_clients
from kaizen.metrics.prometheus import PrometheusClient, PrometheusError

register(ROLLOUT)


def look_now(obj: dict[str, Any], patch: kopf.Patch, logger: kopf.Logger, retry: int) -> datetime | None:
    """The Rollout's look (:func:`kaizen.controllers.reconcile.schedule` calls it when it is due, or changed)."""
    return step(body=obj, meta=obj["metadata"], status=obj.get("status") or {}, patch=patch, logger=logger,
                retry=retry)


@classified
def step(body: dict[str, Any], meta: dict[str, Any], status: dict[str, Any], patch: kopf.Patch, logger: kopf.Logger,
         **_: Any) -> datetime | None:
    """One look; returns when the next is due (:func:`kaizen.logic.rollout.next_due`), None: only on a change."""
    namespace, name = meta["namespace"], meta["name"]
    if not holds_target(status) and ACTION not in (meta.get("annotations") or {}):
        return None  # ended, its canary gone: nothing to do, and no need to read anything
    rollout = body if scheduler.watched_own_write(namespace, name) else _read_if_there(namespace, name)
    if rollout is None:
        return None
    generation = rollout["metadata"].get("generation")
    try:
        spec: RolloutSpec = parse_spec(ROLLOUT, rollout.get("spec", {}), name)  # type: ignore[assignment]
    except InvalidSpec:
        return None  # the spec handler reports it; nothing can be rolled out on it until the spec changes
    stored = dict(rollout.get("status") or {})
    if stored.get("observedGeneration") != generation:
        return None  # the spec handler has not judged this generation yet; its status write wakes us
    if rejected_for(stored, generation):
        return None  # the API server refused what this spec asks for; the InvalidSpec condition says so
    current = status_of(stored)
    request = take_request(ROLLOUT, rollout, ACTIONS, current.last_action, ACTIONS_USAGE)
    action = None if request is None else Action(request.action, request.by, request.at)  # type: ignore[arg-type]
    if not holds_target(stored) and action is None:
        return None
    now = reconcile.clock.now()
    target = spec.target.deployment

    # As the watch last delivered them, not read (two GETs at every look were most of the operator's requests at
    # 500 Rollouts analysing). A view one event behind is safe: a look's writes to a Deployment are declarative
    # (server-side apply, create-or-adopt by a deterministic name, delete), so a look that has not yet seen the
    # previous look's write repeats it, which changes nothing; and a Rollout waiting on a Deployment polls it.
    stable = deployments.WATCHED.get(namespace, target)
    gateway = spec.traffic_routing.gateway_api
    gathered = Gathered(
        stable=stable, canary=deployments.WATCHED.get(namespace, canary_name(target)) if stable is not None else None,
        look=analyse(spec, current, namespace, now, logger) if look_due(spec, current, now) else None,
        action=action, route=httproutes.read(namespace, gateway.http_route) if gateway is not None else None,
        configmap=configmaps.read(namespace, adapters.configmap_name(target))
        if adapters.routing(spec) is not None and stable is not None else None,
    )
    # A Rollout that has not started asks who holds its target before anything else; one under way asks only when
    # it is about to touch a Deployment (decide says so), so that a Rollout at rest costs no list of Rollouts.
    if current.phase is None:
        gathered = holder(gathered, rollout, target)
    effects = decide(spec, stored, gathered, now, rollout=rollout)
    if effects is None:
        effects = decide(spec, stored, holder(gathered, rollout, target), now, rollout=rollout)
    assert effects is not None  # with the holder known, decide always decides
    return apply(rollout, effects, patch, logger)


def holder(gathered: Gathered, rollout: dict[str, Any], target: str) -> Gathered:
    """``gathered`` with who holds ``target`` (:func:`kaizen.logic.rollout.target_holder`), found now for the
    Rollout ``rollout`` (as this look gathered it)."""
    name = rollout["metadata"]["name"]
    return dataclasses.replace(gathered, holder=target_holder(name, contenders(rollout, target)), holder_known=True)


#: kopf's index of Rollouts by (namespace, target Deployment): their names, from the watch of Rollouts that starts
#: their looks; set at startup (:func:`keep_index`), complete before any look runs.
_by_target: dict[str, Any] = {}


@kopf.index("kaizen.dev", "v1alpha1", ROLLOUT.plural, id="rollouts_by_target")
def rollouts_by_target(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[Any, str]:
    return {(namespace, (spec.get("target") or {}).get("deployment")): name}


# kopf passes its indices by name, which its ActivityFn protocol has no parameter for.
@kopf.on.startup(id="keep_rollout_index")  # type: ignore[arg-type]
def keep_index(rollouts_by_target: kopf.Index, **_: Any) -> None:
    _by_target["index"] = rollouts_by_target


def rollouts_of(namespace: str, target: str | None) -> set[str]:
    """The names of the Rollouts of ``target`` in the index."""
    try:
        return set(_by_target["index"][(namespace, target)])
    except KeyError:
        return set()


def contenders(rollout: dict[str, Any], target: str) -> list[Contender]:
    """The Rollouts of ``target`` that may hold it (:func:`kaizen.logic.rollout.holds_target`), not being deleted,
    with a spec that can be acted on.

    Which Rollouts name ``target`` comes from the index (a list of the namespace's Rollouts, as before, made
    starting N Rollouts cost N lists of N Rollouts), each read fresh from the API server (not the cache;
    ``rollout``, the one looking, holds its own last write), so that two Rollouts looked at one after the other
    rank the same list. None that can rank ahead of the one looking is missing from the index: one created before
    it, or one that has started (whose look followed its watch event), came before it in the watch stream that
    started its look.
    Several others are read in one list of the namespace: k Rollouts waiting on one target, each reading the k
    others at every look, stormed the API server (the fuzz test with the operator running found it)."""
    namespace, own = rollout["metadata"]["namespace"], rollout["metadata"]["name"]
    others = sorted(rollouts_of(namespace, target) - {own})
    if len(others) > 1:
        listed = {o["metadata"]["name"]: o for o in rollouts.list_in(namespace)}
        objs = [rollout, *(listed[name] for name in others if name in listed)]  # absent: deleted since indexed
    else:
        objs = [rollout, *filter(None, (_read_if_there(namespace, name) for name in others))]
    found = []
    for obj in objs:
        meta, status = obj["metadata"], obj.get("status") or {}
        if (obj.get("spec") or {}).get("target", {}).get("deployment") != target or meta.get("deletionTimestamp") \
                or not holds_target(status):
            continue
        try:
            parse_spec(ROLLOUT, obj.get("spec") or {}, meta["name"])
        except InvalidSpec:
            continue  # it will never act; it must not keep its target from others
        found.append(Contender(name=meta["name"], created=parse_timestamp(meta["creationTimestamp"]),
                               phase=status.get("phase")))
    return found


def _read_if_there(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return rollouts.read(namespace, name)
    except ApiError as error:
        if error.not_found:
            return None  # deleted since the index saw it
        raise


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
        # Every query of the look in one request (PrometheusClient.scalars): 500 Rollouts analysing every 10 s asked
        # 200 queries/s one by one, the largest part of the looks' time in a profile at 1,000 objects.
        asked: list[tuple[tuple[str, str], str, str]] = []  # ((metric, track), "good"|"total"|"value", query)
        for metric in spec.analysis.metrics:
            for track, model in (("stable", spec.stable_model), ("canary", spec.canary_model)):
                values = dict(track=track, version=model.version, namespace=namespace,
                              target=spec.target.deployment, window=window)
                if metric.ratio:
                    parts = {"good": metric.ratio.good, "total": metric.ratio.total}
                else:
                    assert metric.threshold is not None  # validation requires one of the two
                    parts = {"value": metric.threshold.query}
                asked += [((metric.name, track), which, fill(query, **values)) for which, query in parts.items()]
        found: dict[tuple[str, str], dict[str, float | None | PrometheusError]] = {}
        for (key, which, _), answer in zip(asked, client.scalars([query for *_, query in asked]), strict=True):
            found.setdefault(key, {})[which] = answer
        samples = {m.name: (sample(found[(m.name, "stable")]), sample(found[(m.name, "canary")]))
                   for m in spec.analysis.metrics}
    look = judge_look(spec.analysis, samples, step=status.current_step or 0, weight=status.canary_weight or 0,
                      now=now, evidence=status.evidence, achieved_weight=status.achieved_weight)
    record = look.record
    logger.info(f"Analysed step={record.step} weight={record.weight} achievedWeight={record.achieved_weight} "
                f"verdict={record.verdict} window={window}")
    return look


def sample(answers: dict[str, float | None | PrometheusError]) -> MetricSample:
    """One track's sample of a metric from its queries' answers: a failed query makes it an error."""
    errors = [str(answer) for answer in answers.values() if isinstance(answer, PrometheusError)]
    return MetricSample(error=errors[0]) if errors else MetricSample(**answers)  # type: ignore[arg-type]


@kopf.on.delete("kaizen.dev", "v1alpha1", ROLLOUT.plural, id="restore_route")
async def restore_route(spec: kopf.Spec, meta: kopf.Meta, logger: kopf.Logger, **_: Any) -> None:
    """A Rollout deleted under way: its HTTPRoute back to 100/0, then the Rollout stays for the route's
    ``scaleDownDelay`` (this handler's finalizer), so that its canary Deployment, garbage-collected once the Rollout
    is gone, answers the share the gateway sends it until the gateway has loaded the restored route."""
    try:
        parsed: RolloutSpec = parse_spec(ROLLOUT, dict(spec), meta["name"])  # type: ignore[assignment]
    except InvalidSpec:
        return
    gateway = parsed.traffic_routing.gateway_api
    if gateway is None:
        return
    adapter = adapters.routing(parsed)
    model = None if adapter is None else ModelSplit(adapter.model_name_header, adapter.served_model_name,
                                                    adapters.adapter_name(adapter, parsed.canary_model))
    try:
        result = await asyncio.to_thread(httproutes.set_weight, meta["namespace"], gateway, rollout=meta["name"],
                                         weight=0, canary_version=parsed.canary_model.version, model=model)
    except RouteError as problem:  # no route, or not one this Rollout routes: nothing of ours to restore
        logger.info(f"Left route alone httproute={gateway.http_route} reason={problem}")
        return
    except ApiError as error:
        if error.transient or error.conflict:
            raise kopf.TemporaryError(f"Restoring HTTPRoute {gateway.http_route} failed: {error}", delay=5)
        logger.warning(f"Restoring route failed httproute={gateway.http_route} error={error}")
        return
    if result.changed:
        delay = parse_duration(gateway.scale_down_delay).total_seconds()
        logger.info(f"Restored route httproute={gateway.http_route} canaryWeight=0; the canary goes in {delay:g}s")
        await asyncio.sleep(delay)  # a restarted operator finds the route restored, and lets the Rollout go


def prometheus_client(spec: RolloutSpec, namespace: str) -> PrometheusClient:
    prometheus = spec.prometheus
    assert prometheus is not None  # the CRD requires it whenever metrics are set
    token = None
    if prometheus.bearer_token_secret_ref is not None:
        ref = prometheus.bearer_token_secret_ref
        token = resources.read_secret_key(namespace, ref.name, ref.key)
    return prometheus_clients.shared(prometheus.url, bearer_token=token,
                                     insecure_skip_verify=prometheus.insecure_skip_verify, connections=CONCURRENCY)


scheduler = schedule(ROLLOUT, look_now)


@kopf.on.event("kaizen.dev", "v1alpha1", ROLLOUT.plural, id="wake_waiting_rollouts")
async def free_target(type: str | None, meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status, **_: Any) -> None:
    """A Rollout that has ended (its canary gone), or is going, frees its target: the other Rollouts of that target
    look now, and the next in line takes it (unwoken, a waiting Rollout looks only every ``TARGET_RECHECK``)."""
    if type != "DELETED" and not meta.get("deletionTimestamp") and holds_target(status):
        return
    namespace, name = meta.get("namespace") or "", meta.get("name") or ""
    for other in rollouts_of(namespace, (spec.get("target") or {}).get("deployment")) - {name}:
        scheduler.wake(namespace, other)
