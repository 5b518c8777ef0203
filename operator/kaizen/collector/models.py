"""The collector's wire contract: every request, query and response shape, as pydantic models.

These models are the single source of the service's validation (a 4xx with field-level errors comes straight from
them), of ``/openapi.json`` (:mod:`kaizen.collector.openapi`) and of the export format the trainer's loader reads
(:class:`ExportRow` and :class:`ExportManifest`). Like the rest of ``kaizen.api`` they are camelCase on the wire and
reject unknown fields, so a typo in a client is an error, not silently dropped data.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, PlainValidator, StrictBool

from kaizen.api.common import KaizenModel
from kaizen.api.retrainjob import FeedbackCategory

#: Ids chosen by clients (trace ids, request ids, subject ids): printable, no spaces, bounded.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@/+=-]{0,127}$"
Id = Annotated[str, Field(pattern=ID_PATTERN, max_length=128)]
#: Prometheus label values and filter keys: short and free of control characters.
Label = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f]+$")]
Track = Literal["stable", "canary", "shadow", "unknown"]
def _no_nul(value: str) -> str:
    # PostgreSQL cannot store NUL in text; refusing it everywhere keeps both databases accepting the same input.
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    return value


#: Free text a user or model wrote. Bounded so one request cannot exhaust memory or the database. The pattern only
#: documents the NUL rule in /openapi.json; the validator enforces it with a clearer message.
_NO_NUL_SCHEMA = {"pattern": "^[^\u0000]*$"}
LongText = Annotated[str, Field(max_length=65_536, json_schema_extra=_NO_NUL_SCHEMA), AfterValidator(_no_nul)]
ShortText = Annotated[str, Field(max_length=4_096, json_schema_extra=_NO_NUL_SCHEMA), AfterValidator(_no_nul)]
Thumb = Literal["up", "down"]
Stars = Annotated[int, Field(ge=1, le=5)]


def _rating(value: Any) -> str:
    """Ratings are stored and labelled as strings: up, down, 1..5 (stars as numbers or numeric strings)."""
    if value in ("up", "down", "1", "2", "3", "4", "5"):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 5:
        return str(value)
    if isinstance(value, float) and value in (1, 2, 3, 4, 5):  # 5.0 is a JSON integer too
        return str(int(value))
    raise ValueError("must be 'up', 'down', or a whole number of stars from 1 to 5")


Rating = Annotated[
    str, PlainValidator(_rating, json_schema_input_type=Literal["up", "down", "1", "2", "3", "4", "5"] | Stars)
]
Sentiment = Literal["positive", "neutral", "negative"]
Scope = Literal["ingest", "read", "audit", "review", "admin"]
#: Upper bound on the items of one batch request.
MAX_BATCH = 500


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("must carry a time zone, e.g. 2026-01-31T12:00:00Z")
    return value


AwareTime = Annotated[datetime, AfterValidator(_aware)]


class Consent(KaizenModel):
    """What the subject agreed to. Absent means no: privacy by default."""

    training: StrictBool = Field(
        default=False,
        description="The subject agreed that this item may be used for training: JSON true or false, nothing else "
        "(a coerced \"yes\" or 1 is not consent).",
    )


class TraceIn(KaizenModel):
    """One model output as served: what a piece of feedback can later point at."""

    id: Id | None = Field(
        default=None, description="Trace id; generated when omitted. Re-sending an id is idempotent (safe retries)."
    )
    request_id: Id | None = Field(default=None, description="The serving request's id, for correlation with logs.")
    model: Label = Field(description="Served model name (the ImprovementLoop's model).")
    model_version: Label = Field(description="Version label of the model that produced the output.")
    track: Track = Field(default="unknown", description="stable or canary (shadow and unknown accepted).")
    cohort: Label | None = Field(default=None, description="User cohort (segment) for per-cohort analysis.")
    scenario: Label | None = Field(default=None, description="Scenario (intent) label of the request.")
    input: LongText | None = Field(default=None, description="Model input; PII is redacted before it is stored.")
    output: LongText | None = Field(default=None, description="Model output; PII is redacted before it is stored.")
    latency_ms: float | None = Field(default=None, ge=0, le=3_600_000, description="Serving latency in milliseconds.")
    subject_id: Id | None = Field(default=None, description="Pseudonymous id of the end user (never an e-mail).")
    consent: Consent = Field(default_factory=Consent, description="The subject's consent.")


class FeedbackIn(KaizenModel):
    """A user's judgement of one model output."""

    id: Id | None = Field(default=None, description="Feedback id; generated when omitted. Re-sending is idempotent.")
    trace_id: Id = Field(description="The trace judged. Feedback for an unknown trace is kept and flagged.")
    rating: Rating = Field(description="'up' / 'down', or 1 to 5 stars.")
    category: FeedbackCategory | None = Field(default=None, description="What was wrong (or asked for).")
    comment: ShortText | None = Field(default=None, description="Free-text comment; PII is redacted.")
    correction: LongText | None = Field(
        default=None, description="What the output should have been; exported as the training target."
    )
    subject_id: Id | None = Field(default=None, description="Pseudonymous id of the end user.")
    consent: Consent = Field(default_factory=Consent, description="The subject's consent.")
    model: Label | None = Field(
        default=None, description="Model name, used only when the trace is unknown (the trace's wins otherwise)."
    )


