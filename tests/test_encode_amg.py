"""samseg.sam.encode + samseg.sam.amg on the tiny-random SAM (meaningless masks; we test plumbing).

Checks: encode-once features equal SamPredictor's; geometry for non-square images; the
full image is encoded exactly once even with crop layers; reusing features changes nothing
versus a plain SamAutomaticMaskGenerator; bad inputs raise clear errors.
Filters are opened up (pred_iou_thresh=0, stability_score_thresh=0, box_nms_thresh=1.0)
because a random SAM's masks otherwise nearly all get filtered out.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from samseg.sam.amg import EncodedMismatchError, count_encoder_calls, generate_masks, make_generator
from samseg.core.config import AmgConfig
from samseg.sam.encode import ImageArrayError, encode_image
from samseg.sam.model import load_model
from samseg.core.types import EncodedImage, ImageGeometry, MaskSet

OPEN = AmgConfig(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-random", device="cpu")


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    """300×500 (H×W) synthetic RGB: noise plus two flat rectangles (encoder/geometry tests)."""
    img = np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8)
    img[40:160, 60:260] = (220, 30, 30)
    img[180:290, 300:480] = (20, 200, 90)
    return img


@pytest.fixture(scope="module")
def encoded(model, rgb) -> EncodedImage:
    return encode_image(model, rgb)


@pytest.fixture(scope="module")
def small() -> np.ndarray:
    """96×160 RGB gradient with two rectangles, for AMG tests. Small on purpose: tiny-random's
    masks are salt-and-pepper noise, and SAM's AMG cost (RLE, MaskData.cat deep copies)
    grows with the number of runs, i.e. with the pixel count."""
    yy, xx = np.mgrid[0:96, 0:160]
    img = np.stack([xx * 255 // 160, yy * 255 // 96, (xx + yy) * 255 // 256], -1).astype(np.uint8)
    img[10:50, 20:80] = (220, 30, 30)
    img[60:90, 100:150] = (20, 200, 90)
    return img


@pytest.fixture(scope="module")
def small_encoded(model, small) -> EncodedImage:
    return encode_image(model, small)


@pytest.fixture(scope="module")
def small_masks(model, small, small_encoded) -> MaskSet:
    return generate_masks(model, small, small_encoded, OPEN)


# --------------------------------------------------------------------------- encode


def test_features_equal_sam_predictor(model, rgb, encoded) -> None:
    from segment_anything import SamPredictor

    predictor = SamPredictor(model.sam)
    with torch.no_grad():
        predictor.set_image(rgb)
    expected = predictor.features[0].numpy()
    assert encoded.features.dtype == np.float32 and encoded.features.shape == (32, 64, 64)
    assert encoded.features.flags.c_contiguous
    # segment_anything's kernels: SamPredictor's features bit for bit; the fast ones within fp32 rounding
    reference = encode_image(dataclasses.replace(model, kernels="sam"), rgb)
    np.testing.assert_array_equal(reference.features, expected)
    np.testing.assert_allclose(encoded.features, expected, rtol=0, atol=1e-5)
    assert encoded.geometry.input_hw == tuple(predictor.input_size)


def test_geometry_non_square(encoded) -> None:
    g = encoded.geometry
    assert g == ImageGeometry(original_hw=(300, 500), input_hw=(614, 1024), img_size=1024, patch_size=16)
    assert g.valid_cells_hw == (39, 64)


@pytest.mark.parametrize(
    "bad, problem",
    [
        (np.zeros((10, 10, 3), np.float32), "dtype uint8"),
        (np.zeros((10, 10), np.uint8), "H×W×3"),
        (np.zeros((10, 10, 4), np.uint8), "H×W×3"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        ([[1, 2, 3]], "numpy"),
    ],
)
def test_encode_rejects_bad_arrays(model, bad, problem) -> None:
    with pytest.raises(ImageArrayError, match=problem):
        encode_image(model, bad)


# --------------------------------------------------------------------------- AMG


def test_generator_gets_every_amg_config_field(model) -> None:
    cfg = AmgConfig(points_per_side=5, points_per_batch=7, pred_iou_thresh=0.1, stability_score_thresh=0.2,
                    stability_score_offset=0.5, box_nms_thresh=0.3, crop_n_layers=2, crop_nms_thresh=0.4,
                    crop_overlap_ratio=0.25, crop_n_points_downscale_factor=2, min_mask_region_area=9)
    gen = make_generator(model, cfg)
    for field in dataclasses.fields(AmgConfig):
        if field.name != "points_per_side":
            assert getattr(gen, field.name) == getattr(cfg, field.name), field.name
    assert [len(g) for g in gen.point_grids] == [25, 4, 1]  # 5², then ÷2 per layer: 2², 1²
    assert gen.output_mode == "coco_rle"


def _n_crops(hw: tuple[int, int], cfg: AmgConfig) -> int:
    from segment_anything.utils.amg import generate_crop_boxes

    return len(generate_crop_boxes(hw, cfg.crop_n_layers, cfg.crop_overlap_ratio)[0])


@pytest.mark.parametrize(
    "cfg",
    [
        OPEN,
        # crops + SAM's small-region cleanup; crop NMS opened up too so masks survive
        dataclasses.replace(OPEN, crop_n_layers=1, crop_nms_thresh=1.0, crop_n_points_downscale_factor=2,
                            min_mask_region_area=20),
    ],
    ids=["full-image", "crop-layer-and-cleanup"],
)
def test_encode_once_and_identical_to_plain_amg(model, small, cfg) -> None:
    """With segment_anything's kernels the fork's masks are SAM's own, field by field (the
    fast kernels' equality within fp32 rounding: tests/test_fast_*.py, test_decode_above.py)."""
    from segment_anything import SamAutomaticMaskGenerator

    model = dataclasses.replace(model, kernels="sam")
    with count_encoder_calls(model) as calls:
        enc = encode_image(model, small)
        assert calls.count == 1
        masks = generate_masks(model, small, enc, cfg)
    # the full image is encoded once (by encode_image); each layer-1 crop once
    assert calls.count == _n_crops(small.shape[:2], cfg) == 1 + 4 * cfg.crop_n_layers
    assert len(masks) > 0

    plain = SamAutomaticMaskGenerator(model.sam, output_mode="coco_rle", **dataclasses.asdict(cfg)).generate(small)
    assert [r["segmentation"] for r in plain] == masks.rles
    np.testing.assert_array_equal([r["predicted_iou"] for r in plain], masks.predicted_iou)
    np.testing.assert_array_equal([r["stability_score"] for r in plain], masks.stability_score)
    np.testing.assert_array_equal([r["area"] for r in plain], masks.areas)
    np.testing.assert_array_equal([r["bbox"] for r in plain], masks.bbox_xywh)
    np.testing.assert_array_equal([r["crop_box"] for r in plain], masks.crop_box_xywh)
    np.testing.assert_array_equal([r["point_coords"][0] for r in plain], masks.point_coords_xy)


