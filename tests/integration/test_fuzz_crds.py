"""Fuzzed custom resources on a real API server (issue 13): hypothesis generates objects at the edges (names near
and past the limits their children's names impose, unicode, extreme durations, maximal lists, huge numbers), and
each is created for real. The API server must either refuse it with a message, or everything the operator does with
what it accepted must hold: ``parse_spec`` raises nothing but :class:`InvalidSpec`, and the children built from a
valid spec (the RetrainJob's ConfigMap and Job, the Rollout's canary Deployment, a loop's RetrainJob with its Job,
the loop's label selector) are accepted by the same API server (server-side dry run).

Then the same kinds of objects are applied with the operator running, and kept: every one the API server accepted
must be answered (acted on, or InvalidSpec with its problems named), with no error in the operator's log and no
storm of API requests once answered.

``KAIZEN_FUZZ_EXAMPLES`` (default 150 per kind: 450 objects, about 20 s) raises the count: ``make fuzz`` runs 700 per
kind, over 2,000 objects, both ways.
"""

from __future__ import annotations

import collections
import copy
import json
import logging
import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kaizen.api import IMPROVEMENT_LOOP, RETRAIN_JOB, ROLLOUT, ResourceKind
from kaizen.api.common import API_GROUP, API_VERSION
from kaizen.logic.deployments import canary_manifest
from kaizen.logic import loop as loop_logic
from kaizen.logic import retrain
from kaizen.logic.validation import InvalidSpec, parse_spec
from tests.integration.rollouts import running_operator

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).parents[2] / "examples"
EXAMPLES_PER_KIND = int(os.environ.get("KAIZEN_FUZZ_EXAMPLES", "150"))

DURATIONS = st.one_of(
    st.sampled_from(["0s", "0ms", "999ms", "1s", "24h", "24h1ms", "168h", "168h1s", "720h", "720h1ms", "8760h",
                     "8760h1s", "99999h", "99999h99999h99999h99999h", "9999999999999999999999999999999h",
                     "0.0000000001s", "1.5s", "1h30m", "5 minutes", "-5m", ""]),
    st.from_regex(r"\A[0-9]{1,7}(\.[0-9]{1,10})?(ms|s|m|h)\Z"),
)
NAMES = st.one_of(
    st.sampled_from([39, 40, 41, 47, 48, 54, 55, 56, 57, 62, 63, 64, 100, 253, 254]).map(lambda n: "n" * n),
    st.from_regex(r"\A[a-z0-9]([a-z0-9.-]{0,80}[a-z0-9])?\Z"),
)
TEXT = st.one_of(st.text(max_size=80), st.sampled_from(["v1-", "-v", "z\u00fcrich", "a" * 63, "a" * 64, "x.y_z-1"]))
HUGE = st.one_of(st.integers(-(2**70), 2**70), st.sampled_from([0, -1, 2**31, 2**63 - 1, 2**63, 10**7, 10**7 + 1]))
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
TOLERATION = st.fixed_dictionaries({}, optional={
    "key": st.one_of(TEXT, st.just("nvidia.com/gpu")), "operator": st.sampled_from(["Exists", "Equal", "Gt"]),
    "value": TEXT, "effect": st.sampled_from(["NoSchedule", "PreferNoSchedule", "NoExecute"]),
    "tolerationSeconds": HUGE,
})
RESOURCES = st.fixed_dictionaries({}, optional={
    "gpus": HUGE, "cpu": st.one_of(TEXT, st.sampled_from(["0", "0.0001", "99999999999999m", "1.5"])),
    "memory": st.one_of(TEXT, st.sampled_from(["0", "1.5Gi", "999999999999999T", "1e3"])),
    "gpuResourceName": st.one_of(TEXT, st.sampled_from(["kubernetes.io/gpu", "a/b", "-/-", "amd.com/gpu"])),
})
# Fields of a RetrainJob spec that are copied into its Job (and of a loop's spec.retrain, which embeds them).
RETRAIN_FIELDS = {
    "activeDeadline": DURATIONS, "queueName": TEXT, "image": TEXT, "resources": RESOURCES,
    "nodeSelector": st.dictionaries(TEXT, TEXT, max_size=33),
    "tolerations": st.lists(TOLERATION, max_size=33), "backoffLimit": HUGE,
    "candidateVersion": TEXT, "outputURI": st.sampled_from(["pvc://Bad_Claim/x", "pvc://claim/out", "/out", "s3://b"]),
}


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())


