"""How DBSCAN's eps shapes a run: n_clusters and noise over an eps grid, the sorted
k-distance curve, and its knee as a suggested eps (`--eps auto`).

The rule (documented in README "Choosing eps"): k = min_samples; for every mask, the
cosine distance to its k-th nearest mask counting itself (the smallest eps at which
DBSCAN calls it a core point); sorted ascending, that curve is flat inside dense groups
and bends up where masks stop having k close neighbours. The knee of that curve
(kneed.KneeLocator, convex and increasing, online Kneedle; the first knee when there are
several: outliers make a jagged tail with knees of their own) is the suggested eps.
Fewer masks than min_samples, or no knee: no suggestion (callers fall back to their eps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from samseg.core.config import COSINE_MAX, ClusterConfig
from samseg.core.errors import UsageError

DEFAULT_GRID = (0.005, 0.3, 0.005)  # start, stop (inclusive), step: a sweep with no masks to cover
# A sweep with no range asked covers its data instead (covering_grid): this many eps values on a
# log scale, up to this much past the k-distances (between these quantiles of them) and any eps
# shown with them (the run's, the knee), over at most this many powers of ten.
SWEEP_POINTS = 60
SWEEP_HEADROOM = 1.25
COVERED_QUANTILE = 0.95
SWEEP_DECADES = 4
# A knee below this is no eps to suggest: the curve is flat at (near) zero, i.e. the embeddings
# are copies of each other (1e-16 is float rounding), and DBSCAN there would make every mask noise.
MIN_SUGGESTED_EPS = 1e-6


class EpsRangeError(UsageError, ValueError):
    """An eps range that cannot be swept (malformed, too many values, past the metric's distances)."""


@dataclass(frozen=True)
class EpsSuggestion:
    """eps: the knee's distance, or None; reason: why there is none (one line)."""

    eps: float | None
    k: int
    reason: str = ""


def k_distances(embeddings_nc: np.ndarray, k: int, metric: str = "cosine") -> np.ndarray:
    """(N,) float64 sorted ascending: each row's distance to its k-th nearest row, itself
    counted first (so k = min_samples gives DBSCAN's core-point radius). N < k -> empty."""
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(embeddings_nc, dtype=np.float64)
    if x.ndim != 2 or len(x) < max(k, 2):
        return np.zeros(0, np.float64)
    nn = NearestNeighbors(n_neighbors=k, metric=metric).fit(x)
    dist, _ = nn.kneighbors(x)
    return np.sort(np.maximum(dist[:, k - 1], 0.0))


def suggest_eps(embeddings_nc: np.ndarray, cfg: ClusterConfig, curve: np.ndarray | None = None) -> EpsSuggestion:
    """The knee of the k-distance curve (k = cfg.min_samples) as DBSCAN's eps; `curve`:
    that curve when the caller has it already (k_distances(embeddings, k, cfg.metric))."""
    k = max(1, cfg.min_samples)
    curve = k_distances(embeddings_nc, k, cfg.metric) if curve is None else curve
    if len(curve) < 3:
        return EpsSuggestion(None, k, f"{len(np.asarray(embeddings_nc))} masks, fewer than min_samples={k} (+2)")
    knee = knee_of(curve)
    if knee is None or knee <= 0:
        return EpsSuggestion(None, k, "the k-distance curve has no knee")
    if knee < MIN_SUGGESTED_EPS:
        return EpsSuggestion(None, k, f"the k-distance curve bends at {knee:.2g}, below {MIN_SUGGESTED_EPS:g}: most masks "
                                      f"have {k} neighbours at (nearly) zero distance, so its knee is no eps to use")
    return EpsSuggestion(float(knee), k)


def knee_of(curve: np.ndarray) -> float | None:
    """y of the Kneedle knee of an increasing convex curve (x = rank), or None."""
    from kneed import KneeLocator

    y = np.asarray(curve, dtype=np.float64)
    if len(y) < 3 or float(y[-1] - y[0]) <= 0:
        return None
    loc = KneeLocator(np.arange(len(y), dtype=np.float64), y, curve="convex", direction="increasing", online=True)
    if not loc.all_knees:
        return None
    # The FIRST knee: where the dense groups' flat part ends (a jagged tail of outliers adds
    # later knees, and offline Kneedle may report the last point of such a tail).
    return float(y[int(min(loc.all_knees))])


def eps_sweep(embeddings_nc: np.ndarray, cfg: ClusterConfig, grid: np.ndarray) -> list[dict[str, float]]:
    """[{eps, n_clusters, n_noise, noise_fraction}] for DBSCAN at every eps of `grid`
    (cfg's other settings kept), through samseg.core.cluster."""
    import dataclasses

    from samseg.core.cluster import cluster_embeddings

    n = len(np.asarray(embeddings_nc))
    rows = []
    for eps in np.asarray(grid, dtype=np.float64):
        res = cluster_embeddings(embeddings_nc, dataclasses.replace(cfg, algorithm="dbscan", eps=float(eps)))
        rows.append({"eps": float(eps), "n_clusters": res.n_clusters, "n_noise": res.n_noise,
                     "noise_fraction": res.n_noise / n if n else 0.0})
    return rows


def eps_grid(spec: str | None = None, cap: float | None = None) -> np.ndarray:
    """"A:B:STEP" (inclusive of B up to rounding) -> eps values; ValueError names the problem.
    cap: the largest eps the metric takes (largest_distance)."""
    start, stop, step = DEFAULT_GRID if spec is None else _parse_grid(spec)
    if cap is not None and stop > cap:
        raise EpsRangeError(f"eps range {spec!r} goes past {cap:g}, the largest cosine distance")
    n = int(np.floor((stop - start) / step + 1e-9)) + 1
    if n > 2000:
        raise EpsRangeError(f"eps range {spec!r} has {n} values; at most 2000")
    return np.round(start + step * np.arange(n), 10)


def largest_distance(cfg: ClusterConfig) -> float | None:
    """The largest eps `cfg`'s metric takes (cosine distances are at most COSINE_MAX), or None."""
    return COSINE_MAX if cfg.metric == "cosine" else None


def covering_grid(kdist: np.ndarray, *shown: float | None, cap: float | None = None) -> np.ndarray:
    """The eps values of a sweep with no range asked: SWEEP_POINTS values evenly spaced on a log
    scale (eps matters relatively: 0.01 vs 0.02 as much as 0.1 vs 0.2), from half the smallest of
    the k-distances' 5th percentile and `shown` (the run's eps, the knee) to SWEEP_HEADROOM × the
    largest of their 95th percentile and `shown`, never past `cap` (the metric's largest distance)
    and over at most SWEEP_DECADES. Percentiles: one far outlier does not stretch the range. Past
    the k-distances every mask is a core point and classes only merge; a fixed range would miss
    the knee of features whose distances are larger, or squeeze it into a corner when smaller."""
    ends = [float(e) for e in shown if e is not None and e > 0]
    if len(kdist):
        ends += [float(q) for q in np.quantile(kdist, [1 - COVERED_QUANTILE, COVERED_QUANTILE]) if q > 0]
    if not ends:  # no masks to cover: the fixed grid
        return eps_grid(None)
    top = min(max(ends) * SWEEP_HEADROOM, cap if cap is not None else np.inf)
    bottom = max(min(ends) / 2, top * 10.0 ** -SWEEP_DECADES)
    # 3 significant digits (a table's values), never past the cap, which rounding could pass
    return np.unique(np.minimum([float(f"{v:.3g}") for v in np.geomspace(bottom, top, SWEEP_POINTS)], top))


def _parse_grid(spec: str) -> tuple[float, float, float]:
    try:
        start, stop, step = (float(v) for v in spec.split(":"))
    except ValueError:
        raise EpsRangeError(f"eps range {spec!r} must be START:STOP:STEP, e.g. 0.01:0.3:0.01") from None
    if not (np.isfinite([start, stop, step]).all() and 0 < start <= stop and step > 0):
        raise EpsRangeError(f"eps range {spec!r} needs 0 < START <= STOP and STEP > 0")
    return start, stop, step
