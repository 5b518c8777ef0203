"""ImprovementLoop: the long-lived object a team applies for one served model.

It names the model's Deployment, the signals that say whether it is healthy, where feedback comes from, and the
policies that bound what Kaizen may do; it owns the RetrainJobs and Rollouts it creates and logs every decision.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field

from kaizen.api.common import (
    CommonStatus, KaizenModel, ModelRef, Name, PrometheusSpec, SecretKeyRef, TargetRef, BoundedDuration, bounds_rule,
    cel, nested, validations,
)
from kaizen.api.retrainjob import GATES_FIELD, FeedbackCategory, Gate, RetrainTemplate
from kaizen.api.rollout import RolloutTemplate

Approval = Literal["Automatic", "Manual"]


class Signal(KaizenModel):
    """A health signal: a PromQL query whose value must stay within [min, max]."""

    name: Name = Field(description="Name shown in status and in decisions.")
    query: str = Field(
        min_length=1, max_length=4096,
        description="PromQL returning one number, e.g. a 5xx ratio or a satisfaction ratio from the collector's "
        "kaizen_feedback_total. Placeholders {{namespace}}, {{target}} and {{version}} are filled in.",
    )
    min: float | None = Field(default=None, description="The signal breaches when it falls below this.")
    max: float | None = Field(default=None, description="The signal breaches when it rises above this.")
    for_: Annotated[str, BoundedDuration("0s", "168h")] = Field(
        default="5m", alias="for",
        description="How long a breach must be sustained before it counts (and how long it must be clear before it "
        "clears): from 0s (at once) to 168h.",
    )

    model_config = {
        "json_schema_extra": validations(
            cel("has(self.min) || has(self.max)", "a signal needs min or max"), bounds_rule("min", "max")
        )
    }


class FeedbackSpec(KaizenModel):
    """Where explicit user feedback comes from (the Kaizen collector) and how much is needed to retrain."""

    collector_url: str = Field(
        alias="collectorURL", max_length=1024, pattern=r"^https?://[^\s]+$",
        description="Base URL of the Kaizen collector.",
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding a collector token with the read scope."
    )
    min_new_items: int = Field(
        default=50, ge=0, le=10_000_000,
        description="Consented negative feedback items since the last retrain needed before retraining.",
    )
    categories: list[FeedbackCategory] = Field(
        default_factory=list, max_length=6, description="Feedback categories that count; all when empty."
    )
    require_consent: bool = Field(
        default=True,
        description="Use only feedback whose subject consented to training use. Turning this off is recorded in "
        "every decision.",
    )


class ApprovalPolicy(KaizenModel):
    """Which actions wait for a human (`kaizen approve`); Kubernetes RBAC on the loop decides who may approve."""

    retrain: Approval = Field(default="Automatic", description="Automatic or Manual approval of retrains.")
    promote: Approval = Field(default="Automatic", description="Automatic or Manual approval of promotions.")


class Policy(KaizenModel):
    """Limits on what the loop may do on its own."""

    cooldown: Annotated[str, BoundedDuration("0s", "8760h")] = Field(
        default="24h", description="Minimum time between two retrains: from 0s (none) to 8760h (a year)."
    )
    max_retrains_per_week: int = Field(default=3, ge=0, le=1000, description="Retrains allowed per rolling week.")
    gpu_hours_per_week: float = Field(
        default=24, ge=0, le=100_000, description="GPU hours allowed per rolling week (summed from RetrainJobs)."
    )
    approval: ApprovalPolicy = nested(ApprovalPolicy, "Which actions wait for a human.")
    paused: bool = Field(default=False, description="Observe and record, but take no action.")
    max_consecutive_failures: int = Field(
        default=3, ge=1, le=100, description="Failed retrains or rollouts in a row before the loop stops (Degraded)."
    )
    rollback_window: Annotated[str, BoundedDuration("0s", "720h")] = Field(
        default="1h",
        description="A breach that begins within this time after a promotion is blamed on it: Kaizen rolls back to "
        "the previous model instead of retraining. From 0s (never blamed) to 720h.",
    )
    successful_history_limit: int = Field(
        default=5, ge=0, le=100,
        description="Finished RetrainJobs and Rollouts that succeeded to keep (those of the last 7 days are kept "
        "regardless: the budgets are counted from them).",
    )
    failed_history_limit: int = Field(
        default=5, ge=0, le=100,
        description="Finished RetrainJobs and Rollouts that failed to keep (those of the last 7 days are kept "
        "regardless).",
    )


NotificationFormat = Literal["standard", "slack"]
#: The events a loop notifies about (:mod:`kaizen.logic.notifications` derives them from the decision log).
NotificationEventType = Literal[
    "RetrainStarted", "GateFailed", "ApprovalAwaited", "CanaryPromoted", "CanaryRolledBack", "RollbackStarted",
    "LoopDegraded",
]


class WebhookTarget(KaizenModel):
    """A receiver of the loop's notifications: signed per the Standard Webhooks spec (webhook-id,
    webhook-timestamp, webhook-signature headers), the webhook-id stable per event so receivers can drop repeats."""

    url: str = Field(
        max_length=2048, pattern=r"^https?://[^\s]+$", description="Where each event is POSTed (http or https)."
    )
    format: NotificationFormat = Field(
        default="standard",
        description="standard: Kaizen's JSON event (type, loop, decision id, reason, evidence); slack: a Slack "
        "incoming-webhook message ({text, blocks}) with the same facts.",
    )
    secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the signing secret (Standard Webhooks form: whsec_ and base64); unsigned "
        "when absent.",
    )


class NotificationsSpec(KaizenModel):
    """Who is told when the loop starts a retrain, a candidate fails its gates, a promotion awaits approval, a
    canary is promoted or rolled back, or the loop degrades. Absent: the operator's cluster default (the chart's
    notifications value) applies."""

    webhooks: list[WebhookTarget] = Field(
        default_factory=list, max_length=8, description="Webhook receivers; none: notifications are off."
    )
    events: list[NotificationEventType] = Field(
        default_factory=list, max_length=7, description="The events to send; all when empty."
    )


class ImprovementLoopSpec(KaizenModel):
    """The desired improvement loop of one served model."""

    target: TargetRef = Field(description="The Deployment serving the model.")
    model: ModelRef | None = Field(
        default=None, description="The model served when the loop is created; later, the last promoted candidate "
        "(see status.model).",
    )
    prometheus: PrometheusSpec = Field(description="Prometheus holding the serving telemetry.")
    signals: list[Signal] = Field(
        min_length=1, max_length=32, description="Health signals; a sustained breach is what triggers action.",
        json_schema_extra=validations(
            cel("self.all(s, self.exists_one(t, t.name == s.name))", "signal names must be unique")
        ),
    )
    feedback: FeedbackSpec | None = Field(default=None, description="Explicit user feedback from the collector.")
    interval: Annotated[str, BoundedDuration("1s", "24h")] = Field(
        default="1m", description="How often signals and feedback are observed: from 1s to 24h."
    )
    policy: Policy = nested(Policy, "Limits, budgets and approvals.")
    retrain: RetrainTemplate = Field(description="How to retrain; every RetrainJob the loop creates starts from it.")
    gates: list[Gate] = GATES_FIELD
    rollout: RolloutTemplate = nested(RolloutTemplate, "How to roll out a candidate that passed its gates.")
    notifications: NotificationsSpec | None = Field(
        default=None, description="Webhooks told about retrains, failed gates, approvals, promotions, rollbacks and "
        "degradation; absent: the operator's cluster default.",
    )


LoopPhase = Literal["Observing", "Retraining", "RollingOut", "CoolingDown", "AwaitingApproval", "Paused", "Degraded"]
SignalState = Literal["Healthy", "Breached", "Unknown"]


class SignalStatus(KaizenModel):
    """A signal as last observed."""

    name: str = Field(max_length=63, description="The signal.")
    value: float | None = Field(default=None, description="Last value; absent when Prometheus returned no data.")
    state: SignalState = Field(description="Healthy, Breached (sustained for 'for') or Unknown (no data).")
    since: datetime | None = Field(default=None, description="When the signal entered this state.")
    pending_since: datetime | None = Field(
        default=None, description="Since when the value has disagreed with the state (it changes after 'for')."
    )


class Candidate(ModelRef):
    """A model on its way: produced by a RetrainJob, rolled out by a Rollout."""

    retrain_job: str | None = Field(default=None, max_length=253, description="The RetrainJob that produced it.")
    rollout: str | None = Field(default=None, max_length=253, description="The Rollout releasing it.")


class ServedModel(ModelRef):
    """The model the loop serves."""

    since: datetime | None = Field(default=None, description="When it was promoted.")


class Budget(KaizenModel):
    """Use of the policy's weekly budgets over the last seven days."""

    retrains: int = Field(default=0, ge=0, description="Retrains started in the last seven days.")
    gpu_hours: float = Field(default=0, ge=0, description="GPU hours consumed in the last seven days.")


