"""samseg.core.cluster: every algorithm's degenerate sizes, blob recovery, deterministic ids, input checks."""

from __future__ import annotations

import numpy as np
import pytest

from samseg.core.cluster import ClusterInputError, cluster_embeddings, renumber, silhouette_cosine
from samseg.core.config import ALGORITHMS, ClusterConfig


def _cfg(algorithm: str, **kw) -> ClusterConfig:
    base = {"dbscan": dict(eps=0.05, min_samples=4), "hdbscan": dict(min_samples=4), "agglomerative": dict(distance_threshold=0.2, min_samples=4)}
    return ClusterConfig(algorithm=algorithm, metric="cosine", **{**base[algorithm], **kw})


def _blobs(sizes: list[int], c: int = 32, noise: float = 0.02, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated cosine blobs: blob k = orthogonal unit direction k + small noise. Rows shuffled."""
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for k, n in enumerate(sizes):
        centre = np.zeros(c)
        centre[k] = 1.0
        rows.append(centre + noise * rng.normal(size=(n, c)))
        truth += [k] * n
    perm = rng.permutation(len(truth))
    return np.concatenate(rows)[perm].astype(np.float32), np.array(truth)[perm]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("n", [0, 1, 3])
def test_too_few_masks_are_all_noise(algorithm, n):
    x = np.random.default_rng(1).normal(size=(n, 8)).astype(np.float32)
    res = cluster_embeddings(x, _cfg(algorithm))  # min_samples=4 > 3
    assert res.labels.shape == (n,) and res.labels.dtype == np.int64
    assert (res.labels == -1).all() and res.n_clusters == 0 and res.n_noise == n


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_one_mask_is_noise_even_with_min_samples_1(algorithm):
    res = cluster_embeddings(np.ones((1, 4), np.float32), _cfg(algorithm, min_samples=1))
    assert res.labels.tolist() == [-1]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_separated_blobs_recovered(algorithm):
    x, truth = _blobs([12, 8, 5])
    res = cluster_embeddings(x, _cfg(algorithm))
    assert res.n_clusters == 3 and res.n_noise == 0
    # ids by decreasing size: blob 0 (12) → 0, blob 1 (8) → 1, blob 2 (5) → 2
    np.testing.assert_array_equal(res.labels, truth)
    assert res.sizes() == [12, 8, 5]


def test_dbscan_outlier_is_noise_and_agglomerative_singleton_is_noise():
    x, truth = _blobs([10, 10])
    outlier = np.zeros((1, x.shape[1]), np.float32)
    outlier[0, 20] = 1.0
    x = np.concatenate([x, outlier])
    for algorithm in ("dbscan", "agglomerative"):
        res = cluster_embeddings(x, _cfg(algorithm))
        assert res.labels[-1] == -1 and res.n_clusters == 2, algorithm


def test_dbscan_matches_sklearn_up_to_renumbering():
    from sklearn.cluster import DBSCAN

    x, _ = _blobs([9, 9, 6], noise=0.05, seed=3)
    cfg = ClusterConfig(algorithm="dbscan", eps=0.06, min_samples=4, metric="cosine")
    ours = cluster_embeddings(x, cfg).labels
    ref = DBSCAN(eps=0.06, min_samples=4, metric="cosine").fit_predict(x)
    np.testing.assert_array_equal(ours, renumber(ref))


def test_renumbering_by_size_then_first_member():
    raw = np.array([5, 5, 2, -1, 2, 7, 7, 9, 9, 9])
    # sizes: 9→3, 5→2 (first at 0), 2→2 (first at 2), 7→2 (first at 5)
    np.testing.assert_array_equal(renumber(raw), [1, 1, 2, -1, 2, 3, 3, 0, 0, 0])


def test_renumbering_is_invariant_to_input_ids():
    x, _ = _blobs([7, 7, 7], seed=5)
    a = cluster_embeddings(x, _cfg("dbscan")).labels
    b = cluster_embeddings(x.copy(), _cfg("dbscan")).labels
    np.testing.assert_array_equal(a, b)
    # equal sizes: cluster 0 is the one holding row 0
    assert a[0] == 0 and a[np.flatnonzero(a != 0)[0]] == 1


def test_euclidean_metric_runs_for_every_algorithm():
    x, truth = _blobs([6, 6], noise=0.01)
    for algorithm in ALGORITHMS:
        res = cluster_embeddings(x, ClusterConfig(algorithm=algorithm, metric="euclidean", eps=0.2, min_samples=3, distance_threshold=0.5))
        np.testing.assert_array_equal(res.labels, renumber(truth))  # equal sizes: row 0's blob is 0


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ClusterInputError, match="N×C"):
        cluster_embeddings(np.zeros(5), _cfg("dbscan"))
    x = np.ones((6, 4), np.float32)
    x[2, 1] = np.nan
    with pytest.raises(ClusterInputError, match="row 2"):
        cluster_embeddings(x, _cfg("dbscan"))
    x = np.ones((6, 4), np.float32)
    x[4] = 0
    with pytest.raises(ClusterInputError, match="row 4 has zero norm"):
        cluster_embeddings(x, _cfg("hdbscan"))
    # zero rows are fine for euclidean
    cluster_embeddings(x, ClusterConfig(metric="euclidean", min_samples=2))


def test_silhouette_cosine():
    x, truth = _blobs([6, 6])
    s = silhouette_cosine(x, truth)
    assert s is not None and 0.9 < s <= 1.0
    assert silhouette_cosine(x, np.zeros(len(x), int)) is None  # one cluster
    assert silhouette_cosine(x, np.full(len(x), -1)) is None  # all noise
    labels = truth.copy()
    labels[:3] = -1  # noise is left out, not counted as a cluster
    assert silhouette_cosine(x, labels) == pytest.approx(silhouette_cosine(x[3:], truth[3:]))
    assert silhouette_cosine(x[:0], truth[:0]) is None
