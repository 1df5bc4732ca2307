"""Independent reference: the original notebook's mask embedding, written its way.

Deliberately naive and separate from samseg.core.pool (no shared code): the 1024×1024 mask
is cut with np.split into a 64×64 grid of 16×16 blocks, python loops visit every block,
a block is used when `block.sum() > 1`, and the embedding is np.mean of the selected
rows of the 64×64×256 (H×W×C) feature array. A mask selecting no block gives NaN —
the notebook's defect, kept here on purpose so tests can find those masks.
"""

from __future__ import annotations

import warnings

import numpy as np


def notebook_embedding(mask_1024: np.ndarray, features_hwc: np.ndarray) -> np.ndarray:
    """(C,) embedding of one 1024×1024 bool mask from 64×64×C features; NaN if no block is selected."""
    selected = []
    for i, band in enumerate(np.split(mask_1024, 64, axis=0)):
        for j, block in enumerate(np.split(band, 64, axis=1)):
            if block.sum() > 1:
                selected.append(features_hwc[i, j])
    c = features_hwc.shape[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of nothing → NaN, as in the notebook
        return np.mean(np.array(selected, dtype=np.float32).reshape(-1, c), axis=0)


def notebook_embeddings(masks_n1024: np.ndarray, features_chw: np.ndarray) -> np.ndarray:
    """N×C: the notebook's loop over masks; features given channels-first like SAM (1×)C×64×64."""
    features_hwc = np.transpose(np.asarray(features_chw).reshape(-1, 64, 64), (1, 2, 0))
    return np.stack([notebook_embedding(m, features_hwc) for m in masks_n1024]) if len(masks_n1024) else np.zeros((0, features_hwc.shape[-1]), np.float32)
