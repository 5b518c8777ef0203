"""The demo's data and baseline model, made offline from the support domain (:mod:`kaizen.dev.support_domain`) and
trained by the trainer itself (``kaizen_trainer.cli``) on a tiny GPT-2 built from a config.

The domain is as it was *before the drift* in everything the baseline learnt, and *as now* (after the policy
change, and the new intent with ``--new-intent``) in the holdout the team built to gate candidates. The baseline
learnt from the full history of every cohort; the team's own files (replay and holdout) hold only the cohorts of
:data:`~kaizen.dev.support_domain.TEAM_COHORTS` (the module docstring of ``support_domain`` says why scenario (b)
needs that). Writes, under ``--root`` (the node's storage, seen by pods as ``/``):

* ``data/support-bot/replay.jsonl`` (before the drift) and ``data/support-bot/holdout.jsonl`` (as now):
  ``spec.retrain.data`` of the demo loop;
* ``data/support-bot/history.jsonl``: what the baseline was trained on;
* ``models/support-bot/v1/model``: the baseline (``spec.model``), with its metrics and model card beside it.

The default task is ``causal-lm`` (answers are sentences); ``--task sequence-classification`` makes the same files
for a classifier of action labels. Runs in a child process of the demo, with the trainer on its path
(``trainer-image/``), so that the demo itself never imports torch; :func:`train` is also how the tests train
candidates the way a RetrainJob would.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kaizen.api.retrainjob import Task
from kaizen.dev import support_domain as sd

REPLAY = "data/support-bot/replay.jsonl"
HOLDOUT = "data/support-bot/holdout.jsonl"
HISTORY = "data/support-bot/history.jsonl"
BASELINE = "models/support-bot/v1"
#: Domain times of the files: before every drift event, and after all of them (events are at 0 in the domain
#: demo_data builds; only before/after matters for the rows).
BEFORE, NOW = -1.0, 0.0
#: Model size: 2 layers of width 64 (about 100k parameters): learns the domain in seconds on one core.
SIZE = {"layers": 2, "width": 64, "heads": 2, "positions": 64}
#: Fine-tuning settings: the baseline from scratch, and a candidate from the baseline (what the loop's
#: ``spec.retrain.hyperparameters`` should say).
BASELINE_HYPERPARAMETERS = {"maxSteps": 300, "learningRate": 3e-3, "batchSize": 32, "maxLength": 32,
                            "checkpointEverySteps": 10_000}
CANDIDATE_HYPERPARAMETERS = {"maxSteps": 150, "learningRate": 2e-3, "batchSize": 32, "maxLength": 32,
                             "checkpointEverySteps": 10_000}
#: The share of targeted rows in a candidate's mix: with a few dozen corrections, 0.3 keeps enough replay (about
#: twice as many rows) that the candidate forgets nothing else in 150 steps.
TARGETED_RATIO = 0.3


def domain(policy_cohorts: Sequence[str] | None = None, new_intent: bool = False) -> sd.Domain:
    """The domain the files are made of: the policy change (for ``policy_cohorts`` only, when given) and, with
    ``new_intent``, the new intent, both at time 0 (see :data:`BEFORE` and :data:`NOW`)."""
    return sd.Domain(sd.drift(policy_at=0.0, policy_cohorts=policy_cohorts,
                              new_intent_at=0.0 if new_intent else None))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_data(root: Path, dom: sd.Domain, task: str = "causal-lm") -> dict[str, Path]:
    """The three data files under ``root``; returns their paths by name (history, replay, holdout)."""
    return {
        "history": write_jsonl(root / HISTORY, dom.rows(1500, seed=1, at=BEFORE, task=task, prefix="history")),
        "replay": write_jsonl(root / REPLAY, dom.rows(1000, seed=2, at=BEFORE, cohorts=sd.TEAM_COHORTS, task=task,
                                                       prefix="replay")),
        "holdout": write_jsonl(root / HOLDOUT, dom.rows(220, seed=3, at=NOW, cohorts=sd.TEAM_COHORTS, task=task,
                                                         prefix="holdout")),
    }


def initial_model(directory: Path, task: Task = "causal-lm") -> Path:
    """A randomly initialised tiny GPT-2 over every word of the domain, whatever the drift (and every action label,
    for classification)."""
    from kaizen_trainer import synthetic

    return synthetic.save_model(task, directory, words=sd.vocabulary(), label_names=sd.labels(), **SIZE)


def train(work: Path, output: Path, *, task: str, baseline: tuple[str, str], candidate_version: str,
          replay: Sequence[Path], hyperparameters: dict[str, Any], holdout: Path | None = None,
          feedback: Path | None = None, targets: dict[str, list[str]] | None = None, targeted_ratio: float = 0,
          gates: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One run of the trainer's command line (as a RetrainJob's pod runs it), in this process; returns its result
    (the termination message, parsed) and raises SystemExit with the trainer's message when it fails."""
    from kaizen_trainer.cli import main as trainer

    work.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"replay": [{"uri": str(p)} for p in replay], "targetedRatio": targeted_ratio,
                            "maxSliceShare": 1}
    if holdout is not None:
        data["holdout"] = {"uri": str(holdout)}
    config = {
        "job": f"kaizen-demo/{candidate_version}", "decisionId": f"demo-{candidate_version}", "task": task,
        "baseline": {"version": baseline[0], "uri": baseline[1]}, "candidateVersion": candidate_version,
        "data": data, "hyperparameters": hyperparameters, "gates": gates or [],
        "outputDir": str(output), "checkpointDir": str(work / "checkpoints"),
    }
    if feedback is not None:
        config["feedback"] = {"url": str(feedback)}
    if targets:
        config["targets"] = targets
    (work / "config.json").write_text(json.dumps(config))
    code = trainer(["--config", str(work / "config.json"), "--result", str(work / "result.json")])
    result = json.loads((work / "result.json").read_text())
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    if code != 0:
        raise SystemExit(f"training {candidate_version} failed: {result.get('message')}")
    return result


def build(root: Path, task: Task = "causal-lm", policy_cohorts: Sequence[str] | None = None,
          new_intent: bool = False) -> dict[str, Any]:
    """The demo's files and its baseline v1 under ``root``; returns the baseline's trainer result."""
    dom = domain(policy_cohorts, new_intent)
    files = write_data(root, dom, task)
    work = root / ".build" / "baseline"
    return train(work, root / BASELINE, task=task, baseline=("v0", str(initial_model(work / "init", task))),
                 candidate_version="v1", replay=[files["history"]], hyperparameters=BASELINE_HYPERPARAMETERS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="the node's storage, seen by pods as /")
    parser.add_argument("--task", choices=("causal-lm", "sequence-classification"), default="causal-lm",
                        help="what the model does: answer in sentences (default), or pick an action label")
    parser.add_argument("--policy-cohorts", default=None,
                        help="comma-separated cohorts the policy change applies to (default: everyone), e.g. "
                        "free,pro for scenario (b)")
    parser.add_argument("--new-intent", action="store_true", help="the holdout holds the new intent (plan.pause)")
    args = parser.parse_args(argv)
    cohorts = [c for c in args.policy_cohorts.split(",") if c] if args.policy_cohorts else None
    # Tiny models train fastest on one thread; the demo also sets OMP_NUM_THREADS=1 for this process.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    try:
        result = build(args.root.resolve(), args.task, cohorts, args.new_intent)
    except ValueError as error:
        raise SystemExit(f"demo data: {error}") from None
    print(f"Trained baseline v1: {result['message']}; holdout "
          f"{ {k: round(v, 3) for k, v in result['metrics']['candidate'].items() if k.count('.') == 1} }",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
