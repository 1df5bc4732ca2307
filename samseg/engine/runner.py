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

import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Optional, Protocol, TypeVar

from samseg.core.config import PipelineConfig
from samseg.edges.run_schema import COMPUTED, FROM_RUN_ARTIFACTS, HIT, SKIPPED
from samseg.engine import progress
from samseg.engine.stages import CACHED, OUTPUTS, STAGES, StageInputs, stage, stage_key, table_for
from samseg.sam.source import ModelIdentity

if TYPE_CHECKING:
    from samseg.core.types import ClusterResult, EncodedImage, MaskSet
    from samseg.edges.cache import StageCache
    from samseg.edges.images import LoadedImage
    from samseg.sam.model import LoadedModel

T = TypeVar("T")
GPU_SLOTS_ENV = "SAMSEG_GPU_SLOTS"


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
    as this run saw it (a cache hit's load included).
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
    def tiled(self) -> bool:
        return self.cfg.tile.enabled

    def cache_status(self) -> dict[str, str]:
        """{cached stage: status} — summary.json's `cache` and the samseg.cache.<stage> tags
        (a tiled image adds `tiles`; its amg and pool take the tiles entry's status)."""
        names = (*CACHED, "tiles") if self.tiled else CACHED
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
    want: tuple[str, ...] = OUTPUTS,
    given: Optional[Mapping[str, tuple[Any, str]]] = None,
    fallback: Optional[Mapping[str, Callable[[], Any]]] = None,
    execute: Execute = inline,
    quiet: bool = False,
) -> ImageRun:
    """Resolve the stages in `want` (and what they need) for `image` under `cfg`.

    model: the weights' identity (cache keys, summary); load_model: called only when a
    stage that needs SAM has to compute (None: raise ModelRequired then).
    given: {stage: (value, status)} known before the cache is asked (a recluster's parent
    run). fallback: {stage: thunk} tried after a cache miss, before computing (a recluster's
    MLflow artifacts); a thunk returning None means "not there either".
    `cfg.tile` is resolved for the image's size first (samseg.core.config.TileConfig.for_image);
    a tiled image runs the tiled table, each tile through this function again (quiet: the
    tiles report "tile" progress events, not their stages).
    """
    cfg = cfg.for_image(image.hw)
    run = ImageRun(image, cfg, model)

    def run_part(part: "LoadedImage", part_cfg: PipelineConfig) -> ImageRun:
        return run_image(part, part_cfg, model, cache, load_model=load_model, want=("amg", "pool"),
                         execute=execute, quiet=True)

    ctx = StageInputs(image, cfg, _model_getter(load_model), run_part=run_part,
                      report=(lambda _event, **_info: None) if quiet else progress.report)
    table = table_for(cfg)
    for name in [s.name for s in table if s.name in want]:
        _resolve(run, name, ctx, cache, dict(given or {}), dict(fallback or {}), execute, quiet)
    for row in table:
        if row.name not in run.status:
            run.status[row.name] = SKIPPED
            if not quiet:
                progress.report("stage", image=image.uri, stage=row.name, status=SKIPPED)
    for row in STAGES:  # not a row of the tiled table (encode): no progress step either
        run.status.setdefault(row.name, SKIPPED)
    return run


def _resolve(run: ImageRun, name: str, ctx: StageInputs, cache: "StageCache", given: dict[str, tuple[Any, str]],
             fallback: dict[str, Callable[[], Any]], execute: Execute, quiet: bool = False) -> Any:
    if name in run.values:
        return run.values[name]
    row = stage(name, run.cfg)
    t0 = time.perf_counter()
    value, status = _known(run, row, cache, given, fallback, quiet)
    if status is None:
        args = [_resolve(run, i, ctx, cache, given, fallback, execute, quiet) for i in row.inputs]
        t0 = time.perf_counter()  # upstream time is the upstream stages' own
        thunk = _computing(run, row, ctx, cache, args)
        value = thunk() if row.inline else execute(name, thunk)
        status = run.status[row.inputs[0]] if row.inline and len(row.inputs) == 1 else COMPUTED
    run.values[name], run.status[name] = value, status
    run.seconds[name] = time.perf_counter() - t0
    if not quiet:
        progress.report("stage", image=run.image.uri, stage=name, status=status)
    return value


def _derived_from_cache(run: ImageRun, row: Any) -> bool:
    """A row read off one cached input (the tiled table's amg and pool, off `tiles`)."""
    return row.inline and len(row.inputs) == 1 and stage(row.inputs[0], run.cfg).cached


def _load_entry(run: ImageRun, name: str, cache: "StageCache", quiet: bool) -> None:
    """`name`'s cache entry into run.values (status hit) when it loads; nothing when it does not."""
    if name in run.values:
        return
    t0 = time.perf_counter()
    value = cache.load(name, key_of(run, name), stage(name, run.cfg).codec)
    if value is not None:
        run.values[name], run.status[name], run.seconds[name] = value, HIT, time.perf_counter() - t0
        if not quiet:
            progress.report("stage", image=run.image.uri, stage=name, status=HIT)


def _known(run: ImageRun, row: Any, cache: "StageCache", given: dict[str, tuple[Any, str]],
           fallback: dict[str, Callable[[], Any]], quiet: bool = False) -> tuple[Any, Optional[str]]:
    """(value, status) from the given values, the cache, or the fallback; (None, None) = compute it.
    A row read off one cached input (the tiled table's amg and pool, off `tiles`) is "in the
    cache" when that input's entry loads: then it is derived from it, and no fallback is asked."""
    if row.name in given:
        return given[row.name]
    if row.cached:
        value = cache.load(row.name, key_of(run, row.name), row.codec)
        if value is not None:
            return value, HIT
    elif _derived_from_cache(run, row):
        _load_entry(run, row.inputs[0], cache, quiet)
        if row.inputs[0] in run.values:
            return None, None
    if row.name in fallback:
        value = fallback[row.name]()
        if value is not None:
            return value, FROM_RUN_ARTIFACTS
    return None, None


def _computing(run: ImageRun, row: Any, ctx: StageInputs, cache: "StageCache", args: list[Any]) -> Callable[[], Any]:
    """The thunk that computes one stage (under the GPU bound when it is a GPU stage) and saves its entry."""

    def compute() -> Any:
        with gpu_slot() if row.gpu else nullcontext():
            value = row.compute(ctx, *args)
        if row.cached:
            cache.save(row.name, key_of(run, row.name), row.codec, value)
        return value

    return compute


def key_of(run: ImageRun, name: str) -> str:
    return stage_key(name, run.image.sha256, run.model.checkpoint_sha256, run.cfg, run.model.precision)


def _model_getter(load_model: Optional[Callable[[], "LoadedModel"]]) -> Callable[[], "LoadedModel"]:
    def get() -> "LoadedModel":
        if load_model is None:
            raise ModelRequired("this stage needs the SAM model, and this run has none (its cache entries are gone); "
                                "run `samseg segment` on the image again")
        return load_model()

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
