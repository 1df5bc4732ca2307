"""Micro-benchmarks: mask decoder per prompt (SAM's vs samseg.sam.kernels.decoder) and the
image encoder against the measured matmul floor."""

from __future__ import annotations

import time
from typing import Any

from benchmarks import measure


def _grid_prompts(sam: Any, n: int) -> tuple[Any, Any]:
    """Sparse/dense prompt embeddings for n points on a grid over the 1024² frame."""
    import math

    import torch

    side = math.ceil(math.sqrt(n))
    xs = (torch.arange(side) + 0.5) * 1024 / side
    pts = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 1, 2)[:n]
    labels = torch.ones(n, 1, dtype=torch.int)
    return sam.prompt_encoder(points=(pts, labels), boxes=None, masks=None)


def decoder_micro(sam: Any, n_prompts: int = 32, seed: int = 0) -> dict[str, Any]:
    """ms per prompt of segment_anything's predict_masks vs fast_predict_masks on one
    random C×64×64 embedding, plus their max |Δlogit| and mask (logit > 0) disagreement."""
    import torch

    from samseg.sam.kernels.decoder import fast_predict_masks

    dec = sam.mask_decoder
    sam_predict = type(dec).predict_masks
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        c = sam.prompt_encoder.embed_dim
        image = torch.randn(1, c, 64, 64, generator=g)
        pe = sam.prompt_encoder.get_dense_pe()
        sparse, dense = _grid_prompts(sam, n_prompts)
        sam_predict(dec, image, pe, sparse[:2], dense[:2])  # warm-up: kernel selection
        fast_predict_masks(dec, image, pe, sparse[:2], dense[:2])
        t0 = time.perf_counter()
        ref, _ = sam_predict(dec, image, pe, sparse, dense)
        t1 = time.perf_counter()
        got, _ = fast_predict_masks(dec, image, pe, sparse, dense)
        t2 = time.perf_counter()
    return {
        "n_prompts": n_prompts,
        "sam_ms_per_prompt": 1e3 * (t1 - t0) / n_prompts,
        "fast_ms_per_prompt": 1e3 * (t2 - t1) / n_prompts,
        "speedup": (t1 - t0) / (t2 - t1),
        "max_abs_logit_diff": float((ref - got).abs().max()),
        "mask_pixel_disagreement": float(((ref > 0) != (got > 0)).float().mean()),
    }


def _decoder_call(model: Any, n_prompts: int, seed: int, masks: bool) -> Any:
    """call(k): the model's decoder as loaded (its kernels, its precision) on the first k of
    n_prompts grid prompts on one random C×64×64 embedding, inputs in fp32 (run it under
    inference_mode): the production call samseg.sam.kernels.decode (masks=True), or
    (masks=False) the AMG's call for prompts whose every mask fails the predicted-IoU filter —
    the transformer and the IoU head, no upscaling."""
    import torch

    from samseg.sam.kernels import decode

    sam = model.sam
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        image = torch.randn(1, sam.prompt_encoder.embed_dim, 64, 64, generator=g)
        pe = sam.prompt_encoder.get_dense_pe()
        sparse, dense = _grid_prompts(sam, n_prompts)

    def call(k: int) -> None:
        decode(model, image, pe, sparse[:k], dense[:k], True, None if masks else float("inf"))

    return call


def decoder_micro_precision(model: Any, n_prompts: int = 64, seed: int = 0, repeats: int = 3,
                            masks: bool = True) -> float:
    """ms per prompt of `_decoder_call` (see there), best of `repeats` after a warm-up."""
    import torch

    call = _decoder_call(model, n_prompts, seed, masks)
    with torch.inference_mode():
        call(4)  # warm-up
        best = float("inf")
        for _ in range(repeats):  # best of: this shared 2-core machine is noisy
            t0 = time.perf_counter()
            call(n_prompts)
            best = min(best, time.perf_counter() - t0)
        return 1e3 * best / n_prompts


# The GEMM kernels of the decoder's fast path (oneDNN/MKL on CPU); everything else is
# elementwise work, softmaxes, copies and dispatch.
GEMM_OPS = ("aten::bmm", "aten::mm", "aten::addmm", "aten::baddbmm", "aten::addbmm")


