"""Prefect tasks: one per row of the engine's stage table, plus the I/O steps around them.

The engine (samseg.engine) decides what runs — cache look-ups, which stages compute, the
model loaded only when a stage needs it; Prefect decides where and records it. Each task
body is the engine's thunk for that step (`prefect_execute` hands it over), so no stage,
cache look-up or summary is written here. A stage whose cache entry loads is not a task run
at all: its status ("hit") is in summary.json and the samseg.cache.<stage> tags.

GPU stages carry the tag `gpu`: on a Prefect server a tag concurrency limit
(`prefect concurrency-limit create gpu 1`) bounds them across workers; inside one process
the engine's semaphore (SAMSEG_GPU_SLOTS, default 1) bounds them too. Only I/O steps
(read image, write/upload, tracking, registering classes) retry, and only on I/O errors.

A shard of a fanned-out batch runs its steps with `shard_execute` instead: in its flow run's
process, not as task runs (256 images would be some 2,300 task runs a shard, a million images
nine million on the server), the I/O steps retried by the same rule.
"""

from __future__ import annotations

import time
from typing import Any, Callable, TypeVar

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from samseg.engine.segment import READ_STEP
from samseg.engine.stages import GPU_STEPS, STAGES, WRITE

T = TypeVar("T")
IO_RETRIES = 2
IO_RETRY_DELAY_S = 0.5
IO_STEPS: tuple[str, ...] = (READ_STEP, WRITE, "track", "register-classes")
OTHER_STEPS: tuple[str, ...] = ("dataset-classes",)


def _is_io_error(exc: BaseException) -> bool:
    from samseg.edges.mlflow.client import TrackingError
    from samseg.edges.storage import StorageError

    # the taxonomy says what a retry can help (samseg.core.errors): a run id of no run, access refused: never
    return (isinstance(exc, (StorageError, TrackingError, OSError, ConnectionError, TimeoutError))
            and not _is_input_error(exc) and getattr(exc, "retryable", True))


def _is_input_error(exc: BaseException) -> bool:
    from samseg.edges.image_dir import OutputsError
    from samseg.edges.images import ImageError
    from samseg.edges.storage import StorageNotFound

    return isinstance(exc, (ImageError, StorageNotFound, FileNotFoundError, OutputsError))


def retry_on_io(_task: Any, _task_run: Any, state: Any) -> bool:
    """retry_condition_fn: retry transient I/O failures only, never a bad input."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - we only classify it
        return _is_io_error(exc)
    return False


def _run(step: Callable[[], T]) -> T:
    return step()


def _task(name: str, gpu: bool = False, io: bool = False) -> Task[..., Any]:
    retries = dict(retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAY_S, retry_condition_fn=retry_on_io) if io else {}
    # NO_CACHE: the engine's stage cache is the one cache (Prefect's would hash the thunk)
    return task(_run, name=name, tags=["gpu"] if gpu else None, cache_policy=NO_CACHE, persist_result=False, **retries)


TASKS: dict[str, Task[..., Any]] = {s.name: _task(s.name, gpu=s.name in GPU_STEPS) for s in STAGES}
TASKS.update({name: _task(name, io=True) for name in IO_STEPS})
TASKS.update({name: _task(name) for name in OTHER_STEPS})


def prefect_execute(step: str, fn: Callable[[], T]) -> T:
    """The engine's `execute` inside a flow: the step runs as its Prefect task (same thread)."""
    return TASKS[step](fn)


def shard_execute(step: str, fn: Callable[[], T]) -> T:
    """The engine's `execute` inside a shard run: the step inline (no task run), an I/O step
    tried again on an I/O error as its task would be (IO_RETRIES times, IO_RETRY_DELAY_S apart)."""
    for _ in range(IO_RETRIES if step in IO_STEPS else 0):
        try:
            return fn()
        except Exception as exc:
            if not _is_io_error(exc):
                raise
            time.sleep(IO_RETRY_DELAY_S)
    return fn()  # the last try: its error is the step's


def flow_run_id() -> str | None:
    """The current Prefect flow run's id (recorded in summary.json and the MLflow tags)."""
    from prefect.runtime import flow_run

    rid = flow_run.get_id()
    return str(rid) if rid else None
