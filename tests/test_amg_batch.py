"""samseg.sam.amg.batch: the fused, chunked `_process_batch` gives exactly SAM's MaskData."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samseg.sam.amg.batch import process_batch, upscale_logits
from samseg.sam.model import load_model


@pytest.fixture(scope="module")
def sam():
    return load_model("tiny-random", device="cpu").sam


@pytest.mark.parametrize("orig_hw", [(96, 160), (160, 96), (770, 769), (1450, 2068), (1024, 1024), (700, 9), (1, 1)])
def test_upscale_logits_is_bit_identical_to_postprocess_masks(sam, orig_hw) -> None:
    from segment_anything.utils.transforms import ResizeLongestSide

    input_hw = ResizeLongestSide(1024).get_preprocess_shape(*orig_hw, 1024)
    low = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(sum(orig_hw)))
    with torch.inference_mode():
        expected = sam.postprocess_masks(low, input_hw, orig_hw)
        got = upscale_logits(low, 1024, input_hw, orig_hw)
    assert got.shape == expected.shape == (2, 3, *orig_hw)
    assert torch.equal(got, expected)


def _image(h: int = 96, w: int = 160) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (h + w)], -1).astype(np.uint8)
    img[10:50, 20:80] = (220, 30, 30)
    return img


_PREDICTORS: dict[tuple, object] = {}


def _generator(sam, image: np.ndarray, crop_box: list[int], **cfg):
    """A SamAutomaticMaskGenerator whose predictor holds the crop's features (one encoder
    pass per crop for the whole module: _process_batch only reads the predictor)."""
    from segment_anything import SamAutomaticMaskGenerator

    gen = SamAutomaticMaskGenerator(sam, points_per_side=None, point_grids=[np.zeros((1, 2))], **cfg)
    key = (id(sam), image.shape, tuple(crop_box))
    if key not in _PREDICTORS:
        x0, y0, x1, y1 = crop_box
        gen.predictor.set_image(image[y0:y1, x0:x1])
        _PREDICTORS[key] = gen.predictor
    gen.predictor = _PREDICTORS[key]
    return gen


def _points(crop_box: list[int], n_side: int = 4) -> np.ndarray:
    """n_side² prompts: 16 give 48 masks, so chunks of 7 still end ragged (six of 7, then one of 6)."""
    from segment_anything.utils.amg import build_point_grid

    x0, y0, x1, y1 = crop_box
    return build_point_grid(n_side) * np.array([[x1 - x0, y1 - y0]])


def _assert_same(got, expected) -> None:
    assert set(got._stats) == set(expected._stats) == {"iou_preds", "points", "stability_score", "boxes", "rles"}
    for key in ("iou_preds", "points", "stability_score", "boxes"):
        assert got[key].dtype == expected[key].dtype, key
        assert torch.equal(got[key], expected[key]), key
    assert got["rles"] == expected["rles"]


CASES = {
    "open": dict(pred_iou_thresh=0.0, stability_score_thresh=0.0),
    "filters-drop-some": dict(pred_iou_thresh=None, stability_score_thresh=None),  # set from the data below
    "iou-drops-all": dict(pred_iou_thresh=1e6, stability_score_thresh=0.0),
    "stability-drops-all": dict(pred_iou_thresh=0.0, stability_score_thresh=1.5),
}


_EXPECTED: dict[tuple, tuple] = {}


def _sams(sam, image: np.ndarray, crop_box: list[int], case: str, points: np.ndarray) -> tuple[dict, object]:
    """(the generator's settings, SAM's own MaskData) of one crop and case, computed once per
    module: the three chunk sizes compare against the same reference."""
    key = (tuple(crop_box), case)
    if key not in _EXPECTED:
        cfg = dict(CASES[case])
        x0, y0, x1, y1 = crop_box
        im_size, orig_size = (y1 - y0, x1 - x0), image.shape[:2]
        if cfg["pred_iou_thresh"] is None:  # thresholds at the data's medians: both filters drop masks
            probe = _generator(sam, image, crop_box, pred_iou_thresh=0.0, stability_score_thresh=0.0)
            data = probe._process_batch(points, im_size, crop_box, orig_size)
            cfg = dict(pred_iou_thresh=float(data["iou_preds"].median()),
                       stability_score_thresh=float(data["stability_score"].median()))
        gen = _generator(sam, image, crop_box, stability_score_offset=0.5, **cfg)
        _EXPECTED[key] = (cfg, gen._process_batch(points, im_size, crop_box, orig_size))
    return _EXPECTED[key]


@pytest.mark.parametrize("crop_box", [[0, 0, 160, 96], [30, 20, 130, 80], [0, 0, 100, 96]], ids=["full", "inner-crop", "left-crop"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("chunk", [1, 7, 1000])  # 7: a ragged last chunk
def test_process_batch_equals_sams(sam, crop_box, case, chunk) -> None:
    image = _image()
    points = _points(crop_box)
    x0, y0, x1, y1 = crop_box
    im_size, orig_size = (y1 - y0, x1 - x0), image.shape[:2]
    with torch.inference_mode():
        cfg, expected = _sams(sam, image, crop_box, case, points)
        gen = _generator(sam, image, crop_box, stability_score_offset=0.5, **cfg)
        got = process_batch(gen, points, im_size, crop_box, orig_size, masks_per_chunk=chunk)
    _assert_same(got, expected)
    if case.endswith("drops-all"):
        assert len(got["rles"]) == 0
    elif case == "open" and crop_box == [0, 0, 160, 96]:
        assert len(got["rles"]) > 0


def test_empty_batch_keeps_sams_box_dtype(sam) -> None:
    """SAM's boxes are float zeros when no mask reaches the threshold step (IoU filter
    drops all) and int64 when masks are thresholded; a chunk with no survivor must not
    turn the batch's boxes float."""
    image, crop_box = _image(), [0, 0, 160, 96]
    points = _points(crop_box)
    with torch.inference_mode():
        gen = _generator(sam, image, crop_box, pred_iou_thresh=1e6, stability_score_thresh=0.0)
        assert process_batch(gen, points, (96, 160), crop_box, (96, 160), 2)["boxes"].dtype == torch.float32
        probe = _generator(sam, image, crop_box, pred_iou_thresh=0.0, stability_score_thresh=0.0)
        scores = probe._process_batch(points, (96, 160), crop_box, (96, 160))["stability_score"]
        # only the single most stable mask survives: every other chunk of 1 is empty
        gen = _generator(sam, image, crop_box, pred_iou_thresh=0.0, stability_score_thresh=float(scores.max()))
        expected = gen._process_batch(points, (96, 160), crop_box, (96, 160))
        got = process_batch(gen, points, (96, 160), crop_box, (96, 160), 1)
    assert got["boxes"].dtype == torch.int64
    _assert_same(got, expected)