class Decision(KaizenModel):
    """One entry of the decision log: what was decided, why, on what evidence, and what came of it."""

    id: str = Field(max_length=128, description="Decision id, also in the child's spec.reason and the audit log.")
    time: datetime = Field(description="When the decision was made.")
    action: str = Field(max_length=63, description="Nothing, Wait, Retrain, Rollback, RollOut, AwaitApproval, ...")
    reason: str = Field(max_length=1024, description="Why, in one sentence.")
    evidence: dict[str, Any] = Field(default_factory=dict, description="The numbers the decision rested on.")
    child: str | None = Field(
        default=None, max_length=300, description="The object the decision created, as Kind/name."
    )
    outcome: str | None = Field(default=None, max_length=1024, description="What came of it, once known.")


class RequestRecord(KaizenModel):
    """A user's request (``kaizen approve|retrain``), as the operator received it. Its annotations are removed only
    once this records it, so a crash in between never loses a request."""

    action: Literal["approve", "retrain"] = Field(description="approve or retrain.")
    by: str = Field(max_length=256, description="Who asked (the Kubernetes user name).")
    at: datetime = Field(description="When they asked.")
    outcome: str = Field(max_length=1024, description="What the operator did about it.")


class PendingNotification(KaizenModel):
    """An event not yet delivered to every webhook: retried with backoff until ``attempts`` reaches the limit."""

    id: str = Field(max_length=200, description="The event's webhook-id: the decision id and the event type.")
    attempts: int = Field(ge=0, description="Failed attempts so far.")
    next_attempt: datetime | None = Field(default=None, description="When the next attempt is due.")
    error: str | None = Field(default=None, max_length=1024, description="What the last attempt got.")


