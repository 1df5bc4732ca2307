"""Exact DBSCAN with the cosine metric for large N (dataset-level classes).

On unit vectors cos(a, b) = a·b and ||a − b||² = 2(1 − cos), so "cosine distance <= eps"
is "a·b >= 1 − eps" (euclidean eps_e = sqrt(2·eps)). Neighbour counts and core–core edges
come from blocked float32 matrix products — memory O(block), never the O(Σ neighbours)
lists scikit-learn's DBSCAN holds — and connected components are merged block by block.
At 256-d a BallTree/KD-tree prunes almost nothing, so brute force in BLAS is the fast
exact path (benchmarks/bench_dataset_cluster.py measures both).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

# (A×C, B×C float32 unit rows) -> A×B float32 similarities a @ b.T. numpy's BLAS when None; a GPU
# run passes torch's (samseg.sam.gram): the blocks below are all this module multiplies.
Gram = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _numpy_gram(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a @ b.T

# float32 similarities per block of a chunked pass: 2^24 floats = 64 MiB (4096×4096),
# large enough for BLAS to run at full speed, small next to the data at 100k × 256.
BLOCK_FLOATS = 1 << 24


def dbscan_cosine_chunked(unit_nc: np.ndarray, eps: float, min_samples: int, block_floats: int = BLOCK_FLOATS,
                          gram: Optional[Gram] = None) -> np.ndarray:
    """Exact DBSCAN (cosine distance <= eps) on N×C unit float32 rows; (N,) raw labels.

    Same core points, core clusters and noise as sklearn's DBSCAN (a point counts itself
    as a neighbour, like sklearn). A border point near two clusters joins the cluster of
    its most similar core point (sklearn: whichever reached it first).
    Work: the similarity matrix is symmetric, so only blocks on and above the diagonal are
    computed — N²/2 products for the neighbour counts, M²/2 for the M core points' edges,
    then (N−M)×M for border points. Memory: one b×b float32 block (b² <= block_floats)
    plus that block's edges; never the whole neighbour lists. gram: the block product (Gram).
    """
    g = gram or _numpy_gram
    x = np.ascontiguousarray(unit_nc, dtype=np.float32)
    n = x.shape[0]
    thr = np.float32(1.0 - eps)
    counts = np.zeros(n, dtype=np.int64)
    for (a0, a1), (b0, b1) in _upper_blocks(n, block_floats):
        hit = g(x[a0:a1], x[b0:b1]) >= thr
        counts[a0:a1] += np.count_nonzero(hit, axis=1)
        if a0 != b0:  # the mirrored block below the diagonal
            counts[b0:b1] += np.count_nonzero(hit, axis=0)
    core = np.flatnonzero(counts >= min_samples)
    labels = np.full(n, -1, dtype=np.int64)
    if not len(core):
        return labels
    xc = x[core]
    comp = _core_components(xc, thr, block_floats, g)
    labels[core] = comp
    border = np.setdiff1d(np.arange(n), core, assume_unique=True)
    for lo, hi in row_chunks(len(border), len(core), block_floats):
        sim = g(x[border[lo:hi]], xc)
        best = sim.argmax(axis=1)
        near = sim[np.arange(hi - lo), best] >= thr
        labels[border[lo:hi][near]] = comp[best[near]]
    return labels


def _core_components(xc: np.ndarray, thr: np.float32, block_floats: int, gram: Gram) -> np.ndarray:
    """(M,) component id of each core point (edges: similarity >= thr), merged block by block."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    m = xc.shape[0]
    comp = np.arange(m, dtype=np.int64)  # current component of every core point
    # A quarter-size block here: inside one big class a block is all edges, and its
    # index pairs (2 × int64 each) would otherwise be 4× the similarity block.
    for (a0, a1), (b0, b1) in _upper_blocks(m, max(1, block_floats // 4)):
        rows, cols = np.nonzero(gram(xc[a0:a1], xc[b0:b1]) >= thr)
        ca, cb = comp[rows + a0], comp[cols + b0]
        cross = ca != cb  # edges inside one component change nothing
        if not cross.any():
            continue
        ca, cb = ca[cross], cb[cross]
        g = coo_matrix((np.ones(len(ca), dtype=np.int8), (ca, cb)), shape=(m, m))
        comp = connected_components(g, directed=False)[1][comp].astype(np.int64)
    return comp


def _upper_blocks(n: int, block_floats: int):
    """((a0, a1), (b0, b1)) square index blocks with b0 >= a0, each b×b <= block_floats."""
    step = max(1, math.isqrt(block_floats))
    starts = range(0, n, step)
    for a0 in starts:
        for b0 in starts:
            if b0 >= a0:
                yield (a0, min(n, a0 + step)), (b0, min(n, b0 + step))


def row_chunks(n_rows: int, n_cols: int, block_floats: int):
    """(lo, hi) row ranges so that one rows×n_cols float32 block stays <= block_floats."""
    step = max(1, block_floats // max(1, n_cols))
    for lo in range(0, n_rows, step):
        yield lo, min(n_rows, lo + step)


def eps_euclidean(eps_cosine: float) -> float:
    """Euclidean radius on unit vectors equivalent to a cosine-distance eps: sqrt(2·eps)."""
    return math.sqrt(2.0 * eps_cosine)
