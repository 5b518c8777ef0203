"""kaizen.k8s.httproutes on the real API server with the real Gateway API CRDs: the canary's weight is set by
server-side apply with Kaizen's field manager, and every part of the route Kaizen does not own stays byte for byte."""

from __future__ import annotations

import json

import pytest
import yaml

import kaizen.k8s.client
from kaizen.api.rollout import GatewayAPIRouting
from kaizen.dev.gateway import install_gateway_api
from kaizen.k8s import httproutes
from kaizen.logic.routing import RouteError, RouteMissing

pytestmark = pytest.mark.integration

ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bot}
spec:
  parentRefs: [{name: edge}]
  hostnames: [bot.example.com]
  rules:
  - name: docs
    matches: [{path: {type: PathPrefix, value: /docs}}]
    backendRefs: [{name: docs, port: 80}]
  - name: api
    matches:
    - path: {type: PathPrefix, value: /v1}
      headers: [{name: X-Env, value: prod}]
    - path: {type: Exact, value: /healthz}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Team, value: assistants}]
        remove: [X-Debug]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        add: [{name: X-Served-By, value: edge}]
    backendRefs:
    - name: bot
      port: 80
      weight: 1
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier: {add: [{name: X-Stable, value: "1"}]}
    - {name: bot-canary, port: 80, weight: 0}
    - {name: shadow, port: 8080, weight: 0}
"""


@pytest.fixture
def gateway_api(cluster, monkeypatch):
    install_gateway_api(cluster)
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    kaizen.k8s.client.reset()
    yield cluster
    kaizen.k8s.client.reset()


def routing(**extra):
    return GatewayAPIRouting.model_validate({"httpRoute": "bot", "stableBackend": {"name": "bot", "port": 80},
                                             "canaryBackend": {"name": "bot-canary", "port": 80}, **extra})


def route(cluster, namespace):
    return json.loads(cluster.kubectl("get", "httproute", "bot", "-n", namespace, "-o", "json",
                                      "--show-managed-fields").stdout)


def foreign_parts(rules):
    """Everything in the rules that Kaizen does not own, as JSON text: rules other than Kaizen's, and in the
    managed rule its matches, filters and the backendRefs other than the canary's, without the two weights."""
    parts = []
    for rule in rules:
        if rule.get("name", "").startswith("kaizen-"):
            continue
        rule = json.loads(json.dumps(rule))
        for backend in rule.get("backendRefs", []):
            if backend["name"] in ("bot", "bot-canary"):
                backend.pop("weight")
        rule["backendRefs"] = [b for b in rule["backendRefs"] if b["name"] != "bot-canary"]
        parts.append(json.dumps(rule))
    return parts


def test_the_weight_is_applied_and_foreign_backends_filters_and_matches_stay_byte_for_byte(gateway_api, namespace):
    cluster = gateway_api
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=ROUTE)
    before = route(cluster, namespace)
    spec = routing(sessionAffinity={"header": "X-Kaizen-Version"}, cohorts={"header": "X-Cohort",
                                                                          "values": ["beta", "staff"]})

    result = httproutes.set_weight(namespace, spec, rollout="bot-v2", weight=5, canary_version="v2")
    assert result == httproutes.RouteWeight(share=5.0, changed=True)
    during = route(cluster, namespace)
    rules = during["spec"]["rules"]
    assert [r["name"] for r in rules] == ["kaizen-bot-v2-api-pin", "kaizen-bot-v2-api-cohorts", "docs", "api"]
    api = rules[3]
    assert [(b["name"], b["weight"]) for b in api["backendRefs"]] == [("bot", 95), ("bot-canary", 5), ("shadow", 0)]
    assert foreign_parts(rules) == foreign_parts(before["spec"]["rules"])
    assert (during["spec"]["parentRefs"], during["spec"]["hostnames"]) == (
        before["spec"]["parentRefs"], before["spec"]["hostnames"])
    # Kaizen owns the rules it wrote; the user's manager still owns the rest of the spec.
    owners = {m["manager"]: m["fieldsV1"] for m in during["metadata"]["managedFields"]}
    assert "f:rules" in owners["kaizen"]["f:spec"] and "f:parentRefs" in owners["kubectl"]["f:spec"]
    assert "f:rules" not in owners["kubectl"]["f:spec"]

    # The same weight again writes nothing.
    again = httproutes.set_weight(namespace, spec, rollout="bot-v2", weight=5, canary_version="v2")
    assert again == httproutes.RouteWeight(share=5.0, changed=False)
    assert route(cluster, namespace)["metadata"]["resourceVersion"] == during["metadata"]["resourceVersion"]

    # Promotion or rollback: 100/0, Kaizen's rules and marker gone, the route's rules as they were, byte for byte.
    httproutes.set_weight(namespace, spec, rollout="bot-v2", weight=0, canary_version="v2")
    restored = route(cluster, namespace)
    original = json.loads(json.dumps(before["spec"]["rules"]))
    original[1]["backendRefs"][0]["weight"] = 100
    assert json.dumps(restored["spec"]["rules"]) == json.dumps(original)


def test_a_cookie_marker_and_its_regular_expression_match_pass_the_routes_validation(gateway_api, namespace):
    gateway_api.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=ROUTE)
    spec = routing(sessionAffinity={"cookie": "kaizen-canary"})
    httproutes.set_weight(namespace, spec, rollout="r", weight=50, canary_version="v2.1")
    pin = route(gateway_api, namespace)["spec"]["rules"][0]
    assert pin["matches"][0]["headers"][-1]["type"] == "RegularExpression"


def test_a_missing_route_and_a_route_that_does_not_serve_the_target_say_what_to_do(gateway_api, namespace):
    with pytest.raises(RouteMissing, match=f"HTTPRoute {namespace}/bot .* does not exist: create it"):
        httproutes.set_weight(namespace, routing(), rollout="r", weight=10, canary_version="v2")
    other = yaml.safe_load(ROUTE)
    for rule in other["spec"]["rules"]:
        for backend in rule["backendRefs"]:
            backend["name"] = "someone-else"
    gateway_api.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=yaml.safe_dump(other))
    with pytest.raises(RouteError, match="has no rule with backendRef Service bot port 80"):
        httproutes.set_weight(namespace, routing(), rollout="r", weight=10, canary_version="v2")
    assert all(b.get("weight", 1) in (0, 1) for r in route(gateway_api, namespace)["spec"]["rules"]
               for b in r["backendRefs"])
