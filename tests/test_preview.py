"""samseg.core.preview: the preview label map is compose_labels' map sampled at the preview pixels."""

from __future__ import annotations

import numpy as np
import pytest

from samseg.core.compose import compose_labels
from samseg.core.preview import PreviewCanvas, sample_points
from samseg.core.types import ClusterResult, MaskSet


def _masks(h: int, w: int, n: int, seed: int) -> MaskSet:
    rng = np.random.default_rng(seed)
    m = np.zeros((n, h, w), bool)
    for i in range(n):  # overlapping rectangles and discs of every size
        y, x = rng.integers(0, h), rng.integers(0, w)
        if i % 2:
            m[i, y : y + rng.integers(1, h // 2), x : x + rng.integers(1, w // 2)] = True
        else:
            yy, xx = np.ogrid[:h, :w]
            m[i] = (yy - y) ** 2 + (xx - x) ** 2 < rng.integers(1, h // 3) ** 2
    return MaskSet.from_binary(m, predicted_iou=rng.random(n).astype(np.float32))


@pytest.mark.parametrize("hw, long_side", [((300, 500), 128), ((64, 48), 1024), ((1000, 37), 200)])
def test_preview_map_is_the_full_map_sampled(hw, long_side) -> None:
    masks = _masks(*hw, n=40, seed=hw[0])
    rgb = np.random.default_rng(0).integers(0, 255, (*hw, 3), dtype=np.uint8)
    canvas = PreviewCanvas.build(rgb, masks, long_side)
    rows, cols = sample_points(hw, long_side)
    assert max(canvas.hw) <= long_side and canvas.rgb.shape == (len(rows), len(cols), 3)
    for seed in range(3):  # labels with noise, different clusterings of the same masks
        labels = np.random.default_rng(seed).integers(-1, 5, len(masks))
        full = compose_labels(masks, ClusterResult(labels))
        np.testing.assert_array_equal(canvas.label_map(labels), full[np.ix_(rows, cols)])


def test_all_noise_is_an_empty_map() -> None:
    masks = _masks(50, 60, 5, 1)
    canvas = PreviewCanvas.build(np.zeros((50, 60, 3), np.uint8), masks)
    assert not canvas.label_map(np.full(5, -1)).any()
