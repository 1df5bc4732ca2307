"""`samseg segment` as engine calls: one image (read -> stages -> summary -> publish) and a batch of them.

The CLI's local orchestrator calls these directly; the Prefect flows call the same
functions with an `execute` that turns each step into a task (flows/segment.py).
"""

from __future__ import annotations

import threading
from pathlib import PurePosixPath
from typing import Any, Callable, Optional

from samseg.core.errors import SamsegError, one_line  # noqa: F401 — one_line: engine callers import it from here
from samseg.engine import progress
from samseg.engine.publish import publish
from samseg.engine.request import SegmentJob
from samseg.engine.runner import Execute, ImageRun, inline, run_image
from samseg.engine.stages import OUTPUTS
from samseg.engine.summary import summarize
from samseg.sam.source import ModelSource

READ_STEP = "read-image"


class ImageFailed(SamsegError):
    """The one image of a run failed: its message is the batch loop's one line for it (a
    single-image flow run ends FAILED with it)."""


def read_image(uri: str) -> Any:
    """Local path or s3:// URI -> LoadedImage (sha256 of the file bytes)."""
    from samseg.edges.images import decode_image
    from samseg.edges.storage import read_bytes

    return decode_image(read_bytes(uri), PurePosixPath(str(uri)).name, uri=str(uri))


def compute_image(image: Any, job: SegmentJob, execute: Execute = inline) -> ImageRun:
    """The stage table walked for one decoded image under `job` (cache first, model lazily)."""
    from samseg.edges.cache import StageCache

    source = ModelSource(job.model)
    want = ("features", *OUTPUTS) if job.save_features else OUTPUTS
    run = run_image(image, job.cfg, source.identity(), StageCache(job.cache_root), load_model=source.get,
                    load_backbone=source.get_backbone, load_libraries=imports_ready, want=want, execute=execute)
    run.model = source.identity()  # the loaded model's (resolved device) when a stage loaded it
    return run


def start_one(uri: str, job: SegmentJob, name: Optional[str] = None, execute: Execute = inline,
              flow_run_id: Optional[str] = None) -> Callable[[], dict[str, Any]]:
    """Read and compute one image now; returns its publish step, which exports OUT/<name>/
    (default: its safe stem), logs it and returns the summary dict plus out_dir,
    mlflow_run_id, write_seconds."""
    from samseg.edges.outdirs import safe_dir_name

    progress.report("image_start", image=uri)
    job.fetch_weights()  # present: two stat calls; a worker's first image downloads what is missing
    image = execute(READ_STEP, lambda: read_image(uri))
    run = compute_image(image, job, execute)
    from samseg.engine.naming import name_run

    if job.assign_to is not None:  # the dataset's classes given beforehand: their ids and names
        from samseg.engine.dataset import assign_classes, assigned_summary

        assign_classes(run, job.assign_to.table)
        summary = assigned_summary(summarize(run, flow_run_id=flow_run_id), run, job.assign_to)
    else:
        from samseg.edges.cache import StageCache

        named = name_run(run, job.runtime.device, job.runtime.seed, StageCache(job.cache_root))  # names, when asked
        summary = summarize(run, flow_run_id=flow_run_id, extra=named)

    def finish() -> dict[str, Any]:
        out_name = name or safe_dir_name(uri)
        where = publish(run, summary, job.out, out_name, job.tracking, job.save_features, execute, untracked_ok=True)
        result = {**summary.to_dict(), **where}
        progress.report("image_done", image=uri, entry=image_entry(uri, out_name, result))
        return result

    return finish


StartFn = Callable[[str, str], Callable[[], dict[str, Any]]]  # (uri, output name) -> start_one's publish step


def import_ahead() -> None:
    """Import what clustering and writing an image need (scikit-learn: 0.8 s alone, ~2.8 s after
    torch on a 2-core machine; Pillow, OpenCV: ~1 s). Only a head start: a failure here is the
    later import's to say."""
    try:
        from samseg.core.algorithms import import_ahead as clustering

        clustering()
        import cv2  # noqa: F401 — samseg.edges.image_dir.png_bytes
        import PIL.Image  # noqa: F401 — samseg.edges.images

        import samseg.edges.image_dir  # noqa: F401
        import samseg.engine.publish  # noqa: F401
    except Exception:  # noqa: BLE001 — a broken install: said where the import is needed
        pass


_AHEAD_LOCK = threading.Lock()
_ahead: Optional[threading.Thread] = None


def importing_ahead() -> threading.Thread:
    """import_ahead in a daemon thread (it never holds the exit), once per process: the batch loop
    starts it before its first image, whose model load (torch's import) it runs beside on the other
    core; a recluster, while it waits for MLflow."""
    global _ahead
    with _AHEAD_LOCK:
        if _ahead is None:
            _ahead = threading.Thread(target=import_ahead, name="samseg-import-ahead", daemon=True)
            _ahead.start()
        return _ahead


def imports_ready() -> None:
    """Wait until import_ahead is done (run it now if nothing started it): the cluster stage's
    load_libraries, so a process's first clustering is timed without scikit-learn's import."""
    importing_ahead().join()


