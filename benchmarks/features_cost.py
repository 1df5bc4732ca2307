"""What a semantic backbone costs next to SAM's encoder: seconds per encoder pass, side by side
in one run, on seeded random weights (a pass costs the same whatever the weights), fp32 and —
where the CPU has native bf16 — bf16, through the production calls (samseg.sam.encode.encode_image
for SAM, samseg.sam.backbones.encode_features for a backbone at its default input size); then
the peak RSS with vit_h and dinov2-b loaded and both run on one 12-MP image.

    python -m benchmarks.features_cost [--image ../shared/images/building.jpg] [--sam vit_b vit_h]
        [--backbones dinov2-s dinov2-b dinov3-s dinov3-b] [--precisions fp32 bf16] [--no-rss]

Targets (benchmarks/README.md): dinov2-s <= 15 % and dinov2-b <= 50 % of the vit_b encoder's
time, so that with vit_h masks the better embedding adds <= 15 % encoder time. Writes
benchmarks/results/features_cost.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks import measure
from benchmarks.run import REPO, SHARED_IMAGES, checkpoint_file

TARGETS = {"dinov2-s/vit_b": 0.15, "dinov2-b/vit_b": 0.50, "(vit_h+dinov2-s)/vit_h": 1.15}
RSS_MP = 12e6


def best_of(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def random_backbone(name: str, precision: str, workdir: Path) -> Any:
    """load_backbone on a seeded-random safetensors file (the production load path, no download)."""
    from safetensors.torch import save_file

    from samseg.sam.backbones import build_backbone, load_backbone

    path = workdir / f"{name}-random.safetensors"
    if not path.is_file():
        save_file({k: v.contiguous() for k, v in build_backbone(name).state_dict().items()}, str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_backbone(name, checkpoint=path, device="cpu", precision=precision)


def random_sam(model_type: str, precision: str, workdir: Path) -> Any:
    from samseg.sam.model import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights are not the pinned checkpoint
        return load_model(model_type, checkpoint=checkpoint_file(model_type, workdir), device="cpu", precision=precision)


def time_passes(rgb: np.ndarray, sams: list[str], backbones: list[str], precision: str, workdir: Path,
                repeats: int) -> dict[str, float]:
    """{model: best seconds of one encoder pass} — one model in memory at a time."""
    import gc

    from samseg.core.backbones import backbone_entry
    from samseg.sam.backbones import encode_features
    from samseg.sam.encode import encode_image

    seconds: dict[str, float] = {}
    for model_type in sams:
        model = random_sam(model_type, precision, workdir)
        encode_image(model, rgb)  # warm-up: kernel selection, the allocator
        seconds[model_type] = best_of(lambda: encode_image(model, rgb), repeats)
        print(f"  {precision} {model_type}: {seconds[model_type]:.3f} s", flush=True)
        model = None  # one model in memory at a time
        gc.collect()
    for name in backbones:
        bb = random_backbone(name, precision, workdir)
        side = backbone_entry(name).input_size
        encode_features(bb, rgb, side)
        seconds[name] = best_of(lambda: encode_features(bb, rgb, side), repeats)
        print(f"  {precision} {name} at {side} px: {seconds[name]:.3f} s", flush=True)
        bb = None
        gc.collect()
    return seconds


def ratios(seconds: dict[str, float]) -> dict[str, float]:
    out = {}
    for name in ("dinov2-s", "dinov2-b", "dinov3-s", "dinov3-b"):
        if name in seconds and "vit_b" in seconds:
            out[f"{name}/vit_b"] = seconds[name] / seconds["vit_b"]
        if name in seconds and "vit_h" in seconds:
            out[f"(vit_h+{name})/vit_h"] = (seconds["vit_h"] + seconds[name]) / seconds["vit_h"]
    return out


def peak_rss_both(rgb: np.ndarray, workdir: Path, sam: str = "vit_h", backbone: str = "dinov2-b") -> dict[str, Any]:
    """Peak RSS (bytes) with SAM and the backbone loaded, each run once on a ~12-MP image."""
    from PIL import Image

    from samseg.core.backbones import backbone_entry
    from samseg.sam.backbones import encode_features
    from samseg.sam.encode import encode_image

    scale = (RSS_MP / (rgb.shape[0] * rgb.shape[1])) ** 0.5
    big = np.asarray(Image.fromarray(rgb).resize((round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), Image.BICUBIC))
    before = measure.rss_bytes()
    with measure.PeakRss() as peak:
        model = random_sam(sam, "fp32", workdir)
        bb = random_backbone(backbone, "fp32", workdir)
        loaded = measure.rss_bytes()
        encode_image(model, big)
        encode_features(bb, big, backbone_entry(backbone).input_size)
    return {"models": [sam, backbone], "image_hw": list(big.shape[:2]), "rss_before_bytes": before,
            "rss_loaded_bytes": loaded, "peak_rss_bytes": peak.peak}


def main(argv: list[str] | None = None) -> int:
    from samseg.sam.precision import native_bf16_cpu

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_image = SHARED_IMAGES / "building.jpg"
    if not default_image.is_file():
        default_image = REPO / "tests" / "data" / "photos" / "building.jpg"
    p.add_argument("--image", type=Path, default=default_image)
    p.add_argument("--sam", nargs="+", default=["vit_b", "vit_h"])
    p.add_argument("--backbones", nargs="+", default=["dinov2-s", "dinov2-b", "dinov3-s", "dinov3-b"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-rss", action="store_true", help="skip the 12-MP peak-RSS run")
    p.add_argument("--rss-only", action="store_true", help=argparse.SUPPRESS)  # the RSS run's own process
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "features_cost.json")
    args = p.parse_args(argv)

    from PIL import Image

    rgb = np.asarray(Image.open(args.image).convert("RGB"))
    if args.rss_only:
        with tempfile.TemporaryDirectory(prefix="samseg-features-rss-") as tmp:
            print(json.dumps(peak_rss_both(rgb, Path(tmp))))
        return 0
    report: dict[str, Any] = {"image": str(args.image), "image_hw": list(rgb.shape[:2]), "cpu": measure_cpu(),
                              "targets": TARGETS, "seconds": {}, "ratios": {}}
    with tempfile.TemporaryDirectory(prefix="samseg-features-cost-") as tmp:
        for precision in args.precisions:
            if precision == "bf16" and not native_bf16_cpu():
                report["seconds"]["bf16"] = "skipped: this CPU has no native bf16 (AMX-BF16 / AVX512-BF16)"
                continue
            seconds = time_passes(rgb, args.sam, args.backbones, precision, Path(tmp), args.repeats)
            report["seconds"][precision] = seconds
            report["ratios"][precision] = ratios(seconds)
    if not args.no_rss:  # a fresh process: the timing runs' freed models would inflate its RSS
        import subprocess

        proc = subprocess.run([sys.executable, "-m", "benchmarks.features_cost", "--rss-only", "--image", str(args.image)],
                              capture_output=True, text=True, cwd=REPO, check=True)
        report["peak_rss_12mp"] = json.loads(proc.stdout.strip().splitlines()[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({"ratios": report["ratios"], "peak_rss_12mp": report.get("peak_rss_12mp")}, indent=1))
    return 0


def measure_cpu() -> str:
    from samseg.sam.precision import cpu_bf16_flags

    try:
        name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        name = "unknown"
    return f"{name}; native bf16: {', '.join(cpu_bf16_flags()) or 'none'}"


if __name__ == "__main__":
    sys.exit(main())
