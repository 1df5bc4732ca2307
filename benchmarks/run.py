"""Benchmark: the original notebook path (A) against samseg (B cold, C rerun, D batch).

    python -m benchmarks.run --mode quick          # tiny-random, seconds (CI smoke)
    python -m benchmarks.run --mode full           # vit_b, seeded random weights (minutes)
    python -m benchmarks.run --mode memory         # 12-MP photo, points_per_side=32: peak RSS

Both paths load the SAME checkpoint file (seeded random weights saved once under
--out), see the same image and the same AMG / DBSCAN settings. Results go to
<out>/bench-<mode>-<utc time>.json and a markdown table on stdout. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import measure
from benchmarks.original import run_original

REPO = Path(__file__).resolve().parents[1]
SHARED_IMAGES = REPO.parent / "shared" / "images"
MODEL_TYPE = {"quick": "tiny-random", "full": "vit_b", "memory": "vit_b"}


def machine_info() -> dict[str, Any]:
    import torch

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version(),
        "load_average_start": list(os.getloadavg()),
    }


def checkpoint_file(model_type: str, out: Path, seed: int = 0) -> Path:
    """Seeded random weights of `model_type`, saved once to <out>/ and reused by A and B."""
    import torch

    path = out / f"{model_type}_random_seed{seed}.pth"
    if path.is_file():
        return path
    if model_type == "tiny-random":
        from samseg.sam.model import build_tiny_random

        sam = build_tiny_random(seed)
    else:
        from segment_anything import sam_model_registry

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            sam = sam_model_registry[model_type](checkpoint=None)
    tmp = path.with_suffix(".part")
    torch.save(sam.state_dict(), tmp)
    os.replace(tmp, path)
    return path


def original_sam(model_type: str, checkpoint: Path, device: str = "cpu") -> Any:
    """Path A's model: built the way the notebook built it (segment_anything only)."""
    import torch

    if model_type == "tiny-random":
        from samseg.sam.model import build_tiny_random

        sam = build_tiny_random(0)
        sam.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
        return sam.eval().to(device)
    from segment_anything import sam_model_registry

    return sam_model_registry[model_type](checkpoint=str(checkpoint)).eval().to(device)


def load_images(mode: str, paths: list[str]) -> list[Any]:
    """LoadedImages for the run; quick mode shrinks them (long side 384) or synthesises
    two when ../shared/images is absent, so CI stays at seconds."""
    from samseg.edges.images import decode_image, load_image

    if mode != "quick":
        return [load_image(p) for p in paths]
    import io

    from PIL import Image

    imgs = []
    sources = [p for p in paths if Path(p).is_file()]
    for i, src in enumerate(sources or [None, None]):
        if src is None:
            rng = np.random.default_rng(i)
            arr = (np.linspace(0, 255, 300 * 380 * 3).reshape(300, 380, 3) + rng.integers(0, 40, (300, 380, 3))).clip(0, 255)
            pil = Image.fromarray(arr.astype(np.uint8))
        else:
            pil = Image.open(src).convert("RGB")
            pil.thumbnail((384, 384))
        buf = io.BytesIO()
        pil.save(buf, format="PNG")
        imgs.append(decode_image(buf.getvalue(), Path(src).name if src else f"synthetic{i}.png"))
    return imgs


def samseg_cached(model: Any, image: Any, cfg: Any, cache: Any) -> dict[str, Any]:
    """B / C: the production engine (samseg.engine.runner.run_image) on `image` through
    StageCache `cache`, with this process's already loaded `model`. Returns seconds per
    stage (a cache hit's load included), cache statuses, masks, labels."""
    from samseg.engine.runner import run_image
    from samseg.sam.source import ModelIdentity

    run = run_image(image, cfg, ModelIdentity.of(model), cache, load_model=lambda: model)
    seconds = dict(run.seconds)
    seconds["total"] = sum(seconds.values())
    return {"seconds": seconds, "cache": run.cache_status(), "masks": run.masks, "labels": run.clusters.labels,
            "n_clusters": run.clusters.n_clusters}


def samseg_model(model_type: str, checkpoint: Path, precision: str, kernels: str, device: str = "cpu") -> Any:
    """samseg's model from the same file, with its kernels ("fast" or "sam") and precision."""
    import warnings

    from samseg.sam.model import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "not the pinned checkpoint": expected for random weights
        return load_model(model_type, checkpoint=checkpoint, device=device, precision=precision, kernels=kernels)


