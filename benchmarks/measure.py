"""Measurement helpers for benchmarks/run.py: peak RSS, matmul floor, encoder FLOPs,
mask agreement. Every number they return is measured on the machine running them."""

from __future__ import annotations

import os
import resource
import threading
import time
from typing import Any

import numpy as np


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Context manager sampling RSS every `interval` s in a thread; `.peak` bytes after exit.

    ru_maxrss is the process-lifetime peak, so it cannot attribute a peak to one scenario;
    sampling can (it may miss a spike shorter than `interval`).
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRss":
        self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def ru_maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def matmul_gflops(dtype_name: str = "fp32", n: int = 1024, repeats: int = 5) -> float:
    """Best-of-`repeats` GFLOP/s of an n×n @ n×n torch matmul (the compute floor)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up (oneDNN/MKL kernel selection)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def encoder_gflop(image_encoder: Any) -> float:
    """FLOPs of one forward of `image_encoder` (1×3×1024×1024), counted on the meta device
    with torch.utils.flop_counter (no compute, no copy of the weights' data)."""
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(image_encoder).to("meta")
    size = int(image_encoder.img_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(torch.empty(1, 3, size, size, device="meta"))
    return counter.get_total_flops() / 1e9


def _rles_from_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """COCO RLEs (bytes counts) from AMG records with binary or coco_rle segmentation."""
    from pycocotools import mask as mask_utils

    from samseg.core.rle import to_coco

    out = []
    for r in records:
        seg = r["segmentation"]
        if isinstance(seg, dict):
            out.append(to_coco(seg))
        else:
            out.append(mask_utils.encode(np.asfortranarray(seg.astype(np.uint8))))
    return out


def mask_iou_matrix(a_rles: list[dict[str, Any]], b_rles: list[dict[str, Any]], chunk: int = 128) -> np.ndarray:
    """N×M IoU of two lists of COCO RLEs of the same H×W, as chunked float32 matmuls of the
    decoded masks. pycocotools' RLE IoU is O(runs) per pair: for a random model's
    salt-and-pepper masks (~10⁵ runs each) 768×768 pairs take hours; this takes seconds."""
    import torch
    from pycocotools import mask as mask_utils

    def flat(rles: list[dict[str, Any]]) -> np.ndarray:  # N×(H·W) uint8, column-major pixels
        m = mask_utils.decode(rles)
        return np.ascontiguousarray(m.reshape(-1, m.shape[-1]).T)

    a, b = flat(a_rles), flat(b_rles)
    area_a, area_b = a.sum(1, dtype=np.float64), b.sum(1, dtype=np.float64)
    inter = np.zeros((len(a), len(b)), np.float64)
    for i in range(0, len(a), chunk):
        ai = torch.from_numpy(a[i : i + chunk]).float()
        for j in range(0, len(b), chunk):
            inter[i : i + chunk, j : j + chunk] = (ai @ torch.from_numpy(b[j : j + chunk]).float().T).double().numpy()
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def mask_agreement(ref_records: list[dict[str, Any]], masks: Any) -> dict[str, Any]:
    """Agreement of a samseg MaskSet with reference AMG records: one-to-one matching that
    maximises total IoU (Hungarian), then the mean IoU of matched pairs (IoU > 0.5).

    Returns {n_ref, n_new, n_matched, mean_iou_matched, min_iou_matched}.
    """
    from scipy.optimize import linear_sum_assignment

    ref = _rles_from_records(ref_records)
    new = [masks.coco_rle(i) for i in range(len(masks))]
    result = {"n_ref": len(ref), "n_new": len(new), "n_matched": 0, "mean_iou_matched": None, "min_iou_matched": None}
    if not ref or not new:
        return result
    iou = mask_iou_matrix(new, ref)
    rows, cols = linear_sum_assignment(-iou)
    matched = iou[rows, cols]
    matched = matched[matched > 0.5]
    if len(matched):
        result.update(n_matched=int(len(matched)), mean_iou_matched=float(matched.mean()), min_iou_matched=float(matched.min()))
    return result


def time_call(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


class ModuleTimer:
    """Forward pre/post hooks on one module: the seconds of every forward pass, in order
    (`passes`), their sum (`seconds`) and, for a mask decoder, the prompts it decoded."""

    def __init__(self, module: Any) -> None:
        self.passes: list[float] = []
        self.prompts, self._t0 = 0, 0.0
        self._handles = [module.register_forward_pre_hook(self._pre, with_kwargs=True),
                         module.register_forward_hook(self._post)]

    @property
    def seconds(self) -> float:
        return sum(self.passes)

    def _pre(self, _m: Any, args: Any, kwargs: Any) -> None:
        self._t0 = time.perf_counter()
        sparse = kwargs.get("sparse_prompt_embeddings", args[2] if len(args) > 2 else None)
        self.prompts += int(sparse.shape[0]) if sparse is not None else 0

    def _post(self, *_a: Any) -> None:
        self.passes.append(time.perf_counter() - self._t0)

    def close(self) -> None:
        for h in self._handles:
            h.remove()


class KernelTimer:
    """The same record as ModuleTimer for samseg's path, whose encoder and decoder calls go
    through samseg.sam.kernels (explicit calls, no module hooks): an observer of one part."""

    def __init__(self, part: str) -> None:
        from samseg.sam.kernels import observe

        self.part, self.passes, self.prompts = part, [], 0
        self._observing = observe(self._seen)
        self._observing.__enter__()

    @property
    def seconds(self) -> float:
        return sum(self.passes)

    def _seen(self, part: str, seconds: float, prompts: int) -> None:
        if part == self.part:
            self.passes.append(seconds)
            self.prompts += prompts

    def close(self) -> None:
        self._observing.__exit__(None, None, None)


def amg_breakdown(amg_s: float, decoder: Any, encoder: Any) -> dict[str, Any]:
    """Split the AMG stage's seconds: decoder, the encoder passes the AMG runs itself (crop
    layers; for A also its second full-image pass), and the rest ("post": upsampling,
    filters, boxes, RLE, NMS, small-region removal). Both paths encode the full image once
    before the AMG (A: set_image, B: encode_image), so the AMG's passes are all but the first."""
    amg_encoder = sum(encoder.passes[1:])
    return {"decoder_s": decoder.seconds, "prompts": decoder.prompts,
            "decoder_ms_per_prompt": 1e3 * decoder.seconds / max(1, decoder.prompts),
            "encoder_passes": len(encoder.passes), "amg_encoder_s": amg_encoder,
            "amg_post_s": amg_s - decoder.seconds - amg_encoder,
            "amg_other_s": amg_s - decoder.seconds}
