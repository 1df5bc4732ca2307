"""The stage table: the one place that says which stages exist, what each reads, what its
cache key depends on and how its output is stored.

Stage order is the order a fresh image computes in: encode -> amg -> features -> pool ->
cluster -> compose; `write` (the image dir, samseg.engine.publish) follows the table. Masks
always come from SAM (encode, amg); `features` is what the embeddings are pooled from: SAM's
own encoder output (the original method, no second pass) or a feature backbone's grid
(DINOv2/v3, cached on its own key, so changing only the backbone re-uses the AMG entry). To
add a stage: write its compute function here and add a row to the tables; the runner
(samseg.engine.runner), the Prefect tasks (flows/tasks.py), the progress bar and the cache
keys follow from the rows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from samseg.core.backbones import SAM
from samseg.core.config import PipelineConfig
from samseg.edges.cache import content_key

if TYPE_CHECKING:
    from samseg.edges.images import LoadedImage
    from samseg.sam.backbones import LoadedBackbone
    from samseg.sam.model import LoadedModel


def _no_backbone() -> "LoadedBackbone":
    raise RuntimeError("this run has no feature backbone")


@dataclass(frozen=True)
class StageInputs:
    """What a compute function may use besides its upstream values: the image (H×W×3 uint8
    in `.rgb`), the config, `model()`, which loads SAM on first use (stages that never
    call it never load the model), and `backbone()`, the feature backbone, likewise."""

    image: "LoadedImage"
    cfg: PipelineConfig
    model: Callable[[], "LoadedModel"]
    backbone: Callable[[], "LoadedBackbone"] = _no_backbone
    libraries: Callable[[], None] = lambda: None  # waits for scikit-learn & co, imported ahead (engine.segment)
    # Runs the untiled amg + pool of a part of the image (one tile) with this run's model,
    # cache and executor: (part image, its config) -> ImageRun. Set by the runner.
    run_part: Optional[Callable[["LoadedImage", PipelineConfig], Any]] = None
    report: Callable[..., None] = lambda _event, **_info: None  # samseg.engine.progress.report when not quiet


@dataclass(frozen=True)
class Stage:
    """One row of the table.

    inputs: upstream stage names, passed positionally to `compute` after the StageInputs.
    key_sections: PipelineConfig sections its cache key includes (its own and upstream);
      None = not cached (cheap, re-tuned stages). codec: samseg.edges.cache.StageCache codec.
    gpu: runs under the GPU bound (process slots; the `gpu` tag on a Prefect server).
    inline: computed in the runner itself, not handed to the executor (a field read off its
      input, or a stage whose own steps are executor steps: the tiles' encode/amg/pool);
      a row with one input and inline=True takes that input's status.
    sam_keyed: its key names SAM's weights and model type (False: a backbone's features,
      which SAM does not touch).
    """

    name: str
    inputs: tuple[str, ...]
    compute: Callable[..., Any]
    key_sections: tuple[str, ...] | None = None
    codec: str | None = None
    gpu: bool = False
    inline: bool = False
    sam_keyed: bool = True

    @property
    def cached(self) -> bool:
        return self.key_sections is not None


def _encode(ctx: StageInputs) -> Any:
    from samseg.sam import encode

    return encode.encode_image(ctx.model(), ctx.image.rgb)  # C×64×64 features + geometry


def _amg(ctx: StageInputs, encoded: Any) -> Any:
    from samseg.sam import amg

    return amg.generate_masks(ctx.model(), ctx.image.rgb, encoded, ctx.cfg.amg)  # reuses `encoded`: one encoder pass


def _features(ctx: StageInputs) -> Any:
    from samseg.sam.backbones import encode_features

    return encode_features(ctx.backbone(), ctx.image.rgb, ctx.cfg.features.long_side)  # C×gh×gw + geometry


def _pool(ctx: StageInputs, masks: Any, features: Any) -> Any:
    from samseg.core import pool

    return pool.pool_embeddings(masks, features, ctx.cfg.pool)  # N×C float32


def _cluster(ctx: StageInputs, embeddings: Any) -> Any:
    ctx.libraries()  # a process's first clustering: the import's wait is seconds.load, not this stage's
    from samseg.core import cluster

    cfg = ctx.cfg.cluster
    if not cfg.eps_auto:
        return cluster.cluster_embeddings(embeddings, cfg)
    from samseg.core.sweep import suggest_eps
    from samseg.core.types import ClusterResult

    s = suggest_eps(embeddings, cfg)  # the knee of the k-distance curve, or no suggestion
    choice = {"requested": "auto", "rule": "knee", "k": s.k, "eps": s.eps} if s.eps is not None else \
        {"requested": "auto", "rule": "fallback", "k": s.k, "eps": cfg.eps, "warning": f"--eps auto: {s.reason}; used eps={cfg.eps:g}"}
    used = dataclasses.replace(cfg, eps=choice["eps"])
    return ClusterResult(cluster.cluster_embeddings(embeddings, used).labels, choice=choice)


def _compose(ctx: StageInputs, masks: Any, clusters: Any) -> Any:
    from samseg.core import compose

    return compose.compose_labels(masks, clusters)  # H×W uint16, 0 = no class


# --features sam: the embeddings are pooled from SAM's own encoder output (one pass for both).
STAGES: tuple[Stage, ...] = (
    Stage("encode", (), _encode, key_sections=(), codec="encoded", gpu=True),
    Stage("amg", ("encode",), _amg, key_sections=("amg",), codec="masks", gpu=True),
    Stage("features", ("encode",), lambda _ctx, encoded: encoded, inline=True),
    Stage("pool", ("amg", "features"), _pool, key_sections=("amg", "pool", "features"), codec="embeddings"),
    Stage("cluster", ("pool",), _cluster),
    Stage("compose", ("amg", "cluster"), _compose),
)
# --features <backbone>: a second encoder's grid, keyed by the backbone and the image alone.
BACKBONE_STAGES: tuple[Stage, ...] = tuple(
    Stage("features", (), _features, key_sections=("features",), codec="encoded", gpu=True, sam_keyed=False)
    if s.name == "features" else s for s in STAGES)


def _tiles(ctx: StageInputs) -> Any:
    """Every tile through the runner (its own amg + pool, cached), then one merged set of
    image masks and N×C embeddings (samseg.core.tiling.MergedMasks)."""
    from samseg.core.config import TileConfig
    from samseg.core.tiling import TileMasks, merge_tiles, tile_boxes
    from samseg.edges.images import crop_image

    if ctx.run_part is None:
        raise RuntimeError("the tiles stage needs the runner's run_part")
    boxes = tile_boxes(ctx.image.hw, ctx.cfg.tile)
    part_cfg = dataclasses.replace(ctx.cfg, tile=TileConfig())
    tiles, hits = [], 0
    for k, box in enumerate(boxes):
        part = ctx.run_part(crop_image(ctx.image, box, "tile"), part_cfg)
        tiles.append(TileMasks(box_xyxy=box, masks=part.masks, embeddings=part.embeddings))
        hits += part.status.get("amg") == "hit" and part.status.get("pool") == "hit"
        ctx.report("tile", image=ctx.image.uri, done=k + 1, total=len(boxes), cached=hits)
    return merge_tiles(tiles, ctx.image.hw, ctx.cfg.tile.merge_iou)


# A tiled image (cfg.tile resolved on for it): each tile runs encode -> amg -> pool as an image
# of its own (its own cache entries and executor steps), `tiles` merges them into the image's
# masks and embeddings (one cache entry: a warm rerun reads it alone), then cluster and compose
# as for any image. There is no image-level encode: the features live per tile.
TILED_STAGES: tuple[Stage, ...] = (
    Stage("tiles", (), _tiles, key_sections=("tile", "amg", "pool", "features"), codec="tiled", inline=True),
    Stage("amg", ("tiles",), lambda _ctx, merged: merged.masks, inline=True),
    Stage("pool", ("tiles",), lambda _ctx, merged: merged.embeddings, inline=True),
    *(s for s in STAGES if s.name in ("cluster", "compose")),
)
_TABLES: dict[str, tuple[Stage, ...]] = {"sam": STAGES, "backbone": BACKBONE_STAGES, "tiled": TILED_STAGES}
_BY_NAME: dict[str, dict[str, Stage]] = {kind: {s.name: s for s in rows} for kind, rows in _TABLES.items()}
# Executor steps that run under the GPU bound in some table (`features` only with a backbone).
GPU_STEPS: frozenset[str] = frozenset(s.name for s in (*STAGES, *BACKBONE_STAGES) if s.gpu)
CACHED: tuple[str, ...] = tuple(dict.fromkeys(s.name for s in (*STAGES, *BACKBONE_STAGES) if s.cached))
WRITE = "write"  # the step that writes OUT/<name>/ (and uploads it): samseg.engine.publish
# What a progress bar counts per image: every stage of the table, then the write.
STEPS: tuple[str, ...] = (*(s.name for s in STAGES), WRITE)
# What an image run must end with; upstream stages are computed (or loaded) only as needed.
OUTPUTS: tuple[str, ...] = ("amg", "pool", "cluster", "compose")


def _kind(cfg: Optional[PipelineConfig]) -> str:
    if cfg is not None and cfg.tile.enabled:
        return "tiled"
    return "backbone" if cfg is not None and cfg.features.name != SAM else "sam"


def table_for(cfg: PipelineConfig) -> tuple[Stage, ...]:
    """The rows an image with this (per-image resolved) config runs: tiled or not, SAM's
    features or a backbone's."""
    return _TABLES[_kind(cfg)]


