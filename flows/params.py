"""Typed flow parameters: pydantic mirrors of samseg.core.config so the Prefect UI renders a form.

Every model here is a thin shell around one frozen config from `samseg.core.config`:
- field names and defaults are the config's own (defaults are read from the dataclass,
  never re-typed here);
- the `ge`/`gt` bounds only feed the JSON schema so the UI form can flag a bad value
  before a run is created;
- the authoritative check is the config's `__post_init__`: every model's `after`
  validator builds the config, so a value the config rejects is a pydantic
  ValidationError with the config's own message.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from samseg.sam.model import MODEL_TYPES

from samseg.core.config import (
    ALGORITHMS,
    AmgConfig,
    ClusterConfig,
    PipelineConfig,
    PoolConfig,
    TileConfig,
    get_preset,
)

ModelType = Literal[MODEL_TYPES]  # the model registry's names (samseg.sam.model.MODELS)

_AMG = AmgConfig()
_POOL = PoolConfig()
_CLUSTER = ClusterConfig()
_TILE = TileConfig()
_PIPE = PipelineConfig()


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_config(self):  # pragma: no cover - overridden
        raise NotImplementedError

    @model_validator(mode="after")
    def _config_accepts(self):
        self.to_config()  # ValueError from the config → pydantic ValidationError
        return self


class AmgParams(_Params):
    """SamAutomaticMaskGenerator knobs (see samseg.core.config.AmgConfig)."""

    points_per_side: int = Field(_AMG.points_per_side, ge=1, description="prompt grid is N×N points")
    points_per_batch: int = Field(_AMG.points_per_batch, ge=1, description="prompts per decoder call (memory only)")
    pred_iou_thresh: float = Field(_AMG.pred_iou_thresh, description="drop masks with lower predicted IoU")
    stability_score_thresh: float = Field(_AMG.stability_score_thresh)
    stability_score_offset: float = Field(_AMG.stability_score_offset)
    box_nms_thresh: float = Field(_AMG.box_nms_thresh)
    crop_n_layers: int = Field(_AMG.crop_n_layers, ge=0)
    crop_nms_thresh: float = Field(_AMG.crop_nms_thresh)
    crop_overlap_ratio: float = Field(_AMG.crop_overlap_ratio, ge=0.0, lt=1.0)
    crop_n_points_downscale_factor: int = Field(_AMG.crop_n_points_downscale_factor, ge=1)
    min_mask_region_area: int = Field(_AMG.min_mask_region_area, ge=0)

    def to_config(self) -> AmgConfig:
        return AmgConfig(**self.model_dump())


class PoolParams(_Params):
    """How a mask's embedding is pooled (see samseg.core.config.PoolConfig)."""

    cell_rule: Literal["min_pixels", "min_coverage"] = Field(_POOL.cell_rule)
    min_pixels: int = Field(_POOL.min_pixels, ge=0)
    min_coverage: float = Field(_POOL.min_coverage, gt=0.0, le=1.0)
    weighting: Literal["uniform", "coverage"] = Field(_POOL.weighting)

    def to_config(self) -> PoolConfig:
        return PoolConfig(**self.model_dump())


class ClusterParams(_Params):
    """Clustering of the mask embeddings (see samseg.core.config.ClusterConfig)."""

    algorithm: Literal[ALGORITHMS] = Field(_CLUSTER.algorithm)  # type: ignore[valid-type]  # the registry's names
    eps: float = Field(_CLUSTER.eps, gt=0.0, description="DBSCAN neighbourhood radius (cosine distance)")
    min_samples: int = Field(_CLUSTER.min_samples, ge=1)
    metric: Literal["cosine", "euclidean", "manhattan", "l1", "l2"] = Field(_CLUSTER.metric)  # type: ignore[assignment]
    distance_threshold: float = Field(_CLUSTER.distance_threshold, gt=0.0)
    eps_auto: bool = Field(_CLUSTER.eps_auto, description="eps from the knee of the k-distance curve (eps = fallback)")

    def to_config(self) -> ClusterConfig:
        return ClusterConfig(**self.model_dump())


class TileParams(_Params):
    """Tiled segmentation of large images (see samseg.core.config.TileConfig)."""

    size: int = Field(_TILE.size, ge=0, description="tile side in px; 0 = no tiling")
    overlap: int = Field(_TILE.overlap, ge=0, description="px shared by neighbouring tiles")
    auto: bool = Field(_TILE.auto, description="tile only images whose long side is over 2 tile sides")
    merge_iou: float = Field(_TILE.merge_iou, gt=0.0, le=1.0, description="IoU in the shared region that makes two tiles' masks one")

    def to_config(self) -> TileConfig:
        return TileConfig(**self.model_dump())


class PipelineParams(_Params):
    """The whole run's configuration; `to_config()` gives the frozen PipelineConfig.

    Defaults are the `default` preset; `from_preset("smoke")` gives another preset.
    """

    model_type: ModelType = Field(_PIPE.model_type)  # type: ignore[assignment]
    # fp32 | bf16 | fp16 | auto (samseg.sam.precision): auto = bf16 where the hardware has it
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"
    amg: AmgParams = Field(default_factory=AmgParams)
    pool: PoolParams = Field(default_factory=PoolParams)
    cluster: ClusterParams = Field(default_factory=ClusterParams)
    tile: TileParams = Field(default_factory=TileParams)

    def to_config(self) -> PipelineConfig:
        return PipelineConfig(
            model_type=self.model_type,
            precision=self.precision,
            amg=self.amg.to_config(),
            pool=self.pool.to_config(),
            cluster=self.cluster.to_config(),
            tile=self.tile.to_config(),
        )

    @classmethod
    def from_config(cls, cfg: PipelineConfig) -> "PipelineParams":
        import dataclasses

        return cls(
            model_type=cfg.model_type,
            precision=cfg.precision,  # type: ignore[arg-type]
            amg=AmgParams(**dataclasses.asdict(cfg.amg)),
            pool=PoolParams(**dataclasses.asdict(cfg.pool)),
            cluster=ClusterParams(**dataclasses.asdict(cfg.cluster)),
            tile=TileParams(**dataclasses.asdict(cfg.tile)),
        )

    @classmethod
    def from_preset(cls, name: str) -> "PipelineParams":
        return cls.from_config(get_preset(name))


class RuntimeParams(_Params):
    """Where the run happens; none of these change results, so none enter cache keys
    except through the checkpoint's sha256."""

    checkpoint: Optional[str] = Field(None, description="checkpoint path; None = samseg's download location")
    device: Optional[str] = Field(None, description="cpu, cuda, cuda:1 …; None = cuda when available")
    seed: int = Field(0, description="only used by the tiny-random test model")
    cache: Optional[str] = Field(None, description="stage cache root (dir or s3://); None = $SAMSEG_CACHE or ~/.cache/samseg/cache")
    save_features: bool = Field(False, description="also write features.npy (C×64×64) per image")

    def to_config(self) -> None:
        return None
