"""Bound the AMG's memory by choosing points_per_batch from the crop size.

segment_anything's `_process_batch` upsamples every prompt's 3 low-res masks to the FULL
crop resolution as float32 logits, then copies them through the IoU filter, the stability
score (two thresholded copies), the bool masks and the RLE encoder. For a 12-MP photo and
the default 64 prompts per batch that is 64 × 3 × 12 M × 4 B ≈ 9 GB for the logits alone.

Every prompt is independent until the final NMS and MaskData keeps the order of the
batches, so points_per_batch changes memory and speed, never the masks: shrinking it for
large crops is safe. `points_per_batch_for` picks the largest batch whose working set fits
a byte budget.
"""

from __future__ import annotations

import os

# Bytes held per prompt per crop pixel at the peak of SAM's _process_batch: 3 mask
# outputs × (float32 logits 4 B + the filtered float32 copy 4 B + bool mask, stability
# thresholds and RLE diff temporaries ≈ 4 B). An upper estimate, checked against peak RSS
# by `benchmarks/run.py --mode memory`.
BYTES_PER_PROMPT_PIXEL = 3 * 12
# Plus the 1024² bilinear intermediate of postprocess_masks: 3 × 1024 × 1024 × 4 B × 2.
BYTES_PER_PROMPT_FIXED = 3 * 1024 * 1024 * 4 * 2
# 1.5 GiB of mask temporaries keeps a 12-MP photo's AMG (plus a vit_b model, image,
# features and RLEs) well under 4 GB RSS; override with $SAMSEG_AMG_BATCH_BYTES.
DEFAULT_BUDGET_BYTES = 1536 * 1024**2


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


def bytes_per_prompt(crop_hw: tuple[int, int]) -> int:
    """Estimated peak bytes one prompt costs in SAM's _process_batch for an H×W crop."""
    h, w = crop_hw
    return BYTES_PER_PROMPT_PIXEL * int(h) * int(w) + BYTES_PER_PROMPT_FIXED


def points_per_batch_for(crop_hw: tuple[int, int], requested: int, budget: int | None = None) -> int:
    """min(requested, largest batch whose estimated working set fits `budget` bytes), >= 1.

    crop_hw: the (height, width) of the image crop the AMG is processing (the full image
    for crop layer 0). budget: bytes, default `budget_bytes()`.
    """
    if requested < 1:
        raise ValueError(f"points_per_batch must be >= 1, got {requested}")
    limit = budget_bytes() if budget is None else int(budget)
    return max(1, min(int(requested), limit // bytes_per_prompt(crop_hw)))
