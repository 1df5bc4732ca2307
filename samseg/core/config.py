"""Frozen, typed configuration for every samseg stage, and the named presets.

Each stage takes exactly one of these objects. `PipelineConfig.flat()` gives the
dotted key/value view (``amg.points_per_side``) used by summary.json, MLflow params and
cache keys, so the three can never disagree about what a run was configured with.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from samseg.core.algorithms import ALGORITHMS as _ALGORITHM_REGISTRY

CellRule = Literal["min_pixels", "min_coverage"]
Weighting = Literal["uniform", "coverage"]
Algorithm = str  # a name in samseg.core.algorithms.ALGORITHMS
ALGORITHMS: tuple[str, ...] = tuple(_ALGORITHM_REGISTRY)  # the registry's names, in registration order


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class AmgConfig:
    """Every `segment_anything.SamAutomaticMaskGenerator` knob; defaults are SAM's own.

    `point_grids` and `output_mode` are not exposed: samseg always builds the grid from
    `points_per_side` and always keeps masks as COCO RLE between stages.
    """

    points_per_side: int = 32  # 32×32 = 1,024 prompts on the full image
    points_per_batch: int = 64  # prompts per decoder call; memory, not results
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0  # >0 runs SAM's small-region/hole removal (needs OpenCV)

    def __post_init__(self) -> None:
        _check(self.points_per_side >= 1, "amg.points_per_side must be >= 1")
        _check(self.points_per_batch >= 1, "amg.points_per_batch must be >= 1")
        _check(self.crop_n_layers >= 0, "amg.crop_n_layers must be >= 0")
        _check(self.crop_n_points_downscale_factor >= 1, "amg.crop_n_points_downscale_factor must be >= 1")
        _check(self.min_mask_region_area >= 0, "amg.min_mask_region_area must be >= 0")
        _check(0.0 <= self.crop_overlap_ratio < 1.0, "amg.crop_overlap_ratio must be in [0, 1)")


@dataclass(frozen=True)
class PoolConfig:
    """How a mask's embedding is pooled from the C×64×64 encoder feature grid.

    Cells are the 16×16-pixel patches of SAM's 1024-px input frame (long side resized to
    1024, padded bottom/right). Padding cells are never used.
    - cell_rule="min_pixels": a cell is used when the mask covers MORE than `min_pixels`
      pixels of it at input scale. The notebook's rule is `> 1 pixel` (min_pixels=1).
    - cell_rule="min_coverage": a cell is used when the covered fraction of its valid
      (non-padding) area is >= `min_coverage`.
    - weighting="uniform" averages the selected cells equally (the notebook);
      "coverage" weights each selected cell by its covered fraction.
    A mask that selects no cell falls back to the single cell it overlaps most.
    """

    cell_rule: CellRule = "min_pixels"
    min_pixels: int = 1
    min_coverage: float = 0.5
    weighting: Weighting = "uniform"

    def __post_init__(self) -> None:
        _check(self.cell_rule in ("min_pixels", "min_coverage"), f"pool.cell_rule must be min_pixels or min_coverage, got {self.cell_rule!r}")
        _check(self.weighting in ("uniform", "coverage"), f"pool.weighting must be uniform or coverage, got {self.weighting!r}")
        _check(self.min_pixels >= 0, "pool.min_pixels must be >= 0")
        _check(0.0 < self.min_coverage <= 1.0, "pool.min_coverage must be in (0, 1]")


MAX_MIN_SAMPLES = 100_000


@dataclass(frozen=True)
class ClusterConfig:
    """Clustering of the N×C mask embeddings (scikit-learn).

    eps=0.06 / min_samples=8 / cosine are the notebook's DBSCAN values. For HDBSCAN,
    `min_samples` is also its min_cluster_size (HDBSCAN needs >= 2). Agglomerative uses
    average linkage cut at `distance_threshold`; its singletons are reported as noise.
    """

    algorithm: Algorithm = "dbscan"
    eps: float = 0.06
    min_samples: int = 8
    metric: str = "cosine"
    distance_threshold: float = 0.3
    # DBSCAN's eps from the knee of the k-distance curve (samseg.core.sweep); `eps` is the
    # fallback when there is no knee (fewer masks than min_samples, a straight curve).
    eps_auto: bool = False

    def __post_init__(self) -> None:
        _check(isinstance(self.eps_auto, bool), "cluster.eps_auto must be true or false")
        _check(self.algorithm in ALGORITHMS, f"cluster.algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}")
        _check(self.eps > 0, "cluster.eps must be > 0")
        _check(math.isfinite(self.eps), "cluster.eps must be a finite number")
        # More than any batch's mask count is meaningless (everything is noise) and a huge
        # value is an attack on the clustering's memory, not a setting.
        _check(self.min_samples >= 1, "cluster.min_samples must be >= 1")
        _check(self.min_samples <= MAX_MIN_SAMPLES, f"cluster.min_samples must be <= {MAX_MIN_SAMPLES}")
        _check(self.distance_threshold > 0, "cluster.distance_threshold must be > 0")
        _check(math.isfinite(self.distance_threshold), "cluster.distance_threshold must be a finite number")
        _check(self.metric in ("cosine", "euclidean", "manhattan", "l1", "l2"), f"cluster.metric {self.metric!r} is not supported")


# `--tile auto` tiles an image whose long side is over this many tile sides: SAM would see
# it at under half its resolution (a 2048-px side at 1024 px), so a 16-px patch covers 32+ pixels.
TILE_AUTO_SIDES = 2


@dataclass(frozen=True)
class TileConfig:
    """Tiled segmentation of large images (samseg.core.tiling; the `tiles` stage of samseg.engine.stages).

    size: tile side in pixels (0 = no tiling: the whole image is one SAM input). overlap:
    pixels shared by neighbouring tiles; an object cut by a seam is matched with its
    continuation there. auto: tile only images whose long side exceeds TILE_AUTO_SIDES·size
    (resolved per image, so smaller images keep their untiled cache entries). merge_iou:
    two tiles' masks are one object when their IoU inside the shared region reaches it.
    """

    size: int = 0
    overlap: int = 256
    auto: bool = False
    merge_iou: float = 0.5

    def __post_init__(self) -> None:
        _check(self.size == 0 or self.size >= 64, "tile.size must be 0 (no tiling) or >= 64 pixels")
        _check(self.overlap >= 0, "tile.overlap must be >= 0")
        _check(self.size == 0 or self.overlap * 2 <= self.size, "tile.overlap must be at most half of tile.size")
        _check(0.0 < self.merge_iou <= 1.0, "tile.merge_iou must be in (0, 1]")
        _check(isinstance(self.auto, bool), "tile.auto must be true or false")

    @property
    def enabled(self) -> bool:
        return self.size > 0

    def for_image(self, image_hw: tuple[int, int]) -> "TileConfig":
        """This image's tiling: `auto` resolved (off, or on with auto=False), so equal work keys equally."""
        if not self.enabled or (self.auto and max(image_hw) <= TILE_AUTO_SIDES * self.size):
            return TileConfig()
        return dataclasses.replace(self, auto=False)


