"""Building blocks shared by the three resources and the trainer contract.

Everything in ``kaizen.api`` is a pydantic model, and those models are the single source of truth: the CRD schemas
in ``crds/`` are generated from them (``kaizen.api.crd``), the operator parses specs with them, and the trainer
reads its config with them. Field descriptions are what ``kubectl explain`` shows, so every field has one.

CEL rules (``x-kubernetes-validations``) carry the cross-field checks the API server enforces; declare them with
:func:`cel` on the model or field they constrain.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

API_GROUP = "kaizen.dev"
API_VERSION = "v1alpha1"

#: Go-style durations as Kubernetes users write them: "30s", "5m", "1h30m", "250ms". No sign: never negative.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

#: A DNS-1123 label: what Kubernetes accepts as the name of a Deployment, container, Service or namespace.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: A name used inside a spec (a signal, a metric, a gate): short, lower camel or kebab case.
NAME_PATTERN = r"^[a-zA-Z][a-zA-Z0-9_-]*$"


def parse_duration(value: str) -> timedelta:
    """Parse a duration written as in :data:`DURATION_PATTERN` ("1h30m")."""
    if not re.fullmatch(DURATION_PATTERN, value):
        raise ValueError(f"invalid duration {value!r}: expected a number with a unit, e.g. 30s, 5m, 1h30m")
    return timedelta(seconds=sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value)))


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, Any]:
    """One CEL validation rule, as it appears in ``x-kubernetes-validations``."""
    validation = {"rule": rule, "message": message}
    if field_path:
        validation["fieldPath"] = field_path
    return validation


def validations(*rules: dict[str, Any]) -> dict[str, Any]:
    """The ``json_schema_extra`` that attaches CEL rules to a model or a field."""
    return {"x-kubernetes-validations": list(rules)}


def bounds_rule(low: str, high: str) -> dict[str, Any]:
    """CEL: when both optional bounds are set, ``low`` must not exceed ``high``."""
    return cel(
        f"!has(self.{low}) || !has(self.{high}) || self.{low} <= self.{high}",
        f"{low} must be less than or equal to {high}",
        f".{low}",
    )


def exactly_one_rule(*members: str) -> dict[str, Any]:
    """CEL for a union: an object with optional members of which exactly one is set."""
    count = " + ".join(f"(has(self.{m}) ? 1 : 0)" for m in members)
    return cel(f"{count} == 1", f"exactly one of {', '.join(members)} must be set")


IMMUTABLE = validations(cel("self == oldSelf", "is immutable"))

Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32)]
DNSLabel = Annotated[str, Field(pattern=DNS_LABEL_PATTERN, min_length=1, max_length=63)]
Name = Annotated[str, Field(pattern=NAME_PATTERN, min_length=1, max_length=63)]
Percent = Annotated[int, Field(ge=0, le=100)]


class KaizenModel(BaseModel):
    """Base of every API model: camelCase on the wire, snake_case in Python, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", validate_default=True
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready dict as it appears in a manifest (camelCase, no unset optional fields)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def nested(model: type[BaseModel], description: str) -> Any:
    """A nested spec object that may be omitted: the API server then fills in its defaults (``default: {}``)."""
    return Field(default_factory=model, description=description, json_schema_extra={"default": {}})


class SecretKeyRef(KaizenModel):
    """A key in a Secret in the same namespace."""

    name: DNSLabel = Field(description="Name of the Secret.")
    key: str = Field(min_length=1, max_length=253, description="Key within the Secret.")


class PrometheusSpec(KaizenModel):
    """Where the signals and the canary analysis are read from."""

    url: str = Field(
        max_length=1024, pattern=r"^https?://[^\s]+$", description="Base URL of the Prometheus HTTP API."
    )
    bearer_token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding a bearer token sent with every query."
    )
    insecure_skip_verify: bool = Field(default=False, description="Skip TLS certificate verification (tests only).")


class ModelRef(KaizenModel):
    """A model version and where its weights are."""

    version: str = Field(
        min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Model version label, e.g. v7 or 2026-11-28.1; also the kaizen.dev/model-version pod label.",
    )
    uri: str = Field(
        min_length=1, max_length=1024,
        description="Where the model is stored: a path, file://, s3:// or hf:// URI, passed to the server as is.",
    )


class TargetRef(KaizenModel):
    """The served model: a Deployment whose container reads the model location from an environment variable."""

    deployment: DNSLabel = Field(description="Name of the Deployment that serves the model (the stable track).")
    container: DNSLabel | None = Field(
        default=None, description="Container that serves the model; defaults to the first container of the pod."
    )
    model_env: str = Field(
        default="MODEL_URI", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128,
        description="Environment variable holding the model URI. Kaizen owns it (server-side apply field manager "
        "'kaizen'): leave it out of manifests kept in git.",
    )
    service: DNSLabel | None = Field(default=None, description="Service in front of the Deployment, if any.")


class Reason(KaizenModel):
    """Why an object exists: the decision that created it. Immutable, so the audit trail cannot be rewritten."""

    decision_id: str = Field(min_length=1, max_length=128, description="Id of the decision in the loop's log.")
    summary: str = Field(min_length=1, max_length=1024, description="One-line human-readable reason.")
    evidence: dict[str, Any] = Field(
        default_factory=dict,
        description="Numbers the decision rested on (signal values and windows, feedback counts, dataset hash, ...).",
    )


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(KaizenModel):
    """A Kubernetes-style condition (metav1.Condition), keyed by type."""

    type: str = Field(max_length=316, description="Type of condition: Ready, InvalidSpec, Progressing, Degraded, ...")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(max_length=1024, description="Machine-readable CamelCase reason for the last transition.")
    message: str = Field(default="", max_length=32768, description="Human-readable details.")
    last_transition_time: datetime = Field(description="When the status last changed.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the condition was computed from."
    )


class CommonStatus(KaizenModel):
    """Status fields every Kaizen resource has."""

    observed_generation: int | None = Field(
        default=None, description="metadata.generation of the spec this status was computed from."
    )
    conditions: list[Condition] = Field(
        default_factory=list, max_length=16,
        description="Current conditions, one per type: Ready, InvalidSpec, Progressing, Degraded.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    message: str | None = Field(default=None, max_length=4096, description="Human-readable summary of the state.")
