"""Prefect tasks: one core call (or one edge call) each, plus stage-cache I/O.

Cached stages (encode, amg, pool) return a `StageRef` — a few strings naming the
content-addressed cache entry — never the arrays: Prefect persists only that reference,
and the next task loads the entry from the stage cache itself. Two cache layers agree on
one key (`samseg.edges.cache.stage_key`):
- Prefect's task cache (`cache_key_fn`) skips a task whose key already completed. Before
  each call the flow checks that our entry still loads (manifest + payload hash); when it
  does not, the task runs with `refresh_cache=True`, recomputes and rewrites both.
- the task body checks the stage cache again, so a fresh Prefect home or another worker
  still gets a hit from a shared (e.g. S3) cache.

GPU tasks (encode, amg) carry the tag `gpu`: on a Prefect server a tag concurrency limit
(`prefect concurrency-limit create gpu 1`) bounds them across workers; inside one
process a semaphore sized by SAMSEG_GPU_SLOTS (default 1) bounds them too. Only I/O
tasks (read image, export/upload, tracking) retry, and only on I/O errors.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from prefect import task

from flows.params import RuntimeParams

log = logging.getLogger(__name__)

STAGES = ("encode", "amg", "pool")  # the cached stages, in order
GPU_SLOTS_ENV = "SAMSEG_GPU_SLOTS"
IO_RETRIES = 2
IO_RETRY_DELAY_S = 0.5


class CacheEntryMissing(RuntimeError):
    """An upstream cache entry vanished or went corrupt between two tasks."""


# ---------------------------------------------------------------- per-process state

_MODELS: dict[tuple[str, str | None, str | None, int, str], Any] = {}
_MODELS_LOCK = threading.Lock()
_GPU_LOCK = threading.Lock()
_GPU: threading.BoundedSemaphore | None = None


def get_model(model_type: str, runtime: RuntimeParams, precision: str = "fp32") -> Any:
    """The LoadedModel for (model_type, checkpoint, device, seed, precision), loaded once per process.

    A worker serves many images; loading SAM (and hashing a 2.5 GB checkpoint) per task
    would dominate the run time.
    """
    from samseg.sam.model import load_model

    key = (model_type, runtime.checkpoint, runtime.device, runtime.seed, precision)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = load_model(model_type, checkpoint=runtime.checkpoint, device=runtime.device, seed=runtime.seed,
                                      precision=precision)
        return _MODELS[key]


def gpu_slots() -> int:
    """SAMSEG_GPU_SLOTS (default 1: one SAM pass at a time per GPU)."""
    raw = os.environ.get(GPU_SLOTS_ENV, "1")
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"{GPU_SLOTS_ENV}={raw!r} is not an integer") from None
    if n < 1:
        raise ValueError(f"{GPU_SLOTS_ENV} must be >= 1, got {n}")
    return n


@contextmanager
def gpu_slot() -> Iterator[None]:
    """Process-local bound on concurrent GPU work (the server-side `gpu` limit is global)."""
    global _GPU
    with _GPU_LOCK:
        if _GPU is None:
            _GPU = threading.BoundedSemaphore(gpu_slots())
        sem = _GPU
    with sem:
        yield


def stage_cache(runtime: RuntimeParams) -> Any:
    from samseg.edges.cache import StageCache

    return StageCache(runtime.cache)


# ---------------------------------------------------------------- cache plumbing

_LOADERS = {"encode": "load_encoded", "amg": "load_masks", "pool": "load_embeddings"}
_SAVERS = {"encode": "save_encoded", "amg": "save_masks", "pool": "save_embeddings"}


def load_entry(runtime: RuntimeParams, stage: str, key: str) -> Any:
    """The cached value of `stage` under `key`, or None (missing or corrupt)."""
    return getattr(stage_cache(runtime), _LOADERS[stage])(key)


def require_entry(runtime: RuntimeParams, stage: str, key: str) -> Any:
    value = load_entry(runtime, stage, key)
    if value is None:
        raise CacheEntryMissing(f"stage cache entry {stage}/{key[:12]}… is missing or corrupt; rerun to recompute it")
    return value


def make_ref(stage: str, key: str, uri: str, status: str) -> dict[str, str]:
    """StageRef: {"stage", "key", "uri", "status": "computed"|"hit"} — what Prefect persists."""
    return {"stage": stage, "key": key, "uri": str(uri), "status": status}


def _cached_key_fn(stage: str) -> Callable[[Any, dict[str, Any]], str]:
    """Prefect's cache key for a cached stage: our content-addressed key, namespaced."""

    def key_fn(_ctx: Any, parameters: dict[str, Any]) -> str:
        return f"samseg-{stage}-{parameters['key']}"

    key_fn.__name__ = f"{stage}_cache_key"
    return key_fn


def cached_call(stage_task: Any, stage: str, key: str, runtime: RuntimeParams) -> Any:
    """`stage_task` ready to call: Prefect's cache is bypassed (and rewritten) unless our
    entry for `key` loads and verifies — so a corrupt or deleted entry is recomputed
    even though Prefect still holds a record for the key."""
    if load_entry(runtime, stage, key) is None:
        return stage_task.with_options(refresh_cache=True)
    return stage_task


def run_cached(stage: str, key: str, runtime: RuntimeParams, compute: Callable[[], Any]) -> dict[str, str]:
    """Task body for a cached stage: a valid entry → "hit", else compute + save → "computed"."""
    cache = stage_cache(runtime)
    if getattr(cache, _LOADERS[stage])(key) is not None:
        return make_ref(stage, key, entry_uri(cache, stage, key), "hit")
    value = compute()
    uri = getattr(cache, _SAVERS[stage])(key, value)
    return make_ref(stage, key, uri, "computed")


