"""HTTPRoutes (gateway.networking.k8s.io/v1) of Gateway API routing: read a route, and set the canary's weight on it
by server-side apply with Kaizen's field manager.

``spec.rules`` and each rule's ``backendRefs`` are atomic lists in Gateway API's schema, so an apply cannot own one
weight inside them: it sends the rules whole. The route is read (:func:`read`),
:func:`kaizen.logic.routing.route_rules` changes only the stable and canary weights, the canary's session marker and
Kaizen's own rules, and :func:`apply` writes the rules it returns, every other part exactly as read, with the
route's ``resourceVersion`` as a precondition (:func:`kaizen.logic.routing.route_manifest`): an edit made between
the read and the apply fails the apply (409), and the next look starts again from the edited route rather than
writing over it. :func:`set_weight` is the three in one call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from kaizen.api.rollout import GatewayAPIRouting
from kaizen.k8s.client import FIELD_MANAGER, api_client, json_object
from kaizen.k8s.errors import typed
from kaizen.logic.routing import ModelSplit, RouteMissing, route_manifest, route_rules, route_share

GROUP, VERSION, PLURAL = "gateway.networking.k8s.io", "v1", "httproutes"


@dataclass(frozen=True)
class RouteWeight:
    """What :func:`set_weight` found and did: the canary's share in the route after it, and whether it wrote."""

    share: float | None
    changed: bool


def _objects() -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(api_client())


@typed
def read(namespace: str, name: str) -> dict[str, Any] | None:
    """The HTTPRoute as the API returns it, or None if there is none."""
    try:
        return json_object(_objects().get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))
    except ApiException as error:
        if error.status == 404:
            return None
        raise


@typed
def apply(manifest: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply of :func:`kaizen.logic.routing.route_manifest` with Kaizen's field manager; ``force``: the
    rules are written whole (an atomic list), so Kaizen owns them while it routes the route."""
    meta = manifest["metadata"]
    return json_object(_objects().patch_namespaced_custom_object(
        GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], manifest, field_manager=FIELD_MANAGER, force=True,
        _content_type="application/apply-patch+yaml",
    ))


def set_weight(namespace: str, routing: GatewayAPIRouting, *, rollout: str, weight: int,
               canary_version: str, model: ModelSplit | None = None) -> RouteWeight:
    """Read the route and give the canary ``weight`` percent of the managed rules (0: restore 100/0 and remove
    Kaizen's rules; with ``model``, an adapter canary's split by model name); the Rollout controller does the same
    through its effects.

    Raises :class:`~kaizen.logic.routing.RouteMissing` or :class:`~kaizen.logic.routing.RouteError` (the spec and
    the route disagree: an InvalidSpec for the caller), or :class:`~kaizen.k8s.errors.ApiError`.
    """
    route = read(namespace, routing.http_route)
    if route is None:
        raise RouteMissing(namespace, routing)
    rules = route.get("spec", {}).get("rules") or []
    desired = route_rules(rules, routing, route=f"{namespace}/{routing.http_route}", rollout=rollout,
                          weight=weight, canary_version=canary_version, model=model)
    if desired == rules:
        return RouteWeight(route_share(rules, routing, model), changed=False)
    applied = apply(route_manifest(route, desired))
    return RouteWeight(route_share(applied["spec"].get("rules") or [], routing, model), changed=True)
