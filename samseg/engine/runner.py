"""The one runner: walk the stage table for one image, loading what the cache has and
computing only what is missing.

Demand-driven: the run asks for its outputs (amg, pool, cluster, compose; plus encode when
features are kept); a cached stage whose entry loads is a "hit" and its upstream stages
are never touched; a warm rerun with new DBSCAN settings reads two entries, loads no model
and runs cluster + compose. Each entry is read and hash-checked once per run.

Every caller goes through here: the CLI's local runs, the Prefect flows (which pass an
`execute` that runs each stage as a Prefect task), the UI's rerun and preview, dataset
mode and the benchmarks.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Optional, Protocol, TypeVar

from samseg.core.config import PipelineConfig, TileConfig
from samseg.edges.run_schema import COMPUTED, FROM_RUN_ARTIFACTS, HIT, SKIPPED
from samseg.engine import progress
from samseg.engine.stages import OUTPUTS, STAGES, StageInputs, stage, stage_key, table_for
from samseg.sam.source import ModelIdentity

if TYPE_CHECKING:
    from samseg.core.types import ClusterResult, EncodedImage, MaskSet
    from samseg.edges.cache import StageCache
    from samseg.edges.images import LoadedImage
    from samseg.sam.backbones import LoadedBackbone
    from samseg.sam.model import LoadedModel

T = TypeVar("T")
GPU_SLOTS_ENV = "SAMSEG_GPU_SLOTS"
# seconds.load: the wait for the models and libraries an image's stages asked for (the first image
# of a process pays their imports and weights); the stage that asked is timed without it, so a
# shard's first encode and cluster are comparable to its others and the load is seen as what it is.
LOAD = "load"


class Execute(Protocol):
    """Runs one step's thunk: inline by default; flows/ runs it as the step's Prefect task."""

    def __call__(self, step: str, fn: Callable[[], T]) -> T: ...


def inline(_step: str, fn: Callable[[], T]) -> T:
    return fn()


class ModelRequired(RuntimeError):
    """A stage has to compute with SAM, but this run has no model (e.g. a UI rerun whose cache entries are gone)."""


@dataclass
class ImageRun:
    """One image's stage values (rows in AMG mask order), where each came from, and how long it took.

    values: {stage: value} for the stages this run needed. status: {stage: hit | computed |
    skipped | parent_run | run} for every stage of the table. seconds: wall time per stage
    as this run saw it (a cache hit's load included), and LOAD: the wait for its models and libraries.
    """

    image: "LoadedImage"
    cfg: PipelineConfig
    model: ModelIdentity
    values: dict[str, Any] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def masks(self) -> "MaskSet":
        return self.values["amg"]

    @property
    def embeddings(self) -> Any:  # N×C float32
        return self.values["pool"]

    @property
    def clusters(self) -> "ClusterResult":
        return self.values["cluster"]

    @property
    def label_map(self) -> Any:  # H×W uint16
        return self.values["compose"]

    @property
    def encoded(self) -> Optional["EncodedImage"]:
        return self.values.get("encode")

    @property
    def features(self) -> Optional["EncodedImage"]:
        """The grid the embeddings were pooled from (SAM's encoder output, or a backbone's)."""
        return self.values.get("features")

    @property
    def tiled(self) -> bool:
        return self.cfg.tile.enabled

    def cache_status(self) -> dict[str, str]:
        """{cached stage: status} — summary.json's `cache` and the samseg.cache.<stage> tags
        (a tiled image adds `tiles`; its amg and pool take the tiles entry's status)."""
        untiled = table_for(dataclasses.replace(self.cfg, tile=TileConfig()))
        names = [s.name for s in untiled if s.cached] + (["tiles"] if self.tiled else [])
        return {name: self.status[name] for name in names}

    def tiling(self) -> Optional[dict[str, Any]]:
        """summary.json's `tiling` for a tiled image whose tiles were needed: grid and merges."""
        merged = self.values.get("tiles")
        if merged is None:
            return None
        t = self.cfg.tile
        return {"tile_size": t.size, "overlap": t.overlap, "n_tiles": merged.n_tiles, "n_merged": merged.n_merged}


def run_image(
    image: "LoadedImage",
    cfg: PipelineConfig,
    model: ModelIdentity,
    cache: "StageCache",
    *,
    load_model: Optional[Callable[[], "LoadedModel"]] = None,
    load_backbone: Optional[Callable[[], "LoadedBackbone"]] = None,
    load_libraries: Optional[Callable[[], None]] = None,
    want: tuple[str, ...] = OUTPUTS,
    given: Optional[Mapping[str, tuple[Any, str]]] = None,
    fallback: Optional[Mapping[str, Callable[[], Any]]] = None,
    execute: Execute = inline,
    quiet: bool = False,
) -> ImageRun:
    """Resolve the stages in `want` (and what they need) for `image` under `cfg`.

    model: the weights' identity (cache keys, summary); load_model / load_backbone: called
    only when a stage that needs SAM / the feature backbone has to compute (None: raise
    ModelRequired then); load_libraries: waits for the libraries clustering imports (imported
    ahead by the batch loop; None: the stage imports them). Their waits are the run's seconds[LOAD].
    given: {stage: (value, status)} known before the cache is asked (a recluster's parent
    run). fallback: {stage: thunk} tried after a cache miss, before computing (a recluster's
    MLflow artifacts); a thunk returning None means "not there either".
    `cfg.tile` is resolved for the image's size first (samseg.core.config.TileConfig.for_image);
    a tiled image runs the tiled table, each tile through this function again (quiet: the
    tiles report "tile" progress events, not their stages).
    """
    cfg = cfg.for_image(image.hw)
    run = ImageRun(image, cfg, model)

    def run_part(part: "LoadedImage", part_cfg: PipelineConfig) -> ImageRun:  # a tile's model wait is its image's
        return run_image(part, part_cfg, model, cache, load_model=ctx.model, load_backbone=ctx.backbone,
                         want=("amg", "pool"), execute=execute, quiet=True)

    libraries = _timed_load(load_libraries, run) if load_libraries else StageInputs.libraries  # None: nothing to wait for
    ctx = StageInputs(image, cfg, _timed_load(load_model, run), _timed_load(load_backbone, run, "the feature backbone"),
                      libraries, run_part=run_part,
                      report=(lambda _event, **_info: None) if quiet else progress.report)
    table = table_for(cfg)
    resolver = _Resolver(run, ctx, cache, dict(given or {}), dict(fallback or {}), execute, quiet)
    for name in [s.name for s in table if s.name in want]:
        resolver.resolve(name)
    for row in table:
        if row.name not in run.status:
            run.status[row.name] = SKIPPED
            if not quiet:
                progress.report("stage", image=image.uri, stage=row.name, status=SKIPPED)
    for row in STAGES:  # not a row of the tiled table (encode): no progress step either
        run.status.setdefault(row.name, SKIPPED)
    return run


@dataclass
class _Resolver:
    """One image run's walk of the stage table: each stage's value comes from (in order) the
    values given, the cache, a value derived from a cached input, the fallback, or computing
    it from its inputs (resolved the same way, first)."""

    run: ImageRun
    ctx: StageInputs
    cache: "StageCache"
    given: dict[str, tuple[Any, str]]
    fallback: dict[str, Callable[[], Any]]
    execute: Execute
    quiet: bool

    def resolve(self, name: str) -> Any:
        run = self.run
        if name in run.values:
            return run.values[name]
        row = stage(name, run.cfg)
        t0, loaded = time.perf_counter(), run.seconds.get(LOAD, 0.0)
        known = self.known(row)
        if known is not None:
            value, status = known
        else:
            args = [self.resolve(i) for i in row.inputs]
            # upstream time is the upstream stages' own, and a load meanwhile is LOAD's
            t0, loaded = time.perf_counter(), run.seconds.get(LOAD, 0.0)
            thunk = self.computing(row, args)
            value = thunk() if row.inline else self.execute(name, thunk)
            status = run.status[row.inputs[0]] if row.inline and len(row.inputs) == 1 else COMPUTED
        run.values[name], run.status[name] = value, status
        run.seconds[name] = time.perf_counter() - t0 - (run.seconds.get(LOAD, 0.0) - loaded)
        self.report(name, status)
        return value

    def known(self, row: Any) -> Optional[tuple[Any, str]]:
        """(value, status) without computing, or None: compute it (a row derived from a cached
        input — the tiled table's amg and pool, off `tiles` — is computed from that input once it
        loads, and asks no fallback)."""
        if row.name in self.given:
            return self.given[row.name]
        if row.cached:
            value = self.cache.load(row.name, key_of(self.run, row.name), row.codec)
            if value is not None:
                return value, HIT
        elif row.inline and len(row.inputs) == 1 and stage(row.inputs[0], self.run.cfg).cached:
            if self.load_entry(row.inputs[0]):
                return None
        if row.name in self.fallback:
            value = self.fallback[row.name]()
            if value is not None:
                return value, FROM_RUN_ARTIFACTS
        return None

    def load_entry(self, name: str) -> bool:
        """`name`'s cache entry into the run's values (status hit); True when it is there."""
        run = self.run
        if name not in run.values:
            t0 = time.perf_counter()
            value = self.cache.load(name, key_of(run, name), stage(name, run.cfg).codec)
            if value is None:
                return False
            run.values[name], run.status[name], run.seconds[name] = value, HIT, time.perf_counter() - t0
            self.report(name, HIT)
        return True

    def computing(self, row: Any, args: list[Any]) -> Callable[[], Any]:
        """The thunk that computes one stage (under the GPU bound when it is a GPU stage) and saves its entry."""
        run, cache = self.run, self.cache
        ctx = self.ctx

        def compute() -> Any:
            with gpu_slot() if row.gpu else nullcontext():
                value = row.compute(ctx, *args)
            if row.cached:
                cache.save(row.name, key_of(run, row.name), row.codec, value)
            return value

        return compute

    def report(self, name: str, status: str) -> None:
        if not self.quiet:
            progress.report("stage", image=self.run.image.uri, stage=name, status=status)


def key_of(run: ImageRun, name: str) -> str:
    m = run.model
    return stage_key(name, run.image.sha256, m.checkpoint_sha256, run.cfg, m.precision, m.features_sha256)


def _timed_load(load: Optional[Callable[[], T]], run: ImageRun, what: str = "the SAM model") -> Callable[[], T]:
    """`load`, its wait added to the run's seconds[LOAD] (a model, or the libraries imported ahead)."""
    def get() -> T:
        if load is None:
            raise ModelRequired(f"this stage needs {what}, and this run has none (its cache entries are gone); "
                                "run `samseg segment` on the image again")
        t0 = time.perf_counter()
        try:
            return load()
        finally:
            run.seconds[LOAD] = run.seconds.get(LOAD, 0.0) + time.perf_counter() - t0

    return get


# ---------------------------------------------------------------- GPU bound (process-local)

_GPU_LOCK = threading.Lock()
_GPU: Optional[threading.BoundedSemaphore] = None


def gpu_slots() -> int:
    """SAMSEG_GPU_SLOTS (default 1: one SAM pass at a time per GPU)."""
    from samseg.edges.env import positive_int_env

    return positive_int_env(GPU_SLOTS_ENV, 1)


@contextmanager
def gpu_slot() -> Iterator[None]:
    """Process-local bound on concurrent GPU work (a Prefect server's `gpu` tag limit is global)."""
    global _GPU
    with _GPU_LOCK:
        if _GPU is None:
            _GPU = threading.BoundedSemaphore(gpu_slots())
        sem = _GPU
    with sem:
        yield
