"""`samseg sweep` and the UI's sweep chart: how n_clusters and noise move with DBSCAN's eps on
a run's embeddings, the k-distance curve and its knee (samseg.core.sweep, the rule `--eps auto`
uses). A dataset batch's masks are clustered together, so they are swept together; a batch of
per-image classes is swept as `samseg recluster` of it clusters: each image alone, summed."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from samseg.core.config import ClusterConfig
from samseg.core.errors import SamsegError, one_line
from samseg.core.sweep import covering_grid, eps_grid, eps_sweep, k_distances, largest_distance, suggest_eps
from samseg.edges.run_schema import DATASET_MODES

CURVE_POINTS = 400  # the k-distance curve as drawn: enough points for a chart


class SweepError(SamsegError):
    """A run whose records cannot be swept (one line naming the run)."""


def sweep_report(embeddings_nc: np.ndarray, cfg: ClusterConfig, eps_range: Optional[str] = None) -> dict[str, Any]:
    """{n_masks, min_samples, metric, eps (the run's), rows [{eps, n_clusters, n_noise,
    noise_fraction}], kdist (sorted, ≤ CURVE_POINTS samples), suggested_eps, reason}.
    The eps values: `eps_range`, else a range that covers this data, the run's eps and the knee
    (samseg.core.sweep.covering_grid). EpsRangeError (one line) for a bad eps range."""
    asked = eps_grid(eps_range, largest_distance(cfg)) if eps_range else None  # before any compute
    x, curve, suggestion = _measured(embeddings_nc, cfg)
    grid = asked if asked is not None else covering_grid(curve, cfg.eps, suggestion.eps, cap=largest_distance(cfg))
    return _report(x, cfg, grid, curve, suggestion)


def _measured(embeddings_nc: np.ndarray, cfg: ClusterConfig) -> tuple[np.ndarray, np.ndarray, Any]:
    """(N×C float32 embeddings, their sorted k-distances, the knee's EpsSuggestion)."""
    x = np.asarray(embeddings_nc, dtype=np.float32)
    curve = k_distances(x, max(1, cfg.min_samples), cfg.metric)
    return x, curve, suggest_eps(x, cfg, curve)


def _report(x: np.ndarray, cfg: ClusterConfig, grid: np.ndarray, curve: np.ndarray, suggestion: Any) -> dict[str, Any]:
    if len(curve) > CURVE_POINTS:
        curve = curve[np.linspace(0, len(curve) - 1, CURVE_POINTS).round().astype(int)]
    return {"n_masks": int(len(x)), "min_samples": cfg.min_samples, "metric": cfg.metric, "eps": cfg.eps,
            "rows": eps_sweep(x, cfg, grid) if len(x) else [], "kdist": [float(v) for v in curve],
            "suggested_eps": suggestion.eps, "reason": suggestion.reason}


def sweep_run(run_id: str, eps_range: Optional[str] = None) -> dict[str, Any]:
    """sweep_report for an MLflow image run or dataset (batch) run, its embeddings fetched from MLflow;
    sweep_per_image for a batch of per-image classes."""
    import tempfile

    from samseg.core.config import PipelineConfig
    from samseg.edges.mlflow.tracking import run_embeddings

    eps_grid(eps_range)  # a bad range is an error before any download
    with tempfile.TemporaryDirectory(prefix="samseg-sweep-") as tmp:
        embs, summaries = run_embeddings(run_id, tmp)
    try:
        cfg = PipelineConfig.from_flat(summaries[0]["config"]).cluster
    except (KeyError, TypeError, ValueError) as exc:
        raise SweepError(f"run {run_id}: its summary.json holds no samseg config ({one_line(exc)})") from None
    if len(embs) > 1 and any(s.get("classes") not in DATASET_MODES for s in summaries):
        return {"run_id": run_id, "n_images": len(embs), **sweep_per_image(embs, cfg, eps_range)}
    found = [e.reshape(len(e), -1) for e in embs if len(e)]  # an image with no mask adds nothing
    x = np.concatenate(found) if found else np.zeros((0, 1), np.float32)
    return {"run_id": run_id, "n_images": len(embs), **sweep_report(x, cfg, eps_range)}


def sweep_per_image(embs: list[np.ndarray], cfg: ClusterConfig, eps_range: Optional[str] = None) -> dict[str, Any]:
    """sweep_report's fields for images clustered each alone (a recluster of a per-image batch):
    rows sum the images' classes and noise; the suggestion is the median of the images' knees
    (`--eps auto` uses each image's own: `knees` lists them); no one k-distance curve (kdist: [])."""
    asked = eps_grid(eps_range, largest_distance(cfg)) if eps_range else None  # before any compute
    measured = [_measured(e.reshape(len(e), -1) if len(e) else np.zeros((0, 1), np.float32), cfg) for e in embs]
    # one range for every image: it covers all their k-distances and knees, and the run's eps
    grid = asked if asked is not None else covering_grid(
        np.concatenate([curve for _, curve, _ in measured]) if measured else np.zeros(0), cfg.eps,
        *(s.eps for _, _, s in measured), cap=largest_distance(cfg))
    reports = [_report(x, cfg, grid, curve, s) for x, curve, s in measured]
    n = sum(r["n_masks"] for r in reports)
    rows = []
    for k, eps in enumerate(grid if n else []):
        found = [r["rows"][k] for r in reports if r["rows"]]  # an image with no mask adds nothing
        noise = sum(row["n_noise"] for row in found)
        rows.append({"eps": float(eps), "n_clusters": sum(row["n_clusters"] for row in found), "n_noise": noise,
                     "noise_fraction": noise / n})
    knees = [r["suggested_eps"] for r in reports if r["suggested_eps"] is not None]
    reason = "" if knees else f"no image's k-distance curve has a knee (the first image: {reports[0]['reason']})"
    return {"n_masks": n, "min_samples": cfg.min_samples, "metric": cfg.metric, "eps": cfg.eps, "rows": rows,
            "kdist": [], "suggested_eps": float(np.median(knees)) if knees else None, "reason": reason,
            "per_image": True, "knees": knees}


def format_sweep(report: dict[str, Any]) -> str:
    """The table `samseg sweep` prints, then the knee line."""
    each = f" in {report['n_images']} images, each clustered alone" if report.get("per_image") else ""
    lines = [f"{report['n_masks']} masks{each}, min_samples={report['min_samples']}, metric={report['metric']}, run eps={report['eps']:g}",
             f"{'eps':>8}  {'classes':>7}  {'noise':>6}"]
    lines += [f"{r['eps']:8.4g}  {r['n_clusters']:7d}  {100 * r['noise_fraction']:5.1f}%" for r in report["rows"]]
    knees = report.get("knees")
    if report.get("per_image") and knees:
        spread = f", {min(knees):.4g}–{max(knees):.4g}" if len(knees) > 1 else ""
        lines.append(f"knees of the images' k-distance curves (k={report['min_samples']}): median eps = "
                     f"{report['suggested_eps']:.4g}{spread}, {len(knees)} of {report['n_images']} images "
                     "(--eps auto uses each image's own)")
    elif report["suggested_eps"] is not None:
        lines.append(f"knee of the k-distance curve (k={report['min_samples']}): eps = {report['suggested_eps']:.4g} "
                     "(what --eps auto uses)")
    else:
        lines.append(f"no suggested eps: {report['reason']}")
    return "\n".join(lines)

