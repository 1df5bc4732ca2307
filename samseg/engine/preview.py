"""Live preview: new clustering settings on a run's masks and embeddings, drawn at preview
size, with no run created. The clustering is the engine's own `cluster` stage (run_image
given the run's amg and pool values); the drawing is samseg.core.preview's canvas.

A `PreviewSession` holds one run's decoded inputs so each redraw costs one clustering and
one paint of the preview canvas (benchmarks/preview.py measures it).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from samseg.core.config import ClusterConfig, PipelineConfig
from samseg.core.preview import PreviewCanvas
from samseg.edges.run_schema import FROM_PARENT_RUN
from samseg.engine.runner import run_image
from samseg.sam.source import ModelIdentity


@dataclass
class PreviewSession:
    """image: LoadedImage of the run; masks/embeddings: its AMG masks and N×C embeddings;
    cfg: the run's config; model: its identity. The canvas is built on first use."""

    image: Any
    masks: Any
    embeddings: np.ndarray
    cfg: PipelineConfig
    model: ModelIdentity
    labels: np.ndarray | None = None  # the run's own classes (what a person's edits start from)
    summary: dict[str, Any] = field(default_factory=dict)  # the run's summary.json (its names, its eps)
    _canvas: PreviewCanvas | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def canvas(self) -> PreviewCanvas:
        with self._lock:
            if self._canvas is None:
                self._canvas = PreviewCanvas.build(self.image.rgb, self.masks)
            return self._canvas

    @property
    def nbytes(self) -> int:
        """What the session holds in memory: the image, its masks' RLE, the embeddings, the canvas."""
        held = self.image.rgb.nbytes + self.embeddings.nbytes + sum(len(r["counts"]) for r in self.masks.rles)
        canvas = self._canvas
        if canvas is not None:
            held += canvas.rgb.nbytes + sum(c.nbytes for c in canvas.crops)
        return int(held)

    def clusters(self, cluster_cfg: ClusterConfig) -> Any:
        """The engine's cluster stage under `cluster_cfg` (nothing cached, nothing written)."""
        from samseg.edges.cache import StageCache

        given = {"amg": (self.masks, FROM_PARENT_RUN), "pool": (self.embeddings, FROM_PARENT_RUN)}
        run = run_image(self.image, self.cfg.replace(cluster=cluster_cfg), self.model, StageCache(),
                        given=given, want=("cluster",))  # given amg + pool: no entry is read
        return run.clusters

    def png(self, cluster_cfg: ClusterConfig) -> tuple[bytes, Any]:
        """(overlay PNG at preview size, ClusterResult)."""
        return self.draw(self.clusters(cluster_cfg))

    def edited(self, edits: list[Any]) -> Any:
        """The run's classes after a person's `edits` (samseg.core.curation, as `samseg classes
        edit` applies them): a ClusterResult with the names; ValueError for a bad edit."""
        from samseg.core.curation import apply_edits
        from samseg.core.types import ClusterResult
        from samseg.engine.curate import edit_config, names_of

        if self.labels is None:
            raise ValueError("this run's classes are not loaded")
        labels, names = apply_edits(self.labels, self.embeddings, edits, edit_config(self.summary), names_of(self.summary))
        return ClusterResult(labels, names=names)

    def draw(self, clusters: Any) -> tuple[bytes, Any]:
        """(overlay PNG at preview size of `clusters`, clusters)."""
        from samseg.core.render import render_overlay
        from samseg.edges.image_dir import png_bytes

        canvas = self.canvas()
        rgb = render_overlay(canvas.rgb, canvas.label_map(clusters.labels), clusters.sizes(), clusters.n_noise,
                             names=clusters.legend())
        return png_bytes(rgb), clusters  # the export's fast encoder: a preview is speed over size

