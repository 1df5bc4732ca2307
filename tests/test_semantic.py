"""End to end without a model: pool → cluster → compose recover known classes.

A synthetic non-square 600×900 scene holds 6 discs (class 1) and 6 squares (class 2) of
varied sizes on a background. A known feature map stands in for the encoder: it is built
at the 64×64 cell level from the ground truth through SAM's geometry (each valid cell
carries the vector of the class that fills most of it: a, b or c, plus noise; padding
cells carry junk). The masks are the ground-truth objects plus one background mask, as
AMG would also propose. The classes must come back with IoU >= 0.95 after Hungarian
matching.
"""

from __future__ import annotations

import numpy as np
import pytest

from samseg.core.cluster import cluster_embeddings
from samseg.core.compose import compose_labels
from samseg.core.config import ClusterConfig, PoolConfig
from samseg.core.eval import evaluate_label_maps
from samseg.core.pool import pool_embeddings
from samseg.core.types import EncodedImage, ImageGeometry, MaskSet

HW = (600, 900)
C = 64


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """(H×W int64 GT: 0 bg, 1 disc, 2 square; 12×H×W bool object masks)."""
    yy, xx = np.mgrid[: HW[0], : HW[1]]
    gt = np.zeros(HW, np.int64)
    objects = []
    sizes = [28, 36, 44, 52, 60, 68]  # disc radii / square half-sides
    for k in range(12):
        cy, cx = 100 + 200 * (k // 4), 112 + 225 * (k % 4)  # a 3×4 layout of slots
        s = sizes[(k * 5) % 6]
        if k % 2 == 0:
            m = (yy - cy) ** 2 + (xx - cx) ** 2 <= s**2
        else:
            m = (abs(yy - cy) <= s) & (abs(xx - cx) <= s)
        gt[m] = 1 if k % 2 == 0 else 2
        objects.append(m)
    return gt, np.stack(objects)


def _encoder_standin(gt: np.ndarray, geometry: ImageGeometry, seed: int = 0) -> np.ndarray:
    """C×64×64 float32: per valid cell, the majority GT class's vector + noise; padding = junk."""
    import cv2
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(3, C))  # c (background), a (disc), b (square): ~orthogonal in 64-D
    (ih, iw), p = geometry.input_hw, geometry.patch_size
    gh, gw = geometry.valid_cells_hw
    framed = cv2.resize(gt.astype(np.uint8), (iw, ih), interpolation=cv2.INTER_NEAREST_EXACT)
    padded = np.full((gh * p, gw * p), 255, np.uint8)  # 255 = padding, never a majority of a valid cell
    padded[:ih, :iw] = framed
    cells = padded.reshape(gh, p, gw, p).transpose(0, 2, 1, 3).reshape(gh, gw, p * p)
    votes = np.stack([(cells == k).sum(-1) for k in range(3)], -1)
    majority = votes.argmax(-1)  # gh×gw
    features = rng.normal(size=(C, *geometry.feature_hw)) * 1e3  # junk in padding cells
    features[:, :gh, :gw] = (vectors[majority] + 0.05 * rng.normal(size=(gh, gw, C))).transpose(2, 0, 1)
    return features.astype(np.float32)


@pytest.mark.parametrize(
    "pool_cfg",
    [PoolConfig(), PoolConfig(cell_rule="min_coverage", min_coverage=0.5, weighting="coverage")],
    ids=["notebook-rule", "coverage"],
)
def test_pool_cluster_compose_recovers_classes(pool_cfg):
    gt, objects = _scene()
    geometry = ImageGeometry.for_image(HW)
    assert geometry.input_hw == (683, 1024)  # non-square: 21 padding cell rows
    masks = MaskSet.from_binary(np.concatenate([objects, (gt == 0)[None]]))
    encoded = EncodedImage(_encoder_standin(gt, geometry), geometry)

    emb = pool_embeddings(masks, encoded, pool_cfg)
    assert emb.shape == (13, C) and np.isfinite(emb).all()
    clusters = cluster_embeddings(emb, ClusterConfig(algorithm="dbscan", eps=0.15, min_samples=3, metric="cosine"))
    assert clusters.n_clusters == 2 and clusters.sizes() == [6, 6]
    assert clusters.labels[-1] == -1  # the lone background mask is noise and paints nothing

    label_map = compose_labels(masks, clusters)
    assert label_map.shape == HW and label_map.dtype == np.uint16
    res = evaluate_label_maps(label_map, gt)
    assert set(res.per_class_iou) == {1, 2}
    assert min(res.per_class_iou.values()) >= 0.95, res.per_class_iou
    assert res.ari > 0.95
