#!/usr/bin/env bash
# Set up .venv if needed, then segment ../shared/images (else their 512-px copies in
# tests/data/photos, or the directory given) for real:
# with SAM vit_b (375 MB, sha256-pinned) when its checkpoint is cached or can be downloaded,
# else — offline, as on the development machines and CI — with tiny-random, a random
# miniature SAM whose masks are meaningless (it shows the file formats only).
# Embeddings from the dinov2-s backbone when its weights can be had, else SAM's own features.
# SAMSEG_DEMO_MODEL=tiny-random|vit_b|vit_l|vit_h forces a choice (samseg/apps/demo.py);
# SAMSEG_DEMO_OUT names the output dir (default out/demo). Installs samseg's runtime only:
# no test extras, no system packages, no root (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
DEFAULT_IMAGES=../shared/images
[[ -d "$DEFAULT_IMAGES" ]] || DEFAULT_IMAGES=tests/data/photos
IMAGES="${1:-$DEFAULT_IMAGES}"
if [[ ! -d "$IMAGES" ]]; then
  echo "demo: $IMAGES not found; pass an image directory: scripts/demo.sh DIR" >&2
  exit 2
fi
MODEL="$(.venv/bin/python -m samseg.apps.demo choose)"   # one line on stderr says why
if [[ "$MODEL" == "tiny-random" ]]; then
  PRESET=smoke   # a random SAM's masks fail SAM's filters; smoke opens them
else
  PRESET=default # SAM's own AMG defaults, clustered with eps from the k-distance knee
fi
FEATURES="$(.venv/bin/python -m samseg.apps.demo features "$MODEL")"
NAMES="$(.venv/bin/python -m samseg.apps.demo names "$MODEL")"   # coco-stuff when CLIP's weights can be had
OUT="${SAMSEG_DEMO_OUT:-out/demo}"
.venv/bin/samseg segment "$IMAGES" --model "$MODEL" --preset "$PRESET" --features "$FEATURES" --names "$NAMES" --out "$OUT"
echo "demo: $MODEL masks, $FEATURES embeddings: results in $OUT/<image>/ (overlay.png, labels.png, classes/, masks.json)"
[[ "$MODEL" == "tiny-random" ]] && echo "demo: tiny-random: meaningless masks, formats only"
STORE="./mlflow.db"
[[ -n "${MLFLOW_TRACKING_URI:-}" ]] && STORE='$MLFLOW_TRACKING_URI'   # named, not printed: it may hold a password
echo "demo: runs are in MLflow ($STORE); browse them with: .venv/bin/samseg ui"
