"""Pool one embedding per mask from an encoder's C×gh×gw feature grid (SAM: 256×64×64).

Each mask (at the ORIGINAL image size) is mapped into the encoder's input frame
(`geometry.input_hw`: long side 1024 for SAM, 518 for DINOv2, ...) by nearest-neighbour
resize — the frame the encoder saw — and its covered pixels are counted per patch cell
(16×16 for SAM, 14×14 for DINOv2; any grid, square or not). Cells are then
selected and weighted by `PoolConfig` and the mask's embedding is the weighted mean of
the selected cells' feature vectors.

Padding cells (wholly outside `input_hw`) never contribute: they are not even part of
the feature matrix the weights multiply, so junk (or NaN) features there cannot leak.
A cell's coverage fraction is counted against its VALID pixels, so a cell cut by the
bottom/right edge of the image is "fully covered" when all of its valid pixels are.

Never NaN: a mask that selects no cell takes the single cell it overlaps most; a mask
that vanishes under the resize (a few pixels of a huge photo) takes the cell holding
its centroid. An empty mask has no place in the image and raises `EmptyMaskError`.
"""

from __future__ import annotations

import numpy as np

from samseg.core.config import PoolConfig
from samseg.core.types import EncodedImage, ImageGeometry, MaskSet

# Decoded pixels held at once (uint8 at original size, plus the smaller input-frame
# copy): 64 Mpx ≈ 64 MB, so a 12-MP photo is pooled 5 masks at a time, a 1-MP one 64.
CHUNK_PIXELS = 64 * 1024 * 1024


class PoolError(ValueError):
    """Masks and features that cannot be pooled together (shape/geometry mismatch)."""


class EmptyMaskError(PoolError):
    """A mask with no pixels: it has no location, so it has no embedding."""


def pool_embeddings(masks: MaskSet, encoded: EncodedImage, cfg: PoolConfig) -> np.ndarray:
    """N×C float32 embeddings, one row per mask in mask order; 0 masks → 0×C."""
    geometry = encoded.geometry
    features = np.asarray(encoded.features)
    _check_inputs(masks, features, geometry)
    counts = cell_counts(masks, geometry)  # N×gh×gw int32 (valid cells only)
    weights = cell_weights(counts, valid_cell_pixels(geometry), cfg)
    _fallback_cells(weights, counts, masks, geometry)
    return pool_with_weights(weights, features, geometry)


def _check_inputs(masks: MaskSet, features: np.ndarray, geometry: ImageGeometry) -> None:
    if tuple(masks.image_hw) != tuple(geometry.original_hw):
        raise PoolError(f"masks are {tuple(masks.image_hw)} but the features were encoded from a {tuple(geometry.original_hw)} image")
    bad = [i for i, r in enumerate(masks.rles) if tuple(r["size"]) != tuple(masks.image_hw)]
    if bad:
        raise PoolError(f"mask {bad[0]} has RLE size {tuple(masks.rles[bad[0]]['size'])}, masks are {tuple(masks.image_hw)}")
    if tuple(features.shape[1:]) != geometry.feature_hw:
        raise PoolError(f"features have grid {tuple(features.shape[1:])}, geometry expects {geometry.feature_hw}")
    gh, gw = geometry.valid_cells_hw
    if gh > geometry.feature_hw[0] or gw > geometry.feature_hw[1]:
        raise PoolError(f"input_hw {geometry.input_hw} does not fit the {geometry.padded_hw} frame")


def valid_cell_pixels(geometry: ImageGeometry) -> np.ndarray:
    """gh×gw int32: non-padding input pixels in each valid cell (patch² inside, less at the bottom/right edge)."""
    p = geometry.patch_size
    gh, gw = geometry.valid_cells_hw
    ih, iw = geometry.input_hw
    rows = np.minimum(p, ih - p * np.arange(gh))
    cols = np.minimum(p, iw - p * np.arange(gw))
    return (rows[:, None] * cols[None, :]).astype(np.int32)


def nearest_indices(src: int, dst: int) -> np.ndarray:
    """(dst,) int source index of each destination pixel under nearest-neighbour resize.

    Pixel-centre aligned (PIL's NEAREST): destination pixel i samples source pixel
    floor((i + 0.5) · src / dst).
    """
    idx = np.floor((np.arange(dst) + 0.5) * (src / dst)).astype(np.int64)
    return np.minimum(idx, src - 1)


