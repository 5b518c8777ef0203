"""trainer-image/gpu_check.sh: skipped, with exit 0, where there is no CUDA device; its LoRA throughput measurement
(bench/retrain/lora_gpu.py) runs the same code on a tiny config-built model anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the check runs for real")
def test_gpu_check_is_skipped_without_a_gpu():
    done = subprocess.run(["bash", str(REPO / "trainer-image" / "gpu_check.sh"), sys.executable],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "gpu_check: skipped: no CUDA device" in done.stdout


def test_lora_throughput_reports_tokens_per_second_and_mfu(tmp_path):
    env = {**os.environ, "KAIZEN_PEAK_TFLOPS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer-image")])}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "retrain" / "lora_gpu.py"), "--size", "tiny",
                           "--out", str(tmp_path / "lora.json")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "lora.json").read_text())
    assert result["steps"] == 4 and result["tokensPerSecond"] > 0
    assert 0 < result["trainableParameters"] < result["parameters"] / 2
    # MFU is the model FLOPs per second over the peak (here 1 TFLOP/s, as KAIZEN_PEAK_TFLOPS says).
    achieved = result["modelFlopsPerToken"] * result["tokensPerSecond"]
    assert result["mfu"] == pytest.approx(achieved / 1e12, abs=1e-4) and result["mfu"] > 0
    assert "tokens/s, MFU" in done.stdout
