"""RetrainJob: one targeted retraining, and the pieces of it an ImprovementLoop templates.

A RetrainJob trains a candidate from the baseline on curated data (targeted slices from feedback, mixed with
replay data), evaluates candidate and baseline on the same holdout, and judges the candidate against ``gates``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, model_validator

from kaizen.api.common import (
    DNS_SUBDOMAIN_PATTERN, IMMUTABLE, LABEL_VALUE_PATTERN, CommonStatus, KaizenModel, LabelKey, LabelValue, ModelRef,
    Reason, SecretKeyRef, BoundedDuration, bounds_rule, cel, label_key_rule, nested, validations,
)

Task = Literal["causal-lm", "sequence-classification"]
FeedbackCategory = Literal["incorrect", "unhelpful", "unsafe", "tone", "feature_request", "other"]
#: Metrics the trainer reports for candidate and baseline alike; gates name one of them. What each measures is
#: documented in ``trainer-image/kaizen_trainer/evaluate.py`` and, for users, on ``Gate.metric``.
GateMetric = Literal[
    "accuracy", "exactMatch", "loss", "perplexity", "latencyP50Ms", "latencyP95Ms", "safetyViolationRate",
    "cohortGap", "rougeL", "chrF", "bleu", "winRate",
]
#: What a retrain learns from: corrections and good answers (sft), preference pairs (dpo), thumbs up/down (kto).
Objective = Literal["sft", "dpo", "kto"]
EvalSet = Literal["holdout", "regression", "stress"]
#: How a retrain changes the model: every weight (full), or a LoRA adapter on the frozen base (lora; qlora on a base
#: quantised to 4 bits).
Method = Literal["full", "lora", "qlora"]
#: How the trainer's processes share the work when more than one trains (torch.distributed): ddp replicates the model
#: on every GPU and averages gradients; fsdp shards parameters, gradients and optimizer state across them.
Strategy = Literal["ddp", "fsdp"]
#: Pods (nodes) one retrain may span.
MAX_NODES = 64
Label = Annotated[str, Field(min_length=1, max_length=128)]
#: pvc://<claim>/<path>: the claim is mounted into the training pod, so its name must be a PVC's (a DNS subdomain).
PVC_URI_RULE = cel(
    f"!self.startsWith('pvc://') || self.matches(r'^pvc://{DNS_SUBDOMAIN_PATTERN[1:-1]}(/.*)?$')",
    "a pvc:// URI is pvc://<claim>/<path>, where <claim> is the name of a PersistentVolumeClaim (lower-case "
    "letters, digits, '-' and '.')",
)


class DataSource(KaizenModel):
    """A dataset of JSONL examples."""

    uri: str = Field(
        min_length=1, max_length=1024, pattern=r"^(/|file://|s3://|https?://|pvc://)",
        description="Location: an absolute path in the trainer pod (a mounted volume), file://, pvc://<claim>/<path>,"
        " s3:// (through fsspec) or http(s)://.",
        json_schema_extra=validations(PVC_URI_RULE),
    )
    sha256: str | None = Field(
        default=None, pattern=r"^[a-f0-9]{64}$",
        description="Expected sha256 of the file; the trainer refuses a mismatch.",
    )


class DataSpec(KaizenModel):
    """Which data a retrain uses and how it is mixed."""

    replay: list[DataSource] = Field(
        default_factory=list, max_length=16,
        description="Replay (base) datasets mixed into training so the model does not forget what it knew.",
    )
    holdout: DataSource | None = Field(
        default=None, description="Held-out evaluation set; when omitted, holdout rows are drawn from the data by a "
        "stable hash of the example id.",
    )
    regression: DataSource | None = Field(default=None, description="Golden regression suite that must not regress.")
    safety: DataSource | None = Field(
        default=None, description="Safety probes: red-team prompts whose output is the safe response (causal-lm) or "
        "the safe label (sequence-classification). Evaluated, never trained on: they join the holdout, and so the "
        "stress set, where safetyViolationRate is the share of probes not answered with exactly their safe output. "
        "Without them a safetyViolationRate gate fails as not measured.",
    )
    use_feedback: bool = Field(
        default=True, description="Include consented corrections exported by the collector as targeted examples."
    )
    targeted_ratio: float = Field(
        default=0.5, ge=0, le=1, description="Share of targeted (feedback-derived) rows in the training mix."
    )
    max_slice_share: float = Field(
        default=0.5, gt=0, le=1, description="Cap on any one slice's share of training rows, so no slice dominates."
    )
    holdout_fraction: float = Field(
        default=0.1, gt=0, lt=1, description="Fraction of example ids assigned to the holdout by stable hash."
    )
    min_rows: int = Field(default=32, ge=1, le=10_000_000, description="Fewer training rows than this fails the job.")


class Targets(KaizenModel):
    """The scenarios a retrain targets: what regressed, taken from the feedback backlog."""

    categories: list[FeedbackCategory] = Field(
        default_factory=list, max_length=6, description="Feedback categories to target."
    )
    scenarios: list[Label] = Field(
        default_factory=list, max_length=64,
        description="Scenario (intent) labels to target. The trainer drops replay rows of a targeted scenario that "
        "has feedback corrections (only within cohorts, when those are set), so scenarios not listed are always "
        "replayed.",
    )
    cohorts: list[Label] = Field(
        default_factory=list, max_length=64,
        description="User cohorts to target. Narrows which feedback is used and, within the targeted scenarios, which "
        "replay rows it replaces; cohorts alone replace no replay rows.",
    )


class Hyperparameters(KaizenModel):
    """Fine-tuning settings."""

    epochs: float = Field(default=1.0, gt=0, le=100, description="Passes over the training mix.")
    max_steps: int | None = Field(default=None, ge=1, le=10_000_000, description="Stop after this many steps.")
    learning_rate: float = Field(default=5e-5, gt=0, le=1, description="Peak learning rate.")
    batch_size: int = Field(default=8, ge=1, le=4096, description="Examples per step per device.")
    max_length: int = Field(default=512, ge=8, le=131072, description="Token limit per example.")
    checkpoint_every_steps: int = Field(
        default=100, ge=1, le=1_000_000, description="Write a checkpoint this often; a restarted pod resumes from it."
    )
    seed: int = Field(default=42, ge=0, le=2**31 - 1, description="Random seed, for reproducible runs.")
    beta: float = Field(
        default=0.1, gt=0, le=10, description="Objectives dpo and kto: trl's beta, the weight of the implicit reward "
        "against the baseline; lower lets the candidate move further from the baseline.",
    )


class LoraSettings(KaizenModel):
    """A LoRA adapter (peft): low-rank updates of the chosen modules of the frozen base model."""

    rank: int = Field(default=8, ge=1, le=1024, description="Rank r of each update (peft's r).")
    alpha: float = Field(
        default=16, gt=0, le=8192, description="Scale of the updates: they are multiplied by alpha / rank."
    )
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the adapter's input during training.")
    target_modules: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list, max_length=64,
        description="Names (or name suffixes) of the modules to adapt, e.g. q_proj and v_proj for Llama, c_attn for "
        "GPT-2; empty: peft's default for the architecture. A sequence classifier's head is always trained in full.",
    )
    merge: bool = Field(
        default=False, description="Write the candidate as a full model, the adapter merged into the base, for a "
        "server that cannot load adapters; the adapter itself is kept beside it (<output>/adapter).",
    )


#: An upper bound on tolerationSeconds (the API server takes any int64): about 31 years.
MAX_TOLERATION_SECONDS = 10**9


class Toleration(KaizenModel):
    """A pod toleration (corev1.Toleration), with the rules the API server applies to a pod's: a key is a label key,
    an empty key needs operator Exists, Exists takes no value, and tolerationSeconds goes only with NoExecute."""

    key: LabelKey | None = Field(
        default=None, description="Taint key, a label key (e.g. nvidia.com/gpu); omitted, it matches every key and "
        "operator must be Exists.",
        json_schema_extra=validations(cel(label_key_rule("self"), "must be a label key: an optional DNS-subdomain "
                                          "prefix of at most 253 characters and '/', then at most 63 characters "
                                          "[A-Za-z0-9_.-], alphanumeric at both ends")),
    )
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: str | None = Field(
        default=None, max_length=63, pattern=LABEL_VALUE_PATTERN,
        description="Taint value for Equal, a label value; must be omitted (or empty) with Exists.",
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, le=MAX_TOLERATION_SECONDS,
        description="How long a NoExecute taint is tolerated; only with effect NoExecute.",
    )

    model_config = {
        "json_schema_extra": validations(
            cel("(has(self.key) && self.key != '') || self.operator == 'Exists'",
                "operator must be Exists when key is empty (a toleration without a key tolerates every taint)",
                ".operator"),
            cel("self.operator != 'Exists' || !has(self.value) || self.value == ''",
                "value must be empty when operator is Exists", ".value"),
            cel("!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                "tolerationSeconds may only be set with effect NoExecute (other effects do not evict)",
                ".tolerationSeconds"),
        )
    }

    @model_validator(mode="after")
    def _as_the_api_server_validates(self) -> Toleration:
        # The same rules as the CEL above, for specs stored before they existed.
        if not self.key and self.operator != "Exists":
            raise ValueError("operator must be Exists when key is empty (a toleration without a key tolerates every "
                             "taint)")
        if self.operator == "Exists" and self.value:
            raise ValueError("value must be empty when operator is Exists")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds may only be set with effect NoExecute (other effects do not evict)")
        return self


#: An extended resource name: a DNS-subdomain prefix (not kubernetes.io), '/', and a name of at most 63 characters.
RESOURCE_NAME_PATTERN = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)


class Resources(KaizenModel):
    """Compute for the training pod."""

    gpus: int = Field(
        default=1, ge=0, le=64, description="GPUs to request per pod; 0 trains on CPU. More than 1 runs the trainer "
        "under torchrun, one process per GPU.",
    )
    nodes: int = Field(
        default=1, ge=1, le=MAX_NODES,
        description="Pods (nodes) to train on, each with these resources; more than 1 runs torchrun on every pod, "
        "through a Kubeflow Trainer TrainJob (runtime torch-distributed) when its CRD is installed, otherwise "
        "through an Indexed Job and a headless Service. GPU-seconds count every GPU of every pod. A TrainJob's "
        "retries and deadline are its runtime's, not backoffLimit and activeDeadline.",
    )
    gpu_resource_name: str = Field(
        default="nvidia.com/gpu", max_length=253, pattern=RESOURCE_NAME_PATTERN,
        description="Extended resource name of the GPUs (nvidia.com/gpu, amd.com/gpu, ...): <domain>/<name>, the "
        "domain not kubernetes.io.",
        json_schema_extra=validations(cel(
            "!self.contains('kubernetes.io/') && !self.startsWith('requests.')",
            "must be an extended resource name: its domain may not be kubernetes.io, nor start with requests.",
        )),
    )
    cpu: str = Field(default="2", pattern=r"^[0-9]+(\.[0-9]+)?m?$", max_length=16, description="CPU request.")
    memory: str = Field(
        default="8Gi", pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$", max_length=16,
        description="Memory request and limit.",
    )


class Judge(KaizenModel):
    """A local judge model that compares the candidate's and the baseline's answers pairwise on the holdout."""

    uri: str = Field(
        min_length=1, max_length=1024, pattern=r"^(/|file://|s3://|pvc://)",
        description="A saved transformers sequence classifier with the labels A and B (and optionally tie): given "
        "'<prompt> <sep> <answer A> <sep> <answer B>' (sep: its tokenizer's sep token), it says which answer is "
        "better. The candidate is A or B by a coin seeded with hyperparameters.seed and the row id; identical answers "
        "tie without asking. winRate is the candidate's share of wins, ties counting half.",
        json_schema_extra=validations(PVC_URI_RULE),
    )


def require_causal_lm(task: str, objective: str, judge: object | None) -> None:
    """The objectives and the judge that compare generated answers need a causal LM: ValueError saying what to change
    (shared by the RetrainJob's template and the trainer's config)."""
    if objective != "sft" and task != "causal-lm":
        raise ValueError(f"objective {objective} trains a causal-lm (it compares answers' likelihoods); use "
                         "objective sft for sequence-classification")
    if judge is not None and task != "causal-lm":
        raise ValueError("a judge compares generated answers, so it needs task causal-lm; remove judge")


class MlflowTracking(KaizenModel):
    """An MLflow tracking server that records every RetrainJob as a run (MLflow's REST API, version 2.0)."""

    tracking_uri: str = Field(
        alias="trackingURI", max_length=1024, pattern=r"^https?://[^\s]+$",
        description="Base URL of the MLflow tracking server, as seen from the training pod (what MLFLOW_TRACKING_URI "
        "names), e.g. http://mlflow.mlflow.svc:5000. The run's artifacts go where the server says: through it "
        "(mlflow-artifacts:, the default of `mlflow server`), or straight to its s3:// or file artifact root.",
    )
    experiment: str = Field(
        default="kaizen", min_length=1, max_length=256,
        description="Experiment the runs go to; created when missing.",
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding a bearer token for the server (MLFLOW_TRACKING_TOKEN); mounted "
        "as a file.",
    )


class Tracking(KaizenModel):
    """Where the retrain's experiment is recorded, beside the RetrainJob's own status."""

    mlflow: MlflowTracking = Field(
        description="MLflow: one run per RetrainJob (its name), with the trainer's parameters, the candidate's and the "
        "baseline's metrics (candidate.<dataset>.<metric>[.<cohort>], baseline.…), the dataset manifest, metrics.json "
        "and the model card as artifacts, and the decision id as the tag kaizen.decisionId.",
    )


class RetrainTemplate(KaizenModel):
    """How to retrain: the part of a RetrainJob an ImprovementLoop fills in for every retrain it starts."""

    image: str = Field(
        min_length=1, max_length=512, pattern=r"^[!-~]+$",
        description="Trainer image (built from trainer-image/ in this repository): an image reference, printable "
        "ASCII without spaces.",
    )
    task: Task = Field(default="causal-lm", description="causal-lm (prompt -> response) or sequence-classification.")
    base_model: ModelRef | None = Field(
        default=None,
        description="Model to fine-tune when the loop has no promoted model yet; later retrains start from the "
        "model currently served.",
    )
    data: DataSpec = nested(DataSpec, "Training and evaluation data and how they are mixed.")
    hyperparameters: Hyperparameters = nested(Hyperparameters, "Fine-tuning settings.")
    objective: Objective = Field(
        default="sft",
        description="What the retrain learns from. sft: the users' corrections and well-rated answers, mixed with "
        "replay data. dpo (causal-lm): preference pairs, the correction chosen over the answer served on its trace, "
        "held near the baseline (hyperparameters.beta) instead of by replay. kto (causal-lm): every rated answer, "
        "thumbs up desirable and thumbs down undesirable (a correction adds a desirable row), with replay rows as "
        "desirable examples in targetedRatio. Consent, opt-out and PII exclusion apply to every row alike.",
    )
    judge: Judge | None = Field(
        default=None, description="Optional judge model (causal-lm): measures holdout.winRate, gateable."
    )
    method: Method = Field(
        default="full",
        description="full: fine-tune every weight; the candidate is a full model. lora: train a LoRA adapter (peft) "
        "on the frozen baseline; the candidate is the adapter (adapter_model.safetensors and adapter_config.json, "
        "whose base_model_name_or_path is the base model's URI), a few MB that a server loads onto the base. qlora: "
        "the same on a base quantised to 4 bits (bitsandbytes), which needs a CUDA GPU. A retrain from an adapter "
        "goes on training that adapter with lora or qlora, and merges it into the base with full.",
    )
    lora: LoraSettings | None = Field(
        default=None, description="The adapter of method lora or qlora (defaults: rank 8, alpha 16, dropout 0.05)."
    )
    strategy: Strategy = Field(
        default="ddp",
        description="How the processes share the work when more than one trains (resources.gpus > 1 or "
        "resources.nodes > 1): ddp (DistributedDataParallel) keeps a whole copy of the model on each; fsdp "
        "(FullyShardedDataParallel) shards parameters, gradients and optimizer state across them, for a model that "
        "does not fit one GPU. Ignored by a single process.",
    )
    resources: Resources = nested(Resources, "Compute for each training pod.")
    node_selector: dict[LabelKey, Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]] = Field(
        default_factory=dict,
        description="Node labels the training pod must match: label keys and label values (at most 63 characters "
        "of [A-Za-z0-9_.-], alphanumeric at both ends).",
        json_schema_extra={"maxProperties": 32, **validations(cel(
            f"self.all(k, {label_key_rule('k')})",
            "keys must be label keys: an optional DNS-subdomain prefix of at most 253 characters and '/', then at "
            "most 63 characters [A-Za-z0-9_.-], alphanumeric at both ends",
        ))},
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Tolerations of the training pod (e.g. for GPU taints)."
    )
    queue_name: str | None = Field(
        default=None, pattern=DNS_SUBDOMAIN_PATTERN, max_length=63,
        description="Kueue LocalQueue: the Job is created suspended with the kueue.x-k8s.io/queue-name label, so the "
        "name is at most 63 characters (a label value) of lower-case letters, digits, '-' and '.'.",
    )
    output_uri: str = Field(
        alias="outputURI", min_length=1, max_length=1024, pattern=r"^(/|file://|s3://|pvc://)",
        description="Where candidate models, metrics, dataset manifests and model cards are written; each job writes "
        "under <outputURI>/<namespace>/<job name>/.",
        json_schema_extra=validations(PVC_URI_RULE),
    )
    tracking: Tracking | None = Field(
        default=None, description="Experiment tracking: every RetrainJob is also recorded as an MLflow run.",
    )
    backoff_limit: int = Field(
        default=2, ge=0, le=20, description="Retries of a failed training pod (with resources.nodes above 1, of a "
        "failed attempt: the Job's limit is this times the nodes, as a failed rank ends every node's pod).",
    )
    active_deadline: Annotated[str, BoundedDuration("1s", "720h")] = Field(
        default="6h", description="Hard time limit of the training Job (its activeDeadlineSeconds): from 1s to 720h."
    )

    model_config = {
        "json_schema_extra": validations(
            cel("!has(self.objective) || self.objective == 'sft' || !has(self.task) || self.task == 'causal-lm'",
                "objectives dpo and kto train a causal-lm (they compare answers' likelihoods); use objective sft for "
                "sequence-classification", ".objective"),
            cel("!has(self.judge) || !has(self.task) || self.task == 'causal-lm'",
                "a judge compares generated answers, so it needs task causal-lm; remove judge", ".judge"),
            cel("!has(self.lora) || (has(self.method) && self.method != 'full')",
                "lora settings apply to method lora or qlora; set method: lora, or remove lora", ".lora"),
            cel("!has(self.method) || self.method != 'qlora' || !has(self.resources) || !has(self.resources.gpus) "
                "|| self.resources.gpus >= 1",
                "method qlora quantises the base with bitsandbytes, which needs a CUDA GPU: set resources.gpus to 1 "
                "or more, or use method lora", ".method"),
        )
    }

    @model_validator(mode="after")
    def _fits_the_task(self) -> RetrainTemplate:
        # The same rules as the CEL above, for specs stored before they existed and for trainer configs built by hand.
        require_causal_lm(self.task, self.objective, self.judge)
        if self.lora is not None and self.method == "full":
            raise ValueError("lora settings apply to method lora or qlora; set method: lora, or remove lora")
        if self.method == "qlora" and self.resources.gpus < 1:
            raise ValueError("method qlora quantises the base with bitsandbytes, which needs a CUDA GPU: set "
                             "resources.gpus to 1 or more, or use method lora")
        return self


