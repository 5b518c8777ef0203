"""The Kaizen API: the three custom resources (group ``kaizen.dev``, version ``v1alpha1``) and the trainer contract.

:data:`KINDS` lists the resources with what the CRD generator and the controllers need to know about each.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from kaizen.api.common import API_GROUP, API_VERSION
from kaizen.api.improvementloop import ImprovementLoopSpec, ImprovementLoopStatus
from kaizen.api.retrainjob import RetrainJobSpec, RetrainJobStatus
from kaizen.api.rollout import RolloutSpec, RolloutStatus


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0


@dataclass(frozen=True)
class ResourceKind:
    """A custom resource: its names, its models and how kubectl prints it."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    spec: type[BaseModel]
    status: type[BaseModel]
    description: str
    columns: tuple[PrinterColumn, ...]

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def api_version(self) -> str:
        return f"{API_GROUP}/{API_VERSION}"

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{API_GROUP}"


PHASE = PrinterColumn("Phase", ".status.phase", description="What the resource is doing now.")
AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date")

IMPROVEMENT_LOOP = ResourceKind(
    kind="ImprovementLoop",
    plural="improvementloops",
    short_names=("loop", "kil"),
    spec=ImprovementLoopSpec,
    status=ImprovementLoopStatus,
    description="The continuous-improvement loop of one served model: signals, feedback, policies, and the "
    "RetrainJobs and Rollouts it creates, with a log of every decision.",
    columns=(
        PHASE,
        PrinterColumn("Model", ".status.model.version", description="Model version served now."),
        PrinterColumn("Candidate", ".status.candidate.version", description="Candidate in training or rollout."),
        AGE,
    ),
)
RETRAIN_JOB = ResourceKind(
    kind="RetrainJob",
    plural="retrainjobs",
    short_names=("rj",),
    spec=RetrainJobSpec,
    status=RetrainJobStatus,
    description="One targeted retraining in a GPU pod, evaluated against its baseline on the same held-out data "
    "and judged by gates.",
    columns=(
        PHASE,
        PrinterColumn("Verdict", ".status.verdict", description="Passed when every gate passed."),
        PrinterColumn("Baseline", ".spec.baseline.version", description="Model trained from and compared against."),
        PrinterColumn("Candidate", ".status.candidate.version", description="Candidate model produced."),
        AGE,
    ),
)
ROLLOUT = ResourceKind(
    kind="Rollout",
    plural="rollouts",
    short_names=("kro",),
    spec=RolloutSpec,
    status=RolloutStatus,
    description="A staged canary release of a model, judged on live telemetry, promoted or rolled back "
    "automatically.",
    columns=(
        PHASE,
        PrinterColumn("Stable", ".spec.stableModel.version", description="Model served by the stable track."),
        PrinterColumn("Canary", ".spec.canaryModel.version", description="Model served by the canary track."),
        PrinterColumn("Weight", ".status.canaryWeight", "integer", "Traffic percentage sent to the canary."),
        PrinterColumn("Step", ".status.currentStep", "integer", "Index of the step in progress.", priority=1),
        AGE,
    ),
)

KINDS: tuple[ResourceKind, ...] = (IMPROVEMENT_LOOP, RETRAIN_JOB, ROLLOUT)
