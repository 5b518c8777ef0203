"""The pure part of traffic routing: the HTTPRoute rules that give the canary its exact weight, and leave the rest."""

from __future__ import annotations

import copy
import re

import pytest

from kaizen.api.rollout import GatewayAPIRouting
from kaizen.logic.routing import RouteError, route_rules, route_share

FOREIGN_FILTER = {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "X-Team", "value": "a"}]}}
MATCHES = [{"path": {"type": "PathPrefix", "value": "/v1"}, "headers": [{"type": "Exact", "name": "X-Env",
                                                                          "value": "prod"}]}]


def routing(**extra):
    return GatewayAPIRouting.model_validate({"httpRoute": "bot", "stableBackend": {"name": "bot", "port": 80},
                                             "canaryBackend": {"name": "bot-canary", "port": 80}, **extra})


def rules():
    """A route as the API server returns it (defaults filled in), with parts Kaizen does not own."""
    return [
        {"name": "docs", "matches": [{"path": {"type": "PathPrefix", "value": "/docs"}}],
         "backendRefs": [{"group": "", "kind": "Service", "name": "docs", "port": 80, "weight": 1}]},
        {"name": "api", "matches": copy.deepcopy(MATCHES), "filters": [FOREIGN_FILTER],
         "backendRefs": [{"group": "", "kind": "Service", "name": "bot", "port": 80, "weight": 1},
                         {"group": "", "kind": "Service", "name": "mirror", "port": 80, "weight": 0}]},
    ]


def backends(rule):
    return {b["name"]: b for b in rule["backendRefs"]}


@pytest.mark.parametrize("weight", [1, 5, 37, 100])
def test_the_managed_rule_gets_the_exact_weight_and_everything_else_stays(weight):
    before = rules()
    after = route_rules(before, routing(), route="bot", rollout="r1", weight=weight, canary_version="v2")
    assert after[0] == before[0]  # not managed: the docs rule has no stable backendRef
    api = after[1]
    assert {n: b["weight"] for n, b in backends(api).items()} == {"bot": 100 - weight, "bot-canary": weight,
                                                                   "mirror": 0}
    assert [b["name"] for b in api["backendRefs"]] == ["bot", "bot-canary", "mirror"]  # inserted after the stable
    assert backends(api)["bot-canary"] == {"group": "", "kind": "Service", "name": "bot-canary", "port": 80,
                                          "weight": weight}
    assert api["matches"] == MATCHES and api["filters"] == [FOREIGN_FILTER]
    assert before == rules()  # the input is not changed
    assert route_share(after, routing()) == weight


def test_weight_zero_restores_100_0_and_removes_kaizens_rules_and_marker():
    r = routing(sessionAffinity={"header": "X-Kaizen-Version"}, cohorts={"header": "X-Cohort", "values": ["beta"]})
    during = route_rules(rules(), r, route="bot", rollout="r1", weight=20, canary_version="v2")
    assert [x["name"] for x in during] == ["kaizen-r1-api-pin", "kaizen-r1-api-cohorts", "docs", "api"]
    restored = route_rules(during, r, route="bot", rollout="r1", weight=0, canary_version="v2")
    assert [x["name"] for x in restored] == ["docs", "api"]
    assert {n: b["weight"] for n, b in backends(restored[1]).items()} == {"bot": 100, "bot-canary": 0, "mirror": 0}
    assert "filters" not in backends(restored[1])["bot-canary"]
    # Applying twice gives the same route: a retried reconcile changes nothing.
    assert route_rules(during, r, route="bot", rollout="r1", weight=20, canary_version="v2") == during


def test_session_affinity_by_header_marks_the_canarys_answers_and_pins_requests_that_carry_it():
    r = routing(sessionAffinity={"header": "X-Kaizen-Version"})
    pin, docs, api = route_rules(rules(), r, route="bot", rollout="r1", weight=10, canary_version="v2")
    assert backends(api)["bot-canary"]["filters"] == [{"type": "ResponseHeaderModifier", "responseHeaderModifier": {
        "set": [{"name": "X-Kaizen-Version", "value": "v2"}]}}]
    assert "filters" not in backends(api)["bot"]  # the stable's answers carry no marker
    # The pin rule: the managed rule's matches plus the marker, its filters, and the canary alone.
    assert pin["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1"}, "headers": [
        {"type": "Exact", "name": "X-Env", "value": "prod"}, {"type": "Exact", "name": "X-Kaizen-Version",
                                                              "value": "v2"}]}]
    assert pin["filters"] == [FOREIGN_FILTER]
    assert [(b["name"], b["weight"]) for b in pin["backendRefs"]] == [("bot-canary", 1)]


