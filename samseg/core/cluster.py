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
    if cfg.algorithm == "dbscan":
        raw = _dbscan(x, cfg)
    elif cfg.algorithm == "hdbscan":
        raw = _hdbscan(x, cfg)
    elif cfg.algorithm == "agglomerative":
        raw = _agglomerative(x, cfg)
    else:  # ClusterConfig already validates this; guard against hand-built objects
        raise ValueError(f"unknown cluster algorithm {cfg.algorithm!r}")
    return ClusterResult(labels=renumber_by_size(raw))


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


def _dbscan(x: np.ndarray, cfg: ClusterConfig) -> np.ndarray:
    from sklearn.cluster import DBSCAN

    return DBSCAN(eps=cfg.eps, min_samples=cfg.min_samples, metric=cfg.metric).fit_predict(x)


def _hdbscan(x: np.ndarray, cfg: ClusterConfig) -> np.ndarray:
    from sklearn.cluster import HDBSCAN

    metric = cfg.metric
    if metric == "cosine":
        # HDBSCAN's KD/Ball trees have no cosine metric. On unit vectors the euclidean
        # distance is sqrt(2·(1 − cos)), a monotone function of cosine distance, so the
        # neighbour orders, core distances and minimum spanning tree are the cosine ones.
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        metric = "euclidean"
    size = max(2, cfg.min_samples)  # HDBSCAN needs clusters of >= 2 members
    return HDBSCAN(min_cluster_size=size, metric=metric, copy=True).fit_predict(x)


def _agglomerative(x: np.ndarray, cfg: ClusterConfig) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering

    model = AgglomerativeClustering(
        n_clusters=None, distance_threshold=cfg.distance_threshold, metric=cfg.metric, linkage="average"
    )
    labels = model.fit_predict(x).astype(np.int64)
    ids, counts = np.unique(labels, return_counts=True)
    labels[np.isin(labels, ids[counts == 1])] = -1  # a class of one mask is not a class
    return labels


def renumber_by_size(labels: np.ndarray) -> np.ndarray:
    """(N,) int64: clusters renumbered 0.. by decreasing size, ties by lowest first member index; noise stays -1."""
    labels = np.asarray(labels, dtype=np.int64)
    out = np.full(labels.shape, -1, dtype=np.int64)
    ids = [int(c) for c in np.unique(labels) if c >= 0]
    first = {c: int(np.flatnonzero(labels == c)[0]) for c in ids}
    size = {c: int((labels == c).sum()) for c in ids}
    for new, c in enumerate(sorted(ids, key=lambda c: (-size[c], first[c]))):
        out[labels == c] = new
    return out


def silhouette_cosine(embeddings_nc: np.ndarray, labels: np.ndarray) -> float | None:
    """Mean cosine silhouette over non-noise masks; None when it is undefined
    (< 2 clusters, or every cluster a single mask)."""
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels)
    keep = labels >= 0
    x, y = np.asarray(embeddings_nc, dtype=np.float64)[keep], labels[keep]
    n_labels = len(np.unique(y))
    if n_labels < 2 or n_labels >= len(y):
        return None
    return float(silhouette_score(x, y, metric="cosine"))
