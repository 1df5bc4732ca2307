"""The stage table: the one place that says which stages exist, what each reads, what its
cache key depends on and how its output is stored.

Stage order is the order a fresh image computes in: encode -> amg -> pool -> cluster ->
compose; `export` (writing the image dir, samseg.engine.publish) follows the table. To add
a stage: write its compute function here and add a row to STAGES; the runner
(samseg.engine.runner), the Prefect tasks (flows/tasks.py), the progress bar and the cache
keys follow from the row.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from samseg.core.config import PipelineConfig
from samseg.edges.cache import content_key

if TYPE_CHECKING:
    from samseg.edges.images import LoadedImage
    from samseg.sam.model import LoadedModel


@dataclass(frozen=True)
class StageInputs:
    """What a compute function may use besides its upstream values: the image (H×W×3 uint8
    in `.rgb`), the config, and `model()`, which loads SAM on first use (stages that never
    call it never load the model)."""

    image: "LoadedImage"
    cfg: PipelineConfig
    model: Callable[[], "LoadedModel"]
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
    """

    name: str
    inputs: tuple[str, ...]
    compute: Callable[..., Any]
    key_sections: tuple[str, ...] | None = None
    codec: str | None = None
    gpu: bool = False
    inline: bool = False

    @property
    def cached(self) -> bool:
        return self.key_sections is not None


def _encode(ctx: StageInputs) -> Any:
    from samseg.sam import encode

    return encode.encode_image(ctx.model(), ctx.image.rgb)  # C×64×64 features + geometry


def _amg(ctx: StageInputs, encoded: Any) -> Any:
    from samseg.sam import amg

    return amg.generate_masks(ctx.model(), ctx.image.rgb, encoded, ctx.cfg.amg)  # reuses `encoded`: one encoder pass


def _pool(ctx: StageInputs, masks: Any, encoded: Any) -> Any:
    from samseg.core import pool

    return pool.pool_embeddings(masks, encoded, ctx.cfg.pool)  # N×C float32


def _cluster(ctx: StageInputs, embeddings: Any) -> Any:
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


STAGES: tuple[Stage, ...] = (
    Stage("encode", (), _encode, key_sections=(), codec="encoded", gpu=True),
    Stage("amg", ("encode",), _amg, key_sections=("amg",), codec="masks", gpu=True),
    Stage("pool", ("amg", "encode"), _pool, key_sections=("amg", "pool"), codec="embeddings"),
    Stage("cluster", ("pool",), _cluster),
    Stage("compose", ("amg", "cluster"), _compose),
)


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
    Stage("tiles", (), _tiles, key_sections=("tile", "amg", "pool"), codec="tiled", inline=True),
    Stage("amg", ("tiles",), lambda _ctx, merged: merged.masks, inline=True),
    Stage("pool", ("tiles",), lambda _ctx, merged: merged.embeddings, inline=True),
    STAGES[3],
    STAGES[4],
)
BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
_TILED_BY_NAME: dict[str, Stage] = {s.name: s for s in TILED_STAGES}
CACHED: tuple[str, ...] = tuple(s.name for s in STAGES if s.cached)
WRITE = "write"  # the step that writes OUT/<name>/ (and uploads it): samseg.engine.publish
# What a progress bar counts per image: every stage of the table, then the write.
STEPS: tuple[str, ...] = (*(s.name for s in STAGES), WRITE)
# What an image run must end with; upstream stages are computed (or loaded) only as needed.
OUTPUTS: tuple[str, ...] = ("amg", "pool", "cluster", "compose")


def table_for(cfg: PipelineConfig) -> tuple[Stage, ...]:
    """The rows an image with this (per-image resolved) config runs: tiled or not."""
    return TILED_STAGES if cfg.tile.enabled else STAGES


def stage(name: str, cfg: Optional[PipelineConfig] = None) -> Stage:
    """The row `name` of the table `cfg` runs (the untiled table without a cfg)."""
    rows = _TILED_BY_NAME if cfg is not None and cfg.tile.enabled else BY_NAME
    if name not in rows:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(rows)}")
    return rows[name]


def stage_key(name: str, image_sha256: str, checkpoint_sha256: str, cfg: PipelineConfig, precision: str = "fp32") -> str:
    """Hex sha256 of a cached stage's inputs: stage, image bytes, weights, model type, the
    config sections of its row (never `cluster`: re-tuning it re-uses every entry), and
    the resolved precision (fp32 keys are what they always were). `cfg` is the image's own
    (tile.auto resolved); untiled rows never include `tile`, so their keys stay as they were."""
    row = stage(name, cfg)
    if not row.cached:
        raise ValueError(f"stage {name!r} is not cached; cached stages: {', '.join(CACHED)}")
    doc = {"stage": name, "image_sha256": image_sha256, "checkpoint_sha256": checkpoint_sha256,
           "model_type": cfg.model_type}
    doc.update({section: dataclasses.asdict(getattr(cfg, section)) for section in row.key_sections or ()})
    return content_key(doc, precision)
