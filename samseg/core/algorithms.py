"""Registry of clustering algorithms: name -> function(N×C float64, ClusterConfig) -> (N,) raw labels.

ClusterConfig's allowed `algorithm` values are this registry's names, and
samseg.core.cluster.cluster_embeddings looks the function up here; to add an algorithm,
write its function below and decorate it with `@register_algorithm("name")`. Raw labels:
-1 = noise, any other ints = clusters (cluster_embeddings renumbers them by size).
scikit-learn is imported inside each function: the CLI imports the config at startup.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

# (N×C float64, ClusterConfig) -> (N,) raw labels. The config is typed Any here: config.py
# reads this registry's names, so importing it back would make a cycle.
AlgorithmFn = Callable[[np.ndarray, Any], np.ndarray]
ALGORITHMS: dict[str, AlgorithmFn] = {}


def register_algorithm(name: str) -> Callable[[AlgorithmFn], AlgorithmFn]:
    def add(fn: AlgorithmFn) -> AlgorithmFn:
        ALGORITHMS[name] = fn
        return fn

    return add


def import_ahead() -> None:
    """Import what every algorithm here needs (scikit-learn: ~0.8 s), for a command that has
    time to spare before its first clustering (samseg.engine.segment.import_ahead)."""
    import sklearn.cluster  # noqa: F401


@register_algorithm("dbscan")
def _dbscan(x: np.ndarray, cfg: Any) -> np.ndarray:
    from sklearn.cluster import DBSCAN

    return DBSCAN(eps=cfg.eps, min_samples=cfg.min_samples, metric=cfg.metric).fit_predict(x)


@register_algorithm("hdbscan")
def _hdbscan(x: np.ndarray, cfg: Any) -> np.ndarray:
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


@register_algorithm("agglomerative")
def _agglomerative(x: np.ndarray, cfg: Any) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering

    model = AgglomerativeClustering(
        n_clusters=None, distance_threshold=cfg.distance_threshold, metric=cfg.metric, linkage="average"
    )
    labels = model.fit_predict(x).astype(np.int64)
    ids, counts = np.unique(labels, return_counts=True)
    labels[np.isin(labels, ids[counts == 1])] = -1  # a class of one mask is not a class
    return labels
