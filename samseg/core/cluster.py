"""Cluster the N×C mask embeddings into semantic classes (scikit-learn).

Algorithms (ClusterConfig.algorithm):
- "dbscan": `sklearn.cluster.DBSCAN(eps, min_samples, metric)` — the notebook's choice.
- "hdbscan": `sklearn.cluster.HDBSCAN(min_cluster_size=max(2, min_samples))`; no eps.
- "agglomerative": average linkage cut at `distance_threshold`; singletons → noise.

Every algorithm: fewer masks than `min_samples` (0 and 1 included) → all noise, no
error — too few masks to call any group of them a class. Cluster ids are renumbered by
decreasing size (ties: lowest first member index first), so equal inputs give equal ids.
"""

from __future__ import annotations

import numpy as np

from samseg.core.algorithms import ALGORITHMS
from samseg.core.config import ClusterConfig
from samseg.core.types import ClusterResult


class ClusterInputError(ValueError):
    """Embeddings that cannot be clustered (wrong shape, non-finite, zero norm with cosine)."""


def cluster_embeddings(embeddings_nc: np.ndarray, cfg: ClusterConfig) -> ClusterResult:
    """(N,) labels for N×C embeddings: -1 = noise, 0.. = clusters by decreasing size."""
    x = check_embeddings(embeddings_nc, cfg.metric)
    n = x.shape[0]
    if n < max(2, cfg.min_samples):
        return ClusterResult(labels=np.full(n, -1, dtype=np.int64))
    if cfg.algorithm not in ALGORITHMS:  # ClusterConfig validates this; guard against hand-built objects
        raise ValueError(f"unknown cluster algorithm {cfg.algorithm!r}")
    return ClusterResult(labels=renumber(ALGORITHMS[cfg.algorithm](x, cfg)))


def check_embeddings(embeddings_nc: np.ndarray, metric: str) -> np.ndarray:
    """N×C float64 copy, or ClusterInputError naming the first bad row."""
    x = np.asarray(embeddings_nc, dtype=np.float64)
    if x.ndim != 2:
        raise ClusterInputError(f"embeddings must be N×C, got shape {x.shape}")
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        raise ClusterInputError(f"embedding row {int(np.flatnonzero(~finite)[0])} is not finite (NaN/inf)")
    if metric == "cosine" and len(x):
        zero = np.linalg.norm(x, axis=1) == 0
        if zero.any():
            raise ClusterInputError(f"embedding row {int(np.flatnonzero(zero)[0])} has zero norm; cosine distance is undefined")
    return x


def renumber(labels: np.ndarray) -> np.ndarray:
    """(N,) int64: ids 0.. by decreasing size, ties by lowest first member index; -1 stays."""
    labels = np.asarray(labels, dtype=np.int64)
    out = np.full(labels.shape, -1, dtype=np.int64)
    keep = labels >= 0
    if not keep.any():
        return out
    ids, first, inverse, counts = np.unique(labels[keep], return_index=True, return_inverse=True, return_counts=True)
    first_global = np.flatnonzero(keep)[first]
    order = np.lexsort((first_global, -counts))  # primary: size desc; secondary: first index
    new_id = np.empty(len(ids), dtype=np.int64)
    new_id[order] = np.arange(len(ids))
    out[keep] = new_id[inverse]
    return out


def silhouette_cosine(embeddings_nc: np.ndarray, labels: np.ndarray) -> float | None:
    """Mean cosine silhouette over non-noise masks; None when it is undefined
    (< 2 clusters, or every cluster a single mask)."""
    labels = np.asarray(labels)
    keep = labels >= 0
    x, y = np.asarray(embeddings_nc, dtype=np.float64)[keep], labels[keep]
    n_labels = len(np.unique(y))
    if n_labels < 2 or n_labels >= len(y):
        return None
    from sklearn.metrics import silhouette_score  # ~2 s to import: only when there is something to score

    return float(silhouette_score(x, y, metric="cosine"))
