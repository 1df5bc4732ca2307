"""Outputs pinned: a fixed image through the tiny-random SAM (smoke preset, 4x4 prompts) must
give the labels.png, masks.json, embeddings.npy and summary.json recorded in tests/data/pinned
(from main at 6b681b9, before the concept-per-place refactor; the summary later gained the
additive `features` record and config keys, and the `names.*` config keys of class naming). Refactors must not move them.

Tolerances only where a different CPU may round differently (oneDNN kernels differ by ISA):
embeddings to 1e-4, each mask's IoU with its recorded self >= 0.99. Counts, ids and every
summary value but times and versions are exact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PINNED = REPO / "tests" / "data" / "pinned"
ARGV = ["--model", "tiny-random", "--preset", "smoke", "--points-per-side", "4", "--device", "cpu", "--seed", "0",
        "--no-track", "--no-cache", "--orchestrator", "local", "-q"]
# What may differ run to run: when and with which versions it ran, and where.
VOLATILE = {"timings", "seconds", "samseg_version", "versions", "created_at", "uri", "out_dir", "cache", "host"}


def pinned_image(path: Path) -> Path:
    """A 72x96 picture of four flat regions and a gradient: fixed, no randomness."""
    yy, xx = np.mgrid[0:72, 0:96]
    rgb = np.zeros((72, 96, 3), np.uint8)
    rgb[..., 0] = (xx * 255 // 95).astype(np.uint8)
    rgb[:36, :48] = (200, 30, 30)
    rgb[36:, 48:] = (30, 30, 200)
    rgb[(yy - 20) ** 2 + (xx - 70) ** 2 < 150] = (30, 200, 30)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def segment(out: Path, image: Path) -> Path:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    subprocess.run([sys.executable, "-m", "samseg.apps.cli", "segment", str(image), "--out", str(out), *ARGV],
                   cwd=REPO, env=env, check=True, capture_output=True, text=True, timeout=600)
    return out / image.stem


def stable(value):
    """summary.json without the volatile keys, at any depth."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def test_tiny_random_outputs_match_the_pinned_ones(tmp_path: Path) -> None:
    from samseg.edges.image_dir import read_label_png, read_image_dir

    got = segment(tmp_path / "out", pinned_image(tmp_path / "in" / "pinned.png"))
    assert stable(json.loads((got / "summary.json").read_text())) == json.loads((PINNED / "summary.json").read_text())
    np.testing.assert_array_equal(read_label_png(got / "labels.png"), read_label_png(PINNED / "labels.png"))
    ours, ours_emb, ours_labels = read_image_dir(got)
    ref, ref_emb, ref_labels = read_image_dir(PINNED)
    assert len(ours) == len(ref) > 0
    np.testing.assert_array_equal(ours_labels, ref_labels)
    np.testing.assert_allclose(ours_emb, ref_emb, atol=1e-4, rtol=0)
    a, b = ours.decode(list(range(len(ours)))), ref.decode(list(range(len(ref))))
    iou = (a & b).sum(axis=(1, 2)) / np.maximum((a | b).sum(axis=(1, 2)), 1)
    assert iou.min() >= 0.99, iou


if __name__ == "__main__":  # record: python tests/test_pinned_outputs.py (on the commit to pin)
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp())
    d = segment(tmp / "out", pinned_image(tmp / "in" / "pinned.png"))
    PINNED.mkdir(parents=True, exist_ok=True)
    for name in ("labels.png", "masks.json", "embeddings.npy"):
        shutil.copyfile(d / name, PINNED / name)
    (PINNED / "summary.json").write_text(json.dumps(stable(json.loads((d / "summary.json").read_text())), indent=1,
                                                    sort_keys=True) + "\n")
    print(sorted(p.name for p in PINNED.iterdir()))