def test_mask_set_is_consistent(small_masks) -> None:
    masks = small_masks
    assert isinstance(masks, MaskSet) and masks.image_hw == (96, 160)
    n = len(masks)
    assert n == 3 * 4 * 4  # box NMS off: 3 multimask outputs per prompt, 4×4 prompts
    assert all(r["size"] == [96, 160] and isinstance(r["counts"], str) for r in masks.rles)
    decoded = masks.decode()
    assert decoded.shape == (n, 96, 160)
    np.testing.assert_array_equal(decoded.reshape(n, -1).sum(1), masks.areas)
    assert masks.bbox_xywh.shape == (n, 4) and masks.point_coords_xy.shape == (n, 2)
    assert (masks.point_coords_xy >= 0).all() and (masks.point_coords_xy <= [160, 96]).all()
    np.testing.assert_array_equal(masks.crop_box_xywh, np.tile([0, 0, 160, 96], (n, 1)))


def test_zero_masks_gives_empty_mask_set(model, small, small_encoded) -> None:
    # predicted IoU is never above 1e6, so every mask is filtered out
    cfg = dataclasses.replace(OPEN, points_per_side=2, pred_iou_thresh=1e6)
    masks = generate_masks(model, small, small_encoded, cfg)
    assert len(masks) == 0 and masks.image_hw == (96, 160)
    assert masks.bbox_xywh.shape == (0, 4) and masks.decode().shape == (0, 96, 160)