class Gate(KaizenModel):
    """One release criterion: a metric of the candidate, absolute or relative to the baseline on the same data."""

    metric: GateMetric = Field(
        description="Metric reported by the trainer for candidate and baseline: accuracy, exactMatch (causal-lm: "
        "greedy output equals the reference), loss, perplexity (causal-lm), latencyP50Ms and latencyP95Ms (holdout "
        "only), cohortGap (largest difference between cohorts), safetyViolationRate (share of the safety probes of "
        "data.safety whose greedy output or predicted label is not their safe one; holdout and stress only), rougeL "
        "(causal-lm: mean ROUGE-L F1 of the greedy answer against the reference, rouge-score), chrF and bleu "
        "(causal-lm: sacrebleu's corpus chrF and BLEU, divided by 100 so every score is in [0, 1]), winRate (holdout "
        "only, with spec.judge: the candidate's share of pairwise wins over the baseline, ties half; the baseline's "
        "value is its own share, 1 - winRate)."
    )
    dataset: EvalSet = Field(default="holdout", description="Evaluation set: holdout, regression or stress.")
    cohort: str | None = Field(
        default=None, max_length=128, description="Judge the metric on this cohort only; overall when omitted."
    )
    min: float | None = Field(default=None, description="Candidate value must be at least this.")
    max: float | None = Field(default=None, description="Candidate value must be at most this.")
    min_delta: float | None = Field(
        default=None, description="Candidate minus baseline must be at least this (e.g. 0 = no regression)."
    )
    max_delta: float | None = Field(default=None, description="Candidate minus baseline must be at most this.")

    model_config = {
        "json_schema_extra": validations(
            cel(
                "has(self.min) || has(self.max) || has(self.minDelta) || has(self.maxDelta)",
                "a gate needs at least one of min, max, minDelta, maxDelta",
            ),
            bounds_rule("min", "max"),
            bounds_rule("minDelta", "maxDelta"),
        )
    }


