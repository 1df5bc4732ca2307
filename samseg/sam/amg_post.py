"""Faster drop-ins for segment_anything's AMG post-processing, same outputs.

`mask_to_rle_pytorch` (SAM's uncompressed-RLE encoder, called on every batch of the AMG)
scans the whole change-index table once per mask — O(masks × changes) — and was the
largest single cost of samseg's AMG once the decoder got fast (profile in
benchmarks/README.md). `mask_to_rle_fast` splits the table once (O(changes)) and returns
exactly the same list of {"size": [h, w], "counts": [...]} dicts.

`MaskData.cat` deep-copies every list it appends: the AMG calls it once per batch and once
per crop, so each mask's RLE counts list (thousands of ints for a ragged mask) is copied
element by element, twice. On vit_b at building.jpg scale with open filters this deepcopy
was the largest part of the AMG time outside the decoder (cProfile: 217 s of 260 s with
the profiler's overhead, 768 masks). `cat_without_deepcopy` appends the same objects
(the generator discards each batch right after `cat`, so nothing else holds them) and
gives equal MaskData.

Wiring: `with fast_amg_postprocessing(): generator.generate(image)` swaps both for the
duration of the block (identical outputs, so a concurrent caller seeing either version
gets the same result).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

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


def cat_without_deepcopy(self: Any, new_stats: Any) -> None:
    """segment_anything MaskData.cat with lists concatenated by reference (a new outer
    list, the same elements) instead of deep-copied; tensors/arrays as in SAM's cat."""
    import copy

    import torch

    for k, v in new_stats.items():
        if isinstance(v, list):
            old = self._stats.get(k)
            self._stats[k] = list(v) if old is None else old + v
        elif k not in self._stats or self._stats[k] is None:
            self._stats[k] = v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
        elif isinstance(v, torch.Tensor):
            self._stats[k] = torch.cat([self._stats[k], v], dim=0)
        elif isinstance(v, np.ndarray):
            self._stats[k] = np.concatenate([self._stats[k], v], axis=0)
        else:
            raise TypeError(f"MaskData key {k} has an unsupported type {type(v)}.")


@contextlib.contextmanager
def fast_amg_postprocessing() -> Iterator[None]:
    """Within the block, SamAutomaticMaskGenerator uses `mask_to_rle_fast` and MaskData
    uses `cat_without_deepcopy`."""
    import segment_anything.automatic_mask_generator as sam_amg
    from segment_anything.utils.amg import MaskData

    original_rle, original_cat = sam_amg.mask_to_rle_pytorch, MaskData.__dict__["cat"]
    sam_amg.mask_to_rle_pytorch = mask_to_rle_fast
    MaskData.cat = cat_without_deepcopy
    try:
        yield
    finally:
        sam_amg.mask_to_rle_pytorch = original_rle
        MaskData.cat = original_cat
