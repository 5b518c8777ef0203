"""Rollout: one staged canary release of a candidate model, and the part of it an ImprovementLoop templates.

The canary is judged on live telemetry: each analysis interval compares the canary track with the stable track
(ratio metrics by a sequential test, threshold metrics by a bound) and stores the numbers it judged on. With
metrics set, a canary is promoted only after a look at its final weight passed (see :mod:`kaizen.logic.rollout`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field
from pydantic.json_schema import JsonValue

from kaizen.api.common import (
    IMMUTABLE, CommonStatus, DNSLabel, KaizenModel, ModelRef, Name, Percent, PrometheusSpec, Reason, TargetRef,
    BoundedDuration, bounds_rule, cel, exactly_one_rule, nested, validations,
)

#: A metric's PromQL, as a type (rather than Field keyword arguments in a dict) so that type checkers see a str.
PromQL = Annotated[str, Field(
    min_length=1, max_length=4096,
    description="PromQL. Placeholders {{track}}, {{version}}, {{namespace}} and {{target}} are filled in per track.",
)]


class ReplicasRouting(KaizenModel):
    """Route by replica count: canary pods are added beside the untouched stable Deployment, behind its Service.

    The split follows the pods, so a weight is only approximated (with one stable replica, any weight below 100
    runs one canary pod: half the traffic); status.achievedWeight reports the share the replicas give.
    """

    max_canary_replicas: int = Field(default=10, ge=1, le=1000, description="Upper bound on canary replicas.")


#: An HTTP header name (RFC 7230 token), as Gateway API's HTTPHeaderName accepts it.
HEADER_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+\-.^_\x60|~]+$"
#: A cookie name (RFC 6265 token: no separators, no '=').
COOKIE_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+\-.^_\x60|~]+$"
#: A DNS-1123 subdomain: the names of an HTTPRoute and of its rules.
SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A header value a cohort is named by: visible characters and spaces, no control characters.
HeaderValue = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")]
RuleName = Annotated[str, Field(min_length=1, max_length=253, pattern=SUBDOMAIN_PATTERN)]


class BackendRef(KaizenModel):
    """A backendRef of the HTTPRoute: matched by group, kind and name, and by namespace and port when set."""

    group: str = Field(
        default="", max_length=253, pattern=r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        description="API group of the backend; empty for the core group (a Service).",
    )
    kind: str = Field(
        default="Service", min_length=1, max_length=63, pattern=r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$",
        description="Kind of the backend, Service by default.",
    )
    name: str = Field(min_length=1, max_length=253, description="Name of the backend.")
    namespace: DNSLabel | None = Field(default=None, description="Namespace of the backend, when not the route's.")
    port: int | None = Field(default=None, ge=1, le=65535, description="Port of the backend, when the route names one.")


class SessionAffinity(KaizenModel):
    """Keep a conversation on the canary once the canary answered it. Exactly one of header, cookie is set.

    The canary's answers carry the marker (a response header with the canary's version, or a cookie set to it);
    the stable's do not. Kaizen adds a rule that sends requests carrying the marker to the canary only, so a
    client that echoes it (a chat client sends the header back; a browser sends the cookie) stays on the canary
    version for every later turn. Requests without it take the weighted split.
    """

    header: str | None = Field(
        default=None, min_length=1, max_length=256, pattern=HEADER_NAME_PATTERN,
        description="Response header the canary's answers carry and follow-up requests echo, e.g. X-Kaizen-Version.",
    )
    cookie: str | None = Field(
        default=None, min_length=1, max_length=256, pattern=COOKIE_NAME_PATTERN,
        description="Cookie the canary's answers set (Set-Cookie) and follow-up requests send back.",
    )

    model_config = {"json_schema_extra": validations(exactly_one_rule("header", "cookie"))}


class Cohorts(KaizenModel):
    """Named cohorts go to the canary first: requests whose header has one of the values, before the split."""

    header: str = Field(
        min_length=1, max_length=256, pattern=HEADER_NAME_PATTERN,
        description="Request header naming the cohort, e.g. X-Cohort.",
    )
    values: list[HeaderValue] = Field(
        min_length=1, max_length=16, description="Cohorts sent to the canary whatever the weight.",
    )


class GatewayAPIRouting(KaizenModel):
    """Route by Gateway API: Kaizen sets the exact weights of the stable and canary backendRefs of an HTTPRoute.

    Kaizen changes only the weights of those two backendRefs in the rules it manages, adds the canary backendRef
    there when the route does not list it, and adds its own rules (named kaizen-*) for session affinity and
    cohorts. Every other backend, filter, match and rule stays exactly as it was. Promotion and rollback restore
    100/0.
    """

    http_route: str = Field(
        min_length=1, max_length=253, pattern=SUBDOMAIN_PATTERN,
        description="Name of the HTTPRoute (gateway.networking.k8s.io/v1) in the Rollout's namespace.",
    )
    rules: list[RuleName] = Field(
        default_factory=list, max_length=16,
        description="Names of the route's rules to manage; empty: every rule with the stable backendRef.",
    )
    stable_backend: BackendRef = Field(description="The backendRef serving the stable track (its Service).")
    canary_backend: BackendRef = Field(
        description="The backendRef serving the canary track; Kaizen adds it to the managed rules if missing."
    )
    session_affinity: SessionAffinity | None = Field(
        default=None, description="Keep conversations the canary answered on the canary."
    )
    cohorts: Cohorts | None = Field(default=None, description="Cohorts that go to the canary first.")
    scale_down_delay: Annotated[str, BoundedDuration("0s", "1h")] = Field(
        default="30s", description="How long the canary Deployment stays after the rollout ended and the route went "
        "back to 100/0 (promoted, rolled back or aborted): a gateway loads a route change some time after it is "
        "written, and until then it still sends the canary its share (Argo Rollouts' abortScaleDownDelaySeconds). "
        "The Rollout holds its target until the canary is gone; from 0s to 1h.",
    )

    model_config = {
        "json_schema_extra": validations(
            cel("!(self.stableBackend.name == self.canaryBackend.name && self.stableBackend.kind == "
                "self.canaryBackend.kind && self.stableBackend.group == self.canaryBackend.group)",
                "canaryBackend must differ from stableBackend", ".canaryBackend"),
            cel("!has(self.rules) || self.rules.all(r, self.rules.exists_one(q, q == r))",
                "rule names must be unique", ".rules"),
        )
    }


class AdapterRouting(KaizenModel):
    """Canary a LoRA adapter on the stable Deployment's own servers, by model name: no second Deployment, no GPU more.

    Used when the candidate is an adapter (canaryModel.baseURI set) on the base the stable serves (stableModel's
    baseURI, or its uri). Kaizen writes the adapters the pods must hold into a ConfigMap it owns,
    <deployment>-adapters, which the stable's pods mount (Kaizen adds the volume if it is missing: one rolling
    restart; put it in your manifest to avoid it); the server loads and unloads adapters as the mounted file
    changes (Kaizen's server does; for vLLM, a sidecar that calls its /v1/load_lora_adapter). With gatewayAPI, the
    route splits requests for servedModelName by weight between the stable backendRef and the canary backendRef,
    which names the adapter in the model-name header; otherwise the servers' own alias, servedModelName, splits them.
    Promotion points the Deployment's model at the adapter; rollback unloads it.
    """

    served_model_name: str = Field(
        min_length=1, max_length=256, pattern=r"^[^\x00-\x20\x7f,]+$",
        description="The model name clients ask for (the server's KAIZEN_MODEL_NAME, vLLM's --served-model-name). "
        "The canary adapter is served as <servedModelName>-<canary version>.",
    )
    model_name_header: str = Field(
        default="X-Gateway-Model-Name", min_length=1, max_length=256, pattern=HEADER_NAME_PATTERN,
        description="The request header naming the model (the Gateway API Inference Extension's, which its "
        "body-based router sets from the body's model). With gatewayAPI, Kaizen's rules match it and the canary "
        "backendRef sets it to the adapter's name.",
    )
    session_affinity: SessionAffinity | None = Field(
        default=None, description="Without gatewayAPI: keep conversations on the version that first answered them "
        "(the servers' alias marks every answer with its version, and follows the marker a request echoes). With "
        "gatewayAPI, set gatewayAPI.sessionAffinity instead.",
    )
    mount_path: str = Field(
        default="/etc/kaizen/adapters", min_length=2, max_length=256, pattern=r"^/[^\x00]*$",
        description="Where the stable's pods mount the ConfigMap; the server reads KAIZEN_ADAPTERS_FILE there.",
    )
    sync_period: Annotated[str, BoundedDuration("0s", "10m")] = Field(
        default="60s", description="How long the pods take to see a change of the ConfigMap (the kubelet's sync "
        "period and cache, about a minute by default): a step's weight counts as set only after it; from 0s to 10m.",
    )


class TrafficRouting(KaizenModel):
    """How traffic is split between stable and canary: one of replicas, gatewayAPI; with adapter alone, the
    servers' alias splits an adapter candidate (a full model candidate then gets replica routing)."""

    replicas: ReplicasRouting | None = Field(
        default=None,
        description="Replica routing (the default): canary/(stable+canary) replicas approximates the weight.",
    )
    gateway_api: GatewayAPIRouting | None = Field(
        default=None, alias="gatewayAPI",
        description="Gateway API routing: exact weights on an HTTPRoute's stable and canary backendRefs.",
    )

    adapter: AdapterRouting | None = Field(
        default=None, description="Canary an adapter candidate on the stable's own servers, by model name.",
    )

    model_config = {"json_schema_extra": validations(
        cel("(has(self.replicas) ? 1 : 0) + (has(self.gatewayAPI) ? 1 : 0) == 1 || (has(self.adapter) && "
            "!has(self.replicas) && !has(self.gatewayAPI))",
            "exactly one of replicas, gatewayAPI must be set (or adapter alone)"),
        cel("!has(self.adapter) || !has(self.gatewayAPI) || !has(self.adapter.sessionAffinity)",
            "with gatewayAPI, set gatewayAPI.sessionAffinity: adapter.sessionAffinity is the servers' alias's",
            ".adapter.sessionAffinity"),
    )}


class AnalysisStep(KaizenModel):
    """Hold the current weight while the analysis metrics judge the canary; needs at least one metric."""

    duration: Annotated[str, BoundedDuration("1s", "720h")] = Field(
        description="How long to analyse, e.g. 10m: from 1s to 720h."
    )


class PauseStep(KaizenModel):
    """Hold at the current weight; without a duration, wait for `kaizen approve` or `kaizen promote`."""

    duration: Annotated[str, BoundedDuration("1s", "720h")] | None = Field(
        default=None, description="How long to pause, from 1s to 720h; omit to wait for approval."
    )


class Step(KaizenModel):
    """One step of a rollout. Exactly one of setWeight, analysis, pause is set."""

    set_weight: Percent | None = Field(default=None, description="Send this percentage of traffic to the canary.")
    analysis: AnalysisStep | None = Field(default=None, description="Analyse the canary for a duration.")
    pause: PauseStep | None = Field(default=None, description="Pause, for a duration or until approved.")

    model_config = {"json_schema_extra": validations(exactly_one_rule("setWeight", "analysis", "pause"))}


class RatioMetric(KaizenModel):
    """A rate: good events over total events, per track (e.g. non-5xx over all requests)."""

    good: PromQL
    total: PromQL


class ThresholdMetric(KaizenModel):
    """A value per track compared to a bound (e.g. p95 latency in seconds)."""

    query: PromQL
    min: float | None = Field(default=None, description="The canary's value must be at least this.")
    max: float | None = Field(default=None, description="The canary's value must be at most this.")

    model_config = {
        "json_schema_extra": validations(
            cel("has(self.min) || has(self.max)", "a threshold metric needs min or max"), bounds_rule("min", "max")
        )
    }


class AnalysisMetric(KaizenModel):
    """One metric judged every analysis interval. Exactly one of ratio, threshold is set."""

    name: Name = Field(description="Name shown in status, Events and rollback messages.")
    ratio: RatioMetric | None = Field(default=None, description="A good/total ratio judged by a sequential test.")
    threshold: ThresholdMetric | None = Field(default=None, description="A value judged against a bound.")
    max_regression: float = Field(
        default=0.01, ge=0, le=1,
        description="Ratio metrics: the canary fails when its rate is below stable's by more than this (absolute).",
    )
    min_samples: int = Field(
        default=100, ge=1, le=1_000_000_000, description="Ratio metrics: events per track needed before judging."
    )

    model_config = {"json_schema_extra": validations(exactly_one_rule("ratio", "threshold"))}


class FailurePolicy(KaizenModel):
    """What missing data, errors and inconclusive results lead to. Kaizen never promotes on missing data."""

    consecutive_error_limit: int = Field(
        default=3, ge=1, le=100, description="Intervals in a row with query errors or no data before acting."
    )
    inconclusive_limit: int = Field(
        default=5, ge=1, le=1000,
        description="Inconclusive intervals in a row, after an analysis step's duration has passed or while the "
        "last step waits for the passing look promotion needs, before acting.",
    )
    on_limit: Literal["Pause", "Rollback"] = Field(
        default="Pause", description="What happens past a limit: Pause (wait for `kaizen approve`, which resumes, "
        "or `kaizen abort`) or Rollback (remove the canary; the stable is untouched).",
    )


class Analysis(KaizenModel):
    """How the canary is judged against stable: every interval, throughout the rollout, by every metric."""

    interval: Annotated[str, BoundedDuration("1s", "24h")] = Field(
        default="1m", description="Time between two looks at the metrics: from 1s to 24h."
    )
    alpha: float = Field(
        default=0.05, gt=0, le=0.5,
        description="Bound on the probability of rolling back a canary that is not worse, over all looks and all "
        "ratio metrics (each gets alpha divided by their number).",
    )
    metrics: list[AnalysisMetric] = Field(
        default_factory=list, max_length=16,
        description="Metrics judged every interval while the canary serves. When set, they also gate promotion: "
        "the last step ends only on a passing look taken during it (as if an analysis step ended the rollout), so "
        "timed pauses alone never promote a canary the metrics have not passed; a Fail rolls back, and "
        "inconclusive looks there count towards failurePolicy.inconclusiveLimit.",
    )
    failure_policy: FailurePolicy = nested(FailurePolicy, "What errors, missing data and inconclusive results do.")

    model_config = {
        "json_schema_extra": validations(
            cel("!has(self.metrics) || self.metrics.all(m, self.metrics.exists_one(n, n.name == m.name))",
                "metric names must be unique", ".metrics")
        )
    }


# Without analysis steps, so a template that defines no metrics is still valid: a timed 10 -> 50 -> 100 canary.
# With metrics, the last step waits for a passing look before promoting (Analysis.metrics).
# JSON values, as the CRD default they also are (json_schema_extra).
DEFAULT_STEPS: list[JsonValue] = [{"setWeight": 10}, {"pause": {"duration": "5m"}}, {"setWeight": 50},
                                   {"pause": {"duration": "10m"}}, {"setWeight": 100}]


class RolloutTemplate(KaizenModel):
    """How to release: the part of a Rollout an ImprovementLoop fills in for every candidate it rolls out."""

    traffic_routing: TrafficRouting = Field(
        default_factory=lambda: TrafficRouting(replicas=ReplicasRouting()),
        description="How traffic is split between stable and canary: replicas (the default) or gatewayAPI.",
        json_schema_extra={"default": {"replicas": {}}},
    )
    steps: list[Step] = Field(
        default_factory=lambda: [Step.model_validate(s) for s in DEFAULT_STEPS], min_length=1, max_length=32,
        description="Stages, run in order. The last setWeight must be 100; the canary is promoted after the last "
        "step, which, when analysis metrics are set, ends only once a look taken during it passed.",
        json_schema_extra={
            "default": DEFAULT_STEPS,
            **validations(
                cel("self.exists(s, has(s.setWeight))", "steps must contain a setWeight step"),
                cel(
                    "!self.exists(s, has(s.setWeight)) || "
                    "self.filter(s, has(s.setWeight))[size(self.filter(s, has(s.setWeight))) - 1].setWeight == 100",
                    "the last setWeight step must reach 100",
                ),
            ),
        },
    )
    analysis: Analysis = nested(Analysis, "How the canary is judged.")


class RolloutSpec(RolloutTemplate):
    """A staged release of a candidate model next to the stable one."""

    target: TargetRef = Field(description="The Deployment serving the stable model.")
    stable_model: ModelRef = Field(description="The model served now.")
    canary_model: ModelRef = Field(description="The candidate to release.")
    retrain_job_ref: str | None = Field(
        default=None, max_length=253, description="The RetrainJob that produced the candidate, if any."
    )
    reason: Reason | None = Field(default=None, description="Why this rollout exists (immutable).",
                                  json_schema_extra=IMMUTABLE)
    prometheus: PrometheusSpec | None = Field(
        default=None, description="Prometheus the analysis metrics are read from; required when metrics are set."
    )

    model_config = {
        "json_schema_extra": validations(
            cel("self.stableModel.version != self.canaryModel.version",
                "canaryModel.version must differ from stableModel.version", ".canaryModel.version"),
            cel("has(self.prometheus) || !has(self.analysis) || !has(self.analysis.metrics) || "
                "size(self.analysis.metrics) == 0",
                "analysis metrics need spec.prometheus to read them from", ".prometheus"),
        )
    }


RolloutPhase = Literal["Progressing", "Paused", "Promoted", "RolledBack", "Aborted"]
AnalysisVerdict = Literal["Pass", "Fail", "Inconclusive", "Error"]


class TrackSample(KaizenModel):
    """What one track showed over the analysis window."""

    good: float | None = Field(default=None, description="Good events (ratio metrics).")
    total: float | None = Field(default=None, description="All events (ratio metrics).")
    value: float | None = Field(default=None, description="The rate, or the threshold metric's value.")


class MetricResult(KaizenModel):
    """One metric's judgement in one interval."""

    name: str = Field(max_length=63, description="The metric.")
    stable: TrackSample | None = Field(default=None, description="Stable track.")
    canary: TrackSample | None = Field(default=None, description="Canary track.")
    delta: float | None = Field(default=None, description="Canary minus stable.")
    ci_low: float | None = Field(default=None, description="Lower end of the always-valid confidence interval.")
    ci_high: float | None = Field(default=None, description="Upper end of the always-valid confidence interval.")
    evidence: float | None = Field(
        default=None, description="Ratio metrics: the rollback test's e-value (likelihood ratio of 'worse' against "
        "'not worse', over the whole rollout); the canary is rolled back when it reaches 1/alpha.",
    )
    verdict: AnalysisVerdict = Field(description="Pass, Fail, Inconclusive or Error.")
    message: str | None = Field(default=None, max_length=1024, description="Why, in words.")


class MetricEvidence(KaizenModel):
    """The rollback test's running state for one ratio metric, so a restarted operator continues it."""

    name: str = Field(max_length=63, description="The metric.")
    log_likelihood_ratios: list[float] = Field(
        max_length=16, description="Log likelihood ratio of each alternative the test mixes over."
    )
    stable: TrackSample = Field(description="Stable's cumulative counts at the last look.")
    canary: TrackSample = Field(description="Canary's cumulative counts at the last look.")


class AnalysisRecord(KaizenModel):
    """One analysis interval."""

    time: datetime = Field(description="When the metrics were read.")
    step: int = Field(ge=0, description="Index of the step being analysed.")
    weight: Percent = Field(description="Canary weight the step asked for at the time.")
    achieved_weight: float | None = Field(
        default=None, ge=0, le=100, description="Share of traffic the routing gave the canary at the time.",
    )
    verdict: AnalysisVerdict = Field(description="The interval's verdict (the worst of its metrics).")
    metrics: list[MetricResult] = Field(default_factory=list, max_length=16, description="Per-metric results.")


UserAction = Literal["promote", "abort", "approve"]


class ActionRecord(KaizenModel):
    """A user's action (``kaizen promote|abort|approve``), as the operator received it."""

    action: UserAction = Field(description="promote, abort or approve.")
    by: str = Field(max_length=256, description="Who asked (the Kubernetes user name).")
    at: datetime = Field(description="When they asked.")
    outcome: str = Field(max_length=1024, description="What the operator did about it.")


class RolloutStatus(CommonStatus):
    """Observed state of a Rollout."""

    phase: RolloutPhase | None = Field(
        default=None, description="Progressing, Paused, Promoted, RolledBack or Aborted."
    )
    current_step: int | None = Field(
        default=None, ge=0, description="Index of the step in progress; the number of steps while promoting."
    )
    step_started_at: datetime | None = Field(default=None, description="When the current step started.")
    analysis_started_at: datetime | None = Field(
        default=None, description="When the canary first served traffic: the start of every analysis window."
    )
    awaiting_approval: bool | None = Field(
        default=None, description="True while the rollout waits for `kaizen approve` or `kaizen promote`: at a "
        "pause step without duration, or past a failure-policy limit with onLimit Pause.",
    )
    last_action: ActionRecord | None = Field(default=None, description="The last user action and its outcome.")
    canary_weight: Percent | None = Field(default=None, description="Traffic percentage the current step asks for.")
    achieved_weight: float | None = Field(
        default=None, ge=0, le=100,
        description="Traffic percentage the routing gives the canary: canary/(stable+canary) replicas with replicas "
        "routing, the route's exact weight with gatewayAPI. Analysis and Events use it.",
    )
    canary_replicas: int | None = Field(default=None, ge=0, description="Replicas of the canary Deployment.")
    canary_removal_at: datetime | None = Field(
        default=None, description="When the ended rollout removes its canary Deployment: with gatewayAPI routing, "
        "the route's scaleDownDelay after the route went back to 100/0. Unset once the canary is gone.",
    )
    consecutive_errors: int | None = Field(default=None, ge=0, description="Error intervals in a row.")
    consecutive_inconclusive: int | None = Field(default=None, ge=0, description="Inconclusive intervals in a row.")
    analysis: list[AnalysisRecord] = Field(
        default_factory=list, max_length=50, description="Recent analysis intervals, newest first (bounded)."
    )
    evidence: list[MetricEvidence] = Field(
        default_factory=list, max_length=16, description="The sequential test's state per ratio metric."
    )
