"""Building blocks shared by the three resources and the trainer contract.

Everything in ``kaizen.api`` is a pydantic model, and those models are the single source of truth: the CRD schemas
in ``crds/`` are generated from them (``kaizen.api.crd``), the operator parses specs with them, and the trainer
reads its config with them. Field descriptions are what ``kubectl explain`` shows, so every field has one.

CEL rules (``x-kubernetes-validations``) carry the cross-field checks the API server enforces; declare them with
:func:`cel` on the model or field they constrain.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from annotated_types import GroupedMetadata
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

API_GROUP = "kaizen.dev"
API_VERSION = "v1alpha1"

#: Go-style durations as Kubernetes users write them: "30s", "5m", "1h30m", "250ms". No sign: never negative.
#: At most four parts of at most five integer digits each (4 x 99999h is about 45 years), so that no duration the
#: schema accepts overflows a parser: neither the API server's CEL ``duration()`` (Go's, limited to about 292 years)
#: nor :func:`parse_duration`.
DURATION_PATTERN = r"^([0-9]{1,5}(\.[0-9]{1,9})?(ms|s|m|h)){1,4}$"
_DURATION_SYNTAX = re.compile(r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
#: The longest duration :func:`parse_duration` returns: Go's (and so CEL's) limit, 2^63 ns.
MAX_DURATION = timedelta(microseconds=(2**63 - 1) // 1000)

#: A DNS-1123 label: what Kubernetes accepts as the name of a Deployment, container, Service or namespace.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: A DNS-1123 subdomain (names of most objects: ConfigMaps, PersistentVolumeClaims, Kueue LocalQueues).
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A label value as the API server validates it: at most 63 characters, alphanumeric at both ends, [-_.] between.
#: Empty is a valid label value; fields that must be set add ``min_length=1``.
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
#: A label key (a qualified name): an optional DNS-subdomain prefix and '/', then a name of at most 63 characters.
#: The prefix's own limit (253) is checked by :func:`label_key_problem` and the CEL rules that use it.
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
#: A name used inside a spec (a signal, a metric, a gate): short, lower camel or kebab case.
NAME_PATTERN = r"^[a-zA-Z][a-zA-Z0-9_-]*$"


def parse_duration(value: str) -> timedelta:
    """Parse a duration written as in :data:`DURATION_PATTERN` ("1h30m").

    Raises :class:`ValueError` (never ``OverflowError``) for anything that is not a duration or is longer than
    :data:`MAX_DURATION`: a spec stored before the schema bounded durations may still hold one.
    """
    if not isinstance(value, str) or not _DURATION_SYNTAX.fullmatch(value):
        raise ValueError(f"invalid duration {value!r}: expected a number with a unit, e.g. 30s, 5m, 1h30m")
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value))
    if not seconds <= MAX_DURATION.total_seconds():  # also false for inf
        raise ValueError(f"invalid duration {value[:40]!r}: longer than the longest duration Kubernetes can "
                         f"represent ({MAX_DURATION.days} days); use a shorter one")
    return timedelta(seconds=seconds)


class BoundedDuration(GroupedMetadata):
    """A duration field's metadata, bounded to [low, high]: ``Annotated[str, BoundedDuration("1s", "24h")]``.

    Checked by the API server (a CEL rule with ``duration()``) and again by pydantic, so a spec stored before the
    bound existed is reported, not acted on. Say the bounds in the field's description; :func:`duration_bounds`
    reads them back (the tests check every description). Metadata rather than a type built at run time, so that
    type checkers see a ``str``.
    """

    def __init__(self, low: str, high: str) -> None:
        self._low, self._high = parse_duration(low), parse_duration(high)
        if self._low > timedelta(0):
            self._rule = f"duration(self) >= duration('{low}') && duration(self) <= duration('{high}')"
            self._message = f"must be at least {low} and at most {high}"
        else:
            self._rule, self._message = f"duration(self) <= duration('{high}')", f"must be at most {high}"

    def __iter__(self) -> Iterator[object]:
        rule = validations(cel(self._rule, self._message))
        yield Field(pattern=DURATION_PATTERN, max_length=40, json_schema_extra=rule)
        yield AfterValidator(self._check)

    def _check(self, value: str) -> str:
        if not self._low <= parse_duration(value) <= self._high:
            raise ValueError(f"{value} is out of range: {self._message}")
        return value


def duration_bounds(schema: dict[str, Any]) -> tuple[str, str] | None:
    """The (low, high) of a duration field's schema made by :class:`BoundedDuration`, or None."""
    for rule in schema.get("x-kubernetes-validations", []):
        found = re.findall(r"duration\('([^']+)'\)", rule["rule"])
        if found:
            return ("0s", found[0]) if len(found) == 1 else (found[0], found[1])
    return None


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is not a label key (a qualified name), or None."""
    if not re.fullmatch(LABEL_KEY_PATTERN, key):
        return (f"{key[:80]!r} is not a label key: an optional DNS-subdomain prefix and '/', then at most 63 "
                "characters [A-Za-z0-9_.-], alphanumeric at both ends")
    if "/" in key and len(key.split("/")[0]) > 253:
        return f"{key[:80]!r}: the prefix of a label key has at most 253 characters"
    return None


def _label_key(key: str) -> str:
    problem = label_key_problem(key)
    if problem:
        raise ValueError(problem)
    return key


#: CEL (on a string, or with ``k`` for a map key) accepting label keys as :func:`label_key_problem` does.
def label_key_rule(var: str) -> str:
    return f"{var}.matches(r'{LABEL_KEY_PATTERN}') && ({var}.indexOf('/') < 0 || {var}.indexOf('/') <= 253)"


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

DNSLabel = Annotated[str, Field(pattern=DNS_LABEL_PATTERN, min_length=1, max_length=63)]
#: A label value that must be set (a model version, a Kueue queue name is stricter: a DNS subdomain).
LabelValue = Annotated[str, Field(pattern=LABEL_VALUE_PATTERN, min_length=1, max_length=63)]
#: A label key, for maps copied into a pod (nodeSelector) or a toleration's key.
LabelKey = Annotated[str, Field(min_length=1, max_length=317), AfterValidator(_label_key)]
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
    key: str = Field(
        min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key within the Secret: at most 253 characters of [-._a-zA-Z0-9], as Secret keys are.",
    )


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

    version: LabelValue = Field(
        description="Model version label, e.g. v7 or 2026-11-28.1. It becomes the kaizen.dev/model-version pod "
        "label, so it has a label value's syntax: at most 63 characters of [A-Za-z0-9._-], alphanumeric at both ends.",
    )
    uri: str = Field(
        min_length=1, max_length=1024,
        description="Where the model is stored: a path, file://, s3:// or hf:// URI, passed to the server as is.",
    )
    base_uri: str | None = Field(
        default=None, alias="baseURI", min_length=1, max_length=1024,
        description="Set when the model is a LoRA adapter: the base model it applies to (the base_model_name_or_path "
        "of its adapter_config.json). A server loads this base, then the adapter at uri onto it.",
    )


#: The canary Deployment is named ``<target>-canary`` (kaizen.logic.deployments.canary_name): 63 - len("-canary").
MAX_TARGET_LENGTH = 56


class TargetRef(KaizenModel):
    """The served model: a Deployment whose container reads the model location from an environment variable."""

    deployment: str = Field(
        pattern=DNS_LABEL_PATTERN, min_length=1, max_length=MAX_TARGET_LENGTH,
        description=f"Name of the Deployment that serves the model (the stable track): a DNS label of at most "
        f"{MAX_TARGET_LENGTH} characters, so that its canary Deployment, <deployment>-canary, is a DNS label of at "
        "most 63 too.",
    )
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
