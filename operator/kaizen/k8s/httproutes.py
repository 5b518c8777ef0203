"""HTTPRoutes (gateway.networking.k8s.io/v1) of Gateway API routing: read a route, and set the canary's weight on it
by server-side apply with Kaizen's field manager.

``spec.rules`` and each rule's ``backendRefs`` are atomic lists in Gateway API's schema, so an apply cannot own one
weight inside them: it sends the rules whole. :func:`set_weight` therefore reads the route, lets
:func:`kaizen.logic.routing.route_rules` change only the stable and canary weights, the canary's session marker and
Kaizen's own rules, and applies the rules it returns, every other part exactly as read, with the route's
``resourceVersion`` as a precondition: an edit made between the read and the apply fails the apply (409), and the
next reconcile starts again from the edited route rather than writing over it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from kaizen.api.rollout import GatewayAPIRouting
from kaizen.k8s.client import FIELD_MANAGER, api_client
from kaizen.k8s.errors import typed
from kaizen.logic.routing import RouteError, route_rules, route_share

GROUP, VERSION, PLURAL = "gateway.networking.k8s.io", "v1", "httproutes"


class RouteMissing(RouteError):
    """The HTTPRoute the spec names does not exist (or its CRD is not installed)."""


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
        return _objects().get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


@typed
def set_weight(namespace: str, routing: GatewayAPIRouting, *, rollout: str, weight: int,
               canary_version: str) -> RouteWeight:
    """Give the canary ``weight`` percent of the managed rules (0: restore 100/0 and remove Kaizen's rules).

    Raises :class:`RouteMissing` or :class:`~kaizen.logic.routing.RouteError` (the spec and the route disagree:
    an InvalidSpec for the caller), or :class:`~kaizen.k8s.errors.ApiError`.
    """
    route = read(namespace, routing.http_route)
    if route is None:
        raise RouteMissing(f"HTTPRoute {namespace}/{routing.http_route} (spec.trafficRouting.gatewayAPI.httpRoute) "
                           "does not exist: create it, or fix httpRoute (Gateway API's CRDs must be installed)")
    rules = route.get("spec", {}).get("rules") or []
    desired = route_rules(rules, routing, route=f"{namespace}/{routing.http_route}", rollout=rollout,
                          weight=weight, canary_version=canary_version)
    if desired == rules:
        return RouteWeight(route_share(rules, routing), changed=False)
    meta = route["metadata"]
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "HTTPRoute",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                         "resourceVersion": meta["resourceVersion"]},
            "spec": {"rules": desired}}
    # force: the rules are written whole (an atomic list), so their owner becomes Kaizen while it routes them.
    applied = _objects().patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, meta["name"], body, field_manager=FIELD_MANAGER, force=True,
        _content_type="application/apply-patch+yaml",
    )
    return RouteWeight(route_share(applied["spec"].get("rules") or [], routing), changed=True)
