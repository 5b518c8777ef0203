"""The five stages in order: load -> curate -> train -> evaluate candidate and baseline on the same data -> write.

Artefacts go to ``outputDir`` (a path; for ``s3://`` they are written to a local staging directory and uploaded at
the end through fsspec). Checkpoints go to ``checkpointDir``, a path (a volume, when the output is on one), and
are mirrored to ``checkpointMirror`` when the output is remote, so a new pod resumes wherever it runs.

``method: lora`` (or ``qlora``) trains an adapter on the frozen baseline and writes it to ``<output>/model``, naming
its base; with ``lora.merge`` the base with the adapter merged in goes there instead, and the adapter to
``<output>/adapter``. Either way the gates judge base plus adapter against the baseline, on the same data.

Under torchrun (:mod:`kaizen_trainer.distributed`) every rank prepares and trains; the ranks agree once, before
training, on whether any of them failed; rank 0 alone evaluates, on the whole evaluation sets, and writes, so its
gate verdict is the one a single process reaches with the same weights.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from pathlib import Path
from typing import Any

from kaizen.api.common import ModelRef
from kaizen.api.trainer import TrainerConfig, TrainerResult
from kaizen.logic.gates import judge
from kaizen_trainer import curate as curation
from kaizen_trainer import adapters, distributed, evaluate, load, modeling, objectives, report, tracking, train
from kaizen_trainer.distributed import SINGLE, World
from kaizen_trainer.errors import TrainerError, invalid_config
from kaizen_trainer.mirror import Mirror

log = logging.getLogger("kaizen_trainer")

MODEL_CARD = "MODEL_CARD.md"


def run(config: TrainerConfig, world: World = SINGLE) -> TrainerResult | None:
    """Run the whole job and return its (uncompacted) result; raises :class:`TrainerError` on failure. Under
    torchrun, ranks other than 0 return None once trained."""
    try:
        distributed.check(config, world)
        adapters.check_method(config.method)  # before any data is read: qlora without a GPU can never run here
        checkpoints = load.local_path(config.checkpoint_dir)
        if checkpoints is None:
            raise invalid_config(f"checkpointDir {config.checkpoint_dir} must be a path (a volume that outlives the "
                                 "pod)")
        output = load.local_path(config.output_dir)
        if output is None:
            load.require_fsspec(config.output_dir)  # found missing now, not after hours of training
        staging = output or Path(tempfile.mkdtemp(prefix="kaizen-output-"))
        if world.main:
            staging.mkdir(parents=True, exist_ok=True)
        hp = config.hyperparameters
        # A wrong judge fails at once; only rank 0 evaluates, so only it needs one.
        judge_model = evaluate.load_judge(config.judge.uri) if config.judge and world.main else None

        sources = load.load(config)
        log.info("Loaded sources=%s", {s.uri: len(s.rows) for s in sources})
        curated = curation.curate(sources, config.data, config.targets, hp.seed, config.objective)
        manifest = curated.manifest
        log.info("Curated rows=%s excluded=%s", manifest["rows"], manifest["excluded"])

        baseline, tokenizer = modeling.load(config.task, config.baseline.uri)
        base_uri = modeling.base_of(baseline) or config.baseline.uri
        if config.method == "full":
            # A full retrain of an adapter's model starts from the two merged: the model as it was served.
            peft = adapters.peft_model(baseline)
            candidate = copy.deepcopy(peft).merge_and_unload() if peft is not None else copy.deepcopy(baseline)
        else:
            start = modeling.load(config.task, config.baseline.uri, config.method)[0] if config.method == "qlora" \
                else copy.deepcopy(baseline)
            candidate = adapters.attach(start, config.task, config.lora, config.method, hp.seed)
        trainable, total = adapters.parameters(candidate)
        encoder = modeling.Encoder(config.task, candidate, tokenizer, hp.max_length)
        device = modeling.pick_device()
        rows: list[modeling.Encoded] | list[dict[str, Any]] = encoder.encode_all(curated.train)
        sets = {"holdout": curated.holdout, "regression": curated.regression,
                "stress": [evaluate.perturb(r) for r in curated.holdout]}
        for rows_of_set in sets.values():
            encoder.encode_all(rows_of_set)  # a label the baseline lacks fails here, before hours of training
        # Checkpoints of several processes hold full state dicts, another layout than one process's: another tag.
        tag = train.fingerprint(manifest["sha256"], config.task, config.baseline.uri, hp.model_dump_json(),
                                config.method, config.lora.model_dump_json() if config.lora else "",
                                *(["distributed"] if world.distributed else []))
        objective = None
        if config.objective != "sft":  # the baseline, frozen, is the reference the preference losses compare against
            objective = objectives.Preference(config.objective, candidate, baseline, tokenizer, curated.train, hp,
                                              device)
            rows = objective.items
    except Exception as error:  # every rank reaches the agreement, a failed one too, so none waits for it in vain
        if world.distributed and not isinstance(error, TrainerError):
            log.exception("Preparing failed rank=%d", world.rank)
        distributed.agree(world, error)
        raise
    distributed.agree(world, None)

    log.info("Training steps=%d rows=%d device=%s method=%s objective=%s trainable_parameters=%d of %d processes=%d "
             "rank=%d", train.total_steps(len(rows), hp), len(rows), device.name, config.method, config.objective,
             trainable, total, world.size, world.rank)
    mirror = Mirror(config.checkpoint_mirror) if config.checkpoint_mirror and world.main else None
    stats = train.train(candidate, encoder, rows, hp, device, checkpoints, tag, mirror=mirror, objective=objective,
                        world=world, strategy=config.strategy)
    log.info("Trained steps=%d tokens_per_second=%.0f resumed_from=%s", stats.steps, stats.tokens_per_second,
             stats.resumed_from)
    if not world.main:
        return None

    answers: dict[str, dict[str, list[str]]] = {"candidate": {}, "baseline": {}}
    metrics = {"candidate": evaluate.evaluate(candidate, encoder, sets, device, answers["candidate"])}
    candidate.cpu()  # one model on the device at a time
    metrics["baseline"] = evaluate.evaluate(baseline, encoder, sets, device, answers["baseline"])
    if judge_model is not None:
        baseline.cpu()
        wins = evaluate.win_rates(judge_model, curated.holdout, answers["candidate"]["holdout"],
                                  answers["baseline"]["holdout"], hp.seed, device)
        metrics["candidate"] |= wins
        metrics["baseline"] |= {key: 1 - value for key, value in wins.items()}
    gates, verdict = judge(config.gates, metrics["candidate"], metrics["baseline"])
    log.info("Evaluated verdict=%s gates=%s", verdict, [(g.metric, g.cohort, g.passed) for g in gates])

    base = config.output_dir.rstrip("/")
    adapter_of = _write_model(config, candidate, tokenizer, staging, base_uri)
    training = {"steps": stats.steps, "tokens": stats.tokens, "seconds": stats.seconds,
                "tokensPerSecond": stats.tokens_per_second, "resumedFrom": stats.resumed_from,
                "device": device.name, "method": config.method, "trainableParameters": trainable,
                "parameters": total, "optimizerBytes": stats.optimizer_bytes, "baseModel": base_uri,
                "processes": world.size, **({"strategy": config.strategy} if world.distributed else {})}
    report.write_json(staging / "metrics.json", {
        **metrics, "gates": [g.to_wire() for g in gates], "verdict": verdict, "training": training,
    })
    report.write_json(staging / "dataset-manifest.json", manifest)
    (staging / MODEL_CARD).write_text(report.model_card(config, manifest, metrics, gates, verdict, stats,
                                                         device.name, training))
    run_id = error_text = None
    if config.mlflow is not None:
        try:
            run_id = tracking.record(config, status="FINISHED", evaluated=metrics, training=training,
                                     artifacts=staging, verdict=verdict, datasetSha256=manifest["sha256"],
                                     candidateURI=f"{base}/model")
        except tracking.TrackingError as error:  # a record of the retrain, not a gate of it
            log.error("Recording the run in MLflow failed error=%s", error)
            error_text = str(error)[:512]
    if output is None:
        _upload(staging, base)
    return TrainerResult(
        phase="Succeeded", reason="Completed", message=f"{verdict}: {sum(g.passed for g in gates)}/{len(gates)} "
        "gates passed", mlflow_run_id=run_id, mlflow_error=error_text,
        candidate=ModelRef(version=config.candidate_version, uri=f"{base}/model", base_uri=adapter_of),
        metrics=metrics, gates=gates, dataset=report.summary(manifest, f"{base}/dataset-manifest.json"),
        model_card_uri=f"{base}/{MODEL_CARD}", steps=stats.steps,
    )


def _write_model(config: TrainerConfig, candidate, tokenizer, staging: Path, base_uri: str) -> str | None:
    """Write the candidate to ``staging/model``; returns the base URI when what is there is an adapter."""
    model = staging / "model"
    if config.method == "full":
        modeling.save(candidate.cpu(), tokenizer, model)
        return None
    if not (config.lora and config.lora.merge):
        modeling.save(candidate.cpu(), tokenizer, model, base_uri)
        return base_uri
    modeling.save(candidate.cpu(), tokenizer, staging / "adapter", base_uri)
    # Merged into a fresh full-precision base, never into qlora's 4-bit one: the merged model is what gets served.
    adapter, _ = modeling.load(config.task, str(staging / "adapter"))
    merged = adapters.peft_model(adapter)
    assert merged is not None  # an adapter's directory loads as a peft model
    modeling.save(merged.merge_and_unload(), tokenizer, model)
    return None


def _upload(staging: Path, uri: str) -> None:
    fsspec = load.require_fsspec(uri)
    try:
        fsspec.filesystem(uri.split("://")[0]).put(str(staging) + "/", uri + "/", recursive=True)
    except (OSError, ValueError, ImportError) as error:
        raise TrainerError("Error", f"cannot upload the results to {uri}: {error}") from None