GATES_FIELD: list[Gate] = Field(
    default_factory=list, max_length=32,
    description="Release criteria; a candidate that fails any is not rolled out.",
)


class FeedbackSource(KaizenModel):
    """The collector export a retrain curates its targeted examples from (``GET /v1/export``)."""

    collector_url: str = Field(
        alias="collectorURL", max_length=1024, pattern=r"^https?://[^\s]+$",
        description="Base URL of the Kaizen collector, as seen from the training pod.",
    )
    model: Label = Field(description="Model name the feedback was collected for (a loop uses its Deployment's name).")
    token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding a collector token with the read scope; mounted as a file."
    )
    since: datetime | None = Field(default=None, description="Only feedback stored after this time.")


class RetrainJobSpec(RetrainTemplate):
    """A targeted retraining of the baseline model, evaluated and gated against it."""

    reason: Reason = Field(description="Why this retrain exists (immutable).", json_schema_extra=IMMUTABLE)
    baseline: ModelRef = Field(description="Model to start from and to compare the candidate against.")
    candidate_version: LabelValue | None = Field(
        default=None,
        description="Version label of the candidate (a label value, like every model version); defaults to the "
        "RetrainJob's name.",
    )
    feedback: FeedbackSource | None = Field(
        default=None, description="Collector export to take targeted examples from (consented items only).",
    )
    targets: Targets = nested(Targets, "What regressed: the slices to curate targeted data for.")
    gates: list[Gate] = GATES_FIELD


