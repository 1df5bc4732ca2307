"""Path A of the benchmark: the original notebook's code path, kept deliberately as it was.

1. `SamPredictor.set_image(image)` + `get_image_embedding()` for the pooling features
   (encoder pass 1);
2. `SamAutomaticMaskGenerator(sam, **amg).generate(image)` with its default binary-mask
   output (encoder pass 2 — the generator sets the same image again);
3. per mask: resize the H×W bool mask into SAM's input frame, pad to 1024², `np.split` it
   into 64×64 cells of 16×16 px, keep cells with more than 1 covered pixel, average their
   feature vectors — a Python loop over masks × cells (`notebook_embedding`, also the
   tests' reference for samseg.core.pool);
4. `sklearn.cluster.DBSCAN(eps, min_samples, metric="cosine")` on the N×C embeddings.

Nothing here is samseg code: only segment_anything, numpy, OpenCV and scikit-learn, so the
comparison measures what the notebook did. Timings are wall seconds per step. One change:
with crop layers, segment_anything raises IndexError when no crop yields a mask (its
empty `crop_boxes` has shape (0,), see samseg.sam.amg.fix_empty_crop_boxes) — which is what
random weights do under the notebook's filters — so `_Generator` gives that case the
(0, 4) shape. It touches nothing else and costs nothing.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

GRID = 64  # cells per side of SAM's 1024-px input frame (16-px patches)


def notebook_embedding(mask_1024: np.ndarray, features_chw: np.ndarray) -> np.ndarray:
    """(C,) float32: the notebook's mask embedding of one 1024×1024 mask in SAM's input frame.

    np.split into 64×64 cells of 16×16 px, python loops over every cell, a cell is used
    when `cell.sum() > 1`, np.mean of the selected feature vectors. A mask that selects no
    cell gives NaN, as the notebook did (its defect; tests/test_pool.py finds those masks)."""
    import warnings

    selected = []
    for i, row in enumerate(np.split(mask_1024, GRID, axis=0)):
        for j, cell in enumerate(np.split(row, GRID, axis=1)):
            if cell.sum() > 1:
                selected.append(features_chw[:, i, j])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of nothing → NaN, as in the notebook
        return np.mean(np.array(selected, dtype=np.float32).reshape(-1, features_chw.shape[0]), axis=0)


def notebook_pool(mask_hw: np.ndarray, features_chw: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """C float32 for an H×W mask: nearest resize to input_hw, pad to 1024², then notebook_embedding."""
    import cv2

    ih, iw = input_hw
    resized = cv2.resize(mask_hw.astype(np.uint8), (iw, ih), interpolation=cv2.INTER_NEAREST)
    frame = np.zeros((GRID * 16, GRID * 16), dtype=np.uint8)
    frame[:ih, :iw] = resized
    return notebook_embedding(frame, features_chw)


def _generator_class() -> Any:
    import torch
    from segment_anything import SamAutomaticMaskGenerator

    class _Generator(SamAutomaticMaskGenerator):
        def _process_crop(self, *args: Any) -> Any:
            data = super()._process_crop(*args)
            if len(data["rles"]) == 0:
                data["crop_boxes"] = torch.zeros((0, 4), dtype=torch.int64)
            return data

    return _Generator


def run_original(sam: Any, rgb_hw3: np.ndarray, amg: Any, cluster: Any) -> dict[str, Any]:
    """Run path A on one H×W×3 uint8 image. `amg`: samseg AmgConfig, `cluster`: ClusterConfig
    (only their values are used). Returns {"seconds": {step: s}, "masks": AMG records with
    binary "segmentation", "embeddings": N×C, "labels": (N,) DBSCAN labels}."""
    import torch
    from segment_anything import SamPredictor
    from sklearn.cluster import DBSCAN

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    predictor = SamPredictor(sam)
    predictor.set_image(rgb_hw3)
    with torch.no_grad():
        features = predictor.get_image_embedding()[0].cpu().numpy()
    input_hw = tuple(int(v) for v in predictor.input_size)
    t1 = time.perf_counter()
    seconds["encode"] = t1 - t0

    generator = _generator_class()(sam, **dataclasses.asdict(amg))
    masks = generator.generate(rgb_hw3)
    t2 = time.perf_counter()
    seconds["amg"] = t2 - t1

    embeddings = np.stack([notebook_pool(m["segmentation"], features, input_hw) for m in masks]) if masks else np.zeros((0, features.shape[0]), np.float32)
    t3 = time.perf_counter()
    seconds["pool"] = t3 - t2

    # The notebook's NaN rows would make DBSCAN raise; path A clusters them as zero vectors
    # (their count is reported) so the timing covers the whole pipeline.
    n_nan = int((~np.isfinite(embeddings).all(axis=1)).sum()) if len(embeddings) else 0
    embeddings = np.nan_to_num(embeddings, nan=0.0)
    if len(embeddings):
        labels = DBSCAN(eps=cluster.eps, min_samples=cluster.min_samples, metric=cluster.metric).fit(embeddings).labels_
    else:
        labels = np.zeros(0, dtype=np.int64)
    seconds["cluster"] = time.perf_counter() - t3
    seconds["total"] = sum(seconds.values())
    return {"seconds": seconds, "masks": masks, "embeddings": embeddings, "labels": labels, "n_nan_embeddings": n_nan}