def decode_framed_wh(masks: MaskSet, idx: np.ndarray, geometry: ImageGeometry) -> np.ndarray:
    """K×iw×ih bool — masks `idx` in SAM's input frame, TRANSPOSED (width before height).

    pycocotools decodes to an H×W×K Fortran-ordered array, i.e. each mask stored column
    by column; its K×W×H transpose is a free C-contiguous view. Resizing and counting in
    that layout avoids copying full-resolution masks (the costly part on 12-MP photos).
    """
    kwh = masks.decode_wh(idx)
    (h, w), (ih, iw) = geometry.original_hw, geometry.input_hw
    if (h, w) != (ih, iw):
        kwh = kwh.take(nearest_indices(w, iw), axis=1).take(nearest_indices(h, ih), axis=2)
    return kwh


def cell_counts(masks: MaskSet, geometry: ImageGeometry) -> np.ndarray:
    """N×gh×gw int32: covered input-frame pixels of each mask in each valid cell.

    Masks are decoded CHUNK_PIXELS at a time; counting is a reshape-sum over the
    input frame padded (with zeros) to whole cells.
    """
    p = geometry.patch_size
    gh, gw = geometry.valid_cells_hw
    ih, iw = geometry.input_hw
    n = len(masks)
    counts = np.zeros((n, gh, gw), dtype=np.int32)
    h, w = geometry.original_hw
    chunk = max(1, CHUNK_PIXELS // max(1, h * w, ih * iw))
    for start in range(0, n, chunk):
        idx = np.arange(start, min(n, start + chunk))
        padded = np.zeros((len(idx), gw * p, gh * p), dtype=np.uint8)  # K×W×H layout, see decode_framed_wh
        padded[:, :iw, :ih] = decode_framed_wh(masks, idx, geometry)
        sums = padded.reshape(len(idx), gw, p, gh, p).sum(axis=(2, 4), dtype=np.int32)
        counts[idx] = sums.transpose(0, 2, 1)
    return counts


def cell_weights(counts: np.ndarray, valid_pixels: np.ndarray, cfg: PoolConfig) -> np.ndarray:
    """N×gh×gw float64 unnormalised weights per the PoolConfig cell rule and weighting."""
    coverage = counts / valid_pixels  # valid_pixels >= 1 for every valid cell
    if cfg.cell_rule == "min_pixels":
        selected = counts > cfg.min_pixels
    else:
        selected = coverage >= cfg.min_coverage
    if cfg.weighting == "uniform":
        return selected.astype(np.float64)
    return np.where(selected, coverage, 0.0)


def _fallback_cells(weights: np.ndarray, counts: np.ndarray, masks: MaskSet, geometry: ImageGeometry) -> None:
    """In place: give every mask whose weights are all zero exactly one cell (weight 1)."""
    n, gh, gw = weights.shape
    empty = np.flatnonzero(weights.reshape(n, gh * gw).sum(axis=1) <= 0)
    for i in empty:
        flat = counts[i].reshape(-1)
        if flat.max() > 0:
            cell = int(np.argmax(flat))  # most-overlapped cell; ties → first in row-major order
            weights[i].reshape(-1)[cell] = 1.0
        else:
            r, c = centroid_cell(masks, int(i), geometry)
            weights[i, r, c] = 1.0


def centroid_cell(masks: MaskSet, i: int, geometry: ImageGeometry) -> tuple[int, int]:
    """(row, col) of the valid cell containing mask i's centroid mapped to the input frame."""
    ys, xs = np.nonzero(masks.decode([i])[0])
    if len(ys) == 0:
        raise EmptyMaskError(f"mask {i} has no pixels; it cannot be given an embedding")
    (h, w), (ih, iw) = geometry.original_hw, geometry.input_hw
    y = (ys.mean() + 0.5) * ih / h  # pixel centres, scaled to input-frame coordinates
    x = (xs.mean() + 0.5) * iw / w
    gh, gw = geometry.valid_cells_hw
    p = geometry.patch_size
    return min(gh - 1, int(y // p)), min(gw - 1, int(x // p))


def pool_with_weights(weights: np.ndarray, features: np.ndarray, geometry: ImageGeometry) -> np.ndarray:
    """N×gh×gw weights (each row with a positive sum) @ valid-cell features → N×C float32.

    One matmul: (N×gh·gw normalised weights) @ (gh·gw×C features). Only valid cells
    take part, so padding features cannot reach an embedding even as 0·inf.
    """
    c = features.shape[0]
    n = weights.shape[0]
    gh, gw = geometry.valid_cells_hw
    if n == 0:
        return np.zeros((0, c), dtype=np.float32)
    w = weights.reshape(n, -1)
    w = w / w.sum(axis=1, keepdims=True)
    f = features[:, :gh, :gw].reshape(c, gh * gw).T.astype(np.float64)
    return (w @ f).astype(np.float32)