def stage(name: str, cfg: Optional[PipelineConfig] = None) -> Stage:
    """The row `name` of the table `cfg` runs (the untiled SAM-features table without a cfg)."""
    rows = _BY_NAME[_kind(cfg)]
    if name not in rows:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(rows)}")
    return rows[name]


def stage_key(name: str, image_sha256: str, checkpoint_sha256: str, cfg: PipelineConfig, precision: str = "fp32",
              features_sha256: str = "") -> str:
    """Hex sha256 of a cached stage's inputs: stage, image bytes, weights, model type, the
    config sections of its row (never `cluster`: re-tuning it re-uses every entry), and
    the resolved precision (fp32 keys are what they always were). `cfg` is the image's own
    (tile.auto resolved); untiled rows never include `tile`, so their keys stay as they were.
    A feature backbone enters as {name, input long side, weights sha256}; `sam` features add
    nothing (SAM's weights are in every key already), so those keys stay as they were too.
    The backbone's own features row is keyed without SAM's weights: SAM does not touch it."""
    row = stage(name, cfg)
    if not row.cached:
        raise ValueError(f"stage {name!r} is not cached; cached stages: {', '.join(CACHED)}")
    doc: dict[str, Any] = {"stage": name, "image_sha256": image_sha256}
    if row.sam_keyed:
        doc.update({"checkpoint_sha256": checkpoint_sha256, "model_type": cfg.model_type})
    for section in row.key_sections or ():
        if section != "features":
            doc[section] = dataclasses.asdict(getattr(cfg, section))
        elif cfg.features.name != SAM:
            doc["features"] = {"name": cfg.features.name, "input_size": cfg.features.long_side, "sha256": features_sha256}
    return content_key(doc, precision)
