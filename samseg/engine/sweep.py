"""`samseg sweep` and the UI's sweep chart: how n_clusters and noise move with DBSCAN's eps on
a run's embeddings (an image run, or every image of a dataset run), the k-distance curve and
its knee (samseg.core.sweep, the rule `--eps auto` uses)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from samseg.core.config import ClusterConfig
from samseg.core.sweep import eps_grid, eps_sweep, k_distances, suggest_eps

CURVE_POINTS = 400  # the k-distance curve as drawn: enough points for a chart


def sweep_report(embeddings_nc: np.ndarray, cfg: ClusterConfig, eps_range: Optional[str] = None) -> dict[str, Any]:
    """{n_masks, min_samples, metric, eps (the run's), rows [{eps, n_clusters, n_noise,
    noise_fraction}], kdist (sorted, ≤ CURVE_POINTS samples), suggested_eps, reason}.
    ValueError (one line) for a bad eps range."""
    grid = eps_grid(eps_range)
    x = np.asarray(embeddings_nc, dtype=np.float32)
    curve = k_distances(x, max(1, cfg.min_samples), cfg.metric)
    suggestion = suggest_eps(x, cfg, curve)
    if len(curve) > CURVE_POINTS:
        curve = curve[np.linspace(0, len(curve) - 1, CURVE_POINTS).round().astype(int)]
    return {"n_masks": int(len(x)), "min_samples": cfg.min_samples, "metric": cfg.metric, "eps": cfg.eps,
            "rows": eps_sweep(x, cfg, grid) if len(x) else [], "kdist": [float(v) for v in curve],
            "suggested_eps": suggestion.eps, "reason": suggestion.reason}


def sweep_run(run_id: str, eps_range: Optional[str] = None) -> dict[str, Any]:
    """sweep_report for an MLflow image run or dataset (batch) run, its embeddings fetched from MLflow."""
    import tempfile

    from samseg.core.config import PipelineConfig
    from samseg.edges.mlflow.tracking import run_embeddings

    eps_grid(eps_range)  # a bad range is an error before any download
    with tempfile.TemporaryDirectory(prefix="samseg-sweep-") as tmp:
        embs, summaries = run_embeddings(run_id, tmp)
    cfg = PipelineConfig.from_flat(summaries[0]["config"]).cluster
    found = [e.reshape(len(e), -1) for e in embs if len(e)]  # an image with no mask adds nothing
    x = np.concatenate(found) if found else np.zeros((0, 1), np.float32)
    return {"run_id": run_id, "n_images": len(embs), **sweep_report(x, cfg, eps_range)}


def format_sweep(report: dict[str, Any]) -> str:
    """The table `samseg sweep` prints, then the knee line."""
    lines = [f"{report['n_masks']} masks, min_samples={report['min_samples']}, metric={report['metric']}, run eps={report['eps']:g}",
             f"{'eps':>8}  {'classes':>7}  {'noise':>6}"]
    lines += [f"{r['eps']:8.4g}  {r['n_clusters']:7d}  {100 * r['noise_fraction']:5.1f}%" for r in report["rows"]]
    if report["suggested_eps"] is not None:
        lines.append(f"knee of the k-distance curve (k={report['min_samples']}): eps = {report['suggested_eps']:.4g} "
                     "(what --eps auto uses)")
    else:
        lines.append(f"no suggested eps: {report['reason']}")
    return "\n".join(lines)