class TraceBatch(KaizenModel):
    """Several traces in one request; stored all-or-nothing."""

    items: list[TraceIn] = Field(min_length=1, max_length=MAX_BATCH, description="The traces.")


class FeedbackBatch(KaizenModel):
    """Several feedback items in one request; stored all-or-nothing."""

    items: list[FeedbackIn] = Field(min_length=1, max_length=MAX_BATCH, description="The feedback items.")


class Stored(KaizenModel):
    """The outcome for one ingested item. A 2xx response means every stored item is durable."""

    id: str = Field(description="Id of the item.")
    stored: bool = Field(description="False when the item was dropped (its subject opted out).")
    redacted: dict[str, int] = Field(default_factory=dict, description="PII found and redacted, by kind.")
    trace_known: bool | None = Field(default=None, description="Feedback only: whether the judged trace is known.")


class IngestResponse(KaizenModel):
    """The outcome of an ingest request, item by item in request order."""

    items: list[Stored] = Field(description="One entry per item sent.")


class SubjectDeleted(KaizenModel):
    """The result of an opt-out."""

    subject_id: str = Field(description="The subject.")
    traces_deleted: int = Field(description="Traces deleted.")
    feedback_deleted: int = Field(description="Feedback items deleted.")
    tombstoned_at: datetime = Field(description="When the subject was first tombstoned.")


class TraceOut(KaizenModel):
    """A stored trace, as redacted at ingestion."""

    id: str = Field(description="Trace id.")
    request_id: str | None = Field(default=None, description="Serving request id.")
    model: str = Field(description="Model name.")
    model_version: str = Field(description="Model version.")
    track: str = Field(description="Track.")
    cohort: str | None = Field(default=None, description="Cohort.")
    scenario: str | None = Field(default=None, description="Scenario (intent).")
    input: str | None = Field(default=None, description="Redacted input (absent when raw text is not stored).")
    output: str | None = Field(default=None, description="Redacted output.")
    latency_ms: float | None = Field(default=None, description="Latency in milliseconds.")
    consent: Consent = Field(description="Consent recorded with the trace.")
    redacted: dict[str, int] = Field(default_factory=dict, description="PII redacted at ingestion, by kind.")
    created_at: datetime = Field(description="When the collector stored it.")


def _csv(value: str) -> list[str]:
    """Query parameters arrive as strings: accept ``a,b`` as well as repeated parameters. Empty items are kept, so
    that ``categories=`` or ``a,,b`` is an error (an empty category is none of the categories), not "all"."""
    return value.split(",")


#: A filter value in a list query parameter: a label without commas (the comma separates items).
FilterLabel = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f,]+$")]
CsvCategories = Annotated[list[FeedbackCategory], Field(default_factory=list, max_length=6)]
CsvLabels = Annotated[list[FilterLabel], Field(default_factory=list, max_length=64)]


