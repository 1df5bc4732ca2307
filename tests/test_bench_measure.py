"""benchmarks.measure.mask_iou_matrix equals pycocotools' RLE IoU (chunk edges, empty masks)."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from benchmarks.measure import mask_iou_matrix


def _rle(m: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))


def test_mask_iou_matrix_equals_pycocotools() -> None:
    rng = np.random.default_rng(0)
    a = [_rle(rng.random((50, 70)) > p) for p in (0.2, 0.5, 0.5, 0.8, 0.95)]
    b = [_rle(rng.random((50, 70)) > p) for p in (0.3, 0.5, 0.9)] + [_rle(np.zeros((50, 70))), a[1]]
    expected = np.array(mask_utils.iou(a, b, [0] * len(b))).reshape(len(a), len(b))
    got = mask_iou_matrix(a, b, chunk=2)  # 2 does not divide 5: ragged chunks on both sides
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert got[1, 4] == 1.0 and (got[:, 3] == 0).all()
