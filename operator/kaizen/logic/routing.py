"""Traffic routing of a canary, pure: how big the canary Deployment is, what share of the traffic it gets, and the
HTTPRoute rules that give it exactly its step's weight (``trafficRouting.gatewayAPI``).

No I/O: :func:`route_rules` takes the route's ``spec.rules`` as read and returns them as they must be, and
:mod:`kaizen.k8s.httproutes` applies them. It changes, in the rules it manages, only the weights of the stable and
canary backendRefs (adding the canary's when it is missing) and the canary's session marker; it adds Kaizen's own
rules (named ``kaizen-<rollout>-...``) for session affinity and cohorts, and removes them at weight 0. Everything
else (other backends, filters, matches, rules, and the fields the API server defaulted) is returned as it came,
since ``spec.rules`` and ``backendRefs`` are atomic lists that are written whole.

Adapter canaries (``model``: a :class:`ModelSplit`) split by model name instead: the managed rules stay exactly as
they are, and Kaizen adds, before each, a rule that repeats its matches with one more, the model-name header
(``X-Gateway-Model-Name``) equal to the served name, whose stable and canary backendRefs are weighted and whose
canary backendRef sets that header to the adapter's name (a RequestHeaderModifier filter), as the Inference
Extension's model rewrite does. Both backendRefs may reach the same pods: the header picks the adapter there.

Session affinity: the canary's answers carry the marker (a header set to the canary's version, or a cookie), put
there by a ResponseHeaderModifier filter on the canary's backendRef, which applies to the canary's answers only.
Kaizen's pin rule repeats each managed rule's matches with one more header match on the marker, so under Gateway
API's precedence (more header matches win) a request carrying it goes to the canary alone, through the same
rule-level filters. Cohorts work the same way with the cohort header, matched before the weighted split.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from typing import Any

from kaizen.api.rollout import BackendRef, GatewayAPIRouting, ReplicasRouting, TrafficRouting

#: Gateway API's bounds on a route (the CRD's maxItems).
MAX_RULES, MAX_MATCHES, MAX_BACKENDS = 16, 64, 16
_DEFAULT_MATCH = {"path": {"type": "PathPrefix", "value": "/"}}


class RouteError(ValueError):
    """The route cannot be managed as the spec says; the message says what is wrong and what to do."""


class RouteMissing(RouteError):
    """The HTTPRoute the spec names does not exist (or Gateway API's CRDs are not installed)."""

    def __init__(self, namespace: str, routing: GatewayAPIRouting):
        super().__init__(f"HTTPRoute {namespace}/{routing.http_route} (spec.trafficRouting.gatewayAPI.httpRoute) "
                         "does not exist: create it, or fix httpRoute (Gateway API's CRDs must be installed)")


@dataclass(frozen=True)
class ModelSplit:
    """An adapter canary's split by model name: requests whose ``header`` names ``served`` are split, and the
    canary's share gets the header set to ``adapter``."""

    header: str
    served: str
    adapter: str


def canary_size(routing: TrafficRouting, stable_replicas: int, weight: int, adapter: bool = False) -> int:
    """Replicas of the canary Deployment at ``weight`` percent.

    Replica routing: enough pods that canary/(stable+canary) approaches the weight (at 100 the stable's size).
    Gateway API: the route sets the split, so the canary is sized for its share of the traffic the stable serves
    now, ``ceil(stable * weight / 100)``: 1 pod at 5 %, the stable's size only at 100 %.
    An adapter canary (``adapter``) runs on the stable's pods: none.
    """
    if weight <= 0 or adapter:
        return 0
    if routing.gateway_api is not None:
        return max(1, math.ceil(stable_replicas * weight / 100))
    wanted = stable_replicas if weight >= 100 else math.ceil(stable_replicas * weight / (100 - weight))
    return min(max(wanted, 1), (routing.replicas or ReplicasRouting()).max_canary_replicas)


def achieved_weight(routing: TrafficRouting, stable_replicas: int, canary_replicas: int, weight: int,
                    adapter: bool = False) -> float:
    """The share of traffic (percent) the routing gives the canary: the replica share canary/(stable+canary) with
    replica routing, the exact weight with Gateway API or by model name (an adapter canary)."""
    if routing.gateway_api is not None or adapter:
        return float(weight)
    pods = stable_replicas + canary_replicas
    return round(100 * canary_replicas / pods, 2) if pods else 0.0


def _matches_ref(backend: dict[str, Any], ref: BackendRef) -> bool:
    return ((backend.get("group") or "") == ref.group and (backend.get("kind") or "Service") == ref.kind
            and backend.get("name") == ref.name
            and (ref.namespace is None or backend.get("namespace") == ref.namespace)
            and (ref.port is None or backend.get("port") == ref.port))


def _ref_text(ref: BackendRef) -> str:
    kind = f"{ref.group}/{ref.kind}" if ref.group else ref.kind
    return f"{kind} {ref.name}" + (f" port {ref.port}" if ref.port else "")


def own_rule_prefix(rollout: str) -> str:
    return f"kaizen-{rollout}-"


def _marker(routing: GatewayAPIRouting, version: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(the response header the canary's answers get, the request header match that pins to it), or None."""
    affinity = routing.session_affinity
    if affinity is None:
        return None
    if affinity.header is not None:
        return ({"name": affinity.header, "value": version},
                {"type": "Exact", "name": affinity.header, "value": version})
    assert affinity.cookie is not None
    return ({"name": "Set-Cookie", "value": f"{affinity.cookie}={version}; Path=/; HttpOnly"},
            {"type": "RegularExpression", "name": "Cookie",
             "value": f"(^|.*;\\s*){re.escape(affinity.cookie)}={re.escape(version)}(;.*|$)"})


def _is_marker(routing: GatewayAPIRouting, header: dict[str, Any]) -> bool:
    """Whether a response header of the canary's ResponseHeaderModifier is Kaizen's session marker."""
    affinity = routing.session_affinity
    if affinity is None:
        return False
    if affinity.header is not None:
        return str(header.get("name", "")).lower() == affinity.header.lower()
    return (str(header.get("name", "")).lower() == "set-cookie"
            and str(header.get("value", "")).startswith(f"{affinity.cookie}="))


def _with_marker(backend: dict[str, Any], routing: GatewayAPIRouting, header: dict[str, Any] | None) -> dict[str, Any]:
    """The canary backendRef with Kaizen's session marker set (``header``) or removed (None), in its
    ResponseHeaderModifier filter. Gateway API allows that filter once per backendRef, so a user's is kept and
    the marker merged into it; a filter Kaizen made is removed with the marker."""
    backend = copy.deepcopy(backend)
    filters = backend.get("filters") or []
    modifier = next((f for f in filters if f.get("type") == "ResponseHeaderModifier"), None)
    if modifier is not None:
        inner = modifier.setdefault("responseHeaderModifier", {})
        for list_name in ("set", "add"):
            if list_name in inner:
                inner[list_name] = [h for h in inner[list_name] if not _is_marker(routing, h)]
                if not inner[list_name]:
                    del inner[list_name]
    if header is not None:
        if modifier is None:
            modifier = {"type": "ResponseHeaderModifier", "responseHeaderModifier": {}}
            filters = [*filters, modifier]
        list_name = "add" if header["name"] == "Set-Cookie" else "set"
        modifier["responseHeaderModifier"].setdefault(list_name, []).append(header)
    if modifier is not None and not modifier.get("responseHeaderModifier"):
        filters = [f for f in filters if f is not modifier]
    if filters:
        backend["filters"] = filters
    else:
        backend.pop("filters", None)
    return backend


def _extended(matches: list[dict[str, Any]] | None, header: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for match in matches or [_DEFAULT_MATCH]:
        match = copy.deepcopy(match)
        match["headers"] = [*(h for h in match.get("headers") or [] if h.get("name") != header["name"]), header]
        out.append(match)
    return out


def managed_rule_indexes(rules: list[dict[str, Any]], routing: GatewayAPIRouting, route: str,
                         rollout: str) -> list[int]:
    """Which rules Kaizen manages: those named in the spec, else every rule with the stable backendRef. Raises
    :class:`RouteError` when a named rule is missing or lacks the stable backendRef, when no rule has it, or when
    another Rollout's rules are in the route."""
    prefix = own_rule_prefix(rollout)
    foreign = sorted({r["name"] for r in rules if (r.get("name") or "").startswith("kaizen-")
                      and not r["name"].startswith(prefix)})
    if foreign:
        raise RouteError(f"HTTPRoute {route} carries rules of another Rollout ({', '.join(foreign)}): one Rollout "
                         "routes a route at a time; wait for that rollout to finish, give this one its own route, "
                         "or remove those rules if that Rollout is gone")
    stable = routing.stable_backend
    candidates = [i for i, r in enumerate(rules) if not (r.get("name") or "").startswith(prefix)]
    if routing.rules:
        names: dict[str, int] = {rules[i]["name"]: i for i in candidates if rules[i].get("name")}
        missing = [n for n in routing.rules if n not in names]
        if missing:
            raise RouteError(f"HTTPRoute {route} has no rule named {', '.join(missing)} (its named rules: "
                             f"{', '.join(sorted(names)) or 'none'}): fix spec.trafficRouting.gatewayAPI.rules, or "
                             "name the rules in the route")
        chosen = [names[n] for n in routing.rules]
        lacking = [rules[i]["name"] for i in chosen
                   if not any(_matches_ref(b, stable) for b in rules[i].get("backendRefs") or [])]
        if lacking:
            raise RouteError(f"rule {', '.join(lacking)} of HTTPRoute {route} has no backendRef {_ref_text(stable)} "
                             "(spec.trafficRouting.gatewayAPI.stableBackend): add it, or fix stableBackend")
        return chosen
    chosen = [i for i in candidates if any(_matches_ref(b, stable) for b in rules[i].get("backendRefs") or [])]
    if not chosen:
        raise RouteError(f"HTTPRoute {route} has no rule with backendRef {_ref_text(stable)} "
                         "(spec.trafficRouting.gatewayAPI.stableBackend): the route does not serve this target; "
                         "fix stableBackend or httpRoute, or add the backendRef to the route's rule")
    return chosen


def _with_model(backend: dict[str, Any], model: ModelSplit) -> dict[str, Any]:
    """The canary backendRef naming the adapter in the model-name header (its RequestHeaderModifier)."""
    backend = copy.deepcopy(backend)
    filters = [f for f in backend.get("filters") or [] if f.get("type") != "RequestHeaderModifier"]
    user = next((f for f in backend.get("filters") or [] if f.get("type") == "RequestHeaderModifier"), None)
    inner = copy.deepcopy((user or {}).get("requestHeaderModifier") or {})
    inner["set"] = [*(h for h in inner.get("set") or [] if h.get("name", "").lower() != model.header.lower()),
                    {"name": model.header, "value": model.adapter}]
    backend["filters"] = [{"type": "RequestHeaderModifier", "requestHeaderModifier": inner}, *filters]
    return backend


def route_rules(rules: list[dict[str, Any]], routing: GatewayAPIRouting, *, route: str, rollout: str, weight: int,
                canary_version: str, model: ModelSplit | None = None) -> list[dict[str, Any]]:
    """The route's ``spec.rules`` that send ``weight`` percent of the managed rules' traffic to the canary (with
    ``model``, of their requests for the served name, to the adapter).

    At weight 0 (before the canary serves, after promotion or rollback) it is the route at 100/0 with none of
    Kaizen's rules or markers. Raises :class:`RouteError` (see :func:`managed_rule_indexes`), or when Kaizen's rules
    would not fit in the route.
    """
    managed = managed_rule_indexes(rules, routing, route, rollout)
    prefix = own_rule_prefix(rollout)
    if model is not None:
        return _model_rules(rules, routing, managed, route=route, prefix=prefix, weight=weight,
                            canary_version=canary_version, model=model)
    marker = _marker(routing, canary_version) if weight > 0 else None
    out: list[dict[str, Any]] = []
    own: list[dict[str, Any]] = []
    for index, rule in enumerate(rules):
        if (rule.get("name") or "").startswith(prefix):
            continue  # Kaizen's own rules are rebuilt below.
        if index not in managed:
            out.append(rule)
            continue
        rule, extra = _split(rule, index, routing, route=route, prefix=prefix, weight=weight, marker=marker)
        out.append(rule)
        own.extend(extra)
    if len(out) + len(own) > MAX_RULES:
        raise RouteError(f"HTTPRoute {route} has {len(out)} rules; Kaizen's session and cohort rules would make it "
                         f"{len(out) + len(own)}, over Gateway API's {MAX_RULES}: split the route")
    return [*own, *out]


def _split(rule: dict[str, Any], index: int, routing: GatewayAPIRouting, *, route: str, prefix: str, weight: int,
           marker: tuple[dict[str, Any], dict[str, Any]] | None,
           model: ModelSplit | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One managed rule weighted ``weight`` to the canary (its backendRef added when missing), and Kaizen's pin and
    cohort rules for it."""
    stable_ref, canary_ref = routing.stable_backend, routing.canary_backend
    own: list[dict[str, Any]] = []
    rule = copy.deepcopy(rule)
    backends = rule.get("backendRefs") or []
    if not any(_matches_ref(b, canary_ref) for b in backends):
        stable_at = next(i for i, b in enumerate(backends) if _matches_ref(b, stable_ref))
        added = {k: v for k, v in backends[stable_at].items() if k in ("group", "kind", "port")}
        added.update({"group": canary_ref.group, "kind": canary_ref.kind, "name": canary_ref.name})
        if canary_ref.namespace:
            added["namespace"] = canary_ref.namespace
        if canary_ref.port:
            added["port"] = canary_ref.port
        backends = [*backends[:stable_at + 1], added, *backends[stable_at + 1:]]
        if len(backends) > MAX_BACKENDS:
            raise RouteError(f"rule {index} of HTTPRoute {route} has {MAX_BACKENDS} backendRefs already: no room "
                             f"for the canary's {_ref_text(canary_ref)}; add it to the route yourself")
    new_backends = []
    for backend in backends:
        if _matches_ref(backend, stable_ref):
            backend = {**backend, "weight": 100 - weight}
        elif _matches_ref(backend, canary_ref):
            backend = {**_with_marker(backend, routing, marker[0] if marker else None), "weight": weight}
            if model is not None:
                backend = _with_model(backend, model)
        new_backends.append(backend)
    rule["backendRefs"] = new_backends
    if weight <= 0:
        return rule, []
    canary_backend = next(b for b in new_backends if _matches_ref(b, canary_ref))
    pinned = {k: copy.deepcopy(v) for k, v in rule.items() if k not in ("name", "matches", "backendRefs")}
    label = rule.get("name") or str(index)
    extra = []
    if marker is not None:
        extra.append(("pin", _extended(rule.get("matches"), marker[1])))
    if routing.cohorts is not None:
        cohort_matches = [m for value in routing.cohorts.values for m in _extended(
            rule.get("matches"), {"type": "Exact", "name": routing.cohorts.header, "value": value})]
        extra.append(("cohorts", cohort_matches))
    for suffix, matches in extra:
        if len(matches) > MAX_MATCHES:
            raise RouteError(f"rule {label} of HTTPRoute {route} would need {len(matches)} matches for "
                             f"Kaizen's {suffix} rule (at most {MAX_MATCHES}): use fewer cohort values or matches")
        own.append({"name": f"{prefix}{label}-{suffix}"[:253], "matches": matches, **pinned,
                    "backendRefs": [{**canary_backend, "weight": 1}]})
    return rule, own


def _model_rules(rules: list[dict[str, Any]], routing: GatewayAPIRouting, managed: list[int], *, route: str,
                 prefix: str, weight: int, canary_version: str, model: ModelSplit) -> list[dict[str, Any]]:
    """An adapter canary's rules: the route's own rules as they are, and before them, per managed rule, Kaizen's
    rule for requests naming the served model (weighted, the canary's share renamed to the adapter) with its pin
    and cohort rules. None of Kaizen's at weight 0."""
    out = [r for r in rules if not (r.get("name") or "").startswith(prefix)]
    if weight <= 0:
        return out
    marker = _marker(routing, canary_version)
    header = {"type": "Exact", "name": model.header, "value": model.served}
    own: list[dict[str, Any]] = []
    for index in managed:
        rule = rules[index]
        stable = next(b for b in rule.get("backendRefs") or [] if _matches_ref(b, routing.stable_backend))
        label = rule.get("name") or str(index)
        split = {**{k: copy.deepcopy(v) for k, v in rule.items() if k not in ("name", "matches", "backendRefs")},
                 "name": f"{prefix}{label}-model"[:253], "matches": _extended(rule.get("matches"), header),
                 "backendRefs": [copy.deepcopy(stable)]}
        # Its pin and cohort rules are named after it: kaizen-<rollout>-<rule>-model-pin, ...
        split, extra = _split(split, index, routing, route=route, prefix="", weight=weight, marker=marker,
                              model=model)
        own += [*extra, split]
    if len(out) + len(own) > MAX_RULES:
        raise RouteError(f"HTTPRoute {route} has {len(out)} rules; Kaizen's model-name rules would make it "
                         f"{len(out) + len(own)}, over Gateway API's {MAX_RULES}: split the route")
    return [*own, *out]


def route_share(rules: list[dict[str, Any]], routing: GatewayAPIRouting,
                model: ModelSplit | None = None) -> float | None:
    """The canary's share (percent) of the weighted split in the route as read: canary/(stable+canary) weights over
    the first rule with both backendRefs that is not Kaizen's (with ``model``: the first of Kaizen's model-name
    rules, 0 when there is none), or None when there is none."""
    for rule in rules:
        name = rule.get("name") or ""
        if (model is None) == name.startswith("kaizen-") or (model is not None and not name.endswith("-model")):
            continue
        backends = rule.get("backendRefs") or []
        stable = [b.get("weight", 1) for b in backends if _matches_ref(b, routing.stable_backend)]
        canary = [b.get("weight", 1) for b in backends if _matches_ref(b, routing.canary_backend)]
        if stable and canary:
            total = stable[0] + canary[0]
            return 100 * canary[0] / total if total else 0.0
    return None if model is None else 0.0


def route_manifest(route: dict[str, Any], rules: list[dict[str, Any]]) -> dict[str, Any]:
    """The apply configuration that writes ``rules`` into ``route`` (as read): the rules whole, since they are an
    atomic list, and the route's resourceVersion as a precondition, so that an edit made since the read is not
    written over (the apply fails with a conflict, and the next look starts from the edited route)."""
    meta = route["metadata"]
    return {"apiVersion": route.get("apiVersion", "gateway.networking.k8s.io/v1"), "kind": "HTTPRoute",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                         "resourceVersion": meta["resourceVersion"]},
            "spec": {"rules": rules}}