class FeedbackQuery(KaizenModel):
    """Filters shared by the export, the backlog and the count."""

    model: Label = Field(description="Model name.")
    since: AwareTime | None = Field(default=None, description="Only feedback stored after this RFC 3339 time.")
    categories: CsvCategories = Field(description="Only these categories (comma-separated); all when empty.")
    cohorts: CsvLabels = Field(description="Only these cohorts (comma-separated); all when empty.")
    scenarios: CsvLabels = Field(description="Only these scenarios (intents), comma-separated; all when empty.")

    @classmethod
    def from_query(cls, query: Any) -> Any:
        """Parse aiohttp's multidict query, folding repeated and comma-separated list parameters."""
        data: dict[str, Any] = {}
        for key in query:
            values = query.getall(key)
            if key in LIST_PARAMETERS:
                data[key] = [item for v in values for item in _csv(v)]
            else:
                data[key] = values[-1]
        return cls.model_validate(data)


LIST_PARAMETERS = frozenset({"categories", "cohorts", "scenarios"})


class ExportQuery(FeedbackQuery):
    """Query of ``GET /v1/export``. Only consented rows are ever exported."""

    negative_only: bool = Field(default=False, description="Only negative feedback (down, or 1-2 stars).")


class BacklogQuery(FeedbackQuery):
    """Query of ``GET /v1/backlog``."""

    consented_only: bool = Field(default=True, description="Count only feedback whose subject consented to training.")
    limit: int = Field(default=50, ge=1, le=1000, description="Most groups returned.")
    examples: int = Field(default=5, ge=0, le=50, description="Example trace ids per group.")


class CountQuery(FeedbackQuery):
    """Query of ``GET /v1/feedback/count``."""

    consented_only: bool = Field(default=True, description="Count only feedback whose subject consented to training.")


class FeedbackCount(KaizenModel):
    """Negative feedback matching a query."""

    count: int = Field(description="Number of negative feedback items.")


class BacklogItem(KaizenModel):
    """One group of negative feedback: a hypothesis of what to fix."""

    category: str | None = Field(default=None, description="Feedback category (absent when none was given).")
    scenario: str | None = Field(default=None, description="Scenario (intent) of the judged traces.")
    cohort: str | None = Field(default=None, description="Cohort of the judged traces.")
    count: int = Field(description="Negative feedback items in the group.")
    last_at: datetime = Field(description="Newest item of the group.")
    example_trace_ids: list[str] = Field(default_factory=list, description="Newest trace ids of the group.")


class DriftCluster(KaizenModel):
    """A region of recent inputs that drifted from the reference window: a scenario whose share rose, with the recent
    traces least like the reference (by the MMD witness function) as examples, so a retrain can target it."""

    cohort: str | None = Field(default=None, description="The cohort whose traffic drifted; absent: all traffic.")
    scenario: str | None = Field(default=None, description="Scenario (intent) of the cluster; absent when the "
                                 "traces carry none (then the cluster is the inputs least like the reference).")
    reference_share: float | None = Field(default=None, description="The scenario's share of the reference window.")
    recent_share: float | None = Field(default=None, description="The scenario's share of the recent window.")
    mmd2: float | None = Field(default=None, description="Effect size of the embedding drift of the window (MMD²); "
                               "absent without the embedding model.")
    p_value: float | None = Field(default=None, description="Permutation p-value of the embedding test.")
    scenario_psi: float | None = Field(default=None, description="PSI of the window's scenario mix.")
    example_trace_ids: list[str] = Field(default_factory=list, description="Recent traces of the cluster, least "
                                         "like the reference first.")
    assessed_at: datetime = Field(description="When the drift pass that found it ran.")


class Backlog(KaizenModel):
    """Negative feedback grouped by (category, scenario, cohort), by volume then recency; and the input drift the
    collector's last drift pass found (when it runs one: ``--drift-every``)."""

    model: str = Field(description="Model name.")
    items: list[BacklogItem] = Field(description="The groups, most important first.")
    drift: list[DriftCluster] = Field(default_factory=list, description="Drifted clusters of recent inputs, largest "
                                      "drift first; empty when no drift was found or no drift pass runs.")