def bench_cfg(args: argparse.Namespace, cfg: Any) -> Any:
    """The preset with --open-filters, --keep-all-masks and --points-per-side applied."""
    if args.open_filters:
        cfg = cfg.replace(amg={"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0})
    if args.keep_all_masks:
        cfg = cfg.replace(amg={"box_nms_thresh": 1.0, "crop_nms_thresh": 1.0})
    if args.points_per_side:
        cfg = cfg.replace(amg={"points_per_side": args.points_per_side})
    return cfg


def run_scenarios(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from samseg.edges.cache import StageCache
    from samseg.core.config import get_preset

    model_type = MODEL_TYPE[args.mode]
    ckpt = checkpoint_file(model_type, out)
    cfg = bench_cfg(args, get_preset(args.preset).with_features("sam").replace(model_type=model_type))  # like for like with A
    images = load_images(args.mode, args.images)
    image = images[0]
    res: dict[str, Any] = {"mode": args.mode, "model_type": model_type, "checkpoint": str(ckpt), "config": cfg.flat(),
                           "image": {"name": image.name, "hw": list(image.hw)}, "precision": args.precision, "kernels": args.kernels}
    model = samseg_model(model_type, ckpt, args.precision, args.kernels, args.device)
    run_cfg = cfg
    res["masks_per_chunk"] = _masks_per_chunk(image.hw)
    with tempfile.TemporaryDirectory(prefix="samseg-bench-cache-") as tmp:
        cache = StageCache(tmp)
        timer, enc_timer = measure.KernelTimer("decoder"), measure.KernelTimer("encoder")
        with measure.PeakRss() as rss:
            b = samseg_cached(model, image, run_cfg, cache)
        timer.close()
        enc_timer.close()
        res["B_cold"] = {"seconds": b["seconds"], "peak_rss_mb": rss.peak / 2**20, "n_masks": len(b["masks"]),
                         "n_clusters": b["n_clusters"], **measure.amg_breakdown(b["seconds"]["amg"], timer, enc_timer)}
        rerun_cfg = run_cfg.replace(cluster={"eps": run_cfg.cluster.eps * 1.5})
        with measure.PeakRss() as rss:
            c = samseg_cached(model, image, rerun_cfg, cache)
        res["C_rerun"] = {"seconds": c["seconds"], "cache": c["cache"], "peak_rss_mb": rss.peak / 2**20,
                          "cluster_eps": rerun_cfg.cluster.eps, "n_clusters": c["n_clusters"]}
    if not args.skip_original:
        res["A_original"] = run_a(model_type, ckpt, image, cfg, b["masks"], args.device)
        a_total = res["A_original"]["seconds"]["total"]
        res["ratios"] = {"A_over_B": a_total / b["seconds"]["total"], "A_over_C": a_total / c["seconds"]["total"]}
    if len(images) > 1 and not args.skip_batch:
        res["D_batch"] = _guarded(run_batch, model, images, cfg)
    return res


def _guarded(fn: Any, *args: Any) -> Any:
    """A late scenario's failure is recorded in the JSON instead of losing the earlier ones."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 — reported, not hidden
        return {"error": f"{type(exc).__name__}: {exc}"}


def run_a(model_type: str, ckpt: Path, image: Any, cfg: Any, b_masks: Any, device: str = "cpu") -> dict[str, Any]:
    sam = original_sam(model_type, ckpt, device)
    timer, enc_timer = measure.ModuleTimer(sam.mask_decoder), measure.ModuleTimer(sam.image_encoder)
    with measure.PeakRss() as rss:
        a = run_original(sam, image.rgb, cfg.amg, cfg.cluster)
    timer.close()
    enc_timer.close()
    labels = a["labels"]
    return {"seconds": a["seconds"], "peak_rss_mb": rss.peak / 2**20, "n_masks": len(a["masks"]),
            "n_clusters": int(labels.max()) + 1 if len(labels) and labels.max() >= 0 else 0,
            **measure.amg_breakdown(a["seconds"]["amg"], timer, enc_timer),
            "agreement_B_vs_A": measure.mask_agreement(a["masks"], b_masks)}


def run_batch(model: Any, images: list[Any], cfg: Any) -> dict[str, Any]:
    """D: samseg cold (empty cache) over every image, one model load."""
    from samseg.edges.cache import StageCache

    per_image = []
    with tempfile.TemporaryDirectory(prefix="samseg-bench-batch-") as tmp, measure.PeakRss() as rss:
        cache = StageCache(tmp)
        t0 = time.perf_counter()
        for img in images:
            r = samseg_cached(model, img, cfg, cache)
            per_image.append({"name": img.name, "hw": list(img.hw), "seconds": r["seconds"]["total"], "n_masks": len(r["masks"])})
        total = time.perf_counter() - t0
    return {"images": per_image, "total_s": total, "images_per_minute": 60 * len(images) / total, "peak_rss_mb": rss.peak / 2**20}


def run_memory(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """samseg cold on a 12-MP photo (an image upscaled to 4000×3000) at points_per_side=32,
    masks upsampled in chunks sized by samseg.sam.amg.budget; peak RSS of the whole process."""
    import io

    from PIL import Image

    from samseg.edges.cache import StageCache
    from samseg.core.config import get_preset
    from samseg.edges.images import decode_image

    model_type = MODEL_TYPE[args.mode]
    ckpt = checkpoint_file(model_type, out)
    src = next((p for p in args.images if Path(p).is_file()), None)
    pil = Image.open(src).convert("RGB") if src else Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    buf = io.BytesIO()
    pil.resize((4000, 3000), Image.BILINEAR).save(buf, format="JPEG", quality=90)
    image = decode_image(buf.getvalue(), f"{Path(src).stem if src else 'synthetic'}_4000x3000.jpg")
    cfg = bench_cfg(args, get_preset(args.preset).with_features("sam").replace(model_type=model_type, amg={"points_per_side": 32}))
    model = samseg_model(model_type, ckpt, args.precision, args.kernels, args.device)
    run_cfg = cfg
    rss_before = measure.rss_bytes()
    with tempfile.TemporaryDirectory(prefix="samseg-bench-mem-") as tmp, measure.PeakRss() as rss:
        r = samseg_cached(model, image, run_cfg, StageCache(tmp))
    from samseg.sam.amg.budget import bytes_per_mask

    from benchmarks.micro import post_memory_probe

    probe = _guarded(post_memory_probe, model, image.rgb)
    return {"mode": "memory", "post_probe": probe, "model_type": model_type, "image": {"name": image.name, "hw": list(image.hw)},
            "config": cfg.flat(), "masks_per_chunk": _masks_per_chunk(image.hw),
            "estimated_chunk_mb": _masks_per_chunk(image.hw) * bytes_per_mask(image.hw) / 2**20,
            "rss_before_mb": rss_before / 2**20, "peak_rss_mb": rss.peak / 2**20,
            "ru_maxrss_mb": measure.ru_maxrss_bytes() / 2**20, "seconds": r["seconds"], "n_masks": len(r["masks"])}


def _masks_per_chunk(image_hw: tuple[int, int]) -> int:
    from samseg.sam.amg.budget import masks_per_chunk

    return masks_per_chunk(image_hw)


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def markdown(res: dict[str, Any]) -> str:
    """The README table for one result document."""
    lines = [f"mode `{res['mode']}`, model `{res['model_type']}`, image `{res['image']['name']}` {res['image']['hw']}, "
             f"precision `{res.get('precision', 'fp32')}`, machine: {res['machine']['cpu']} ×{res['machine']['cores']}, "
             f"load avg at start {res['machine']['load_average_start'][0]:.2f}", ""]
    if res["mode"] == "memory":
        lines += [f"- masks per chunk: {res['masks_per_chunk']}, peak RSS {res['peak_rss_mb']:.0f} MB "
                  f"(before the run {res['rss_before_mb']:.0f} MB), {res['seconds']['total']:.1f} s, {res['n_masks']} masks",
                  f"- post-processing probe (one batch, smooth synthetic masks, all kept): `{json.dumps(_brief(res['post_probe']))}`"]
        return "\n".join(lines)
    stages = ["encode", "amg", "pool", "cluster", "compose", "total"]
    lines += ["| path | " + " | ".join(stages) + " | peak RSS MB | masks |", "|---" * (len(stages) + 3) + "|"]
    for name in ("A_original", "B_cold", "C_rerun"):
        if name in res:
            s = res[name]["seconds"]
            lines.append(f"| {name} | " + " | ".join(_fmt(s.get(k, "")) for k in stages)
                         + f" | {res[name]['peak_rss_mb']:.0f} | {res[name].get('n_masks', '')} |")
    lines.append("")
    for key in ("ratios", "D_batch", "decoder_micro", "encoder_floor"):
        if key in res:
            lines.append(f"- {key}: `{json.dumps(_brief(res[key]))}`")
    if "A_original" in res:
        lines.append(f"- agreement B vs A: `{json.dumps(_brief(res['A_original']['agreement_B_vs_A']))}`")
        a, b = res["A_original"], res["B_cold"]
        lines.append(f"- inside the AMG: decoder ms/prompt A {a['decoder_ms_per_prompt']:.1f}, B {b['decoder_ms_per_prompt']:.1f}; "
                     f"AMG's own encoder passes A {a['amg_encoder_s']:.1f} s, B {b['amg_encoder_s']:.1f} s; "
                     f"post-processing A {a['amg_post_s']:.1f} s, B {b['amg_post_s']:.1f} s")
    return "\n".join(lines)


def _brief(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _brief(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_brief(v) for v in obj]
    return float(f"{obj:.4g}") if isinstance(obj, float) else obj  # significant digits: 1e-7 stays 1e-7


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("quick", "full", "memory"), default="quick")
    p.add_argument("--images", nargs="+", default=None, help="first = A/B/C image; all = D batch (default: ../shared/images)")
    p.add_argument("--preset", default=None, help="samseg preset (default: smoke in quick mode, default otherwise)")
    p.add_argument("--open-filters", action="store_true", help="pred_iou_thresh=stability_score_thresh=0 (random weights pass no filter)")
    p.add_argument("--keep-all-masks", action="store_true",
                   help="box_nms_thresh=crop_nms_thresh=1.0: no NMS, so every mask is kept and compared (random weights collapse under NMS)")
    p.add_argument("--points-per-side", type=int, default=None)
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16", "auto"), default="fp32",
                   help="samseg path only (A is always fp32); auto = bf16 where the hardware has it")
    p.add_argument("--kernels", choices=("fast", "sam"), default="fast",
                   help="samseg's encoder and decoder kernels (samseg.sam.kernels)")
    p.add_argument("--skip-original", action="store_true")
    p.add_argument("--skip-batch", action="store_true")
    p.add_argument("--micro", action="store_true", help="also run the decoder / encoder micro-benchmarks")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] for both paths (micro-benchmarks stay on CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--mlflow", nargs="?", const="samseg-benchmarks", default=None, metavar="EXPERIMENT",
                   help="also log the result as an MLflow run (MLFLOW_TRACKING_URI; default experiment samseg-benchmarks)")
    args = p.parse_args(argv)
    if args.images is None:
        names = ("building.jpg", "bears.jpg", "alphabet.jpg", "corgi.jpg")
        args.images = [str(SHARED_IMAGES / n) for n in names if (SHARED_IMAGES / n).is_file()]
        if not args.images and args.mode != "quick":
            p.error(f"no images given and {SHARED_IMAGES} has none")
    args.preset = args.preset or ("smoke" if args.mode == "quick" else "default")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    info = machine_info()
    res = run_memory(args, out) if args.mode == "memory" else run_scenarios(args, out)
    if args.micro:
        from benchmarks.micro import decoder_micro, encoder_floor

        sam = samseg_model(MODEL_TYPE[args.mode], checkpoint_file(MODEL_TYPE[args.mode], out), "fp32", "sam").sam
        res["decoder_micro"] = _guarded(decoder_micro, sam, 32 if args.mode != "quick" else 8)
        res["encoder_floor"] = _guarded(encoder_floor, sam)
    info["load_average_end"] = list(os.getloadavg())
    res["machine"] = info
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = out / f"bench-{args.mode}-{stamp}.json"
    path.write_text(json.dumps(_brief(res), indent=2))
    print(markdown(res))
    print(f"\nresults: {path}")
    if args.mlflow:
        from benchmarks.track import log_benchmark

        print(f"mlflow run: {log_benchmark(_brief(res), path, args.mlflow)} (experiment {args.mlflow})")  # the JSON's numbers
    return 0


if __name__ == "__main__":
    sys.exit(main())