def test_mismatched_encoded_is_rejected(model, small, small_encoded) -> None:
    with pytest.raises(EncodedMismatchError, match=r"\(96, 160\) image, got a \(96, 159\) image"):
        generate_masks(model, np.ascontiguousarray(small[:, :159]), small_encoded, OPEN)
    other = EncodedImage(features=np.zeros((256, 64, 64), np.float32), geometry=small_encoded.geometry)
    with pytest.raises(EncodedMismatchError, match="256 channels but tiny-random expects 32"):
        generate_masks(model, small, other, OPEN)


def test_count_encoder_calls_removes_its_observer(model) -> None:
    from samseg.sam.kernels import observers

    before = observers()
    with count_encoder_calls(model) as calls:
        assert observers() == before + 1
    assert calls.count == 0 and observers() == before


def test_real_photo_geometry_and_single_encode(model, photos) -> None:
    path = photos / "building.jpg"
    from PIL import Image

    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    h, w = rgb.shape[:2]
    with count_encoder_calls(model) as calls:
        enc = encode_image(model, rgb)
        masks = generate_masks(model, rgb, enc, dataclasses.replace(OPEN, points_per_side=2))
    assert calls.count == 1
    assert enc.geometry.original_hw == (h, w) and max(enc.geometry.input_hw) == 1024
    assert enc.geometry == ImageGeometry.for_image((h, w))
    assert masks.image_hw == (h, w)


def test_memory_cap_on_mask_chunks_changes_no_mask(model, small, small_encoded, small_masks, monkeypatch) -> None:
    # A byte budget of one mask forces chunks of one mask: only memory may change, not the masks.
    from samseg.sam.amg.budget import bytes_per_mask, masks_per_chunk

    monkeypatch.setenv("SAMSEG_AMG_BATCH_BYTES", str(bytes_per_mask(small.shape[:2])))
    assert masks_per_chunk(small.shape[:2]) == 1
    capped = generate_masks(model, small, small_encoded, OPEN)
    assert len(small_masks) > 0 and capped.rles == small_masks.rles
    np.testing.assert_array_equal(capped.predicted_iou, small_masks.predicted_iou)
    np.testing.assert_array_equal(capped.stability_score, small_masks.stability_score)


def test_fast_kernels_are_the_cpu_default_and_can_be_turned_off(monkeypatch) -> None:
    from samseg.sam.kernels import KERNELS_ENV, resolve_kernels

    monkeypatch.delenv(KERNELS_ENV, raising=False)
    assert load_model("tiny-random", device="cpu").kernels == "fast"
    assert load_model("tiny-random", device="cpu", kernels="sam").kernels == "sam"
    assert resolve_kernels(None, "cuda:0") == "sam"  # until a GPU measurement says otherwise
    monkeypatch.setenv(KERNELS_ENV, "sam")
    assert load_model("tiny-random", device="cpu").kernels == "sam"
    with pytest.raises(ValueError, match="unknown kernels 'turbo'"):
        resolve_kernels("turbo", "cpu")


def test_zero_masks_with_crop_layers_gives_empty_mask_set(model, small, small_encoded) -> None:
    # segment_anything alone raises IndexError here (box_area on a (0,)-shaped crop_boxes)
    cfg = dataclasses.replace(OPEN, points_per_side=2, pred_iou_thresh=1e6, crop_n_layers=1)
    masks = generate_masks(model, small, small_encoded, cfg)
    assert len(masks) == 0 and masks.image_hw == (96, 160)
