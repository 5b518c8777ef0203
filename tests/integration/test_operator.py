"""The operator skeleton on a real API server: every kind gets observedGeneration and Ready, and a spec only the
operator can judge becomes InvalidSpec with a clear message, once, without retries."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import kopf
import kubernetes.config
import pytest
import yaml
from kopf.testing import KopfRunner

from kaizen.controllers import improvementloop
from tests.integration.kube import apply, condition, get, reconciled, settled, wait_for

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.fixture(scope="module")
def operator(crds):
    """The kopf operator running in a thread (kopf.testing.KopfRunner), as `kaizen operator -A` runs it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KUBECONFIG", str(crds.kubeconfig))
        # kopf logs in through the official client, which read $KUBECONFIG once, when this process imported it.
        patch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(crds.kubeconfig))
        with KopfRunner(["run", "--standalone", "--all-namespaces", "-m", "kaizen.controllers"], timeout=60) as runner:
            yield crds
    assert runner.exception is None, runner.output


@pytest.mark.parametrize("example", ["improvementloop.yaml", "retrainjob.yaml", "rollout.yaml"])
def test_valid_object_becomes_ready_with_observed_generation(operator, namespace, example):
    doc = yaml.safe_load((EXAMPLES / example).read_text())
    apply(operator, namespace, doc)
    obj = wait_for(operator, doc["kind"].lower(), doc["metadata"]["name"], namespace, reconciled)
    ready = condition(obj, "Ready")
    assert ready["status"] == "True" and ready["reason"] == "SpecAccepted"
    assert ready["observedGeneration"] == obj["metadata"]["generation"] == 1
    assert condition(obj, "InvalidSpec") is None


@pytest.mark.parametrize("example", ["improvementloop.yaml", "rollout.yaml"])
def test_the_body_kopf_keeps_of_an_object_holds_no_managed_fields(operator, namespace, example):
    """kopf keeps every object's latest body for its daemon; the operator drops the body's managedFields (half of it
    as Python objects), which the API server sends with every event."""
    doc = yaml.safe_load((EXAMPLES / example).read_text())
    apply(operator, namespace, doc)
    name = doc["metadata"]["name"]
    wait_for(operator, doc["kind"].lower(), name, namespace, reconciled)
    served = json.loads(operator.kubectl("get", f"{doc['kind'].lower()}.kaizen.dev", name, "-n", namespace, "-o",
                                         "json", "--show-managed-fields").stdout)
    assert served["metadata"]["managedFields"]
    kept = [body for body in gc.get_objects() if isinstance(body, kopf.Body)
            and body.metadata.name == name and body.metadata.namespace == namespace]
    assert kept, "kopf keeps no body of the object"
    assert all("managedFields" not in body["metadata"] for body in kept)


def test_semantic_error_becomes_invalid_spec_once_and_clears_when_fixed(operator, namespace):
    doc = yaml.safe_load((EXAMPLES / "improvementloop.yaml").read_text())
    good_query = doc["spec"]["signals"][0]["query"]
    doc["spec"]["signals"][0]["query"] = 'sum(rate(errors{deployment="{{deploymnet}}"}[5m]))'
    apply(operator, namespace, doc)  # the API server accepts it: only the operator knows the placeholders

    obj = wait_for(operator, "improvementloop", "support-bot", namespace, reconciled)
    invalid = condition(obj, "InvalidSpec")
    assert invalid["status"] == "True"
    assert invalid["message"] == ("spec.signals[0].query: unknown placeholder {{deploymnet}}; known: namespace, "
                                  "target, version")
    assert condition(obj, "Ready")["status"] == "False"

    # Reported once, not retried: one Warning Event, and no retry bookkeeping left on the object; nothing is
    # scheduled for it, and a change that is not one of the spec (an annotation) is looked at without a new report.
    slept = settled(improvementloop.scheduler, namespace, "support-bot", lambda s: s.due is None)
    operator.kubectl("annotate", "improvementloop.kaizen.dev", "support-bot", "-n", namespace, "example.com/touched=1")
    settled(improvementloop.scheduler, namespace, "support-bot", lambda s: s.due is None, after=slept.looks)
    events = json.loads(operator.kubectl("get", "events", "-n", namespace, "-o", "json",
                                         "--field-selector", "involvedObject.name=support-bot,type=Warning").stdout)
    assert [e["reason"] for e in events["items"]] == ["InvalidSpec"]
    assert events["items"][0].get("count", 1) == 1
    annotations = get(operator, "improvementloop", "support-bot", namespace)["metadata"].get("annotations", {})
    assert not [k for k in annotations if k.startswith("kaizen.dev/validate_spec")], annotations

    doc["spec"]["signals"][0]["query"] = good_query
    apply(operator, namespace, doc)
    obj = wait_for(operator, "improvementloop", "support-bot", namespace,
                   lambda o: reconciled(o) and o["metadata"]["generation"] == 2)
    assert condition(obj, "Ready")["status"] == "True"
    assert condition(obj, "InvalidSpec") is None