class ExportRow(KaizenModel):
    """One training example in ``GET /v1/export``: a consented feedback item joined to the trace it judges.

    This is the contract with the trainer's loader. ``target`` is the user's correction when one was given;
    rows without it carry the rating as the signal. Subject ids are never exported.
    """

    kind: Literal["example"] = Field(default="example", description="Row type; the last line is the manifest.")
    id: str = Field(description="Feedback id: the example id (holdout membership is a stable hash of it).")
    trace_id: str = Field(description="The judged trace.")
    model: str = Field(description="Model name.")
    model_version: str = Field(description="Version that produced the output.")
    track: str = Field(description="stable or canary.")
    cohort: str | None = Field(default=None, description="Cohort.")
    scenario: str | None = Field(default=None, description="Scenario (intent).")
    input: str = Field(description="Model input, PII redacted.")
    output: str | None = Field(
        default=None, description="The answer served on the trace, PII redacted: what the rating judges, the "
        "rejected side of a preference pair when a correction is given (objectives dpo and kto).",
    )
    target: str | None = Field(default=None, description="The correction: what the output should have been.")
    rating: str = Field(description="up, down, or 1..5.")
    sentiment: Sentiment = Field(description="positive (up, 4-5), neutral (3) or negative (down, 1-2).")
    category: str | None = Field(default=None, description="Feedback category.")
    comment: str | None = Field(default=None, description="The user's comment, PII redacted.")
    reviewer: str | None = Field(default=None, description="Who gave the feedback when a reviewer did (the review "
                                 "queue's answer: the reviewer's token name); absent for a user's own feedback.")
    redacted: bool = Field(description="Whether PII was redacted from any of the texts.")
    created_at: datetime = Field(description="When the feedback was stored.")


class ExportManifest(KaizenModel):
    """The last line of an export: what it holds and what it left out. A stream without it was cut short."""

    kind: Literal["manifest"] = Field(default="manifest", description="Row type.")
    model: str = Field(description="Model name.")
    generated_at: datetime = Field(description="When the export was produced.")
    filters: dict[str, Any] = Field(description="The query the export answered.")
    rows: int = Field(description="Example rows in the export.")
    with_target: int = Field(description="Rows with a correction as target.")
    with_output: int | None = Field(
        default=None, description="Rows carrying the answer served on their trace, which preference objectives (dpo, "
        "kto) need; absent from exports written by hand or by collectors before it.",
    )
    sha256: str = Field(description="sha256 of the example lines, each with its newline, in order.")
    excluded: dict[str, int] = Field(
        description="Matching feedback left out, by reason: noConsent, unknownTrace, noText."
    )
    subjects_opted_out: int = Field(description="Subjects tombstoned by opt-out (their data is never exported).")


class AuditEntry(KaizenModel):
    """One decision of the operator, appended to the durable audit log."""

    id: Id = Field(description="Decision id; unique. Re-sending the same entry is idempotent.")
    time: AwareTime = Field(description="When the decision was taken.")
    loop: Label = Field(description="namespace/name of the ImprovementLoop (or other object) that decided.")
    action: Label = Field(description="What was decided: retrain, skip, promote, rollback, approve, ...")
    reason: ShortText = Field(default="", description="Why, in one line.")
    evidence: dict[str, Any] = Field(default_factory=dict, description="The numbers the decision rested on.")
    outcome: ShortText | None = Field(default=None, description="What came of it, when known.")


class AuditRecord(AuditEntry):
    """An audit entry as stored."""

    seq: int = Field(description="Position in the log (strictly increasing).")
    received_at: datetime = Field(description="When the collector stored it.")


#: Sequence numbers are 64-bit database integers (SQLite INTEGER, PostgreSQL BIGINT).
MAX_SEQ = 2**63 - 1


class AuditQuery(KaizenModel):
    """Query of ``GET /v1/audit``."""

    loop: Label | None = Field(default=None, description="Only this loop's entries.")
    after: int = Field(
        default=0, ge=0, le=MAX_SEQ, description="Only entries after this sequence number (paging); at most 2^63-1."
    )
    limit: int = Field(default=100, ge=1, le=1000, description="Most entries returned.")


