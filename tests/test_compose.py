"""samseg.core.compose: overlap rule, noise, dtype/shape, chunking, errors."""

from __future__ import annotations

import numpy as np
import pytest

from samseg.core.compose import ComposeError, compose_labels, paint_order
from samseg.core.types import ClusterResult, MaskSet

HW = (40, 60)  # non-square on purpose


def _masks(*boxes, iou=None) -> MaskSet:
    """Rectangles (y0, y1, x0, x1) → MaskSet at HW."""
    m = np.zeros((len(boxes), *HW), bool)
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        m[i, y0:y1, x0:x1] = True
    return MaskSet.from_binary(m, predicted_iou=iou)


def _labels(*ids) -> ClusterResult:
    return ClusterResult(labels=np.array(ids, dtype=np.int64))


def test_smallest_mask_wins_regardless_of_order():
    pizza, pepperoni = (0, 30, 0, 40), (10, 15, 10, 15)
    for boxes, labels in [((pizza, pepperoni), (0, 1)), ((pepperoni, pizza), (1, 0))]:
        out = compose_labels(_masks(*boxes), _labels(*labels))
        assert out.dtype == np.uint16 and out.shape == HW
        assert (out[10:15, 10:15] == 2).all()  # pepperoni (cluster 1) on top
        assert out[0, 0] == 1 and out[29, 39] == 1  # rest of pizza is cluster 0
        assert (out[30:, :] == 0).all() and (out[:, 40:] == 0).all()  # background
        assert (out == 2).sum() == 25 and (out == 1).sum() == 30 * 40 - 25


def test_equal_area_tie_goes_to_higher_predicted_iou_then_lower_index():
    a, b = (0, 10, 0, 10), (5, 15, 5, 15)  # both 100 px, overlap 25 px
    out = compose_labels(_masks(a, b, iou=[0.8, 0.9]), _labels(0, 1))
    assert (out[5:10, 5:10] == 2).all()  # b has the higher IoU
    out = compose_labels(_masks(a, b, iou=[0.9, 0.8]), _labels(0, 1))
    assert (out[5:10, 5:10] == 1).all()
    out = compose_labels(_masks(a, b, iou=[0.9, 0.9]), _labels(0, 1))
    assert (out[5:10, 5:10] == 1).all()  # full tie → lower index (a)


def test_paint_order_is_priority_ascending():
    areas = np.array([50, 10, 10, 99, 10])
    iou = np.array([0.5, 0.7, 0.9, 0.1, 0.9])
    labels = np.array([0, 0, 1, -1, 2])
    # noise (3) skipped; largest first; among the 10-px masks: iou 0.7 (1), then iou 0.9 with
    # higher index (4) before lower index (2), so mask 2 is painted last and wins.
    np.testing.assert_array_equal(paint_order(areas, iou, labels), [0, 1, 4, 2])


def test_noise_paints_nothing_and_does_not_hide_a_class_below():
    big, small = (0, 20, 0, 20), (5, 10, 5, 10)
    out = compose_labels(_masks(big, small), _labels(0, -1))
    assert (out[0:20, 0:20] == 1).all()  # the noise mask on top does not cut a hole
    out = compose_labels(_masks(big, small), _labels(-1, -1))
    assert (out == 0).all()


def test_no_masks_gives_zero_map():
    out = compose_labels(MaskSet.empty(HW), _labels())
    assert out.shape == HW and out.dtype == np.uint16 and not out.any()


def test_run_painting_equals_dense_painting():
    """The RLE-run painter gives what decoding every mask and painting it in order gives."""
    rng = np.random.default_rng(0)
    dense = rng.random((9, *HW)) < 0.3
    masks = MaskSet.from_binary(dense, predicted_iou=rng.random(9))
    labels = _labels(0, 1, 2, -1, 0, 1, 2, 0, 1)
    expected = np.zeros(HW, np.uint16)
    for i in paint_order(masks.areas, masks.predicted_iou, labels.labels):
        expected[dense[i]] = labels.labels[i] + 1
    np.testing.assert_array_equal(compose_labels(masks, labels), expected)


def test_label_count_mismatch_raises():
    with pytest.raises(ComposeError, match="2 cluster labels for 1 masks"):
        compose_labels(_masks((0, 5, 0, 5)), _labels(0, 0))
