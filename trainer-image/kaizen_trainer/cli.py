"""Command line of the trainer: read and validate the config, run, and report the result for the operator.

Under torchrun (more than one process, :mod:`kaizen_trainer.distributed`) it joins the process group first; rank 0
alone writes the result, and every rank exits with the same code (0, or the failure's, permanent or retryable)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from kaizen.api.trainer import TrainerConfig, TrainerResult
from kaizen_trainer import distributed, pipeline, tracking
from kaizen_trainer.distributed import SINGLE
from kaizen_trainer.errors import EXIT_PERMANENT, EXIT_RETRY, TrainerError, invalid_config
from kaizen_trainer.report import compact

DEFAULT_CONFIG = "/etc/kaizen/trainer/config.json"
DEFAULT_RESULT = "/dev/termination-log"


def load_config(path: Path) -> TrainerConfig:
    """Parse the config; every problem is named by its field, so a bad RetrainJob is easy to fix."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"config file {path} does not exist") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"config file {path} is not valid JSON: {error}") from None
    try:
        return TrainerConfig.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise ValueError(f"invalid trainer config: {problems}") from None


def report(result: TrainerResult, path: Path) -> None:
    path.write_text(result.to_termination_message())


def _record_failure(config: TrainerConfig | None, failed: TrainerResult) -> str | None:
    """A failed retrain is an MLflow run too (FAILED, with the reason), when the config that asks for it was read."""
    if config is None or config.mlflow is None:
        return None
    try:
        return tracking.record(config, status="FAILED", failureReason=failed.reason, failureMessage=failed.message)
    except tracking.TrackingError as error:
        logging.error("Recording the failed run in MLflow failed error=%s", error)
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kaizen-trainer", description=__doc__)
    parser.add_argument("--config", type=Path, default=Path(DEFAULT_CONFIG), help="trainer config (JSON)")
    parser.add_argument("--result", type=Path, default=Path(DEFAULT_RESULT),
                        help="where to write the result for the operator (the pod's termination message)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    world = SINGLE
    config = None
    try:
        world = distributed.from_environment()
        distributed.start(world)
        try:
            config = load_config(args.config)
        except ValueError as error:
            distributed.agree(world, invalid_config(str(error)))  # the other ranks learn of it before they train
            raise
        result = pipeline.run(config, world)
    except TrainerError as error:
        failed = TrainerResult(phase="Failed", reason=error.reason, message=str(error)[:1024])
        if world.main:  # rank 0 reports for all: every rank raises the same failure (distributed.agree)
            failed.mlflow_run_id = _record_failure(config, failed)
            report(failed, args.result)
        print(f"kaizen-trainer: {error}", file=sys.stderr)
        return EXIT_PERMANENT if failed.permanent else EXIT_RETRY
    except Exception as error:  # an unforeseen crash (CUDA out of memory, a bug): retryable, with its traceback
        logging.exception("Training failed")
        if world.main:
            failed = TrainerResult(phase="Failed", reason="Error", message=f"{type(error).__name__}: {error}"[:1024])
            failed.mlflow_run_id = _record_failure(config, failed)
            report(failed, args.result)
        return EXIT_RETRY
    finally:
        distributed.stop(world)
    if result is None:  # a rank other than 0: it trained its share, rank 0 evaluates and reports
        return 0
    report(compact(result, config), args.result)
    print(f"kaizen-trainer: {result.message}", file=sys.stderr)
    return 0
