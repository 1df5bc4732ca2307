"""Faster drop-ins for segment_anything's AMG post-processing, same outputs.

`mask_to_rle_pytorch` (SAM's uncompressed-RLE encoder, called on every batch of the AMG)
scans the whole change-index table once per mask — O(masks × changes) — and was the
largest single cost of samseg's AMG once the decoder got fast (profile in
benchmarks/README.md). `mask_to_rle_fast` splits the table once (O(changes)) and returns
exactly the same list of {"size": [h, w], "counts": [...]} dicts.

`MaskData.cat` deep-copies every list it appends (once per batch and once per crop):
samseg.sam.amg.generator.FastMaskData appends the same objects instead (profile in
benchmarks/README.md). samseg.sam.amg.batch calls `mask_to_rle_fast` directly; nothing
in segment_anything is patched.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def mask_to_rle_fast(masks_bhw: Any) -> list[dict[str, Any]]:
    """B×H×W bool torch tensor → B uncompressed RLEs, column-major (COCO) order,
    identical to segment_anything.utils.amg.mask_to_rle_pytorch."""
    import torch

    b, h, w = masks_bhw.shape
    flat = masks_bhw.permute(0, 2, 1).flatten(1)  # B×(W·H), Fortran order per mask
    change = (flat[:, 1:] ^ flat[:, :-1]).nonzero()  # rows sorted by mask, then position
    per_mask = torch.bincount(change[:, 0], minlength=b).tolist() if len(change) else [0] * b
    positions = np.split(change[:, 1].cpu().numpy() + 1, np.cumsum(per_mask)[:-1])
    first = flat[:, 0].cpu().numpy() if b else np.zeros(0, bool)
    out = []
    for i in range(b):
        bounds = np.concatenate(([0], positions[i], [h * w]))
        counts = [] if not first[i] else [0]
        counts.extend(np.diff(bounds).tolist())
        out.append({"size": [h, w], "counts": counts})
    return out
