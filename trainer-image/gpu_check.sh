#!/usr/bin/env bash
# GPU check of the trainer, for a machine with an NVIDIA GPU (run from the repository root):
#
#   trainer-image/gpu_check.sh [PYTHON]
#
# 1. a real trainer run (python -m kaizen_trainer) of a tiny model on cuda: it must pick cuda+bf16, train, evaluate
#    candidate and baseline, and report Succeeded;
#    With two GPUs or more (nvidia-smi -L), the same run on two of them under torchrun (DDP over NCCL, through
#    python -m kaizen_trainer.launch, as a RetrainJob with resources.gpus 2 runs it): it must report Succeeded from 2
#    processes; with fewer it says it skipped that step;
# 2. LoRA on a ~1B-parameter model built from a config (TinyLlama's shape) in bf16, through the trainer's loop
#    (bench/retrain/lora_gpu.py): tokens/s and model FLOPs utilisation, written to /tmp/kaizen-lora-gpu.json;
# 3. the retrain benchmark (bench/retrain/run.py), which on a GPU measures a ~100M-parameter GPT-2 in bf16: trainer
#    tokens/s against a bare torch loop, and GPU utilisation, and full fine-tuning against LoRA. Its results go to
#    /tmp, not over the committed CPU figures; copy them into bench/results/ if you want them kept.
#
# Without a CUDA device it says so and exits 0: everything else in the project runs without a GPU.
set -euo pipefail
PY=${1:-.venv/bin/python}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$ROOT/operator:$ROOT/trainer-image${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  echo "gpu_check: skipped: no CUDA device here (torch.cuda.is_available() is false)"
  exit 0
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

"$PY" - "$WORK" <<'PYTHON'
import json, sys
from pathlib import Path
import torch
from kaizen_trainer import modeling, synthetic

work = Path(sys.argv[1])
device = modeling.pick_device()
print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}, trainer device: {device.name}")
if device.device.type != "cuda":
    sys.exit("no CUDA device: this check needs a GPU")
print(f"GPU: {torch.cuda.get_device_name(0)}")
task = "causal-lm"
synthetic.save_model(task, work / "init", layers=4, width=256, heads=4)
rows = synthetic.dataset(4000, seed=1, task=task)
(work / "replay.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
config = {
    "job": "gpu-check/tiny", "decisionId": "gpu-check", "task": task,
    "baseline": {"version": "v0", "uri": str(work / "init")}, "candidateVersion": "v1",
    "data": {"replay": [{"uri": str(work / "replay.jsonl")}], "targetedRatio": 0, "maxSliceShare": 1},
    "hyperparameters": {"maxSteps": 300, "learningRate": 1e-3, "batchSize": 64, "maxLength": 64,
                        "checkpointEverySteps": 100},
    "gates": [{"metric": "exactMatch", "min": 0.9}],
    "outputDir": str(work / "out"), "checkpointDir": str(work / "ckpt"),
}
(work / "config.json").write_text(json.dumps(config))
PYTHON

"$PY" -m kaizen_trainer --config "$WORK/config.json" --result "$WORK/result.json"
"$PY" - "$WORK" <<'PYTHON'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
result = json.loads((work / "result.json").read_text())
training = json.loads((work / "out" / "metrics.json").read_text())["training"]
print(f"trainer run: {result['phase']} ({result['message']}), device {training['device']}, "
      f"{training['steps']} steps, {training['tokensPerSecond']:.0f} tokens/s, "
      f"holdout exactMatch {result['metrics']['candidate']['holdout.exactMatch']:.3f}")
assert result["phase"] == "Succeeded" and training["device"].startswith("cuda"), result
PYTHON

GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
if [ "${GPUS:-0}" -ge 2 ]; then
  "$PY" - "$WORK" <<'PYTHON'
import json, sys
work = sys.argv[1]
config = json.load(open(f"{work}/config.json"))
config.update(outputDir=f"{work}/out-ddp", checkpointDir=f"{work}/ckpt-ddp")
json.dump(config, open(f"{work}/config-ddp.json", "w"))
PYTHON
  "$PY" -m kaizen_trainer.launch --standalone --nproc-per-node=2 -m kaizen_trainer --config "$WORK/config-ddp.json" \
    --result "$WORK/result-ddp.json"
  "$PY" - "$WORK" <<'PYTHON'
import json, sys
work = sys.argv[1]
result = json.load(open(f"{work}/result-ddp.json"))
training = json.load(open(f"{work}/out-ddp/metrics.json"))["training"]
print(f"2-GPU DDP run: {result['phase']} ({result['message']}), {training['processes']} processes on "
      f"{training['device']}, {training['tokensPerSecond']:.0f} tokens/s")
assert result["phase"] == "Succeeded" and training["processes"] == 2 and training["device"].startswith("cuda"), result
PYTHON
else
  echo "gpu_check: 2-GPU DDP step skipped: nvidia-smi -L lists ${GPUS:-0} GPU(s), it needs 2"
fi

"$PY" "$ROOT/bench/retrain/lora_gpu.py" --out /tmp/kaizen-lora-gpu.json
"$PY" "$ROOT/bench/retrain/run.py" --out /tmp/kaizen-retrain-gpu.json
