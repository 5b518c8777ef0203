"""The API models: examples parse, defaults are what the CRDs promise, durations and the trainer result behave."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from pydantic import Field, ValidationError

from kaizen.api import IMPROVEMENT_LOOP, KINDS, RETRAIN_JOB, ROLLOUT
from kaizen.api.common import KaizenModel, parse_duration
from kaizen.api.crd import SchemaError, custom_resource_definition, model_schema
from kaizen.api.trainer import TrainerResult

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))
BY_KIND = {k.kind: k for k in KINDS}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_parses_with_its_model(path):
    for doc in yaml.safe_load_all(path.read_text()):
        spec = BY_KIND[doc["kind"]].spec.model_validate(doc["spec"])
        # Round trip: what the operator writes back is what the user wrote, defaults filled in.
        assert BY_KIND[doc["kind"]].spec.model_validate(spec.to_wire()) == spec


def test_minimal_loop_gets_documented_defaults():
    doc = yaml.safe_load((Path(__file__).parents[2] / "examples" / "improvementloop-minimal.yaml").read_text())
    spec = IMPROVEMENT_LOOP.spec.model_validate(doc["spec"])
    assert spec.policy.cooldown == "24h"
    assert spec.policy.approval.retrain == "Automatic"
    assert spec.feedback is None
    assert spec.target.model_env == "MODEL_URI"
    assert [s.set_weight for s in spec.rollout.steps if s.set_weight is not None] == [10, 50, 100]
    assert spec.rollout.traffic_routing.replicas is not None


def test_wire_names_are_camel_case_with_kubernetes_acronyms():
    doc = yaml.safe_load((Path(__file__).parents[2] / "examples" / "improvementloop.yaml").read_text())
    wire = IMPROVEMENT_LOOP.spec.model_validate(doc["spec"]).to_wire()
    assert wire["feedback"]["collectorURL"].startswith("http")
    assert wire["retrain"]["outputURI"].startswith("s3://")
    assert wire["signals"][0]["for"] == "10m"
    assert "maxRetrainsPerWeek" in wire["policy"]


def test_unknown_fields_are_rejected_by_the_models():
    with pytest.raises(ValidationError, match="extra"):
        ROLLOUT.spec.model_validate({"target": {"deployment": "x"}, "stableModel": {"version": "a", "uri": "/a"},
                                     "canaryModel": {"version": "b", "uri": "/b"}, "replicas": 3})


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("1.5h", 5400)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "-5m", "5", "5 minutes", "1d", "m5"])
def test_parse_duration_rejects_with_a_clear_message(text):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_trainer_result_refuses_to_exceed_the_termination_message_limit():
    small = TrainerResult(phase="Succeeded", reason="Completed", metrics={"candidate": {"holdout.accuracy": 0.9}})
    assert len(small.to_termination_message()) < 4096
    big = TrainerResult(phase="Succeeded", reason="Completed",
                        metrics={"candidate": {f"holdout.accuracy.cohort-{i}": 0.5 for i in range(400)}})
    with pytest.raises(ValueError, match="termination message limit"):
        big.to_termination_message()
    assert TrainerResult(phase="Failed", reason="InvalidData").permanent
    assert not TrainerResult(phase="Failed", reason="Error").permanent


def test_crd_generator_refuses_fields_without_description():
    class Undocumented(KaizenModel):
        size: int = 1

    with pytest.raises(SchemaError, match="description"):
        model_schema(Undocumented, "spec")


def test_crd_generator_refuses_non_structural_unions():
    class Union(KaizenModel):
        value: int | str = Field(description="Either.")

    with pytest.raises(SchemaError, match="not structural"):
        model_schema(Union, "spec")


def test_generated_schema_is_structural_and_documented():
    def walk(node, path):
        assert "$ref" not in node and "anyOf" not in node and "oneOf" not in node, path
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        for name, child in node.get("properties", {}).items():
            if path == "" and name == "metadata":
                continue  # the API server allows nothing but the type on the root metadata
            assert child.get("description"), f"{path}.{name} has no description"
            walk(child, f"{path}.{name}")
        if "items" in node:
            walk(node["items"], f"{path}[]")

    for kind in KINDS:
        crd = custom_resource_definition(kind)
        walk(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], "")


def test_optional_fields_are_omittable_not_nullable():
    schema = model_schema(IMPROVEMENT_LOOP.spec, "spec")
    feedback = schema["properties"]["feedback"]
    assert feedback["type"] == "object" and "default" not in feedback and "nullable" not in feedback
    assert "feedback" not in schema["required"]
    assert set(schema["required"]) == {"target", "prometheus", "signals", "retrain"}


def test_exclusive_bounds_use_openapi_v3_form():
    alpha = model_schema(ROLLOUT.spec, "spec")["properties"]["analysis"]["properties"]["alpha"]
    assert alpha["minimum"] == 0 and alpha["exclusiveMinimum"] is True and alpha["maximum"] == 0.5
    # The members of an optional model (spec.lora) are rewritten once, not twice: the bound stays a number.
    lora = model_schema(RETRAIN_JOB.spec, "spec")["properties"]["lora"]["properties"]
    assert lora["alpha"]["minimum"] == 0 and lora["alpha"]["exclusiveMinimum"] is True
    assert lora["dropout"]["maximum"] == 1 and lora["dropout"]["exclusiveMaximum"] is True



@pytest.mark.parametrize("text", ["9999999999999999999999999999999h", "9" * 400 + "s", "2562048h"])
def test_parse_duration_rejects_what_no_clock_can_hold_with_a_value_error(text):
    with pytest.raises(ValueError, match="longer than the longest duration"):
        parse_duration(text)


def test_every_duration_field_is_bounded_and_says_its_bounds():
    """A field made by BoundedDuration carries a CEL rule; its description must tell users the same bounds."""
    from kaizen.api import KINDS
    from kaizen.api.common import DURATION_PATTERN, duration_bounds
    from kaizen.api.crd import custom_resource_definition

    found = []

    def walk(node, path):
        if node.get("pattern") == DURATION_PATTERN:
            bounds = duration_bounds(node)
            assert bounds is not None, f"{path}: a duration without bounds"
            low, high = bounds
            assert low in node["description"] and high in node["description"], (path, node["description"])
            found.append(path)
        for name, child in node.get("properties", {}).items():
            walk(child, f"{path}.{name}")
        if "items" in node:
            walk(node["items"], f"{path}[]")

    for kind in KINDS:
        walk(custom_resource_definition(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"], kind.kind)
    assert len(found) >= 12, found
