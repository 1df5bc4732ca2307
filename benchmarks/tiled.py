"""Tiled segmentation of large images: wall time and peak RSS of what users run.

  command    `samseg segment BIG.png --tile SIZE --tile-overlap PX` as a subprocess (tiny-random
             SAM: meaningless masks, real tiling, cache and export), optionally side by side with
             the same command untiled (--compare). Peak RSS is the child's ru_maxrss.
  synthetic  the production engine (run_image + publish) on a large image whose objects are
             encoded in its pixels, with the stand-in encoder/AMG of tests/test_tiling.py: smooth
             masks across every seam, so merge, compose and export run at their real scale.

Targets (issue #14): a 100-MP image at 32 points/side per tile under 4 GB peak RSS.

  PYTHONPATH=. python benchmarks/tiled.py command --side 10000 --points 32
  PYTHONPATH=. python benchmarks/tiled.py synthetic --side 10000 --objects 2000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TARGET_RSS_GB = 4.0


def big_png(path: Path, side: int) -> None:
    """A smooth side×side RGB PNG (gradients + low-frequency waves), written band by band."""
    from PIL import Image

    rgb = np.empty((side, side, 3), np.uint8)
    xx = np.arange(side, dtype=np.float32)[None, :]
    for y in range(0, side, 1024):
        yy = np.arange(y, min(side, y + 1024), dtype=np.float32)[:, None]
        rgb[y:y + len(yy), :, 0] = (127 + 120 * np.sin(xx / 97.0) * np.cos(yy / 131.0)).astype(np.uint8)
        rgb[y:y + len(yy), :, 1] = (xx * 255 / side).astype(np.uint8) + np.zeros_like(yy, dtype=np.uint8)
        rgb[y:y + len(yy), :, 2] = (yy * 255 / side).astype(np.uint8) + np.zeros_like(xx, dtype=np.uint8)
    Image.fromarray(rgb).save(path, compress_level=1)


def run_command(image: Path, out: Path, cache: Path, points: int, tile: list[str]) -> dict:
    argv = [sys.executable, "-m", "samseg.apps.cli", "segment", str(image), "--out", str(out), "--cache", str(cache),
            "--model", "tiny-random", "--device", "cpu", "--points-per-side", str(points), "--no-track", "-q", *tile]
    env = dict(os.environ, SAMSEG_MAX_PIXELS=str(200_000_000))
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"samseg failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9  # max over children so far
    summary = json.loads((out / image.stem / "summary.json").read_text())
    return {"argv_tail": tile, "wall_s": round(wall, 1), "peak_rss_gb_max_so_far": round(rss_gb, 2),
            "n_masks": summary["n_masks"], "tiling": summary.get("tiling"), "seconds": summary["seconds"]}


def command(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as d:
        image = Path(d) / f"big{args.side}.png"
        big_png(image, args.side)
        tile = ["--tile", str(args.tile), "--tile-overlap", str(args.overlap)]
        rows = [run_command(image, Path(d) / "tiled", Path(d) / "cache", args.points, tile)]
        rows.append(run_command(image, Path(d) / "tiled", Path(d) / "cache", args.points, [*tile, "--eps", "0.1"]))
        if args.compare:  # untiled last: ru_maxrss is a maximum over the children so far
            rows.append(run_command(image, Path(d) / "whole", Path(d) / "cache", args.points, []))
    return {"bench": "tiled-command", "side": args.side, "megapixels": args.side ** 2 / 1e6, "points_per_side": args.points,
            "runs": rows, "target_rss_gb": TARGET_RSS_GB, "cpu": _cpu()}


def synthetic(args: argparse.Namespace) -> dict:
    from benchmarks.tiles_scene import grid_objects, install_standins, scene
    from samseg.core.config import get_preset
    from samseg.edges.cache import StageCache
    from samseg.edges.images import LoadedImage
    from samseg.engine.publish import Tracking, publish
    from samseg.engine.runner import run_image
    from samseg.engine.summary import summarize

    from samseg.sam.source import ModelIdentity

    hw = (args.side, args.side)
    objects = grid_objects(hw, args.objects)
    rgb, _ = scene(hw, objects)
    install_standins(None)
    image = LoadedImage(rgb=rgb, sha256="d" * 64, name="synthetic.png", uri="synthetic.png")
    # the coverage rule: objects of a few cells would otherwise pool mostly background cells
    cfg = get_preset("smoke").replace(cluster={"eps": 0.15, "min_samples": 3}, pool={"cell_rule": "min_coverage"},
                                      tile={"size": args.tile, "overlap": args.overlap})
    model = ModelIdentity("tiny-random", "c" * 64, None, "cpu")
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        run = run_image(image, cfg, model, StageCache(Path(d) / "c"), load_model=lambda: object())
        t1 = time.perf_counter()
        publish(run, summarize(run), str(Path(d) / "out"), "synthetic", Tracking(track=False))
        t2 = time.perf_counter()
        warm = run_image(image, cfg.replace(cluster={"eps": 0.2}), model, StageCache(Path(d) / "c"), load_model=None)
        t3 = time.perf_counter()
    return {"bench": "tiled-synthetic", "side": args.side, "objects": len(objects), "n_masks": len(run.masks),
            "tiling": run.tiling(), "n_clusters": run.clusters.n_clusters, "seconds": {k: round(v, 2) for k, v in run.seconds.items()},
            "run_s": round(t1 - t0, 1), "export_s": round(t2 - t1, 1), "warm_rerun_s": round(t3 - t2, 2),
            "warm_status": warm.status, "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2),
            "target_rss_gb": TARGET_RSS_GB, "cpu": _cpu()}


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    return f"? x{os.cpu_count()}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("command", "synthetic"))
    p.add_argument("--side", type=int, default=10000, help="image side in px (10000 = 100 MP)")
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--overlap", type=int, default=128)
    p.add_argument("--points", type=int, default=32, help="points per side per tile (command mode)")
    p.add_argument("--objects", type=int, default=2000, help="objects in the synthetic scene")
    p.add_argument("--compare", action="store_true", help="also run the untiled command (command mode)")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args()
    result = command(args) if args.mode == "command" else synthetic(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