def decoder_op_split(model: Any, n_prompts: int = 64, seed: int = 0, repeats: int = 3) -> dict[str, float]:
    """The no-upscaling decoder call (`_decoder_call`, masks=False) under torch.profiler:
    ms per prompt of self CPU time in GEMM kernels (GEMM_OPS) and in everything else,
    from the profiled call (of `repeats`, after a warm-up) with the least total. Says
    which part bf16 speeds up: the split of each precision, side by side."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    call = _decoder_call(model, n_prompts, seed, False)
    best: dict[str, float] = {}
    with torch.inference_mode():
        call(4)
        for _ in range(repeats):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                call(n_prompts)
            events = prof.key_averages()
            total = sum(e.self_cpu_time_total for e in events) / 1e3 / n_prompts
            gemm = sum(e.self_cpu_time_total for e in events if e.key in GEMM_OPS) / 1e3 / n_prompts
            if not best or total < best["total_ms_per_prompt"]:
                best = {"total_ms_per_prompt": total, "gemm_ms_per_prompt": gemm, "other_ms_per_prompt": total - gemm}
    return best


def encoder_floor(sam: Any, precisions: tuple[str, ...] = ("fp32", "bf16"), repeats: int = 2) -> dict[str, Any]:
    """Image-encoder passes per precision on a random 1×3×1024² input vs the matmul floor
    (encoder GFLOP / measured matmul GFLOP/s of that dtype, best of 5), with
    segment_anything's attention and with samseg.sam.kernels.encoder's (max |Δ| of the outputs).
    Each variant runs `repeats` times: `<name>_encoder_s` is the best (steady state, like
    the floor's best-of-5 matmul), `<name>_first_s` the first pass (cold allocator).
    `sam` must come without the fast encoder. bf16 is skipped (and says so) on a CPU
    without native bf16: its emulated kernels would take tens of minutes."""
    import torch

    from samseg.sam.kernels.encoder import encoder_forward
    from samseg.sam.precision import native_bf16_cpu, set_precision, torch_dtype

    gflop = measure.encoder_gflop(sam.image_encoder)
    out: dict[str, Any] = {"encoder_gflop": gflop}
    if not native_bf16_cpu():
        out["bf16"] = "skipped: no AVX-512 BF16 / AMX on this CPU"
        precisions = tuple(p for p in precisions if p != "bf16")
    x = torch.randn(1, 3, sam.image_encoder.img_size, sam.image_encoder.img_size)
    for p in precisions:
        rate = measure.matmul_gflops(p)
        floor = gflop / rate
        row: dict[str, Any] = {"matmul_gflops": rate, "floor_s": floor}
        set_precision(sam, p, parts=("image_encoder",), reversible=True)  # the production conversion
        xd = x.to(torch_dtype(p))
        with torch.inference_mode():
            for name, forward in (("sam", sam.image_encoder), ("fast", lambda v: encoder_forward(sam.image_encoder, v))):
                times = []
                for _ in range(max(1, repeats)):
                    t0 = time.perf_counter()
                    y = forward(xd).float()
                    times.append(time.perf_counter() - t0)
                secs = min(times)
                row[f"{name}_first_s"] = times[0]
                row[f"{name}_encoder_s"], row[f"{name}_over_floor"] = secs, secs / floor
                row[f"{name}_output"] = y
        set_precision(sam, "fp32", parts=("image_encoder",))
        row["max_abs_diff"] = float((row.pop("sam_output") - row.pop("fast_output")).abs().max())
        out[p] = row
    if "fp32" in out and "bf16" in out and isinstance(out["bf16"], dict):
        out["bf16_speedup_fast"] = out["fp32"]["fast_encoder_s"] / out["bf16"]["fast_encoder_s"]
    return out


def smooth_low_res_logits(n: int, per_prompt: int = 3, side: int = 256, seed: int = 0) -> Any:
    """n×per_prompt×side×side float logits of random discs (radius 8-100 low-res px),
    ±10 far from the edge: smooth masks, like a trained model's, which every filter keeps."""
    import torch

    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, per_prompt, 2, 1, 1, generator=g) * side
    radius = 8 + torch.rand(n, per_prompt, 1, 1, generator=g) * 92
    yy, xx = torch.meshgrid(torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32), indexing="ij")
    dist = ((yy - centre[:, :, 0]) ** 2 + (xx - centre[:, :, 1]) ** 2).sqrt()
    return ((radius - dist) / 2).clamp(-10, 10)


def post_memory_probe(model: Any, rgb_hw3: Any, n_prompts: int = 64) -> dict[str, Any]:
    """Peak RSS of samseg's chunked AMG post-processing for ONE batch of `n_prompts` prompts
    (3 masks each, all kept: filters open, smooth synthetic low-res logits instead of a
    random decoder's salt-and-pepper) at the image's full size. A random model's masks
    pass no filter at default settings and cannot stand in here: their RLEs alone hold
    millions of runs each at 12 MP."""
    import numpy as np
    import torch
    from segment_anything.utils.transforms import ResizeLongestSide

    from samseg.sam.amg import make_generator
    from samseg.sam.amg.batch import postprocess_batch
    from samseg.sam.amg.budget import masks_per_chunk
    from samseg.core.config import AmgConfig

    h, w = rgb_hw3.shape[:2]
    gen = make_generator(model, AmgConfig(pred_iou_thresh=0.0, stability_score_thresh=0.0))
    gen.predictor.input_size = ResizeLongestSide(1024).get_preprocess_shape(h, w, 1024)
    gen.predictor.original_size = (h, w)
    low = smooth_low_res_logits(n_prompts)
    iou = torch.ones(n_prompts, 3)
    points = np.full((n_prompts, 2), 0.5) * [w, h]
    before = measure.rss_bytes()
    with torch.inference_mode(), measure.PeakRss() as rss:
        t0 = time.perf_counter()
        data = postprocess_batch(gen, low, iou, points, [0, 0, w, h], (h, w), masks_per_chunk((h, w)))
        secs = time.perf_counter() - t0
    return {"prompts": n_prompts, "masks_kept": len(data["rles"]), "masks_per_chunk": masks_per_chunk((h, w)),
            "seconds": secs, "ms_per_mask": 1e3 * secs / max(1, 3 * n_prompts),
            "rss_before_mb": before / 2**20, "peak_rss_mb": rss.peak / 2**20,
            "sam_logits_alone_mb": 3 * n_prompts * h * w * 4 / 2**20}
