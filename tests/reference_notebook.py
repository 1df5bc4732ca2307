"""The original notebook's mask embedding, for the pooling tests: benchmarks/original.py's
`notebook_embedding` (one implementation; NaN for a mask that selects no cell, as the
notebook gave), applied to N masks already in SAM's 1024×1024 input frame."""

from __future__ import annotations

import numpy as np

from benchmarks.original import notebook_embedding


def notebook_embeddings(masks_n1024: np.ndarray, features_chw: np.ndarray) -> np.ndarray:
    """N×C: the notebook's loop over masks; features channels-first like SAM, (1×)C×64×64."""
    feats = np.asarray(features_chw).reshape(-1, 64, 64)
    if not len(masks_n1024):
        return np.zeros((0, feats.shape[0]), np.float32)
    return np.stack([notebook_embedding(m, feats) for m in masks_n1024])
