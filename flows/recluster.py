"""Prefect flow `recluster`: new clustering settings on masks + embeddings computed before.

Only `cluster` and `export` run. The masks (amg) and embeddings (pool) come from the stage
cache when it has them, else from the artifacts of the MLflow run we start from (so a
recluster works on a machine that never saw the image). The new MLflow run is tagged
`samseg.parent_run_id` = the run it started from.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

from prefect import flow

from flows.params import ClusterParams, PipelineParams, RuntimeParams
from flows.segment import EXPERIMENT_DEFAULT, build_image_summary, publish
from flows.tasks import cluster_task, get_model, load_entry, read_image_task, timed

RECLUSTER_FLOW_NAME = "recluster"


class ReclusterError(RuntimeError):
    """The inputs a recluster needs are not there (one line)."""


def _model_from_summary(summary: dict[str, Any]) -> SimpleNamespace:
    m = summary.get("model") or {}
    return SimpleNamespace(model_type=m.get("type") or summary["config"]["model_type"],
                           checkpoint_sha256=m.get("checkpoint_sha256"), checkpoint_path=m.get("checkpoint_path"),
                           device=m.get("device"), precision=m.get("precision", "fp32"))


def _cached_pair(runtime: RuntimeParams, image_sha: str, checkpoint_sha: str, cfg: Any,
                 precision: str = "fp32") -> tuple[Any, Any] | None:
    """(MaskSet, N×C embeddings) from the stage cache, or None when either is missing/corrupt.
    precision: the resolved one the run computed in (summary model.precision)."""
    from samseg.edges.cache import stage_key

    masks = load_entry(runtime, "amg", stage_key("amg", image_sha, checkpoint_sha, cfg, precision))
    emb = load_entry(runtime, "pool", stage_key("pool", image_sha, checkpoint_sha, cfg, precision)) if masks is not None else None
    return None if emb is None else (masks, emb)


def inputs_from_run(run_id: str, runtime: RuntimeParams, workdir: Path) -> tuple[dict[str, Any], Any, Any, str]:
    """(summary, masks, embeddings, source) of an MLflow run; source = "cache" or "run"."""
    from samseg.core.config import PipelineConfig
    from samseg.edges.export import read_outputs
    from samseg.edges.tracking import fetch_run_inputs

    summary = fetch_run_inputs(run_id, workdir)
    cfg = PipelineConfig.from_flat(summary["config"])
    pair = _cached_pair(runtime, summary["image"]["sha256"], summary["model"]["checkpoint_sha256"], cfg,
                        summary["model"].get("precision", "fp32"))
    if pair is not None:
        return summary, pair[0], pair[1], "cache"
    masks, emb, _labels = read_outputs(workdir)
    return summary, masks, emb, "run"


@flow(name=RECLUSTER_FLOW_NAME, log_prints=True)
def recluster_flow(
    cluster: ClusterParams,
    out: str,
    run_id: Optional[str] = None,
    image: Optional[str] = None,
    settings: Optional[PipelineParams] = None,
    runtime: RuntimeParams = RuntimeParams(),
    track: bool = True,
    experiment: str = EXPERIMENT_DEFAULT,
) -> dict[str, Any]:
    """Re-cluster one image's cached masks/embeddings with `cluster` into OUT/<stem>/.

    Start from `run_id` (an MLflow image run), or from `image` + `settings` (model, AMG
    and pool config of an earlier `segment`; its cache entries must exist).
    """
    if (run_id is None) == (image is None):
        raise ReclusterError("recluster needs exactly one of run_id or image")
    with tempfile.TemporaryDirectory(prefix="samseg-recluster-") as tmp:
        if run_id is not None:
            summary0, masks, emb, source = inputs_from_run(run_id, runtime, Path(tmp))
            from samseg.core.config import PipelineConfig

            base = PipelineConfig.from_flat(summary0["config"])
            model = _model_from_summary(summary0)
            img = read_image_task(summary0["image"]["uri"])
            if img.sha256 != summary0["image"]["sha256"]:
                raise ReclusterError(f"{img.uri}: file changed since run {run_id} (sha256 differs)")
        else:
            base = (settings or PipelineParams()).to_config()
            img = read_image_task(image)
            model = get_model(base.model_type, runtime, base.precision)
            pair = _cached_pair(runtime, img.sha256, model.checkpoint_sha256, base, model.precision)
            if pair is None:
                raise ReclusterError(f"{image}: no cached masks/embeddings for this model and AMG/pool config; run `samseg segment` first")
            (masks, emb), source = pair, "cache"
        cfg = base.replace(cluster=cluster.to_config())
        clusters, seconds = timed(cluster_task, emb, cfg.cluster)
        summary = build_image_summary(img, model, cfg, masks, emb, clusters, {"cluster": seconds},
                                      {"amg": "hit", "pool": "hit"})
        summary["recluster"] = {"parent_run_id": run_id, "inputs_from": source}
        where = publish(out, img, masks, emb, clusters, summary, None, track, experiment, kind="recluster",
                        parent_run_id=run_id)
    return {**summary, **where}
