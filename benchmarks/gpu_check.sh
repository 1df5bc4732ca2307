#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) on a bare CUDA machine: install, then one run.
# Device checks are short: vit_b + vit_h, fp32 + bf16, 4 photos at 32 points/side.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e . 2>&1 | tail -2
mkdir -p benchmarks/results
PYTHONPATH=. python3 -m benchmarks.gpu_check