def segment_overlapped(uris: list[str], out: str, start_fn: StartFn, overlap: bool = True,
                       names: Optional[list[str]] = None) -> list[dict[str, Any]]:
    """The batch loop: every image through `start_fn`, in order, one bad image failing alone;
    images whose OUT/<name> samseg may not replace fail before any compute. Each image's
    publish step (export, upload, MLflow) runs in a background thread while the next image
    computes (overlap=False: before it): one publish in flight, results in input order.
    A stop request (SIGTERM, Ctrl-C) starts no new image and gives the publish in flight shutdown.grace_s() to finish: a tracking server
    that hangs must not hold the stop (its image dir is atomic, the rerun redoes what is missing).
    names: the output dir names (a shard of a batch gets the batch's; default: unique_names)."""
    import contextvars
    from concurrent.futures import Future, ThreadPoolExecutor
    from concurrent.futures import TimeoutError as FutureTimeout

    from samseg.edges import shutdown
    from samseg.edges.outdirs import refused_outputs, unique_names

    shard = names is not None  # a shard of a larger batch: check its own image dirs, not all of OUT
    names = unique_names(uris) if names is None else names
    refused = refused_outputs(out, uris, names, whole_out=not shard)
    if len(refused) < len(uris):  # beside the first image's model load; its cluster stage waits for them (imports_ready)
        importing_ahead()
    results: list[dict[str, Any]] = []
    pending: list[tuple[str, str, Future]] = []

    def collect(timeout_s: Optional[float] = None) -> None:
        for uri, name, done in pending:
            try:
                results.append(image_entry(uri, name, done.result(timeout_s)))
            except FutureTimeout:
                results.append(failed_entry(uri, name, f"{uri}: interrupted while publishing"))
            except Exception as exc:  # one bad image fails alone
                results.append(failed_entry(uri, name, describe_failure(uri, exc)))
        pending.clear()

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="samseg-publish")
    stopped = False
    try:
        for uri, name in zip(uris, names):
            shutdown.check()  # SIGTERM / Ctrl-C: start no new image
            finish, failure = _started(uri, name, start_fn) if uri not in refused else (None, refused[uri])
            collect()  # the previous image's publish overlapped this image's compute
            if failure is not None:
                results.append(failed_entry(uri, name, failure))
            else:
                # the publish thread runs in this thread's context: inside a flow its steps are that flow's tasks
                pending.append((uri, name, pool.submit(contextvars.copy_context().run, finish)))
                if not overlap:
                    collect()
    except BaseException:
        stopped = True
        raise
    finally:
        collect(shutdown.grace_s() if stopped else None)
        pool.shutdown(wait=not stopped, cancel_futures=stopped)
    return results


def _started(uri: str, name: str, start_fn: StartFn) -> tuple[Optional[Callable[[], dict[str, Any]]], Optional[str]]:
    try:
        return start_fn(uri, name), None
    except Exception as exc:  # one bad image fails alone
        return None, describe_failure(uri, exc)


def image_entry(uri: str, name: str, s: dict[str, Any]) -> dict[str, Any]:
    """A completed image's line in the batch report."""
    from samseg.edges.run_schema import eps_used

    entry = {"image": uri, "name": name, "status": "completed", "out_dir": s["out_dir"],
             "mlflow_run_id": s.get("mlflow_run_id"), "cache": s.get("cache"),
             "n_masks": s.get("n_masks"), "n_clusters": s.get("n_clusters"), "n_noise": s.get("n_noise"),
             "eps": eps_used(s)}  # under --eps auto, each image's own
    if s.get("tracking_error"):  # written, but its MLflow run is missing: a rerun logs it
        entry["tracking_error"] = s["tracking_error"]
    if s.get("no_masks_because"):  # which AMG filter left nothing
        entry["no_masks_because"] = s["no_masks_because"]
    warnings = [(s.get("eps_auto") or {}).get("warning"), edits_not_kept(s)]  # --eps auto found no knee: the eps it used instead
    if warnings[1]:  # counted by a batch's report (the UI's note)
        entry["edits_not_kept"] = s["recluster"]["edits_not_kept"]
    if any(warnings):
        entry["warning"] = "; ".join(w for w in warnings if w)
    from samseg.engine.dataset import assigned_entry

    entry.update(assigned_entry(s))  # masks per dataset class id: the batch adds them up into classes.json
    return entry


# what a recluster of an edited run says of the edits it drops (an image's line, a batch's note)
EDITS_NOT_KEPT = "(names, merges) not carried over: a recluster makes new classes (samseg classes edit names them again)"


def edits_not_kept(summary: dict[str, Any]) -> Optional[str]:
    """The line a recluster of an edited run says (the CLI's image line, the UI's result), or None."""
    dropped = (summary.get("recluster") or {}).get("edits_not_kept")
    if not dropped:
        return None
    return f"the parent's class edit{'s' if dropped != 1 else ''} {EDITS_NOT_KEPT}"


def failed_entry(uri: str, name: str, error: str, **more: Any) -> dict[str, Any]:
    entry = {"image": uri, "name": name, "status": "failed", **more, "error": error}
    progress.report("image_failed", image=uri, error=error, entry=entry)
    return entry


def describe_failure(uri: str, exc: BaseException) -> str:
    """One line for a failed image, naming it: input/output errors carry the file in their
    own message; other errors get "<uri>: " (and "unexpected <Type>: " for non-I/O ones)."""
    from samseg.edges.image_dir import OutputsError
    from samseg.edges.images import ImageError
    from samseg.edges.mlflow.client import TrackingError
    from samseg.edges.storage import StorageError
    from samseg.sam.weights import CheckpointError

    if isinstance(exc, (ImageError, OutputsError, StorageError, CheckpointError, TrackingError)):
        message = str(exc)
    elif isinstance(exc, (ValueError, OSError)):
        message = f"{uri}: {exc}"
    else:
        message = f"{uri}: unexpected {type(exc).__name__}: {exc}"
    if uri not in message and PurePosixPath(str(uri)).name not in message:
        message = f"{uri}: {message}"
    return one_line(message)


def shown_name(name: str) -> str:
    """A file name as a console line shows it: a newline, tab or other control character as
    its escape (`\\n`), so a hostile name can neither split a line nor move the cursor."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(name))



