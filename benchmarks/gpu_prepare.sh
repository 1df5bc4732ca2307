#!/usr/bin/env bash
# Run HERE (the development machine) before a device run: the lent GPU machine has torch,
# numpy, scipy and pillow but no network, no segment_anything and no pycocotools, and the
# ../shared beside the checkout does not travel. This saves the missing wheels to .whl/ and
# the four shared photos to .gpu_images/ (both git-ignored through .git/info/exclude), so
# the device call is one command:
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl", ".gpu_images"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
for d in /.whl/ /.gpu_images/; do grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done
rm -rf .whl && mkdir -p .whl .gpu_images
# cp312: the device image's python3 is 3.12. Pinned to what the dev venv runs.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl pycocotools==2.0.11 segment-anything==1.0 defusedxml==0.7.1
cp ../shared/images/{building,bears,corgi,alphabet}.jpg .gpu_images/
ls -la .whl .gpu_images