class NotificationsStatus(KaizenModel):
    """The durable cursor of the loop's notifications: what was delivered (or given up), what is pending."""

    delivered: list[str] = Field(
        default_factory=list, max_length=200, description="Ids of the events delivered or given up, newest first "
        "(bounded: the decision log they derive from is bounded too).",
    )
    pending: list[PendingNotification] = Field(
        default_factory=list, max_length=100, description="Events whose delivery failed and will be retried."
    )
    webhooks: list[str] = Field(
        default_factory=list, max_length=8, description="Digests of the webhook URLs this cursor covers: a webhook "
        "added later is told only what happens after it was added.",
    )


class ImprovementLoopStatus(CommonStatus):
    """Observed state of an ImprovementLoop."""

    phase: LoopPhase | None = Field(default=None, description="What the loop is doing now.")
    model: ServedModel | None = Field(default=None, description="The model served now.")
    previous_model: ServedModel | None = Field(
        default=None, description="The model served before the last promotion: what a rollback returns to."
    )
    candidate: Candidate | None = Field(default=None, description="The candidate in training or rollout, if any.")
    signals: list[SignalStatus] = Field(default_factory=list, max_length=32, description="Signals as last observed.")
    budget: Budget | None = Field(default=None, description="Use of the weekly budgets.")
    last_observed: datetime | None = Field(
        default=None, description="When signals were last observed, recorded with every change of the status and "
        "otherwise every fifth look (a look that changes nothing writes nothing); looks keep to this time plus whole "
        "intervals.")
    consecutive_failures: int | None = Field(
        default=None, ge=0, description="Failed retrains and rolled-back rollouts in a row."
    )
    decisions: list[Decision] = Field(
        default_factory=list, max_length=50, description="Decision log, newest first (bounded; the collector's "
        "audit log keeps all)."
    )
    last_action: RequestRecord | None = Field(default=None, description="The last user request and its outcome.")
    notifications: NotificationsStatus | None = Field(
        default=None, description="Which events were sent to the loop's webhooks, and which are retried."
    )
    audited_through: str | None = Field(
        default=None, max_length=253, description="The newest decision of the log the collector's audit log has "
        "acknowledged: those after it are sent by the next looks (decisions reach the audit log once they are "
        "written here, so it never holds one this log lost, and one made while the collector was away is sent "
        "when it is back).")