def test_session_affinity_by_cookie_sets_it_and_matches_the_cookie_header():
    r = routing(sessionAffinity={"cookie": "kaizen-canary"})
    pin, _docs, api = route_rules(rules(), r, route="bot", rollout="r1", weight=10, canary_version="v2.1")
    [modifier] = backends(api)["bot-canary"]["filters"]
    assert modifier["responseHeaderModifier"] == {
        "add": [{"name": "Set-Cookie", "value": "kaizen-canary=v2.1; Path=/; HttpOnly"}]}
    header = pin["matches"][0]["headers"][-1]
    assert (header["type"], header["name"]) == ("RegularExpression", "Cookie")

    assert re.fullmatch(header["value"], "a=1; kaizen-canary=v2.1; b=2")
    assert re.fullmatch(header["value"], "kaizen-canary=v2.1")
    assert not re.fullmatch(header["value"], "kaizen-canary=v2x1")
    assert not re.fullmatch(header["value"], "xkaizen-canary=v2.1")


def test_a_users_response_filter_on_the_canary_backend_is_kept_and_the_marker_merged_into_it():
    before = rules()
    user_filter = {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "X-Own",
                                                                                          "value": "1"}]}}
    before[1]["backendRefs"].append({"group": "", "kind": "Service", "name": "bot-canary", "port": 80, "weight": 0,
                                     "filters": [user_filter]})
    r = routing(sessionAffinity={"header": "X-Kaizen-Version"})
    during = route_rules(before, r, route="bot", rollout="r1", weight=30, canary_version="v2")
    assert [b["name"] for b in during[-1]["backendRefs"]] == ["bot", "mirror", "bot-canary"]  # kept where it was
    assert backends(during[-1])["bot-canary"]["filters"][0]["responseHeaderModifier"]["set"] == [
        {"name": "X-Own", "value": "1"}, {"name": "X-Kaizen-Version", "value": "v2"}]
    restored = route_rules(during, r, route="bot", rollout="r1", weight=0, canary_version="v2")
    assert backends(restored[-1])["bot-canary"]["filters"] == [user_filter]


def test_cohorts_get_a_rule_per_value_and_match_before_the_split():
    r = routing(cohorts={"header": "X-Cohort", "values": ["beta", "staff"]})
    cohorts, _docs, _api = route_rules(rules(), r, route="bot", rollout="r1", weight=5, canary_version="v2")
    assert cohorts["name"] == "kaizen-r1-api-cohorts"
    assert [m["headers"][-1]["value"] for m in cohorts["matches"]] == ["beta", "staff"]
    assert [b["name"] for b in cohorts["backendRefs"]] == ["bot-canary"]


def test_a_rule_without_matches_is_extended_from_gateway_apis_default_match():
    plain = [{"backendRefs": [{"name": "bot", "port": 80}]}]
    pin, rule = route_rules(plain, routing(sessionAffinity={"header": "X-V"}), route="bot", rollout="r1",
                            weight=50, canary_version="v2")
    assert pin["name"] == "kaizen-r1-0-pin"
    assert pin["matches"] == [{"path": {"type": "PathPrefix", "value": "/"},
                               "headers": [{"type": "Exact", "name": "X-V", "value": "v2"}]}]
    assert "matches" not in rule


def test_named_rules_are_the_only_ones_managed():
    two = rules()
    two[0]["backendRefs"] = [{"name": "bot", "port": 80, "weight": 1}]
    after = route_rules(two, routing(rules=["api"]), route="bot", rollout="r1", weight=10, canary_version="v2")
    assert after[0] == two[0]
    assert backends(after[1])["bot-canary"]["weight"] == 10


@pytest.mark.parametrize("spec, route, message", [
    ({}, [{"name": "x", "backendRefs": [{"name": "other", "port": 80}]}],
     "HTTPRoute bot has no rule with backendRef Service bot port 80 (spec.trafficRouting.gatewayAPI.stableBackend)"),
    ({"rules": ["api", "nope"]}, rules(), "HTTPRoute bot has no rule named nope (its named rules: api, docs)"),
    ({"rules": ["docs"]}, rules(), "rule docs of HTTPRoute bot has no backendRef Service bot port 80"),
    ({}, [*rules(), {"name": "kaizen-other-api-pin", "backendRefs": []}],
     "HTTPRoute bot carries rules of another Rollout (kaizen-other-api-pin)"),
])
def test_a_route_that_does_not_serve_the_target_is_refused_with_what_to_do(spec, route, message):
    with pytest.raises(RouteError) as raised:
        route_rules(route, routing(**spec), route="bot", rollout="r1", weight=10, canary_version="v2")
    assert str(raised.value).startswith(message)


def test_kaizens_rules_must_fit_in_the_route():
    many = [{"name": f"r{i}", "backendRefs": [{"name": "bot", "port": 80}]} for i in range(9)]
    with pytest.raises(RouteError, match="over Gateway API's 16: split the route"):
        route_rules(many, routing(sessionAffinity={"header": "X-V"}), route="bot", rollout="r1", weight=10,
                    canary_version="v2")
