"""bf16 against fp32 on this machine, side by side in one run: matmul rates, the vit_b
encoder against its matmul floor, the fast decoder per prompt (and, under torch.profiler,
how much of it is GEMM kernels and how much the rest), a whole cold AMG run, and the
agreement of the two runs' masks and embeddings.

    python -m benchmarks.bf16 [--image ../shared/images/building.jpg] [--points-per-side 16]

Two cold AMG runs per precision: the production settings (the default preset: 32
points/side, SAM's filters and NMS; on random weights the predicted-IoU filter drops
nearly every mask before upsampling, so this is the encoder and the decoder at work),
and one with open filters and no NMS (--keep-all semantics) so every mask of the
random-weights model is post-processed and compared: masks matched one-to-one by the Hungarian method on IoU,
mean IoU over max(n_fp32, n_bf16) (an unmatched mask counts 0), and the cosine similarity
of the matched masks' pooled embeddings. On a CPU without native bf16 (AMX-BF16 /
AVX512-BF16) bf16 is emulated and very slow: the timings are skipped, and it says so.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import measure
from benchmarks.micro import decoder_micro_precision, decoder_op_split
from benchmarks.run import REPO, SHARED_IMAGES, checkpoint_file

PRECISIONS = ("fp32", "bf16")


def load_random_weights(precision: str, ckpt: Path, model_type: str = "vit_b", device: str = "cpu") -> Any:
    """load_model on a seeded-random checkpoint (benchmarks.run.checkpoint_file), its hash warning muted."""
    from samseg.sam.model import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights are not the pinned checkpoint
        return load_model(model_type, checkpoint=ckpt, device=device, precision=precision)


def keep_all_config(model_type: str, points_per_side: int) -> Any:
    """The default preset with open filters and no NMS: every mask is post-processed and
    compared (a random model's masks all fail SAM's filters)."""
    from samseg.core.config import get_preset

    return get_preset("default").with_features("sam").replace(model_type=model_type, amg={
        "points_per_side": points_per_side, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
        "box_nms_thresh": 1.0, "crop_nms_thresh": 1.0})


def encoder_pass(model: Any, repeats: int = 2) -> float:
    """Best of `repeats` encoder passes (s) on a random 1×3×1024² input."""
    import torch

    from samseg.sam.kernels import encode

    x = torch.randn(1, 3, 1024, 1024)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            t0 = time.perf_counter()
            encode(model, x)  # the production call: the model's kernels and precision
            best = min(best, time.perf_counter() - t0)
    return best


def encoder_vs_floor(model: Any, gflop: float, precision: str, pairs: int = 3) -> dict[str, Any]:
    """The encoder against its matmul floor, two ways. Strict: the best of `pairs` encoder
    passes over gflop / the best matmul rate of the run. Paired: each pass right after a
    matmul probe (best of 3), its ratio to the floor at that moment, the median of the pairs:
    this shared host's AMX rate moves 3× between minutes (688-2091 GFLOP/s measured), so a
    rate caught in a burst makes the strict floor one the encoder, running later, never saw."""
    import statistics

    encoder_pass(model, repeats=1)  # warm-up: kernel selection, the allocator
    rates, passes = [], []
    for _ in range(pairs):
        rates.append(measure.matmul_gflops(precision, n=2048, repeats=3))
        passes.append(encoder_pass(model, repeats=1))
    rate, enc_s = max(rates), min(passes)
    paired = [s / (gflop / r) for s, r in zip(passes, rates, strict=True)]
    return {"matmul_gflops": rate, "encoder_s": enc_s, "encoder_floor_s": gflop / rate,
            "encoder_over_floor": enc_s / (gflop / rate), "encoder_over_floor_paired": statistics.median(paired),
            "encoder_pairs": [{"matmul_gflops": r, "encoder_s": s} for r, s in zip(rates, passes, strict=True)]}


def cold_amg(model: Any, image: Any, cfg: Any) -> dict[str, Any]:
    """encode + AMG + pool on `image` through the production engine (run_image) with an
    empty stage cache: a user's first run, timed per stage by the engine (its cache writes
    included). total_s = the three stages."""
    import tempfile

    from samseg.edges.cache import StageCache
    from samseg.engine.runner import run_image
    from samseg.sam.source import ModelIdentity

    with tempfile.TemporaryDirectory(prefix="samseg-bench-") as d:
        run = run_image(image, cfg, ModelIdentity.of(model), StageCache(d), load_model=lambda: model,
                        want=("pool",), quiet=True)
    out = {f"{name}_s": run.seconds[name] for name in ("encode", "amg", "pool")}
    return {**out, "total_s": sum(out.values()), "masks": run.masks, "embeddings": run.embeddings}


def agreement(ref: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Hungarian-matched mask IoU and matched embedding cosine of two cold_amg results."""
    from scipy.optimize import linear_sum_assignment

    a, b = ref["masks"], new["masks"]
    out: dict[str, Any] = {"n_fp32": len(a), "n_bf16": len(b)}
    if not len(a) or not len(b):
        return out
    iou = measure.mask_iou_matrix([b.coco_rle(i) for i in range(len(b))], [a.coco_rle(i) for i in range(len(a))])
    rows, cols = linear_sum_assignment(-iou)
    matched = iou[rows, cols]
    ea, eb = ref["embeddings"][cols], new["embeddings"][rows]
    cos = (ea * eb).sum(1) / np.maximum(np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1), 1e-12)
    out.update(mean_iou=float(matched.sum() / max(len(a), len(b))), min_iou=float(matched.min()),
               mean_embedding_cosine=float(cos.mean()), min_embedding_cosine=float(cos.min()))
    return out