def entry_uri(cache: Any, stage: str, key: str) -> str:
    fn = getattr(cache, "entry_uri", None)
    return str(fn(stage, key)) if callable(fn) else f"{cache.root}/{stage}/{key[:2]}/{key}"


def _is_io_error(exc: BaseException) -> bool:
    from samseg.edges.storage import StorageError

    return isinstance(exc, (StorageError, OSError, ConnectionError, TimeoutError)) and not _is_input_error(exc)


def _is_input_error(exc: BaseException) -> bool:
    from samseg.edges.images import ImageError
    from samseg.edges.storage import StorageNotFound

    return isinstance(exc, (ImageError, StorageNotFound, FileNotFoundError))


def retry_on_io(_task: Any, _task_run: Any, state: Any) -> bool:
    """retry_condition_fn: retry transient I/O failures only, never a bad input."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - we only classify it
        return _is_io_error(exc)
    return False


_IO = dict(retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAY_S, retry_condition_fn=retry_on_io, persist_result=False)
_CACHED = dict(persist_result=True, result_serializer="json")


# ---------------------------------------------------------------- tasks


@task(name="read-image", **_IO)
def read_image_task(uri: str) -> Any:
    """Local path or s3:// URI → LoadedImage (sha256 of the file bytes)."""
    from pathlib import PurePosixPath

    from samseg.edges.images import decode_image
    from samseg.edges.storage import read_bytes

    return decode_image(read_bytes(uri), PurePosixPath(str(uri)).name, uri=str(uri))


@task(name="encode", tags=["gpu"], cache_key_fn=_cached_key_fn("encode"), **_CACHED)
def encode_task(key: str, image: Any, model_type: str, runtime: RuntimeParams, precision: str = "fp32") -> dict[str, str]:
    """One image-encoder pass → cache entry of the C×64×64 features."""
    from samseg.sam.encode import encode_image

    def compute() -> Any:
        model = get_model(model_type, runtime, precision)
        with gpu_slot():
            return encode_image(model, image.rgb)

    return run_cached("encode", key, runtime, compute)


@task(name="amg", tags=["gpu"], cache_key_fn=_cached_key_fn("amg"), **_CACHED)
def amg_task(key: str, encode_key: str, image: Any, cfg: Any, runtime: RuntimeParams) -> dict[str, str]:
    """SAM's automatic mask generator on the cached encoding → cache entry of the MaskSet."""
    from samseg.sam.amg import generate_masks

    def compute() -> Any:
        encoded = require_entry(runtime, "encode", encode_key)
        model = get_model(cfg.model_type, runtime, cfg.precision)
        with gpu_slot():
            return generate_masks(model, image.rgb, encoded, cfg.amg)

    return run_cached("amg", key, runtime, compute)


@task(name="pool", cache_key_fn=_cached_key_fn("pool"), **_CACHED)
def pool_task(key: str, encode_key: str, amg_key: str, cfg: Any, runtime: RuntimeParams) -> dict[str, str]:
    """Mean encoder feature under each mask → cache entry of the N×C embeddings."""
    from samseg.core.pool import pool_embeddings

    def compute() -> Any:
        masks = require_entry(runtime, "amg", amg_key)
        encoded = require_entry(runtime, "encode", encode_key)
        return pool_embeddings(masks, encoded, cfg.pool)

    return run_cached("pool", key, runtime, compute)


@task(name="cluster", persist_result=False)
def cluster_task(embeddings: Any, cluster_cfg: Any) -> Any:
    """N×C embeddings → ClusterResult (cheap; never cached — it is the stage users re-tune)."""
    from samseg.core.cluster import cluster_embeddings

    return cluster_embeddings(embeddings, cluster_cfg)


@task(name="export", **_IO)
def export_task(local_dir: str, dest: str | None, image: Any, masks: Any, embeddings: Any, clusters: Any,
                summary: dict[str, Any], features: Any = None) -> str:
    """compose labels + write the output dir locally, then publish it to `dest` (s3://…).

    Returns the final output location. The local write is atomic (export.write_outputs);
    an S3 upload writes `_SUCCESS` last, so a failed upload leaves nothing marked complete.
    """
    from pathlib import Path

    from samseg.core.compose import compose_labels
    from samseg.edges.export import write_outputs

    out = Path(local_dir)
    label_map = compose_labels(masks, clusters)
    write_outputs(out, image, masks, embeddings, clusters, label_map, summary, features=features)
    if dest is None:
        return str(out)
    from samseg.edges.storage import upload_dir

    upload_dir(out, dest)
    return dest


@task(name="track", **_IO)
def track_task(out_dir: str, summary: dict[str, Any], experiment: str, parent_run_id: str | None,
               nested_under: str | None, run_name: str | None, kind: str, where: str | None = None) -> str:
    """Log one image's outputs (read from `out_dir`, published at `where`) as an MLflow run; returns the run id."""
    from pathlib import Path

    from samseg.edges.tracking import log_image_run

    tags = {"samseg.kind": kind, "samseg.out_dir": where or out_dir}
    return log_image_run(Path(out_dir), summary, experiment=experiment, parent_run_id=parent_run_id,
                         nested_under=nested_under, run_name=run_name, extra_tags=tags)


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """(fn(*args, **kwargs), seconds) — wall time as the flow saw it, cache hits included."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0
