"""The trainer's entry point: a bad config is reported to the operator as a permanent InvalidConfig failure that
names the field, through the file the pod's termination message is read from."""

from __future__ import annotations

import json

from kaizen.api.trainer import TrainerResult
from kaizen_trainer.cli import main


def run(tmp_path, config):
    path = tmp_path / "config.json"
    if config is not None:
        path.write_text(config if isinstance(config, str) else json.dumps(config))
    result_path = tmp_path / "termination-log"
    code = main(["--config", str(path), "--result", str(result_path)])
    return code, TrainerResult.model_validate_json(result_path.read_text())


def test_missing_config_is_a_permanent_failure(tmp_path):
    code, result = run(tmp_path, None)
    assert code == 2
    assert result.phase == "Failed" and result.permanent
    assert "config.json does not exist" in result.message


def test_malformed_json_is_reported(tmp_path):
    code, result = run(tmp_path, "{not json")
    assert code == 2 and result.reason == "InvalidConfig"
    assert "is not valid JSON" in result.message


def test_invalid_fields_are_named(tmp_path):
    code, result = run(tmp_path, {"job": "ns/rj", "decisionId": "d1", "task": "translation",
                                  "baseline": {"version": "v1", "uri": "/m"}, "candidateVersion": "v2",
                                  "data": {"targetedRatio": 2}, "outputDir": "/out", "checkpointDir": "/ckpt"})
    assert code == 2 and result.reason == "InvalidConfig"
    assert "task: Input should be 'causal-lm' or 'sequence-classification'" in result.message
    assert "data.targetedRatio: Input should be less than or equal to 1" in result.message
