#!/usr/bin/env bash
# Set up .venv if needed, then segment ../shared/images with the tiny-random model.
# tiny-random is a random miniature SAM: its output shows the file formats only and is NOT
# a segmentation. A real run needs a checkpoint (see README, "Checkpoints").
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
IMAGES="${1:-../shared/images}"
if [[ ! -d "$IMAGES" ]]; then
  echo "demo: $IMAGES not found; pass an image directory: scripts/demo.sh DIR" >&2
  exit 2
fi
.venv/bin/samseg segment "$IMAGES" --model tiny-random --preset smoke --out out/demo
echo "demo: results in out/demo/<image>/ (tiny-random: meaningless masks, formats only)"
echo "demo: runs are in MLflow (./mlflow.db); browse them with: .venv/bin/samseg ui"
