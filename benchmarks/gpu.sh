#!/usr/bin/env bash
# Everything that only a GPU can show, in one call (see docs/BENCHMARKS.md, "GPU"):
#   1. correctness of bf16 autocast, flash attention and torch.compile against fp32 (gpu_checks.py)
#   2. pretraining tokens/s and MFU of a GPT-2-124M-sized model through the Trainer (gpu_train.py)
#   3. FSDP memory of a 1B model against `lmforge plan`'s estimate (fsdp_memory.py)
#   4. the learning-efficiency options (Muon, qk_norm, relu2, softcap, zero-init) under bf16 +
#      torch.compile on the 124M model: that they run, and their tokens/s against AdamW (gpu_train.py --options)
# Runs from the repository root with the machine's own python3 (PyTorch with CUDA); lmforge is
# taken from src/ without installing. Never changes the GPU's settings.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/lmforge-gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
status=0
echo "== 1. bf16 / flash attention / compile correctness"
$PY benchmarks/gpu_checks.py 2>&1 | grep -v UserWarning | tee "$OUT/gpu_checks.txt" || status=1
echo "== 2. pretraining throughput and MFU (124M)"
$PY benchmarks/gpu_train.py "$@" 2>&1 | grep -vE "UserWarning|step/s" | tee "$OUT/gpu_train.txt" || status=1
if [ -f benchmarks/fsdp_memory.py ]; then
  echo "== 3. FSDP memory vs plan (1B)"
  $PY benchmarks/fsdp_memory.py 2>&1 | grep -v UserWarning | tee "$OUT/fsdp_memory.txt" || status=1
fi
echo "== 4. learning-efficiency options under bf16 + compile (124M)"
$PY benchmarks/gpu_train.py --options --steps 30 2>&1 | grep -vE "UserWarning|step/s" | tee "$OUT/gpu_options.txt" || status=1
exit $status
