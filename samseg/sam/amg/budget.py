"""Bound the AMG's memory: how many masks are upsampled to full resolution at once.

segment_anything's `_process_batch` upsamples every prompt's 3 low-res masks to the FULL
crop resolution as float32 logits at once: for a 12-MP photo and the default 64 prompts per
batch that is 64 × 3 × 12 M × 4 B ≈ 9 GB for the logits alone. samseg.sam.amg.batch upsamples
the masks of a batch in chunks instead, and `masks_per_chunk` picks the largest chunk whose
working set fits a byte budget. Chunks never change the masks (every mask is processed on
its own until the final NMS, in order), only memory and speed — so points_per_batch is left
as configured (the decoder's low-res output is 0.75 MB per prompt at any image size).
"""

from __future__ import annotations

import os

# Bytes one mask holds per crop pixel while its chunk is processed: float32 logits 4 B,
# the two thresholded copies of the stability score 2 B, the bool mask 1 B, and the
# transposed copy, XOR and padding temporaries of the RLE encoder ≈ 3 B. An upper
# estimate, checked against peak RSS by `benchmarks/run.py --mode memory`.
BYTES_PER_MASK_PIXEL = 10
# Plus the bilinear intermediate in SAM's 1024² input frame (float32).
BYTES_PER_MASK_FIXED = 1024 * 1024 * 4
# 64 MiB per chunk: ~6 masks of a 0.6-MP photo, 1 of a 12-MP one. Measured on the 2-core dev
# machine (vit_b, 770² image): 16 → 64 → 256 MiB changed the post-processing time by less
# than the run-to-run noise, while 256 MiB chunks cost 200 MB more RSS; small chunks also
# stay below glibc's mmap threshold, so their pages are reused instead of faulted in again.
DEFAULT_BUDGET_BYTES = 64 * 1024**2


def budget_bytes() -> int:
    """$SAMSEG_AMG_BATCH_BYTES if set (bytes, > 0), else DEFAULT_BUDGET_BYTES."""
    raw = os.environ.get("SAMSEG_AMG_BATCH_BYTES")
    if raw is None:
        return DEFAULT_BUDGET_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"SAMSEG_AMG_BATCH_BYTES must be an integer number of bytes, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"SAMSEG_AMG_BATCH_BYTES must be > 0, got {value}")
    return value


def bytes_per_mask(crop_hw: tuple[int, int]) -> int:
    """Estimated peak bytes one mask costs in samseg.sam.amg.batch for an H×W crop."""
    h, w = crop_hw
    return BYTES_PER_MASK_PIXEL * int(h) * int(w) + BYTES_PER_MASK_FIXED


def masks_per_chunk(crop_hw: tuple[int, int], budget: int | None = None) -> int:
    """Largest number of masks (>= 1) whose estimated working set fits `budget` bytes.

    crop_hw: the (height, width) of the image crop the AMG is processing (the full image
    for crop layer 0). budget: bytes, default `budget_bytes()`.
    """
    limit = budget_bytes() if budget is None else int(budget)
    return max(1, limit // bytes_per_mask(crop_hw))
