"""The trainer contract: the one JSON config the operator hands the trainer pod, and the one JSON result the
trainer hands back through the pod's termination message (at most 4 KiB; the full metrics, dataset manifest and
model card go to the output URI)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from kaizen.api.common import KaizenModel, ModelRef
from kaizen.api.retrainjob import (
    DataSpec, DatasetSummary, FeedbackCategory, Gate, GateResult, Hyperparameters, Judge, LoraSettings, Method,
    Objective, Targets, Task, require_causal_lm,
)

#: Kubernetes truncates termination messages beyond this.
TERMINATION_MESSAGE_LIMIT = 4096


class Example(KaizenModel):
    """One JSONL row the trainer reads: a dataset example (replay, holdout, regression), or a feedback item joined to
    its trace as the collector's ``GET /v1/export`` writes it (``kaizen.collector.models.ExportRow``; its last line,
    ``kind: manifest``, is read separately). Unknown fields are ignored, so the export may carry more.

    For sequence classification, ``output`` and ``target`` are label names. A row with ``optedOut: true`` is a
    tombstone: every row of its ``subjectId``, in any source, is excluded.
    """

    model_config = ConfigDict(extra="ignore")

    kind: Literal["example"] = Field(default="example", description="Row type (the export's manifest is another).")
    id: str = Field(min_length=1, max_length=256, description="Stable example id; decides holdout membership.")
    input: str | None = Field(default=None, description="The prompt (or text to classify); absent in a tombstone.")
    output: str | None = Field(
        default=None, description="The reference answer of a dataset row, or the model's answer a feedback row is on."
    )
    target: str | None = Field(default=None, description="Feedback: the user's correction of the output.")
    category: FeedbackCategory | None = Field(default=None, description="Feedback category.")
    rating: str | None = Field(default=None, description="Feedback rating: up, down, or 1..5 stars.")
    sentiment: Literal["positive", "neutral", "negative"] | None = Field(
        default=None, description="Feedback sentiment; a positive item without a correction teaches its own output."
    )
    consent: bool | None = Field(
        default=None, description="The subject consented to training use. In a collector export (which holds only "
        "consented items) absent means yes; in any other feedback file absent means no.",
    )
    opted_out: bool = Field(default=False, description="The subject opted out: exclude all their rows everywhere.")
    subject_id: str | None = Field(default=None, max_length=256, description="Pseudonymous subject (user) id.")
    cohort: str | None = Field(default=None, max_length=128, description="User cohort (plan, locale, ...).")
    scenario: str | None = Field(default=None, max_length=128, description="Scenario / intent label.")
    pii: bool = Field(default=False, description="PII was found that could not be redacted: never trained on.")
    trace_id: str | None = Field(default=None, max_length=256, description="Trace the feedback is about.")
    model_version: str | None = Field(default=None, max_length=63, description="Model version that answered.")
    created_at: datetime | None = Field(default=None, description="When the feedback was given.")


class FeedbackExport(KaizenModel):
    """Where the trainer fetches consented feedback: the collector's export endpoint."""

    url: str = Field(description="Export URL of the collector (…/v1/export), or a JSONL file of the same shape.")
    token_file: str | None = Field(default=None, description="File holding a bearer token with the read scope.")
    since: str | None = Field(default=None, description="Only feedback newer than this RFC 3339 time.")


class MlflowRun(KaizenModel):
    """Where the trainer records its run: the RetrainJob's spec.tracking.mlflow, with the token mounted as a file."""

    tracking_uri: str = Field(alias="trackingURI", description="Base URL of the MLflow tracking server.")
    experiment: str = Field(default="kaizen", min_length=1, description="Experiment the run goes to.")
    run_name: str = Field(min_length=1, description="The run's name: the RetrainJob's name.")
    token_file: str | None = Field(default=None, description="File holding a bearer token for the server.")


