"""Bad configs and bad data fail before any training, with a permanent result (no retry) that says what was wrong
and what to do."""

from __future__ import annotations

import hashlib
import importlib.util

import pytest

from kaizen_trainer import synthetic
from kaizen_trainer.cli import EXIT_PERMANENT
from tests.trainer.conftest import config, run_trainer, write_jsonl

TASK = "sequence-classification"


@pytest.fixture
def data(tmp_path):
    return {
        "feedback": write_jsonl(tmp_path / "feedback.jsonl", synthetic.feedback(80, seed=13, task=TASK)),
        "replay": write_jsonl(tmp_path / "replay.jsonl", synthetic.dataset(200, seed=7, task=TASK, prefix="rp")),
    }


def fails(tmp_path, cfg, reason, *fragments):
    code, result = run_trainer(tmp_path, cfg)
    assert code == EXIT_PERMANENT and result.phase == "Failed" and result.permanent
    assert result.reason == reason, result.message
    for fragment in fragments:
        assert fragment in result.message, result.message
    assert not (tmp_path / "ckpt").exists(), "training started before the problem was found"


def test_baseline_that_is_not_a_model(tmp_path, data):
    fails(tmp_path, config(tmp_path, TASK, tmp_path / "nowhere", feedback={"url": str(data["feedback"])},
                           data={"replay": [{"uri": str(data["replay"])}]}),
          "InvalidConfig", "is not a saved transformers model (no config.json there)")


def test_unreadable_source(tmp_path, baselines, data):
    fails(tmp_path, config(tmp_path, TASK, baselines[TASK], data={"replay": [{"uri": str(tmp_path / "missing")}]}),
          "InvalidData", "cannot read", "missing")


def test_bad_rows_are_named_by_line(tmp_path, baselines, data):
    lines = data["replay"].read_text().splitlines()
    lines[2] = '{"input": "no id"}'
    lines[4] = "not json"
    data["replay"].write_text("\n".join(lines))
    fails(tmp_path, config(tmp_path, TASK, baselines[TASK], feedback={"url": str(data["feedback"])},
                           data={"replay": [{"uri": str(data["replay"])}]}),
          "InvalidData", "has 2 bad row(s): line 3: id: Field required | line 5: not JSON")


def test_changed_data_is_refused(tmp_path, baselines, data):
    stale = hashlib.sha256(b"what the file held when the job was made").hexdigest()
    fails(tmp_path, config(tmp_path, TASK, baselines[TASK], feedback={"url": str(data["feedback"])},
                           data={"replay": [{"uri": str(data["replay"]), "sha256": stale}]}),
          "InvalidData", f"but the job expects {stale}")


def test_empty_targeted_slice(tmp_path, baselines, data):
    fails(tmp_path, config(tmp_path, TASK, baselines[TASK], feedback={"url": str(data["feedback"])},
                           targets={"scenarios": ["shipping"]}, data={"replay": [{"uri": str(data["replay"])}]}),
          "InvalidData", "the targeted slice is empty", "set data.targetedRatio to 0")


def test_targets_that_supersede_all_replay(tmp_path, data):
    # Curation fails before the baseline is even loaded: an untrained model is enough here.
    refund_only = write_jsonl(tmp_path / "refund.jsonl", synthetic.dataset(100, seed=7, task=TASK, prefix="rp",
                                                                           scenarios=[synthetic.DRIFTED]))
    fails(tmp_path, config(tmp_path, TASK, synthetic.save_model(TASK, tmp_path / "init"),
                           feedback={"url": str(data["feedback"])},
                           targets={"scenarios": ["refund"], "cohorts": list(synthetic.COHORTS)},
                           data={"replay": [{"uri": str(refund_only)}]}),
          "InvalidData", "no replay rows are left: all 100 replay row(s) are in targeted scenarios with corrections "
          "(refund) within the targeted cohorts (free, pro)", "set data.targetedRatio to 1")


def test_too_few_rows(tmp_path, baselines, data):
    fails(tmp_path, config(tmp_path, TASK, baselines[TASK], feedback={"url": str(data["feedback"])},
                           data={"replay": [{"uri": str(data["replay"])}], "minRows": 1000}),
          "InvalidData", "too few training rows", "minRows is 1000")


def test_holdout_leakage(tmp_path, baselines, data):
    holdout = write_jsonl(tmp_path / "holdout.jsonl", synthetic.dataset(20, seed=7, task=TASK, prefix="rp"))
    fails(tmp_path, config(tmp_path, TASK, baselines[TASK], feedback={"url": str(data["feedback"])},
                           data={"replay": [{"uri": str(data["replay"])}], "holdout": {"uri": str(holdout)}}),
          "InvalidData", "holdout leakage: ", "example id(s) of the holdout file also appear in training data")


def test_label_the_baseline_does_not_know(tmp_path, baselines, data):
    rows = synthetic.feedback(80, seed=13, task=TASK)
    rows[0] |= {"input": "refund return teleport please", "target": "teleport"}
    write_jsonl(data["feedback"], rows)
    fails(tmp_path, config(tmp_path, TASK, baselines[TASK], feedback={"url": str(data["feedback"])},
                           data={"replay": [{"uri": str(data["replay"])}]}),
          "InvalidData", "label 'teleport' is not one of the baseline's labels")


def test_s3_without_fsspec_says_what_is_missing(tmp_path, baselines):
    if importlib.util.find_spec("fsspec") and importlib.util.find_spec("s3fs"):
        pytest.skip("fsspec and s3fs are installed here, so s3:// would be tried for real")
    fails(tmp_path, config(tmp_path, TASK, baselines[TASK], data={"replay": [{"uri": "s3://bucket/r.jsonl"}],
                                                                  "targetedRatio": 0}),
          "InvalidConfig", "s3:// needs fsspec and s3fs")
