"""Prefect flows `segment-image` and `segment-batch` (entrypoints used by deployments/prefect.yaml).

segment_image_flow: read → encode → amg → pool → cluster → export (→ MLflow run).
segment_batch_flow: list a folder / glob / s3:// prefix and run one image flow per image —
as `segment` deployment runs when a server has that deployment (any worker takes any
image), else as local subflows. One bad image fails alone; the batch finishes the rest
and lists the failures.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Optional, Union

from prefect import flow

from flows.params import PipelineParams, RuntimeParams
from flows.tasks import (
    STAGES,
    amg_task,
    cached_call,
    cluster_task,
    encode_task,
    export_task,
    get_model,
    pool_task,
    read_image_task,
    require_entry,
    timed,
    track_task,
)
from samseg.edges.outdirs import child_dir, refused_outputs, safe_dir_name, unique_names
from samseg.engine.progress import report

log = logging.getLogger(__name__)

IMAGE_FLOW_NAME = "segment-image"
BATCH_FLOW_NAME = "segment-batch"
SEGMENT_DEPLOYMENT = f"{IMAGE_FLOW_NAME}/segment"  # <flow name>/<deployment name> in prefect.yaml
EXPERIMENT_DEFAULT = "samseg"
FanOut = Literal["auto", "local", "deployment"]


def stage_status(state: Any) -> tuple[dict[str, str], str]:
    """(StageRef, "hit"|"computed") of a finished cached-stage task; raises its error."""
    ref = state.result()
    return ref, "hit" if state.name == "Cached" else ref["status"]


def describe_failure(uri: str, exc: BaseException) -> str:
    """One line for a failed image, naming it: input/output errors carry the file in their
    own message; other errors get "<uri>: " (and "unexpected <Type>: " for non-I/O ones)."""
    from samseg.edges.export import OutputsError
    from samseg.edges.images import ImageError
    from samseg.edges.storage import StorageError

    if isinstance(exc, (ImageError, OutputsError, StorageError)):
        message = str(exc)
    elif isinstance(exc, (ValueError, OSError)):
        message = f"{uri}: {exc}"
    else:
        message = f"{uri}: unexpected {type(exc).__name__}: {exc}"
    if uri not in message and PurePosixPath(str(uri)).name not in message:
        message = f"{uri}: {message}"
    return _one_line(message)


def run_stages(img: Any, cfg: Any, runtime: RuntimeParams) -> tuple[dict[str, str], dict[str, str], dict[str, float], Any]:
    """encode → amg → pool through the cache: (keys, cache status, seconds, model)."""
    from samseg.edges.cache import stage_key

    model = get_model(cfg.model_type, runtime, cfg.precision)  # once per process; sha256 + precision key every stage
    keys = {s: stage_key(s, img.sha256, model.checkpoint_sha256, cfg, model.precision) for s in STAGES}
    status: dict[str, str] = {}
    seconds: dict[str, float] = {}
    args = {
        "encode": (keys["encode"], img, cfg.model_type, runtime, cfg.precision),
        "amg": (keys["amg"], keys["encode"], img, cfg, runtime),
        "pool": (keys["pool"], keys["encode"], keys["amg"], cfg, runtime),
    }
    for stage, stage_task in zip(STAGES, (encode_task, amg_task, pool_task)):
        fn = cached_call(stage_task, stage, keys[stage], runtime)
        state, seconds[stage] = timed(fn, *args[stage], return_state=True)
        _ref, status[stage] = stage_status(state)
        report("stage", image=img.uri, stage=stage, status=status[stage])
    return keys, status, seconds, model


def build_image_summary(img: Any, model: Any, cfg: Any, masks: Any, embeddings: Any,
                        clusters: Any, seconds: dict[str, float], cache: dict[str, str]) -> dict[str, Any]:
    """samseg.engine.pipeline.build_summary plus the orchestration fields (cache, prefect ids).

    model: a LoadedModel, or anything with .model_type/.checkpoint_sha256/.checkpoint_path/
    .device (a recluster describes the model of the run it started from).
    """
    from types import SimpleNamespace

    from samseg.engine.pipeline import build_summary

    result = SimpleNamespace(encoded=None, masks=masks, embeddings=embeddings, clusters=clusters,
                             label_map=None, timings=dict(seconds))
    summary = build_summary(img, model, cfg, result)
    if "silhouette" not in summary:
        from samseg.core.cluster import silhouette_cosine

        summary["silhouette"] = silhouette_cosine(embeddings, clusters.labels)  # None when undefined
    summary["cache"] = dict(cache)
    summary["prefect_flow_run_id"] = _flow_run_id()
    return summary


def _flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    rid = flow_run.get_id()
    return str(rid) if rid else None


def publish(out: str, img: Any, masks: Any, embeddings: Any, clusters: Any, summary: dict[str, Any],
            features: Any, track: bool, experiment: str, kind: str, nested_under: str | None = None,
            parent_run_id: str | None = None, name: str | None = None, resumed: bool = False) -> dict[str, Any]:
    """export (+ upload when `out` is s3://) to OUT/<name>/ (default: the image's stem), then
    log the MLflow run; returns where things went. resumed: the batch run `nested_under` was
    resumed after a kill, so this image may already be logged under it."""
    from samseg.edges.storage import is_s3_uri, join_uri

    name = name or safe_dir_name(img.uri)
    tmp = None
    if is_s3_uri(out):
        tmp = Path(tempfile.mkdtemp(prefix="samseg-export-"))
        local, dest = child_dir(tmp, name), join_uri(out, name)
    else:
        local, dest = child_dir(Path(out), name), None
    try:
        (where, seconds) = timed(export_task, str(local), dest, img, masks, embeddings, clusters, summary, features)
        run_id = None
        if track and nested_under and resumed:  # a resumed batch (killed, then rerun) logs each image once
            from samseg.edges.batch_runs import logged_image_run

            run_id = logged_image_run(nested_under, img.sha256, where)
        if track and run_id is None:
            run_id = track_task(str(local), summary, experiment, parent_run_id, nested_under, img.name, kind, where)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return {"out_dir": where, "mlflow_run_id": run_id, "export_seconds": seconds}


@flow(name=IMAGE_FLOW_NAME, log_prints=True)
def segment_image_flow(
    image: str,
    out: str,
    settings: PipelineParams = PipelineParams(),
    runtime: RuntimeParams = RuntimeParams(),
    track: bool = True,
    experiment: str = EXPERIMENT_DEFAULT,
    batch_run_id: Optional[str] = None,
    name: Optional[str] = None,
    batch_resumed: bool = False,
) -> dict[str, Any]:
    """Segment one image (path or s3:// URI) into OUT/<name>/; returns its summary.

    batch_run_id: the MLflow run of the batch this image belongs to (its run is nested);
    batch_resumed: that run was resumed after a kill (images already logged are not logged again).
    name: output dir name (None = the file stem); a batch passes samseg.edges.outdirs.unique_names' name.
    """
    cfg = settings.to_config()
    report("image_start", image=image)
    img = read_image_task(image)
    keys, cache, seconds, model = run_stages(img, cfg, runtime)
    masks = require_entry(runtime, "amg", keys["amg"])
    embeddings = require_entry(runtime, "pool", keys["pool"])
    clusters, seconds["cluster"] = timed(cluster_task, embeddings, cfg.cluster)
    report("stage", image=image, stage="cluster", status="computed")  # never cached
    features = require_entry(runtime, "encode", keys["encode"]).features if runtime.save_features else None
    summary = build_image_summary(img, model, cfg, masks, embeddings, clusters, seconds, cache)
    where = publish(out, img, masks, embeddings, clusters, summary, features, track, experiment,
                    kind="image", nested_under=batch_run_id, name=name, resumed=batch_resumed)
    report("stage", image=image, stage="export", status="computed")
    report("image_done", image=image)
    return {**summary, **where}


# ---------------------------------------------------------------- batch


def _image_params(uri: str, out: str, settings: PipelineParams, runtime: RuntimeParams, track: bool,
                  experiment: str, batch_run_id: str | None, batch_resumed: bool = False) -> dict[str, Any]:
    return {"image": uri, "out": out, "settings": settings.model_dump(), "runtime": runtime.model_dump(),
            "track": track, "experiment": experiment, "batch_run_id": batch_run_id, "batch_resumed": batch_resumed}


def _run_local(uris: list[str], kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    from samseg.edges import shutdown

    names = unique_names(uris)
    refused = refused_outputs(kwargs["out"], uris, names)
    results = []
    for uri, name in zip(uris, names):
        shutdown.check()  # SIGTERM / Ctrl-C: start no new image
        if uri in refused:
            results.append({"image": uri, "name": name, "status": "failed", "error": refused[uri]})
            report("image_failed", image=uri, error=refused[uri])
            continue
        state = segment_image_flow(image=uri, name=name, **kwargs, return_state=True)
        try:
            s = state.result()
            results.append({"image": uri, "name": name, "status": "completed", "out_dir": s["out_dir"],
                            "mlflow_run_id": s.get("mlflow_run_id"), "cache": s.get("cache"),
                            "n_masks": s.get("n_masks"), "n_clusters": s.get("n_clusters"), "n_noise": s.get("n_noise")})
        except Exception as exc:  # one bad image fails alone
            results.append({"image": uri, "name": name, "status": "failed", "error": describe_failure(uri, exc)})
            report("image_failed", image=uri, error=results[-1]["error"])
    return results


def _one_line(value: Any) -> str:
    return " ".join(str(value).split())


@flow(name=BATCH_FLOW_NAME, log_prints=True)
def segment_batch_flow(
    source: Union[str, list[str]],
    out: str,
    settings: PipelineParams = PipelineParams(),
    runtime: RuntimeParams = RuntimeParams(),
    track: bool = True,
    experiment: str = EXPERIMENT_DEFAULT,
    fan_out: FanOut = "auto",
    image_timeout_s: Optional[float] = None,
    classes: Literal["image", "dataset"] = "image",
    classes_from: Optional[str] = None,
    max_cluster: Optional[int] = None,
    register_classes: Optional[str] = None,
) -> dict[str, Any]:
    """Segment every image of a folder, glob, file or s3:// prefix (or a list); returns the
    report also written to OUT/batch_summary.json. fan_out: "deployment" (one `segment` run
    per image, any worker), "local" (subflows here), "auto" (deployment when it exists);
    image_timeout_s bounds the wait for deployment runs. classes="dataset" or classes_from
    (run id, classes.json, models:/ URI) give dataset-level ids (flows.dataset); max_cluster
    caps the masks clustered at once; register_classes names the MLflow model the batch's
    new classes are registered as (samseg.edges.class_registry)."""
    from flows.dataset import check_dataset_request, relabel_and_track
    from flows.fanout import deployment_exists

    dataset = classes == "dataset" or classes_from is not None
    if dataset:
        check_dataset_request(out, classes_from)  # fail before any image is computed
    uris = list_sources(source)
    use_deployments = fan_out == "deployment" or (fan_out == "auto" and deployment_exists())
    batch_run_id, resumed = _start_batch(track, experiment, settings, source, out, len(uris))
    # dataset mode: image runs are logged after relabelling, so they carry the dataset ids
    kwargs = _image_params("", out, settings, runtime, track and not dataset, experiment, batch_run_id, resumed)
    kwargs.pop("image")
    if not use_deployments:
        kwargs.update(settings=settings, runtime=runtime)
    results = _run_images(uris, kwargs, image_timeout_s, use_deployments, batch_run_id)
    failed = [r for r in results if r["status"] != "completed"]
    for r in failed:  # the Prefect run log (the CLI prints its own line, and silences this one)
        _run_logger().warning("%s", r["error"])
    class_report = None
    if dataset:
        class_report = relabel_and_track(out, results, settings.cluster.to_config(), batch_run_id, classes_from,
                                         max_cluster, track, experiment, register_classes)
    if batch_run_id is not None:
        _end_quietly(batch_run_id, "FAILED" if failed or (class_report or {}).get("error") else "FINISHED", quiet=False)
    report = {"source": source, "out": out, "images": results, "succeeded": len(results) - len(failed),
              "failed": len(failed), "mlflow_run_id": batch_run_id, "fan_out": "deployment" if use_deployments else "local",
              "classes": class_report or {"mode": "image"}}
    return _with_batch_summary(out, report)


def _with_batch_summary(out: str, report: dict[str, Any]) -> dict[str, Any]:
    """Write OUT/batch_summary.json; a failed write is recorded, never a lost report."""
    try:
        _write_batch_summary(out, report)
    except Exception as exc:  # noqa: BLE001 — the images' results must still reach the caller
        report["summary_error"] = _one_line(f"batch_summary.json not written: {exc}")
    return report


def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return log


def _run_images(uris: list[str], kwargs: dict[str, Any], timeout_s: Optional[float], use_deployments: bool,
                batch_run_id: Optional[str]) -> list[dict[str, Any]]:
    """Every image of the batch, as deployment runs or local subflows."""
    from flows.fanout import run_deployments

    try:
        return run_deployments(uris, kwargs, timeout_s) if use_deployments else _run_local(uris, kwargs)
    except BaseException:  # SIGTERM / Ctrl-C: the batch run ends as KILLED, not RUNNING forever
        if batch_run_id is not None:
            _end_quietly(batch_run_id, "KILLED")
        raise


def _end_quietly(run_id: str, status: str, quiet: bool = True) -> None:
    from samseg.edges.tracking import TrackingError, end_run

    try:
        end_run(run_id, status)
    except TrackingError:
        if not quiet:
            raise


def list_sources(source: Union[str, list[str]]) -> list[str]:
    from samseg.edges.storage import list_images

    specs = [source] if isinstance(source, str) else list(source)
    uris: list[str] = []
    for spec in specs:
        # absolute local paths: the runs stay usable from any directory (UI, recluster)
        uris.extend(u for u in map(_absolute, list_images(spec)) if u not in uris)
    return uris


def _absolute(uri: str) -> str:
    import os

    from samseg.edges.storage import is_s3_uri

    return uri if is_s3_uri(uri) else os.path.abspath(uri)


def _start_batch(track: bool, experiment: str, settings: PipelineParams, source: Any, out: str,
                 n: int) -> tuple[str | None, bool]:
    """(batch run id or None when untracked, resumed after a kill)."""
    if not track:
        return None, False
    from samseg.edges.batch_runs import batch_key, open_batch_run

    params = {**settings.to_config().flat(), "n_images": n}
    tags = {"samseg.kind": "batch", "samseg.source": str(source)}
    key = batch_key(experiment, source, out, params)
    return open_batch_run(experiment, f"batch-{time.strftime('%Y%m%d-%H%M%S')}", params, tags, key)


def _write_batch_summary(out: str, report: dict[str, Any]) -> None:
    import json

    from samseg.edges.storage import join_uri, write_bytes

    write_bytes(join_uri(out, "batch_summary.json"), json.dumps(report, indent=2, default=str).encode("utf-8"))
