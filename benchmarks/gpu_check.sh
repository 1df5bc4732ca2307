#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) in one command: vit_b + vit_h, fp32 + bf16, the
# four photos at 32 points/side. On the lent device machine (no network): prepare with
# benchmarks/gpu_prepare.sh here and carry .whl and .gpu_images; elsewhere it installs samseg.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:."
else
  python3 -m pip install -q -e . 2>&1 | tail -2
  export PYTHONPATH=.
fi
images=../shared/images
[ -d .gpu_images ] && images=.gpu_images
mkdir -p benchmarks/results
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_check --images-dir "$images" "$@"
if [ -n "${OUT:-}" ]; then cp benchmarks/results/gpu_check.json "$OUT/"; fi
