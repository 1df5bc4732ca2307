"""RunSummary: the one record of what a run did, built in one place.

summary.json is `RunSummary.to_dict()` (written by samseg.edges.image_dir, the only writer of
that file); MLflow params, metrics and tags are derived from the same dict by
samseg.edges.mlflow.tracking (the only writer to MLflow). A segment, a recluster, a UI rerun and
an exemplar class all build theirs with `summarize`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from samseg import __version__

if TYPE_CHECKING:
    from samseg.engine.runner import ImageRun

_KNOWN = ("samseg_version", "image", "model", "features", "config", "embedding_dim", "n_masks", "n_clusters", "n_noise",
          "cluster_sizes", "seconds", "silhouette", "cache", "prefect_flow_run_id")


@dataclass
class RunSummary:
    """image: {file_name, uri, sha256, hw}; model: {type, checkpoint_sha256, checkpoint_path,
    device, precision (resolved)}; features: {name, sha256, checkpoint_path, grid_hw,
    patch_size} (the backbone the embeddings were pooled from; no grid for a tiled image: one
    per tile); config: PipelineConfig.flat(); seconds: {stage: s, total};
    cache: {cached stage: status}; extra: run-kind specific keys (recluster, parent_run_id,
    kind, classes, exemplar, ...), written after the known ones."""

    image: dict[str, Any]
    model: dict[str, Any]
    config: dict[str, Any]
    embedding_dim: Optional[int]
    n_masks: int
    n_clusters: int
    n_noise: int
    cluster_sizes: list[int]
    seconds: dict[str, float]
    silhouette: Optional[float] = None
    cache: dict[str, str] = field(default_factory=dict)
    prefect_flow_run_id: Optional[str] = None
    features: dict[str, Any] = field(default_factory=dict)
    samseg_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in _KNOWN}, **self.extra}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSummary":
        known = {k: d[k] for k in _KNOWN if k in d}
        known.setdefault("silhouette", None)
        return cls(**known, extra={k: v for k, v in d.items() if k not in _KNOWN})


def summarize(run: "ImageRun", flow_run_id: Optional[str] = None, extra: Optional[dict[str, Any]] = None) -> RunSummary:
    """The RunSummary of a finished ImageRun (its clusters, timings and cache statuses)."""
    from samseg.core.cluster import silhouette_cosine

    img, m, clusters, emb = run.image, run.model, run.clusters, run.embeddings
    tiling = run.tiling()
    seconds = {name: round(float(s), 6) for name, s in run.seconds.items()}
    seconds["total"] = round(sum(seconds.values()), 6)
    return RunSummary(
        image={"file_name": img.name, "uri": img.uri, "sha256": img.sha256, "hw": list(img.hw)},
        model={"type": m.model_type, "checkpoint_sha256": m.checkpoint_sha256, "checkpoint_path": m.checkpoint_path,
               "device": m.device, "precision": m.precision},
        features={**m.features_record(), **features_grid(run)},
        config={**run.cfg.flat(), "model_type": m.model_type},
        embedding_dim=int(emb.shape[1]) if getattr(emb, "ndim", 0) == 2 else None,
        n_masks=len(run.masks),
        n_clusters=clusters.n_clusters,
        n_noise=clusters.n_noise,
        cluster_sizes=clusters.sizes(),
        seconds=seconds,
        silhouette=silhouette_cosine(emb, clusters.labels),  # None when undefined
        cache=run.cache_status(),
        prefect_flow_run_id=flow_run_id,
        extra={**({"eps_auto": clusters.choice} if clusters.choice else {}),
               **({"amg_funnel": run.masks.funnel, "no_masks_because": no_masks_because(run.masks.funnel, run.cfg)}
                  if run.masks.funnel else {}),
               **({"tiling": tiling} if tiling else {}), **(extra or {})},
    )


def no_masks_because(funnel: dict[str, Any], cfg: Any) -> str:
    """One line: which of the AMG's filters left no mask (the first one that let none through),
    with its knob, its value and the best score the candidates reached."""
    amg = cfg.amg
    n = funnel.get("candidates", 0)
    if not n:
        return "SAM made no candidate mask (no point prompt: raise points_per_side)"
    if not funnel.get("pred_iou"):
        return (f"none of {n} candidate masks passed pred_iou_thresh {amg.pred_iou_thresh:g} "
                f"(the best predicted IoU was {funnel.get('best_iou') or 0:.3f}): lower it")
    if not funnel.get("stability"):
        return (f"{funnel['pred_iou']} of {n} candidates passed pred_iou_thresh, none stability_score_thresh "
                f"{amg.stability_score_thresh:g} (the best stability was {funnel.get('best_stability') or 0:.3f}): lower it")
    if not funnel.get("crop_edge"):
        return f"the {funnel['stability']} masks left all touched a crop's edge (crop_n_layers {amg.crop_n_layers})"
    return (f"{funnel.get('box_nms', 0)} masks passed the filters and box NMS; min_mask_region_area "
            f"{amg.min_mask_region_area} or the crop NMS removed the rest")


def features_grid(run: "ImageRun") -> dict[str, Any]:
    """{grid_hw, patch_size} of the grid the embeddings were pooled from (computed from the
    config, so a run whose pool entry was cached reports it too); {} for a tiled image."""
    from samseg.core.backbones import SAM, backbone_entry
    from samseg.core.types import ImageGeometry
    from samseg.sam.model import model_entry

    if run.tiled:
        return {}
    f = run.cfg.features
    if f.name == SAM:
        row = model_entry(run.cfg.model_type)
        geometry = ImageGeometry.for_image(run.image.hw, row.input_size, row.patch_size)
    else:
        geometry = ImageGeometry.for_image(run.image.hw, f.long_side, backbone_entry(f.name).patch_size, square=False)
    return {"grid_hw": list(geometry.valid_cells_hw), "patch_size": geometry.patch_size}