def mutated(draw: Any, base: dict[str, Any], fields: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    doc["metadata"] = {"name": draw(NAMES)}
    for path in draw(st.lists(st.sampled_from(sorted(fields)), max_size=5, unique=True)):
        node = doc["spec"]
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = draw(fields[path])
    return doc


def signals(n: int) -> list[dict[str, Any]]:
    return [{"name": f"s{i}", "query": "sum(x)", "max": 1, "for": "1s"} for i in range(n)]


LOOP_FIELDS = {
    ("interval",): DURATIONS, ("policy", "cooldown"): DURATIONS, ("policy", "rollbackWindow"): DURATIONS,
    ("rollout", "analysis", "interval"): DURATIONS, ("target", "deployment"): NAMES, ("model", "version"): TEXT,
    ("policy", "maxRetrainsPerWeek"): HUGE, ("policy", "gpuHoursPerWeek"): FLOATS,
    ("feedback", "minNewItems"): HUGE, ("signals",): st.sampled_from([1, 32, 33]).map(signals),
    **{("retrain", key): value for key, value in RETRAIN_FIELDS.items()},
}
JOB_FIELDS = {**{(key,): value for key, value in RETRAIN_FIELDS.items()}, ("baseline", "version"): TEXT,
              ("hyperparameters", "seed"): HUGE, ("hyperparameters", "maxLength"): HUGE}
ROLLOUT_FIELDS = {
    ("analysis", "interval"): DURATIONS, ("target", "deployment"): NAMES, ("canaryModel", "version"): TEXT,
    ("stableModel", "version"): TEXT, ("target", "modelEnv"): TEXT, ("canaryModel", "uri"): TEXT,
    ("steps",): st.lists(st.one_of(
        st.builds(lambda w: {"setWeight": w}, HUGE), st.builds(lambda d: {"pause": {"duration": d}}, DURATIONS),
        st.builds(lambda d: {"analysis": {"duration": d}}, DURATIONS)), min_size=1, max_size=33)
    .map(lambda steps: [*steps, {"setWeight": 100}]),
}


@pytest.fixture(scope="module")
def api(crds: Any) -> Any:
    return crds.api_client()


@pytest.fixture(scope="module")
def fuzz_namespace(crds: Any) -> Any:
    name = "t-fuzz-crds"
    crds.kubectl("create", "namespace", name, check=False)
    yield name
    crds.kubectl("delete", "namespace", name, "--wait=false", check=False)


def create(api: Any, kind: ResourceKind, namespace: str, doc: dict[str, Any]) -> dict[str, Any] | None:
    """Create for real; None when the API server refused it, which it must do with a message."""
    custom = kubernetes.client.CustomObjectsApi(api)
    try:
        return custom.create_namespaced_custom_object(API_GROUP, API_VERSION, namespace, kind.plural,
                                                      {**doc, "apiVersion": kind.api_version, "kind": kind.kind})
    except kubernetes.client.ApiException as error:
        assert error.status in (400, 422), (error.status, error.body)
        assert json.loads(error.body)["message"], error.body
        return None


def delete(api: Any, kind: ResourceKind, namespace: str, name: str) -> None:
    kubernetes.client.CustomObjectsApi(api).delete_namespaced_custom_object(
        API_GROUP, API_VERSION, namespace, kind.plural, name)


def accepted(api: Any, body: dict[str, Any]) -> None:
    """The API server accepts a child Kaizen would create (a dry run: nothing is stored)."""
    try:
        kubernetes.dynamic.DynamicClient(api).resources.get(api_version=body["apiVersion"], kind=body["kind"]).create(
            body=body, namespace=body["metadata"]["namespace"], query_params=[("dryRun", "All")])
    except kubernetes.client.ApiException as error:
        pytest.fail(f"the API server refused a {body['kind']} built from an accepted spec: {error.body}")


def retrain_children(api: Any, spec: Any, name: str, namespace: str, uid: str) -> None:
    planned = retrain.plan(spec, name, namespace, uid)
    accepted(api, planned.config_map)
    accepted(api, planned.job)


def check(api: Any, kind: ResourceKind, namespace: str, doc: dict[str, Any]) -> str:
    """What became of ``doc``: refused (by the API server), invalid (InvalidSpec) or built (children accepted)."""
    stored = create(api, kind, namespace, doc)
    if stored is None:
        return "refused"
    name, uid = stored["metadata"]["name"], stored["metadata"]["uid"]
    try:
        try:
            spec = parse_spec(kind, stored["spec"], name=name)
        except InvalidSpec as invalid:
            assert invalid.problems and all(":" in p for p in invalid.problems)
            return "invalid"
        if kind is RETRAIN_JOB:
            retrain_children(api, spec, name, namespace, uid)
        elif kind is ROLLOUT:
            stable = {"metadata": {"name": spec.target.deployment, "namespace": namespace}, "spec": {
                "selector": {"matchLabels": {"app": "fuzz"}},
                "template": {"metadata": {"labels": {"app": "fuzz"}},
                             "spec": {"containers": [{"name": "server", "image": "server:1"}]}}}}
            accepted(api, canary_manifest(stable, stored, container="server", model_env=spec.target.model_env,
                                          model=spec.canary_model, replicas=1))
        else:
            kubernetes.client.CustomObjectsApi(api).list_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, RETRAIN_JOB.plural, label_selector=f"{API_GROUP}/loop={name}")
            child = loop_logic.child_name(name, "retrain", uid, "fuzz")
            decision = loop_logic.decision_id(name, datetime(2026, 12, 1, tzinfo=timezone.utc), 1)
            job = {**spec.retrain.to_wire(), "reason": {"decisionId": decision, "summary": "fuzz"},
                   "baseline": (spec.model or spec.retrain.base_model).to_wire(),
                   "targets": {"categories": ["incorrect"]}}
            retrain_children(api, parse_spec(RETRAIN_JOB, job, name=child), child, namespace, uid)
            for role in ("rollout", "rollback"):
                assert len(loop_logic.child_name(name, role, uid, "fuzz")) <= ROLLOUT.max_name_length
        return "built"
    finally:
        delete(api, kind, namespace, name)


