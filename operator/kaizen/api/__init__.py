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


# Names of Kaizen objects are copied into child names and label values, which the API server limits to 63
# characters; a longer name would make every child create fail. So each kind's names are bounded at admission (a CEL
# rule on metadata.name, kaizen.api.crd) and again in kaizen.logic.validation. The budgets, from the derivations in
# kaizen.logic.loop.child_name, kaizen.logic.retrain.child_name and plan, and kaizen.k8s.deployments:
#
#   ImprovementLoop <loop>, at most 40:
#     label kaizen.dev/loop=<loop> on its children                      40 <= 63
#     RetrainJob <loop>-retrain-<6 hex>, Rollout <loop>-rollout-<6 hex>  40 + 15 = 55 (the RetrainJob limit)
#     Rollout <loop>-rollback-<6 hex>                                   40 + 16 = 56 <= 63 (the Rollout limit)
#   RetrainJob <job>, at most 55:
#     label kaizen.dev/retrainjob=<job> on its ConfigMap, Job and pods  55 <= 63
#     ConfigMap and Job <job>-trainer (also the pods' job-name label)   55 + 8 = 63
#     candidate version <job> when spec.candidateVersion is omitted: the kaizen.dev/model-version label  55 <= 63
#   Rollout <rollout>, at most 63:
#     label kaizen.dev/rollout=<rollout> on the canary Deployment       63
#   (The canary Deployment itself is <target>-canary: spec.target.deployment is at most 56, see TargetRef.)
LOOP_NAME_LIMIT, RETRAIN_JOB_NAME_LIMIT, ROLLOUT_NAME_LIMIT = 40, 55, 63


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
    #: The longest metadata.name, so that every name and label value derived from it fits (see NAME_BUDGETS).
    max_name_length: int
    #: Why: what is derived from the name, said in the API server's message when a name is too long.
    name_budget: str

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def api_version(self) -> str:
        return f"{API_GROUP}/{API_VERSION}"

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{API_GROUP}"

    @property
    def name_message(self) -> str:
        """What the API server (and the InvalidSpec condition) says of a name that is too long."""
        return f"the name of a {self.kind} has at most {self.max_name_length} characters: {self.name_budget}"


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
    max_name_length=LOOP_NAME_LIMIT,
    name_budget="it names the loop's RetrainJobs and Rollouts <name>-retrain-<hash> and <name>-rollback-<hash> "
    f"(a RetrainJob name has at most {RETRAIN_JOB_NAME_LIMIT}) and is the kaizen.dev/loop label of each",
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
    max_name_length=RETRAIN_JOB_NAME_LIMIT,
    name_budget="its ConfigMap and Job are named <name>-trainer, which must stay a 63-character label value (the "
    "job-name label of the pods), and it is the kaizen.dev/retrainjob label and the default candidate version",
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
        PrinterColumn("Weight", ".status.canaryWeight", "integer", "Traffic percentage the step asks for."),
        PrinterColumn("Achieved", ".status.achievedWeight", "number",
                      "Traffic percentage the routing gives the canary (the replicas' share, or the route's weight)."),
        PrinterColumn("Step", ".status.currentStep", "integer", "Index of the step in progress.", priority=1),
        AGE,
    ),
    max_name_length=ROLLOUT_NAME_LIMIT,
    name_budget="it is the kaizen.dev/rollout label of the canary Deployment, and a label value has at most 63 "
    "characters",
)

KINDS: tuple[ResourceKind, ...] = (IMPROVEMENT_LOOP, RETRAIN_JOB, ROLLOUT)