# The precisions the encoder and decoder can run in; "auto" picks one per machine (samseg.sam.precision).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
PRECISION_REQUESTS: tuple[str, ...] = (*PRECISIONS, "auto")


SECTIONS: tuple[str, ...] = ("amg", "pool", "cluster", "tile")  # the config sections of `flat()`


@dataclass(frozen=True)
class PipelineConfig:
    """The whole run: which model and how each stage is configured."""

    model_type: str = "vit_h"
    amg: AmgConfig = field(default_factory=AmgConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    # fp32 | bf16 | fp16 | auto for the encoder and decoder (samseg.sam.precision); "auto" is
    # resolved per machine at run time, and the resolved value is what the caches key on.
    precision: str = "fp32"
    tile: TileConfig = field(default_factory=TileConfig)

    def __post_init__(self) -> None:
        _check(self.precision in PRECISION_REQUESTS, f"precision must be one of {', '.join(PRECISION_REQUESTS)}, got {self.precision!r}")

    def flat(self) -> dict[str, Any]:
        """Dotted view: {'model_type': 'vit_h', 'precision': 'fp32', 'amg.points_per_side': 32, ...}."""
        out: dict[str, Any] = {"model_type": self.model_type, "precision": self.precision}
        for name in SECTIONS:
            for key, value in dataclasses.asdict(getattr(self, name)).items():
                out[f"{name}.{key}"] = value
        return out

    def replace(self, **sections: Any) -> "PipelineConfig":
        """`cfg.replace(cluster={'eps': 0.1})` → new config with those fields changed."""
        changes: dict[str, Any] = {}
        for name, value in sections.items():
            if isinstance(value, dict):
                changes[name] = dataclasses.replace(getattr(self, name), **value)
            else:
                changes[name] = value
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> "PipelineConfig":
        """Inverse of `flat()`; unknown keys raise ValueError."""
        sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        model_type = flat.get("model_type", cls.model_type)
        for key, value in flat.items():
            if key in ("model_type", "precision"):
                continue
            section, _, name = key.partition(".")
            if section not in sections:
                raise ValueError(f"unknown config key {key!r}")
            sections[section][name] = value
        return cls(
            model_type=model_type,
            precision=str(flat.get("precision", cls.precision)),
            amg=AmgConfig(**sections["amg"]),
            pool=PoolConfig(**sections["pool"]),
            cluster=ClusterConfig(**sections["cluster"]),
            tile=TileConfig(**sections["tile"]),  # none in a pre-tiling summary: untiled
        )

    def for_image(self, image_hw: tuple[int, int]) -> "PipelineConfig":
        """The config one image runs with: `tile.auto` resolved for its size."""
        tile = self.tile.for_image(image_hw)
        return self if tile == self.tile else dataclasses.replace(self, tile=tile)


# The original notebook's values: vit_h, 51×51 points, one crop layer, DBSCAN(0.06, 8, cosine).
NOTEBOOK = PipelineConfig(
    model_type="vit_h",
    amg=AmgConfig(
        points_per_side=51,
        pred_iou_thresh=0.86,
        stability_score_thresh=0.92,
        crop_n_layers=1,
        crop_n_points_downscale_factor=2,
        min_mask_region_area=100,
    ),
    pool=PoolConfig(cell_rule="min_pixels", min_pixels=1, weighting="uniform"),
    cluster=ClusterConfig(algorithm="dbscan", eps=0.06, min_samples=8, metric="cosine"),
)

# SAM's AMG defaults with the notebook's clustering: ~5× fewer prompts than `notebook`.
DEFAULT = PipelineConfig()

# For tiny-random smoke runs: a random SAM's masks nearly all fail SAM's IoU/stability
# filters and collapse under box NMS, so the filters are opened up and the grid is small.
SMOKE = PipelineConfig(
    model_type="tiny-random",
    amg=AmgConfig(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0),
    cluster=ClusterConfig(algorithm="dbscan", eps=0.06, min_samples=3, metric="cosine"),
)

PRESETS: dict[str, PipelineConfig] = {"default": DEFAULT, "notebook": NOTEBOOK, "smoke": SMOKE}


def get_preset(name: str) -> PipelineConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]