class TrainerConfig(KaizenModel):
    """Everything one training run needs."""

    job: str = Field(min_length=1, description="namespace/name of the RetrainJob, for logs and lineage.")
    decision_id: str = Field(description="The decision that started this retrain.")
    task: Task = Field(description="causal-lm or sequence-classification.")
    baseline: ModelRef = Field(description="Model to fine-tune and to compare against.")
    candidate_version: str = Field(min_length=1, description="Version label for the candidate.")
    data: DataSpec = Field(description="Datasets and mixing.")
    feedback: FeedbackExport | None = Field(default=None, description="Feedback to curate targeted examples from.")
    targets: Targets = Field(default_factory=Targets, description="The slices to target.")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters, description="Fine-tuning settings.")
    objective: Objective = Field(default="sft", description="sft, dpo or kto (RetrainJob spec.objective).")
    judge: Judge | None = Field(default=None, description="Judge model for holdout.winRate (RetrainJob spec.judge).")
    method: Method = Field(default="full", description="full, lora or qlora (RetrainJob spec.method).")
    lora: LoraSettings | None = Field(default=None, description="The adapter of lora and qlora (RetrainJob spec.lora).")
    strategy: Literal["ddp", "fsdp"] = Field(
        default="ddp", description="How training is spread when the pod runs the trainer under torchrun (more than "
        "one process): ddp replicates the model on every process, fsdp shards parameters, gradients and optimizer "
        "state across them (RetrainJob spec.strategy). One process ignores it.",
    )
    gates: list[Gate] = Field(default_factory=list, description="Gates, evaluated by the trainer for the model card.")
    output_dir: str = Field(min_length=1, description="Where the model, metrics, manifest and card are written.")
    checkpoint_dir: str = Field(min_length=1, description="Where checkpoints are written (a path in the pod).")
    mlflow: MlflowRun | None = Field(
        default=None, description="Record the run in MLflow (RetrainJob spec.tracking.mlflow); none: not tracked.",
    )
    checkpoint_mirror: str | None = Field(
        default=None, description="Remote copy of the checkpoints (s3://...) when checkpointDir does not outlive the "
        "pod: every checkpoint is uploaded there, and a new pod downloads them to resume.",
    )

    @model_validator(mode="after")
    def _objective_fits_the_task(self) -> TrainerConfig:
        require_causal_lm(self.task, self.objective, self.judge)
        return self


class TrainerResult(KaizenModel):
    """What the trainer reports; small enough for a termination message."""

    phase: Literal["Succeeded", "Failed"] = Field(description="Whether the run produced an evaluated candidate.")
    reason: Literal["Completed", "InvalidConfig", "InvalidData", "Error"] = Field(
        description="Completed, or why it failed; InvalidConfig and InvalidData are permanent (no retry)."
    )
    message: str = Field(default="", max_length=1024, description="Human-readable detail, e.g. what was wrong.")
    candidate: ModelRef | None = Field(default=None, description="The candidate written.")
    metrics: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="'candidate' and 'baseline' metrics keyed <dataset>.<metric>[.<cohort>]."
    )
    gates: list[GateResult] = Field(default_factory=list, description="Gate results.")
    dataset: DatasetSummary | None = Field(default=None, description="Short form of the dataset manifest.")
    model_card_uri: str | None = Field(default=None, alias="modelCardURI", description="Where the model card is.")
    steps: int | None = Field(default=None, ge=0, description="Optimizer steps reached (resumed runs included).")
    mlflow_run_id: str | None = Field(
        default=None, alias="mlflowRunID", max_length=64, description="The MLflow run the trainer recorded."
    )
    mlflow_error: str | None = Field(
        default=None, max_length=512, description="Why the run could not be recorded in MLflow (the retrain goes on)."
    )

    @property
    def permanent(self) -> bool:
        """A failure that retrying cannot fix."""
        return self.reason in ("InvalidConfig", "InvalidData")

    def to_termination_message(self) -> str:
        """Serialise within the termination-message limit; fails loudly rather than letting Kubernetes truncate."""
        text = self.model_dump_json(by_alias=True, exclude_none=True)
        if len(text.encode()) > TERMINATION_MESSAGE_LIMIT:
            raise ValueError(
                f"trainer result is {len(text.encode())} bytes, over the {TERMINATION_MESSAGE_LIMIT}-byte termination "
                "message limit: keep full metrics in metrics.json under the output URI"
            )
        return text