def _timings(result: dict[str, Any]) -> dict[str, Any]:
    """The stage seconds and the mask count of a cold_amg result."""
    return {**{k: v for k, v in result.items() if k.endswith("_s")}, "n_masks": len(result["masks"])}


def run(image_path: str, points_per_side: int, model_type: str = "vit_b", production_points: int | None = None) -> dict[str, Any]:
    from samseg.core.config import get_preset
    from samseg.edges.images import load_image
    from samseg.sam.precision import cpu_bf16_flags

    flags = cpu_bf16_flags()
    res: dict[str, Any] = {"cpu": measure_cpu(), "native_bf16_flags": flags}
    if not flags:
        res["skipped"] = "no native bf16 (amx_bf16 / avx512_bf16) on this CPU: bf16 is emulated there, timings skipped"
        return res
    ckpt = checkpoint_file(model_type, REPO / "benchmarks" / "results")
    image = load_image(image_path)
    cfg = keep_all_config(model_type, points_per_side)
    production = get_preset("default").with_features("sam").replace(model_type=model_type)  # SAM's AMG + its own features
    if production_points is not None:  # a smoke run's grid; None: the default preset's
        production = production.replace(amg={"points_per_side": production_points})
    gflop = measure.encoder_gflop(load_random_weights("fp32", ckpt, model_type).sam.image_encoder)
    res.update(image={"name": image.name, "hw": list(image.hw)}, points_per_side=points_per_side, encoder_gflop=gflop)
    amg: dict[str, Any] = {}
    for p in PRECISIONS:
        model = load_random_weights(p, ckpt, model_type)
        res[p] = {**encoder_vs_floor(model, gflop, p),
                  "decoder_ms_per_prompt": decoder_micro_precision(model, 64),
                  "decoder_no_masks_ms_per_prompt": decoder_micro_precision(model, 64, masks=False),
                  "decoder_no_masks_split": decoder_op_split(model, 64)}
        amg[p] = cold_amg(model, image, cfg)
        res[p].update(_timings(amg[p]))
        res[p]["default_filters"] = {**_timings(cold_amg(model, image, production)),
                                     "points_per_side": production.amg.points_per_side}
    res["speedup"] = {"encoder": res["fp32"]["encoder_s"] / res["bf16"]["encoder_s"],
                      "decoder_per_prompt": res["fp32"]["decoder_ms_per_prompt"] / res["bf16"]["decoder_ms_per_prompt"],
                      "decoder_no_masks_per_prompt": res["fp32"]["decoder_no_masks_ms_per_prompt"]
                      / res["bf16"]["decoder_no_masks_ms_per_prompt"],
                      **{f"decoder_{part}": res["fp32"]["decoder_no_masks_split"][f"{part}_ms_per_prompt"]
                         / res["bf16"]["decoder_no_masks_split"][f"{part}_ms_per_prompt"] for part in ("gemm", "other")},
                      "cold_amg": res["fp32"]["total_s"] / res["bf16"]["total_s"],
                      "cold_amg_default_filters": res["fp32"]["default_filters"]["total_s"]
                      / res["bf16"]["default_filters"]["total_s"]}
    res["agreement"] = agreement(amg["fp32"], amg["bf16"])
    return res


def measure_cpu() -> str:
    from benchmarks.run import machine_info

    return str(machine_info().get("cpu"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bf16", description=__doc__.split("\n\n")[0])
    p.add_argument("--image", default=str(SHARED_IMAGES / "building.jpg"))
    p.add_argument("--points-per-side", type=int, default=16)
    p.add_argument("--model", default="vit_b", help="vit_b (the measurement) or tiny-random (a smoke run)")
    args = p.parse_args(argv)
    res = run(args.image, args.points_per_side, args.model)
    print(f"CPU: {res['cpu']}; native bf16 flags: {', '.join(res['native_bf16_flags']) or 'none'}")
    if "skipped" in res:
        print(res["skipped"])
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bf16-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(res, indent=2, default=float))
    print(json.dumps(res, indent=2, default=float))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
