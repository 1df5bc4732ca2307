"""After the stages, publish: write the image dir (+ upload when OUT is s3://), then log its MLflow run.

`publish` is the one write + track sequence every caller uses (the CLI's local runs, the
flows, the UI's rerun and saved classes); `execute` lets flows/ run "write" and "track"
as Prefect tasks with I/O retries.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from samseg.edges.run_schema import EXPERIMENT_DEFAULT, KIND_IMAGE, TAG_KIND, TAG_OUT_DIR
from samseg.engine import progress
from samseg.engine.runner import Execute, ImageRun, inline
from samseg.engine.stages import WRITE
from samseg.engine.summary import RunSummary


@dataclass(frozen=True)
class Tracking:
    """Where and how the run is logged: track=False logs nothing. nested_under: the batch
    run (mlflow.parentRunId); parent_run_id: the run a recluster started from; resumed: the
    batch was resumed after a kill, so this image may already be logged under it."""

    track: bool = True
    experiment: str = EXPERIMENT_DEFAULT
    kind: str = KIND_IMAGE
    nested_under: Optional[str] = None
    parent_run_id: Optional[str] = None
    resumed: bool = False
    run_name: Optional[str] = None
    tags: Optional[dict[str, str]] = None


def publish(run: ImageRun, summary: RunSummary, out: str, name: str, tracking: Tracking, features: bool = False,
            execute: Execute = inline, untracked_ok: bool = False) -> dict[str, Any]:
    """Export `run` to OUT/<name>/ (uploaded when OUT is s3://), then log it; returns
    {"out_dir", "mlflow_run_id", "write_seconds"}. Outputs first, tracking second: with
    `untracked_ok`, a tracking failure after the write does not undo it, it is returned as
    "tracking_error" (mlflow_run_id None), so a batch reports the image as written, not failed."""
    import time

    from samseg.edges.outdirs import child_dir
    from samseg.edges.storage import is_s3_uri, join_uri

    tmp = Path(tempfile.mkdtemp(prefix="samseg-write-")) if is_s3_uri(out) else None
    local = child_dir(tmp if tmp is not None else Path(out), name)
    dest = join_uri(out, name) if tmp is not None else None
    try:
        t0 = time.perf_counter()
        where = execute(WRITE, lambda: write_and_upload(run, summary, local, dest, features))
        seconds = time.perf_counter() - t0
        progress.report("stage", image=run.image.uri, stage=WRITE, status="computed")
        untracked = None
        try:
            run_id = _track(local, where, summary, run, tracking, execute) if tracking.track else None
        except Exception as exc:
            if not untracked_ok:
                raise
            from samseg.edges.mlflow.client import error_line

            run_id, untracked = None, error_line(exc)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    done = {"out_dir": where, "mlflow_run_id": run_id, "write_seconds": seconds}
    return {**done, "tracking_error": untracked} if untracked else done


def write_and_upload(run: ImageRun, summary: RunSummary, local: Path, dest: Optional[str], features: bool = False) -> str:
    """Write the image dir at `local` atomically, then publish it to `dest` (s3://…) when
    given; returns the final location. An S3 upload writes `_SUCCESS` last."""
    from samseg.edges.image_dir import write_image_dir

    feats = run.features.features if features and run.features is not None else None
    write_image_dir(local, run.image, run.masks, run.embeddings, run.clusters, run.label_map, summary.to_dict(),
                  features=feats)
    if dest is None:
        return str(local)
    from samseg.edges.storage import upload_dir

    upload_dir(local, dest)
    return dest


def _track(local: Path, where: str, summary: RunSummary, run: ImageRun, t: Tracking, execute: Execute) -> str:
    from samseg.edges.mlflow.tracking import log_image_run

    if t.nested_under and t.resumed:  # a resumed batch (killed, then rerun) logs each image once
        from samseg.edges.mlflow.batch_runs import logged_image_run

        done = logged_image_run(t.nested_under, run.image.sha256, where)
        if done is not None:
            return done
    tags = {TAG_KIND: t.kind, TAG_OUT_DIR: where, **(t.tags or {})}
    return execute("track", lambda: log_image_run(local, summary.to_dict(), experiment=t.experiment,
                                                  parent_run_id=t.parent_run_id, nested_under=t.nested_under,
                                                  run_name=t.run_name or run.image.name, extra_tags=tags))
