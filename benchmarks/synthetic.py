"""Smooth synthetic masks and clustered embeddings for the benchmarks that must not depend on
a random SAM (whose masks are salt-and-pepper): overlapping ellipses, one class per group."""

from __future__ import annotations

from typing import Any

import numpy as np


def smooth_masks(hw: tuple[int, int], n: int, seed: int = 0) -> Any:
    """MaskSet of n overlapping ellipses (sizes from ~0.05% to ~5% of the image)."""
    from samseg.core.types import MaskSet

    h, w = hw
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[:h, :w]
    rles_masks = []
    for start in range(0, n, 32):  # build in chunks: never n×H×W at once
        block = np.zeros((min(32, n - start), h, w), bool)
        for k in range(len(block)):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(0.01, 0.12) * h, rng.uniform(0.01, 0.12) * w
            block[k] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        rles_masks.append(MaskSet.from_binary(block, predicted_iou=rng.random(len(block)).astype(np.float32)))
    records = [r for m in rles_masks for r in m.to_records()]
    return MaskSet.from_records(hw, records)


def clustered_embeddings(n: int, c: int = 256, k: int = 8, seed: int = 0) -> np.ndarray:
    """N×C float32: k directions plus small noise, so DBSCAN finds about k classes."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, c))
    return (centres[rng.integers(0, k, n)] + 0.05 * rng.normal(size=(n, c))).astype(np.float32)


def smooth_rgb(hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    h, w = hw
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, h * w * 3).reshape(h, w, 3)
    return (base + rng.integers(0, 30, (h, w, 3))).clip(0, 255).astype(np.uint8)