FUZZ = settings(max_examples=EXAMPLES_PER_KIND, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])


@pytest.mark.parametrize("kind, file, fields", [
    (IMPROVEMENT_LOOP, "improvementloop.yaml", LOOP_FIELDS), (RETRAIN_JOB, "retrainjob.yaml", JOB_FIELDS),
    (ROLLOUT, "rollout.yaml", ROLLOUT_FIELDS),
], ids=lambda v: getattr(v, "kind", None))
def test_what_the_api_server_accepts_the_operator_can_act_on(api, fuzz_namespace, kind, file, fields):
    base = example(file)
    outcomes: list[str] = []

    @FUZZ
    @given(st.data())
    def run(data: Any) -> None:
        outcomes.append(check(api, kind, fuzz_namespace, mutated(data.draw, base, fields)))

    run()
    # Both sides of the edge were reached: objects refused at admission, and objects accepted and built on.
    assert outcomes.count("refused") >= len(outcomes) // 10 and outcomes.count("built") >= len(outcomes) // 10, \
        {o: outcomes.count(o) for o in set(outcomes)}


# --------------------------------------------------------------------------------- with the operator running

#: At rest, with every fuzzed object answered, the requests on Kaizen's own kinds (which only the operator and this
#: test touch; the controllers' and other tests' traffic is not the operator's) stay below the scale target for 1,000
#: loops (issue 13: 20 requests/s); the probe that found these defects saw about 290/s, from objects retried forever.
AT_REST_REQUESTS_PER_SECOND = 20.0
KAIZEN_RESOURCES = {kind.plural for kind in (IMPROVEMENT_LOOP, RETRAIN_JOB, ROLLOUT)}


def generated(base: dict[str, Any], fields: dict[tuple[str, ...], Any], count: int) -> list[dict[str, Any]]:
    """``count`` fuzzed objects of one kind, one per name (the name strategy repeats names at the limits)."""
    docs: dict[str, dict[str, Any]] = {}

    @settings(FUZZ, max_examples=count)
    @given(st.data())
    def draw(data: Any) -> None:
        doc = mutated(data.draw, base, fields)
        docs.setdefault(doc["metadata"]["name"], doc)

    draw()
    return list(docs.values())


