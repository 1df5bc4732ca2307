"""A run's class overlay redrawn at preview size in milliseconds, for the UI's live tuning.

`PreviewCanvas.build` reads every mask ONCE at the preview's sample points (off its RLE runs),
keeps it at preview scale as its bounding-box crop (a few bits per mask, never N×H×W), and fixes the painting order of all masks; each
redraw then paints only the crops of the non-noise masks. The preview label map is exactly
the full-resolution `compose_labels` map sampled at the preview's nearest-neighbour pixel
centres (tests/test_preview.py), so what the slider shows is what a saved run writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from samseg.core import rle
from samseg.core.compose import paint_order
from samseg.core.types import MaskSet

PREVIEW_LONG_SIDE = 1024


@dataclass(frozen=True, eq=False)
class PreviewCanvas:
    """rgb: h×w×3 uint8 at preview scale. order: every mask index in painting order (the
    `compose.paint_order` rule with all masks labelled). crops[i]: mask i at preview scale,
    its bounding box's bool crop placed at origins[i] = (y0, x0)."""

    rgb: np.ndarray
    order: np.ndarray
    origins: list[tuple[int, int]]
    crops: list[np.ndarray]

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.rgb.shape[0]), int(self.rgb.shape[1])

    @classmethod
    def build(cls, rgb_hw3: np.ndarray, masks: MaskSet, long_side: int = PREVIEW_LONG_SIDE) -> "PreviewCanvas":
        rows, cols = sample_points(masks.image_hw, long_side)
        origins, crops = [], []
        for i in range(len(masks)):
            origin, crop = _sampled_crop(masks.rles[i], masks.bbox_xywh[i], rows, cols)
            origins.append(origin)
            crops.append(crop)
        order = paint_order(masks.areas, masks.predicted_iou, np.zeros(len(masks), np.int64))
        return cls(np.ascontiguousarray(rgb_hw3[np.ix_(rows, cols)]), order, origins, crops)

    def label_map(self, labels: np.ndarray) -> np.ndarray:
        """h×w uint16 (0 = none, c + 1 = cluster c) for per-mask labels (N,), -1 = noise."""
        labels = np.asarray(labels)
        out = np.zeros(self.hw, np.uint16)
        for i in self.order:  # restricted to non-noise masks this is compose's own order
            if labels[i] < 0 or self.crops[i].size == 0:
                continue
            (y0, x0), crop = self.origins[i], self.crops[i]
            view = out[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]]
            np.copyto(view, np.uint16(labels[i] + 1), where=crop)
        return out


def _sampled_crop(mask_rle: dict, bbox_xywh: np.ndarray, rows: np.ndarray,
                  cols: np.ndarray) -> tuple[tuple[int, int], np.ndarray]:
    """The mask at the preview's sample points, cut to its bounding box: ((y0, x0), bool crop).
    Read off the RLE runs at the sample points inside the bbox (samseg.core.rle.sample_grid):
    no mask is decoded, so a 100-MP tiled run's canvas costs its runs, not N·H·W."""
    x, y, w, h = (int(v) for v in bbox_xywh)
    r0, r1 = np.searchsorted(rows, y), np.searchsorted(rows, y + h + 1)
    c0, c1 = np.searchsorted(cols, x), np.searchsorted(cols, x + w + 1)
    crop = rle.sample_grid(mask_rle, rows[r0:r1], cols[c0:c1])
    if not crop.any():
        return (0, 0), np.zeros((0, 0), bool)
    return (int(r0), int(c0)), crop


def sample_points(hw: tuple[int, int], long_side: int = PREVIEW_LONG_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices (nearest pixel centres) of an H×W image shrunk to at most
    `long_side` on its long side; the identity when it is already that small."""
    h, w = hw
    scale = min(1.0, long_side / max(h, w))
    ph, pw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    rows = np.minimum(((np.arange(ph) + 0.5) * h / ph).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(pw) + 0.5) * w / pw).astype(np.int64), w - 1)
    return rows, cols
