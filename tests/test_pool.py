"""samseg.core.pool: notebook equivalence on masks from real photos, geometry, options, fallbacks."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from samseg.core import pool as pool_mod
from samseg.core.config import NOTEBOOK, PoolConfig
from samseg.core.pool import EmptyMaskError, PoolError, nearest_indices, pool_embeddings
from samseg.core.types import EncodedImage, ImageGeometry, MaskSet

sys.path.insert(0, str(Path(__file__).parent))
from reference_notebook import notebook_embeddings  # noqa: E402

SQUARE = ImageGeometry.for_image((1024, 1024))


def _features(c: int, geometry: ImageGeometry = SQUARE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(c, *geometry.feature_hw)).astype(np.float32)


def _photo_masks(path: Path, k: int = 6, n_masks: int = 36) -> np.ndarray:
    """N×1024×1024 bool: connected components of a k-means colour quantisation of a real photo
    squashed to 1024×1024, picked across the whole range of component sizes (1 px up)."""
    import cv2
    from PIL import Image

    rgb = np.asarray(Image.open(path).convert("RGB").resize((1024, 1024), Image.BILINEAR))
    pixels = rgb.reshape(-1, 3).astype(np.float32)
    cv2.setRNGSeed(0)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 1.0)
    _, _, centers = cv2.kmeans(pixels[::37], k, None, criteria, 1, cv2.KMEANS_PP_CENTERS)
    quant = ((pixels[:, None, :] - centers[None]) ** 2).sum(-1).argmin(1).reshape(1024, 1024)
    comps = []  # (area, colour, component id, labels)
    for colour in range(k):
        n, labels, stats, _ = cv2.connectedComponentsWithStats((quant == colour).astype(np.uint8), connectivity=8)
        comps += [(int(stats[j, cv2.CC_STAT_AREA]), colour, j, labels) for j in range(1, n)]
    comps.sort(key=lambda t: (t[0], t[1], t[2]))
    areas = np.array([t[0] for t in comps])
    targets = np.geomspace(1, areas[-1], n_masks)  # log-spaced sizes: specks up to the largest region
    picks = np.unique([int(np.argmin(np.abs(np.log(areas) - np.log(t)))) for t in targets])
    return np.stack([comps[i][3] == comps[i][2] for i in picks])


@pytest.fixture(scope="module", params=["building.jpg", "bears.jpg"])
def photo_case(request, photos):
    masks = _photo_masks(photos / request.param)
    features = _features(256, seed=1)
    return masks, features, notebook_embeddings(masks, features)


def test_matches_notebook_reference_on_real_photo_masks(photo_case):
    masks, features, ref = photo_case
    ours = pool_embeddings(MaskSet.from_binary(masks), EncodedImage(features, SQUARE), NOTEBOOK.pool)
    ok = np.isfinite(ref).all(axis=1)
    assert ours.shape == (len(masks), 256) and ours.dtype == np.float32
    assert ok.sum() >= 20, "too few comparable masks; the fixture lost its variety"
    np.testing.assert_allclose(ours[ok], ref[ok], atol=1e-5, rtol=0)


def test_notebook_nan_masks_fall_back_to_most_overlapped_cell(photo_case):
    masks, features, ref = photo_case
    nan_rows = np.flatnonzero(~np.isfinite(ref).all(axis=1))
    assert len(nan_rows), "photo masks should include tiny components the notebook turns into NaN"
    ours = pool_embeddings(MaskSet.from_binary(masks[nan_rows]), EncodedImage(features, SQUARE), NOTEBOOK.pool)
    assert np.isfinite(ours).all()
    for row, i in enumerate(nan_rows):
        counts = masks[i].reshape(64, 16, 64, 16).sum(axis=(1, 3))
        r, c = np.unravel_index(np.argmax(counts), counts.shape)
        np.testing.assert_allclose(ours[row], features[:, r, c], atol=1e-6)


def test_notebook_nan_hand_built_diagonal():
    mask = np.zeros((1, 1024, 1024), bool)
    mask[0, np.arange(0, 1024, 16) + 3, np.arange(0, 1024, 16) + 5] = True  # one pixel in each diagonal cell
    features = _features(8)
    assert np.isnan(notebook_embeddings(mask, features)).all()
    ours = pool_embeddings(MaskSet.from_binary(mask), EncodedImage(features, SQUARE), NOTEBOOK.pool)
    np.testing.assert_allclose(ours[0], features[:, 0, 0], atol=1e-6)  # tie → first cell in row-major order


def test_matches_reference_on_tiny_random_amg_masks(tiny_model, smoke_cfg):
    from samseg.sam.amg import generate_masks
    from samseg.sam.encode import encode_image

    rgb = np.random.default_rng(0).integers(0, 255, size=(1024, 1024, 3), dtype=np.uint8)
    encoded = encode_image(tiny_model, rgb)
    # 2×2 prompts × 3 multimask outputs: a dozen masks keeps this CPU test short.
    masks = generate_masks(tiny_model, rgb, encoded, dataclasses.replace(smoke_cfg.amg, points_per_side=2))
    assert len(masks) > 0, "tiny-random AMG with opened-up filters must return masks"
    ref = notebook_embeddings(masks.decode(), encoded.features)
    ours = pool_embeddings(masks, encoded, NOTEBOOK.pool)
    ok = np.isfinite(ref).all(axis=1)
    np.testing.assert_allclose(ours[ok], ref[ok], atol=1e-5, rtol=0)
    assert np.isfinite(ours).all()


# --- geometry -------------------------------------------------------------------------

WIDE = ImageGeometry.for_image((480, 1000))  # input 492×1024: 31 valid cell rows, the last one 12 px tall


def _padded_junk_features(geometry: ImageGeometry, c: int = 16) -> np.ndarray:
    f = np.random.default_rng(2).normal(size=(c, *geometry.feature_hw)).astype(np.float32)
    gh, gw = geometry.valid_cells_hw
    f[:, gh:, :] = 1e6
    f[:, :, gw:] = 1e6
    return f


def test_non_square_padding_cells_never_leak():
    assert WIDE.input_hw == (492, 1024) and WIDE.valid_cells_hw == (31, 64)
    rng = np.random.default_rng(3)
    masks = np.zeros((5, 480, 1000), bool)
    masks[0, 400:480, 100:300] = True  # touches the bottom edge
    masks[1] = rng.random((480, 1000)) < 0.3  # scattered everywhere
    masks[2, :, :] = True  # whole image
    masks[3, 479, 999] = True  # 1 px in the corner
    masks[4, 470:480, :] = True  # bottom strip
    f = _padded_junk_features(WIDE)
    for cfg in (PoolConfig(), PoolConfig(cell_rule="min_coverage", min_coverage=0.2, weighting="coverage")):
        emb = pool_embeddings(MaskSet.from_binary(masks), EncodedImage(f, WIDE), cfg)
        assert np.isfinite(emb).all() and np.abs(emb).max() < 10


def test_bottom_edge_cell_coverage_counts_only_valid_pixels():
    # Original rows 468..479 are exactly what nearest-resize puts in input rows 480..491,
    # the 12 valid rows of cell row 30. Against its valid area that row is 100% covered;
    # against a full 16×16 cell it would be 75% and fail min_coverage=0.9.
    rows = nearest_indices(480, 492)
    assert set(rows[480:].tolist()) == set(range(468, 480)) and rows[479] < 468
    mask = np.zeros((1, 480, 1000), bool)
    mask[0, 468:480, :] = True
    f = _padded_junk_features(WIDE)
    cfg = PoolConfig(cell_rule="min_coverage", min_coverage=0.9)
    emb = pool_embeddings(MaskSet.from_binary(mask), EncodedImage(f, WIDE), cfg)
    np.testing.assert_allclose(emb[0], f[:, 30, :].mean(axis=1), atol=1e-5)


def test_tall_image_padding_on_the_right():
    geometry = ImageGeometry.for_image((1000, 300))  # input 1024×307: 20 valid cell columns
    assert geometry.valid_cells_hw == (64, 20)
    mask = np.zeros((1, 1000, 300), bool)
    mask[0, :, 280:] = True  # touches the right edge
    f = _padded_junk_features(geometry)
    emb = pool_embeddings(MaskSet.from_binary(mask), EncodedImage(f, geometry), PoolConfig())
    assert np.isfinite(emb).all() and np.abs(emb).max() < 10


def test_chunked_counting_equals_unchunked(monkeypatch):
    rng = np.random.default_rng(4)
    masks = MaskSet.from_binary(rng.random((7, 480, 1000)) < 0.05)
    f = _padded_junk_features(WIDE)
    whole = pool_embeddings(masks, EncodedImage(f, WIDE), PoolConfig())
    monkeypatch.setattr(pool_mod, "CHUNK_PIXELS", 1)  # one mask per chunk
    np.testing.assert_array_equal(pool_embeddings(masks, EncodedImage(f, WIDE), PoolConfig()), whole)


# --- options and fallbacks on hand-built masks (original == input frame) ----------------


def _one(mask_hw: np.ndarray, cfg: PoolConfig, features: np.ndarray) -> np.ndarray:
    return pool_embeddings(MaskSet.from_binary(mask_hw[None]), EncodedImage(features, SQUARE), cfg)[0]


@pytest.fixture
def cell_and_quarter():
    """Cell (0,0) fully covered (256 px), cell (0,1) a quarter (an 8×8 block = 64 px)."""
    m = np.zeros((1024, 1024), bool)
    m[0:16, 0:16] = True
    m[0:8, 16:24] = True
    return m


def test_uniform_weighting(cell_and_quarter):
    f = _features(4)
    emb = _one(cell_and_quarter, PoolConfig(weighting="uniform"), f)
    np.testing.assert_allclose(emb, (f[:, 0, 0] + f[:, 0, 1]) / 2, atol=1e-6)


def test_coverage_weighting(cell_and_quarter):
    f = _features(4)
    emb = _one(cell_and_quarter, PoolConfig(weighting="coverage"), f)
    np.testing.assert_allclose(emb, (1.0 * f[:, 0, 0] + 0.25 * f[:, 0, 1]) / 1.25, atol=1e-6)


def test_min_coverage_threshold_is_inclusive(cell_and_quarter):
    f = _features(4)
    half = _one(cell_and_quarter, PoolConfig(cell_rule="min_coverage", min_coverage=0.5), f)
    np.testing.assert_allclose(half, f[:, 0, 0], atol=1e-6)
    quarter = _one(cell_and_quarter, PoolConfig(cell_rule="min_coverage", min_coverage=0.25), f)
    np.testing.assert_allclose(quarter, (f[:, 0, 0] + f[:, 0, 1]) / 2, atol=1e-6)


def test_min_pixels_is_strictly_more_than():
    f = _features(4)
    m = np.zeros((1024, 1024), bool)
    m[0:16, 0:16] = True  # cell (0,0)
    m[0, 16] = True  # 1 px in cell (0,1): not > 1
    m[0, 32:34] = True  # 2 px in cell (0,2): > 1
    emb = _one(m, PoolConfig(cell_rule="min_pixels", min_pixels=1), f)
    np.testing.assert_allclose(emb, (f[:, 0, 0] + f[:, 0, 2]) / 2, atol=1e-6)
    emb0 = _one(m, PoolConfig(cell_rule="min_pixels", min_pixels=0), f)
    np.testing.assert_allclose(emb0, f[:, 0, :3].mean(axis=1), atol=1e-6)


@pytest.mark.parametrize("cfg", [PoolConfig(), PoolConfig(cell_rule="min_coverage", min_coverage=1.0, weighting="coverage")])
def test_one_pixel_mask_takes_its_cell(cfg):
    f = _features(4)
    m = np.zeros((1024, 1024), bool)
    m[100, 200] = True  # cell (6, 12)
    emb = _one(m, cfg, f)
    np.testing.assert_allclose(emb, f[:, 6, 12], atol=1e-6)


def test_mask_vanishing_under_resize_takes_centroid_cell():
    geometry = ImageGeometry.for_image((4000, 3000))  # input 1024×768, scale 1/3.90625
    rows, cols = nearest_indices(4000, 1024), nearest_indices(3000, 768)
    assert 2000 not in rows and 1500 not in cols  # so this pixel is never sampled
    m = np.zeros((1, 4000, 3000), bool)
    m[0, 2000, 1500] = True
    f = _features(4, geometry)
    emb = pool_embeddings(MaskSet.from_binary(m), EncodedImage(f, geometry), PoolConfig())
    # centroid (2000.5, 1500.5) → input (512.1, 384.1) → cell (32, 24)
    np.testing.assert_allclose(emb[0], f[:, 32, 24], atol=1e-6)


def test_zero_masks_give_zero_rows():
    emb = pool_embeddings(MaskSet.empty((480, 1000)), EncodedImage(_features(16, WIDE), WIDE), PoolConfig())
    assert emb.shape == (0, 16) and emb.dtype == np.float32


def test_empty_mask_raises():
    m = np.zeros((2, 1024, 1024), bool)
    m[0, :10, :10] = True
    with pytest.raises(EmptyMaskError, match="mask 1"):
        pool_embeddings(MaskSet.from_binary(m), EncodedImage(_features(4), SQUARE), PoolConfig())


def test_geometry_mismatch_raises():
    m = np.ones((1, 480, 1000), bool)
    with pytest.raises(PoolError, match="encoded from"):
        pool_embeddings(MaskSet.from_binary(m), EncodedImage(_features(4), SQUARE), PoolConfig())
    bad = np.zeros((4, 32, 32), np.float32)
    with pytest.raises(PoolError, match="grid"):
        pool_embeddings(MaskSet.from_binary(m), EncodedImage(bad, WIDE), PoolConfig())
