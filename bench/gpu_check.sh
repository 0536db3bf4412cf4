#!/usr/bin/env bash
# The GPU acceptance run for the operators, in one command that fits a device lease (about
# 10 minutes on an H100/H200): the kernel tests on CUDA (Triton against torchvision's CUDA ops,
# float32/float16/bfloat16), then bench/kernels.py on CUDA. It uses the machine's own python3
# (its torch, Triton and torchvision); kernels need neither Lark nor the rest of denet.
#
#   bash bench/gpu_check.sh [OUT_DIR]      # logs go to OUT_DIR (default: $OUT, else ./gpu-check)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-check}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py="${PYTHON:-python3}"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$py" -c "import torch, triton, torchvision; print('torch', torch.__version__, 'triton', triton.__version__, 'torchvision', torchvision.__version__)"
} 2>&1 | tee "$out/machine.txt"
# -m cuda: the CUDA cases of every kernel test (the CPU cases are CI's).
timeout 420 "$py" -m pytest -q -p no:cacheprovider tests/kernels -m cuda -x 2>&1 | tee "$out/tests.txt"
tests=${PIPESTATUS[0]}
timeout 240 "$py" bench/kernels.py --device cuda --rounds 5 2>&1 | tee "$out/bench.txt"
bench=${PIPESTATUS[0]}
echo "tests exit $tests, bench exit $bench" | tee -a "$out/machine.txt"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
