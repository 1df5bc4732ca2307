"""One short GPU check for a CUDA machine: vit_b and vit_h architectures (seeded random
weights), fp32 and bf16, the four shared photos at 32 points/side. Prints images/s, ms per
stage, peak GPU memory and the bf16/fp32 agreement (benchmarks.bf16.agreement).

    bash benchmarks/gpu_check.sh            # this, with the install step (see gpu_prepare.sh)
    python -m benchmarks.gpu_check --device cpu --models tiny-random --images building.jpg   # smoke run

Timings use the production settings (the default preset: SAM's filters and NMS), which is
what `samseg segment` runs; on random weights the predicted-IoU filter drops nearly every
mask, so they time the encoder and the decoder. The agreement needs masks to compare, so it
runs once per model on the first image with open filters and no NMS at 16 points/side (768
masks): every mask of a random model is salt-and-pepper, and post-processing thousands of
them per image at 32 points/side would take minutes of CPU-bound RLE work per run, longer
than a device check may take. Random weights: the numbers are speed and agreement, never
segmentation quality.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.bf16 import PRECISIONS, agreement, cold_amg, keep_all_config, load_random_weights
from benchmarks.run import REPO, SHARED_IMAGES, checkpoint_file

IMAGES = ("building.jpg", "bears.jpg", "corgi.jpg", "alphabet.jpg")


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(model: Any, images: list[Any], cfg: Any, device: str) -> dict[str, Any]:
    """Production-settings cold AMG over `images` after one warm-up: images/s, ms per stage,
    peak GPU memory (CUDA only)."""
    import torch

    cuda = device.startswith("cuda")
    cold_amg(model, images[0], cfg)  # warm-up: kernels, cuBLAS handles
    _sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    runs, t0 = [], time.perf_counter()
    for image in images:
        runs.append(cold_amg(model, image, cfg))
    _sync(device)
    wall = time.perf_counter() - t0
    out = {"images_per_s": len(images) / wall, "encode_ms": 1e3 * sum(r["encode_s"] for r in runs) / len(runs),
           "amg_ms": 1e3 * sum(r["amg_s"] for r in runs) / len(runs), "masks": [len(r["masks"]) for r in runs]}
    if cuda:
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def check_model(model_type: str, images: list[Any], device: str, points: int | None = None,
                keep_all_points: int = 16) -> dict[str, Any]:
    """fp32 and bf16 timings of one architecture, and their agreement on the first image.
    points: the production grid (None: the default preset's); smaller grids are for smoke runs."""
    from samseg.core.config import get_preset

    production = get_preset("default").with_features("sam").replace(model_type=model_type)  # SAM's features: one encoder pass
    if points is not None:
        production = production.replace(amg={"points_per_side": points})
    keep_all = keep_all_config(model_type, keep_all_points)
    ckpt = checkpoint_file(model_type, REPO / "benchmarks" / "results")
    res: dict[str, Any] = {}
    compared: dict[str, Any] = {}
    for p in PRECISIONS:
        model = load_random_weights(p, ckpt, model_type, device)
        res[p] = timed(model, images, production, device)
        t0 = time.perf_counter()
        compared[p] = cold_amg(model, images[0], keep_all)
        _sync(device)
        res[p]["keep_all_s"] = time.perf_counter() - t0
        del model
    res["agreement"] = agreement(compared["fp32"], compared["bf16"])
    res["speedup"] = {k: res["fp32"][k] / res["bf16"][k] for k in ("encode_ms", "amg_ms")}
    return res


def main(argv: list[str] | None = None) -> int:
    import torch

    from samseg.edges.images import load_image

    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", nargs="+", default=["vit_b", "vit_h"])
    ap.add_argument("--images", nargs="+", default=list(IMAGES), help="file names under --images-dir")
    ap.add_argument("--images-dir", type=Path, default=SHARED_IMAGES)
    ap.add_argument("--points-per-side", type=int, default=None, help="production grid (default: the default preset's)")
    ap.add_argument("--keep-all-points", type=int, default=16, help="the agreement run's grid")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine (or --device cpu for a smoke run)")
        return 2
    images = [load_image(args.images_dir / n) for n in args.images]
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    report: dict[str, Any] = {"device": name, "torch": torch.__version__, "images": args.images}
    for model_type in args.models:
        report[model_type] = check_model(model_type, images, args.device, args.points_per_side, args.keep_all_points)
        print(model_type, json.dumps(report[model_type], indent=1, default=float), flush=True)
    out = REPO / "benchmarks" / "results" / "gpu_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=float))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
