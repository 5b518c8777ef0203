"""Stage 5, write: the candidate model, ``metrics.json``, ``dataset-manifest.json``, ``MODEL_CARD.md`` and the
compact result for the operator (at most 4 KiB, so per-cohort metrics are dropped from it first; they stay in
``metrics.json``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from kaizen.api.retrainjob import DatasetSource, DatasetSummary, GateResult
from kaizen.api.trainer import TERMINATION_MESSAGE_LIMIT, TrainerConfig, TrainerResult
from kaizen.logic.gates import metric_key
from kaizen_trainer.train import TrainStats

SETS = ("holdout", "regression", "stress")
#: Per-cohort metrics backed by fewer rows than this are called out as unreliable in the model card.
SMALL_COHORT = 30


def summary(manifest: Mapping, manifest_uri: str) -> DatasetSummary:
    return DatasetSummary(
        sha256=manifest["sha256"], manifest_uri=manifest_uri,
        sources=[DatasetSource(uri=s["uri"], sha256=s["sha256"], rows=s["rows"]) for s in manifest["sources"]][:32],
        rows=dict(manifest["rows"]), excluded=dict(manifest["excluded"]),
    )


def compact(result: TrainerResult, config: TrainerConfig) -> TrainerResult:
    """The result trimmed to the termination-message limit: all metrics if they fit, else overall and gated ones,
    else the gated ones only (the gate results carry their numbers either way)."""
    gated = {metric_key(g) for g in config.gates}
    full = result.metrics
    keepers = (
        lambda k: True,
        lambda k: k.count(".") == 1 or k in gated,
        lambda k: k in gated,
    )
    for keep in keepers:
        trimmed = result.model_copy(update={"metrics": {who: {k: round(v, 6) for k, v in m.items() if keep(k)}
                                                        for who, m in full.items()}})
        if len(trimmed.model_dump_json(by_alias=True, exclude_none=True).encode()) <= TERMINATION_MESSAGE_LIMIT:
            return trimmed
    # The verdict's message stays first: it is what status and the loop's decision log show.
    return trimmed.model_copy(
        update={"metrics": {}, "message": f"{result.message} (metrics are in metrics.json: too many for the result)"}
    )


def _method(config: TrainerConfig, training: Mapping) -> str:
    """The Training section's sentence on the method, and for an adapter the base model it needs."""
    counts = f"{training['trainableParameters']:,} of {training['parameters']:,} parameters trained"
    if config.method == "full":
        return f"Method: full fine-tune ({counts})."
    lora = config.lora.model_dump(by_alias=True) if config.lora else {}
    merged = config.lora is not None and config.lora.merge
    return (f"Method: {config.method} adapter ({counts}; {json.dumps(lora) if lora else 'default LoRA settings'}). "
            + (f"The adapter is merged into its base **{training['baseModel']}** in `model/`, and kept in `adapter/`."
               if merged else f"This is an adapter: it needs the base model **{training['baseModel']}**, which "
               "its adapter_config.json names (base_model_name_or_path); a server loads that base, then the adapter."))


def model_card(config: TrainerConfig, manifest: Mapping, metrics: Mapping[str, Mapping[str, float]],
               gates: Sequence[GateResult], verdict: str, stats: TrainStats, device: str,
               training: Mapping | None = None) -> str:
    """The model card: intended use, data and lineage, metrics per cohort, gate results, limitations. ``training``
    is metrics.json's training record (method, parameters, base model)."""
    candidate, baseline = metrics["candidate"], metrics["baseline"]
    lines = [
        f"# Model card: {config.candidate_version}",
        "",
        "## Intended use",
        f"A {config.task} model fine-tuned from **{config.baseline.version}** ({config.baseline.uri}) by the Kaizen "
        f"RetrainJob `{config.job}` to fix the slices users reported (decision `{config.decision_id}`). It is meant "
        "to replace its baseline for the same traffic, after a staged rollout.",
        "",
        "## Data and lineage",
        f"Dataset manifest sha256 `{manifest['sha256']}`. Holdout rule: {manifest['holdoutRule']}.",
        "",
        "| source | role | rows | sha256 |",
        "|---|---|---|---|",
        *(f"| {s['uri']} | {s['role']} | {s['rows']} | `{s['sha256'][:16]}…` |" for s in manifest["sources"]),
        "",
        "Rows by role: " + ", ".join(f"{k} {v}" for k, v in manifest["rows"].items()) + ".",
        "Excluded: " + (", ".join(f"{k} {v}" for k, v in manifest["excluded"].items()) or "none")
        + f"; subjects opted out: {manifest['subjectsOptedOut']}.",
        f"Targets: {config.targets.model_dump_json(by_alias=True)}.",
        "",
        "## Training",
        f"{stats.steps} steps on {device}, batch {config.hyperparameters.batch_size}, learning rate "
        f"{config.hyperparameters.learning_rate:g}, seed {config.hyperparameters.seed}"
        + (f", resumed from the checkpoint at step {stats.resumed_from}" if stats.resumed_from else "") + ".",
        f"Objective: {config.objective}" + (
            " (supervised: corrections, well-rated answers and replay)." if config.objective == "sft" else
            f" (trl's loss against the baseline as reference, beta {config.hyperparameters.beta:g})."),
        *([_method(config, training)] if training else []),
        "",
        "## Metrics (candidate vs. baseline on the same data)",
        "",
        "| metric | candidate | baseline | delta |",
        "|---|---|---|---|",
    ]
    for key in sorted(candidate):
        if key.split(".")[0] in SETS:
            b = baseline.get(key)
            delta = f"{candidate[key] - b:+.4f}" if b is not None else ""
            lines.append(f"| {key} | {candidate[key]:.4f} | {'' if b is None else f'{b:.4f}'} | {delta} |")
    lines += ["", f"## Gates: {verdict}", ""]
    if gates:
        lines += ["| metric | dataset | cohort | candidate | baseline | threshold | passed |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {g.metric} | {g.dataset} | {g.cohort or ''} | {_num(g.candidate)} | {_num(g.baseline)} | "
                  f"{g.threshold} | {'yes' if g.passed else 'NO'} |" for g in gates]
    else:
        lines.append("No gates were set.")
    small = sorted(k for k, v in manifest["slices"]["holdout"].items() if v < SMALL_COHORT)
    lines += [
        "", "## Limitations",
        "- Evaluated offline on the holdout, the regression suite and a synthetic stress set (case, whitespace, "
        "typos); live behaviour is judged by the rollout.",
        f"- Holdout slices with fewer than {SMALL_COHORT} rows give noisy numbers: "
        + (", ".join(small) if small else "none") + ".",
        "- Trained on user corrections: they carry the biases of the users who gave feedback and consented.",
        _safety_line(manifest["rows"]["safety"]),
    ]
    return "\n".join(lines) + "\n"


def _safety_line(probes: int) -> str:
    if not probes:
        return "- Safety was not measured: the job had no safety probes (data.safety)."
    return (f"- Safety violations were measured on {probes} safety probes only, as answers other than their safe one: "
            "a red-team prompt unlike them may still get an unsafe answer.")


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