class AuditPage(KaizenModel):
    """A page of the audit log, oldest first."""

    items: list[AuditRecord] = Field(description="Entries.")


ReviewState = Literal["open", "answered", "all"]
ReviewReason = Literal["low-confidence", "unsafe", "disagreement"]


class ReviewQuery(KaizenModel):
    """Query of ``GET /v1/reviews``."""

    model: Label | None = Field(default=None, description="Only this model's reviews.")
    state: ReviewState = Field(default="open", description="open (not answered yet), answered, or all.")
    limit: int = Field(default=100, ge=1, le=1000, description="Most reviews returned.")


class EvaluationResult(KaizenModel):
    """One evaluator's verdict on a trace."""

    evaluator: str = Field(description="reference, safety, or a judge's name.")
    verdict: Literal["good", "bad"] = Field(description="good or bad (safety: safe or unsafe).")
    score: float = Field(description="The probability of the classifier's label; ROUGE-L F1 for reference.")
    confidence: float | None = Field(default=None, description="A judge's probability of its verdict.")
    details: dict[str, float] = Field(default_factory=dict, description="More numbers (reference: rougeL, chrF).")


class Review(KaizenModel):
    """A trace that automation was unsure of, with its evaluators' results, and the reviewer's answer once given."""

    trace_id: str = Field(description="The flagged trace.")
    model: str = Field(description="Model name.")
    model_version: str = Field(description="Version that answered.")
    track: str = Field(description="Track.")
    cohort: str | None = Field(default=None, description="Cohort of the trace.")
    scenario: str | None = Field(default=None, description="Scenario (intent) of the trace.")
    input: str | None = Field(default=None, description="The trace's input, PII redacted.")
    output: str | None = Field(default=None, description="The answer served, PII redacted.")
    reasons: list[ReviewReason] = Field(description="Why it needs a human: low-confidence (a judge below the "
                                        "threshold), unsafe (the safety classifier), disagreement (evaluators differ).")
    results: list[EvaluationResult] = Field(description="The evaluators' verdicts that flagged it.")
    flagged_at: datetime = Field(description="When it was queued.")
    verdict: Literal["good", "bad"] | None = Field(default=None,
                                                   description="The reviewer's verdict; absent while open.")
    correction: str | None = Field(default=None, description="The reviewer's correction, PII redacted.")
    reviewer: str | None = Field(default=None, description="Who answered (the name of the reviewer's token).")
    feedback_id: str | None = Field(default=None, description="The feedback item the answer was stored as.")
    reviewed_at: datetime | None = Field(default=None, description="When it was answered.")


class ReviewPage(KaizenModel):
    """Reviews, oldest first."""

    items: list[Review] = Field(description="The reviews.")


class ReviewAnswer(KaizenModel):
    """A reviewer's answer. It is stored as feedback on the trace (rating up for good, down for bad), with the
    reviewer, under the trace subject's consent, so curation uses it like any other feedback."""

    verdict: Literal["good", "bad"] = Field(description="Whether the answer served was good.")
    correction: LongText | None = Field(default=None, description="What the answer should have been: exported as "
                                        "the training target. PII is redacted.")
    category: FeedbackCategory | None = Field(default=None, description="What was wrong.")


class FieldError(KaizenModel):
    """One invalid field."""

    loc: str = Field(description="Where, dotted: items.3.rating, or query.since.")
    message: str = Field(description="What was wrong.")


class ErrorResponse(KaizenModel):
    """Every error the collector returns."""

    error: str = Field(description="What was wrong and what to do.")
    fields: list[FieldError] = Field(default_factory=list, description="Field-level errors of invalid input.")


class Health(KaizenModel):
    """Liveness or readiness."""

    status: Literal["ok", "unavailable"] = Field(description="ok, or unavailable with a reason.")
    reason: str | None = Field(default=None, description="Why not ready.")


def sentiment(rating: str) -> Sentiment:
    """Positive for up or 4-5 stars, neutral for 3, negative for down or 1-2."""
    if rating in ("up", "4", "5"):
        return "positive"
    return "neutral" if rating == "3" else "negative"


NEGATIVE_RATINGS = ("down", "1", "2")