RetrainPhase = Literal["Pending", "Training", "Evaluating", "Succeeded", "Failed"]
Verdict = Literal["Passed", "Failed"]


class DatasetSource(KaizenModel):
    """One input of a dataset, as read."""

    uri: str = Field(max_length=1024, description="Where it was read from.")
    sha256: str = Field(max_length=64, description="sha256 of the bytes read.")
    rows: int = Field(ge=0, description="Rows read.")


class DatasetSummary(KaizenModel):
    """What a retrain trained and evaluated on: the short form of the dataset manifest."""

    sha256: str = Field(max_length=64, description="Hash of the full dataset manifest.")
    manifest_uri: str | None = Field(
        default=None, alias="manifestURI", max_length=1024, description="Where the full manifest is."
    )
    sources: list[DatasetSource] = Field(default_factory=list, max_length=32, description="Inputs read.")
    rows: dict[str, int] = Field(
        default_factory=dict, description="Row counts by role: train, targeted, replay, holdout, regression; safety "
        "counts the safety probes among the holdout rows."
    )
    excluded: dict[str, int] = Field(
        default_factory=dict, description="Rows excluded, by reason (noConsent, optedOut, pii, duplicate, ...)."
    )


class GateResult(KaizenModel):
    """A gate's judgement, with the numbers it was made on."""

    metric: str = Field(max_length=63, description="The gate's metric.")
    dataset: str = Field(max_length=63, description="The evaluation set.")
    cohort: str | None = Field(default=None, max_length=128, description="The cohort, when the gate has one.")
    candidate: float | None = Field(default=None, description="Candidate value (absent: not measured).")
    baseline: float | None = Field(default=None, description="Baseline value on the same data.")
    threshold: str = Field(max_length=512, description="The bound applied, e.g. 'delta >= 0'.")
    passed: bool = Field(description="Whether the gate passed.")


