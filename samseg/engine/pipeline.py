"""One image end to end, for callers without Prefect: encode → amg → pool → cluster → compose.

Each stage is one call into its own module; the Prefect flows call the same functions one
by one (with caching in between), so nothing here does I/O or hides a stage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from samseg import __version__
from samseg.core.config import ClusterConfig, PipelineConfig
from samseg.core.types import ClusterResult, EncodedImage, MaskSet

if TYPE_CHECKING:
    from samseg.edges.images import LoadedImage
    from samseg.sam.model import LoadedModel

STAGES: tuple[str, ...] = ("encode", "amg", "pool", "cluster", "compose")

# progress(stage) is called after each stage of STAGES finishes (e.g. to advance a bar).
Progress = Callable[[str], None]


@dataclass(frozen=True, eq=False)
class SegmentationResult:
    """Everything one image produced, rows in AMG mask order.

    encoded: C×64×64 features + geometry. masks: N masks (COCO RLE). embeddings: N×C
    float32. clusters: (N,) labels, -1 = noise. label_map: H×W uint16 (0 = none, c + 1 =
    cluster c). timings: {stage: seconds} for the stages in STAGES (time.perf_counter).
    """

    encoded: EncodedImage
    masks: MaskSet
    embeddings: np.ndarray
    clusters: ClusterResult
    label_map: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)


def segment_image(model: "LoadedModel", image: "LoadedImage", cfg: PipelineConfig, progress: Progress | None = None) -> SegmentationResult:
    """Run the five stages on `image.rgb` (H×W×3 uint8) with `cfg`'s amg/pool/cluster configs.

    Exactly one encoder pass: the AMG reuses `encoded` for its full-image crop.
    """
    from samseg.sam.amg import generate_masks
    from samseg.sam.encode import encode_image
    from samseg.core.pool import pool_embeddings

    timings: dict[str, float] = {}

    def timed(stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args)
        timings[stage] = time.perf_counter() - t0
        if progress is not None:
            progress(stage)
        return out

    encoded = timed("encode", encode_image, model, image.rgb)
    masks = timed("amg", generate_masks, model, image.rgb, encoded, cfg.amg)
    embeddings = timed("pool", pool_embeddings, masks, encoded, cfg.pool)
    clusters, label_map = _timed_recluster(timed, masks, embeddings, cfg.cluster)
    return SegmentationResult(encoded, masks, embeddings, clusters, label_map, timings)


def _timed_recluster(timed: Callable[..., Any], masks: MaskSet, embeddings: np.ndarray, cluster_cfg: ClusterConfig) -> tuple[ClusterResult, np.ndarray]:
    from samseg.core.cluster import cluster_embeddings
    from samseg.core.compose import compose_labels

    clusters = timed("cluster", cluster_embeddings, embeddings, cluster_cfg)
    label_map = timed("compose", compose_labels, masks, clusters)
    return clusters, label_map


def recluster(masks: MaskSet, embeddings: np.ndarray, cluster_cfg: ClusterConfig) -> tuple[ClusterResult, np.ndarray]:
    """Re-run only cluster → compose on stored masks and N×C embeddings (no model needed).
    Returns (ClusterResult, H×W uint16 label map)."""
    return _timed_recluster(lambda _stage, fn, *args: fn(*args), masks, embeddings, cluster_cfg)


def build_summary(image: "LoadedImage", model: "LoadedModel", cfg: PipelineConfig, result: SegmentationResult) -> dict[str, Any]:
    """JSON-able record of one image's run (summary.json; MLflow logs the same keys).

    `config` is cfg.flat() with model_type taken from the model actually used.
    """
    clusters = result.clusters
    seconds = {stage: round(float(result.timings[stage]), 6) for stage in STAGES if stage in result.timings}
    seconds["total"] = round(sum(seconds.values()), 6)
    return {
        "samseg_version": __version__,
        "image": {"file_name": image.name, "uri": image.uri, "sha256": image.sha256, "hw": list(image.hw)},
        "model": {
            "type": model.model_type,
            "checkpoint_sha256": model.checkpoint_sha256,
            "checkpoint_path": model.checkpoint_path,
            "device": model.device,
            "precision": getattr(model, "precision", "fp32"),  # resolved: what the encoder/decoder ran in
        },
        "config": {**cfg.flat(), "model_type": model.model_type},
        "embedding_dim": int(result.embeddings.shape[1]) if result.embeddings.ndim == 2 else None,
        "n_masks": len(result.masks),
        "n_clusters": clusters.n_clusters,
        "n_noise": clusters.n_noise,
        "cluster_sizes": clusters.sizes(),
        "seconds": seconds,
    }