def answered(obj: dict[str, Any]) -> bool:
    """The operator answered this object's spec: judged at its generation, and either refused with the problems
    named (InvalidSpec) or looked at (a phase, or a message saying what it waits for, as a Rollout whose target
    Deployment does not exist or is held by another Rollout says)."""
    status = obj.get("status") or {}
    conditions = {c["type"]: c for c in status.get("conditions") or []}
    if status.get("observedGeneration") != obj["metadata"]["generation"]:
        return False
    invalid = conditions.get("InvalidSpec", {})
    if invalid.get("status") == "True":
        return bool(invalid.get("message"))
    return conditions.get("Ready", {}).get("status") == "True" and bool(status.get("phase") or status.get("message"))


def api_requests(cluster: Any) -> collections.Counter[str]:
    """The API server's requests on Kaizen's kinds so far, by verb, resource and subresource (from its /metrics)."""
    counts: collections.Counter[str] = collections.Counter()
    for line in cluster.kubectl("get", "--raw", "/metrics").stdout.splitlines():
        if line.startswith("apiserver_request_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
            if labels.get("resource") not in KAIZEN_RESOURCES:
                continue
            key = " ".join(filter(None, (labels.get("verb"), labels.get("resource"), labels.get("subresource"))))
            counts[key] += float(line.rsplit(" ", 1)[1])
    return counts


class ErrorRecords(logging.Handler):
    """The operator's log records at ERROR or with a traceback: a bug, whatever the input."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        # kopf logs its own retried API requests at ERROR: the API server's 429 "storage is (re)initializing" while
        # the CRDs of a fresh cluster settle, say. A retry is no bug; one that never succeeds leaves objects
        # unanswered, which the test catches.
        if not record.getMessage().startswith("Request attempt #"):
            self.records.append(record)


def test_with_the_operator_running_every_accepted_object_is_acted_on_or_invalid_without_a_storm(crds, api):
    namespace = "t-fuzz-operator"
    crds.kubectl("create", "namespace", namespace, check=False)
    kinds = ((IMPROVEMENT_LOOP, "improvementloop.yaml", LOOP_FIELDS), (RETRAIN_JOB, "retrainjob.yaml", JOB_FIELDS),
             (ROLLOUT, "rollout.yaml", ROLLOUT_FIELDS))
    errors = ErrorRecords()
    loggers = [logging.getLogger(name) for name in ("kopf", "kaizen")]
    for logger in loggers:
        logger.addHandler(errors)
    custom = kubernetes.client.CustomObjectsApi(api)
    # Drawn before the operator starts: hypothesis refuses draws while other threads use `random`.
    docs = {kind: generated(example(file), fields, EXAMPLES_PER_KIND) for kind, file, fields in kinds}
    try:
        with running_operator(crds):
            stored = {kind: [obj for doc in docs[kind] if (obj := create(api, kind, namespace, doc)) is not None]
                      for kind in docs}
            # Most fuzzed loops are refused at admission (one bad field of many is enough): some of each are kept.
            assert all(len(objs) >= EXAMPLES_PER_KIND // 30 for objs in stored.values()), \
                {kind.kind: len(objs) for kind, objs in stored.items()}

            def unanswered() -> list[str]:
                left = []
                for kind in stored:
                    objs = custom.list_namespaced_custom_object(API_GROUP, API_VERSION, namespace, kind.plural)
                    left += [f"{kind.kind}/{o['metadata']['name']}: {o.get('status')}"
                             for o in objs["items"] if not answered(o)]
                return left

            deadline = time.monotonic() + 180
            while (left := unanswered()) and time.monotonic() < deadline:
                time.sleep(2)
            assert not left, f"{len(left)} objects the operator never answered, e.g. {left[:3]}"

            before, started = api_requests(crds), time.monotonic()
            time.sleep(15)
            served = api_requests(crds) - before
            rate = served.total() / (time.monotonic() - started)
            total = sum(len(objs) for objs in stored.values())
            print(f"\n{total} fuzzed objects answered; at rest {rate:.1f} API requests/s on Kaizen's kinds")
            assert rate <= AT_REST_REQUESTS_PER_SECOND, \
                f"{rate:.1f} API requests/s at rest on Kaizen's kinds, {total} objects; 15 s: {served.most_common(8)}"
    finally:
        for logger in loggers:
            logger.removeHandler(errors)
        crds.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    assert not errors.records, "\n".join(errors.format(r) for r in errors.records[:5])