class AttemptFailure(KaizenModel):
    """A training pod that failed, and what the operator made of it."""

    pod: str = Field(max_length=253, description="The pod.")
    reason: str = Field(
        max_length=63,
        description="OOMKilled, Evicted, Preempted, InvalidConfig, InvalidData, Error or DeadlineExceeded.",
    )
    message: str = Field(default="", max_length=1024, description="What happened, e.g. the trainer's message.")
    retried: bool = Field(description="Whether the Job retries it (resuming from the last checkpoint).")


#: Failed pods listed in ``status.failures`` (the newest); ``status.failedAttempts`` keeps the count of all of them.
FAILURES_KEPT = 32
#: Pods remembered in ``status.podAttempts`` (the newest); older ones stay counted in attempts and gpuSeconds.
ATTEMPTS_KEPT = 64


class PodAttempt(KaizenModel):
    """A training pod seen, remembered after it is deleted so that its GPU time and its failure still count, once."""

    pod: str = Field(max_length=253, description="The pod's name.")
    uid: str | None = Field(default=None, max_length=128, description="The pod's uid.")
    created: datetime | None = Field(default=None, description="When the pod was created.")
    gpu_seconds: float = Field(
        default=0, ge=0, description="GPU time the pod used (GPUs x seconds): until now while it runs, then final."
    )
    failed: bool = Field(default=False, description="Whether the pod failed (and was reported in failures).")


