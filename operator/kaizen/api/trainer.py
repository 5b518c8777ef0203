"""The trainer contract: the one JSON config the operator hands the trainer pod, and the one JSON result the
trainer hands back through the pod's termination message (at most 4 KiB; the full metrics, dataset manifest and
model card go to the output URI)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kaizen.api.common import KaizenModel, ModelRef
from kaizen.api.retrainjob import DataSpec, DatasetSummary, Gate, GateResult, Hyperparameters, Targets, Task

#: Kubernetes truncates termination messages beyond this.
TERMINATION_MESSAGE_LIMIT = 4096


class FeedbackExport(KaizenModel):
    """Where the trainer fetches consented feedback: the collector's export endpoint."""

    url: str = Field(description="Export URL of the collector (…/v1/export), or a JSONL file of the same shape.")
    token_file: str | None = Field(default=None, description="File holding a bearer token with the read scope.")
    since: str | None = Field(default=None, description="Only feedback newer than this RFC 3339 time.")


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
    gates: list[Gate] = Field(default_factory=list, description="Gates, evaluated by the trainer for the model card.")
    output_dir: str = Field(min_length=1, description="Where the model, metrics, manifest and card are written.")
    checkpoint_dir: str = Field(min_length=1, description="Where checkpoints are kept, across pod restarts.")


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
