"""The demo's data and baseline model, made offline from the trainer's synthetic support-bot task
(``kaizen_trainer.synthetic``: requests in four scenarios, each answered by an action such as ``auto_refund``).

The refund policy has changed: the replay data and the baseline trained on it predate the change, so the baseline
picks the old action for every refund request, while the holdout is drawn from requests as they are now. Users'
conversations (``users.jsonl``) are refund requests answered with the old action, each with the user's correction
(the new action), which ``kaizen dev demo`` sends to the collector as feedback.

Writes, under ``--root`` (the node's storage, seen by pods as ``/``):

* ``data/support-bot/replay.jsonl`` and ``data/support-bot/holdout.jsonl`` (``spec.retrain.data`` of the demo loop);
* ``models/support-bot/v1/model``, the baseline (``spec.model``), trained here by the trainer itself on the replay
  data, with its metrics and model card beside it;

and ``--users FILE``. Runs in a child process of the demo, with the trainer on its path (``trainer-image/``), so
that the demo itself never imports torch.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

TASK = "sequence-classification"
REPLAY = "data/support-bot/replay.jsonl"
HOLDOUT = "data/support-bot/holdout.jsonl"
BASELINE = "models/support-bot/v1"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def build(root: Path, users: Path, users_count: int) -> None:
    from kaizen_trainer import synthetic
    from kaizen_trainer.cli import main as trainer

    replay = write_jsonl(root / REPLAY, synthetic.dataset(1200, seed=1, task=TASK, prefix="replay"))
    write_jsonl(root / HOLDOUT, synthetic.dataset(200, seed=3, task=TASK, drifted=True, prefix="holdout"))
    write_jsonl(users, synthetic.feedback(users_count, seed=7, task=TASK, prefix="user"))

    work = root / ".build" / "baseline"
    output = root / BASELINE
    config = {
        "job": "kaizen-demo/baseline", "decisionId": "demo-baseline", "task": TASK,
        "baseline": {"version": "v0", "uri": str(synthetic.save_model(TASK, work / "init"))},
        "candidateVersion": "v1",
        "data": {"replay": [{"uri": str(replay)}], "targetedRatio": 0, "maxSliceShare": 1},
        "hyperparameters": {"maxSteps": 150, "learningRate": 2e-3, "batchSize": 32, "maxLength": 32,
                            "checkpointEverySteps": 1000},
        "outputDir": str(output), "checkpointDir": str(work / "checkpoints"),
    }
    (work / "config.json").write_text(json.dumps(config))
    code = trainer(["--config", str(work / "config.json"), "--result", str(work / "result.json")])
    if code != 0:
        raise SystemExit(f"training the baseline failed: {(work / 'result.json').read_text()}")
    shutil.rmtree(work / "checkpoints", ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="the node's storage, seen by pods as /")
    parser.add_argument("--users", type=Path, required=True, help="where to write the users' conversations")
    parser.add_argument("--count", type=int, default=60, help="how many users report a wrong refund answer")
    args = parser.parse_args(argv)
    build(args.root.resolve(), args.users.resolve(), args.count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