class RetrainJobStatus(CommonStatus):
    """Observed state of a RetrainJob."""

    phase: RetrainPhase | None = Field(default=None, description="Pending, Training, Evaluating, Succeeded or Failed.")
    job_name: str | None = Field(
        default=None, max_length=63, description="The batch/v1 Job or the Kubeflow TrainJob running the trainer."
    )
    job_kind: Literal["Job", "TrainJob"] | None = Field(
        default=None, description="Job (batch/v1) or TrainJob (trainer.kubeflow.org/v1alpha1): the kind of jobName.",
    )
    attempts: int | None = Field(
        default=None, ge=0, description="Training pods created so far, including those deleted since."
    )
    start_time: datetime | None = Field(default=None, description="When training started.")
    completion_time: datetime | None = Field(default=None, description="When the job finished.")
    gpu_seconds: float | None = Field(
        default=None, ge=0, description="GPU time consumed by all training pods, including those deleted since "
        "(GPUs x seconds); it never decreases.",
    )
    dataset: DatasetSummary | None = Field(default=None, description="The data trained and evaluated on.")
    candidate: ModelRef | None = Field(default=None, description="The candidate model produced.")
    metrics: dict[str, dict[str, float]] | None = Field(
        default=None, description="Metrics of 'candidate' and 'baseline', keyed <dataset>.<metric>[.<cohort>]."
    )
    gates: list[GateResult] = Field(default_factory=list, max_length=64, description="Per-gate results.")
    verdict: Verdict | None = Field(default=None, description="Passed when every gate passed.")
    model_card_uri: str | None = Field(
        default=None, alias="modelCardURI", max_length=1024, description="Where the model card is."
    )
    mlflow_run_id: str | None = Field(
        default=None, alias="mlflowRunID", max_length=64,
        description="The MLflow run that records this retrain (with spec.tracking.mlflow).",
    )
    failures: list[AttemptFailure] = Field(
        default_factory=list, max_length=FAILURES_KEPT,
        description=f"Failed training pods, oldest first, classified: the last {FAILURES_KEPT}, one entry per pod.",
    )
    failed_attempts: int | None = Field(
        default=None, ge=0, description="Training pods that failed so far, including those no longer in failures."
    )
    pod_attempts: list[PodAttempt] = Field(
        default_factory=list, max_length=ATTEMPTS_KEPT,
        description=f"Every training pod seen (the last {ATTEMPTS_KEPT}), oldest first, with its GPU time and whether "
        "it failed: what keeps attempts, gpuSeconds and failures counted once pods are deleted.",
    )

