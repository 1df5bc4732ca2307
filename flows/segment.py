"""Prefect flows `segment-image`, `segment-shard` and `segment-batch` (deployments/prefect.yaml).

Thin adapters over samseg.engine: segment_image_flow and segment_shard_flow are the engine's
batch loop over one image (every step its Prefect task) and over a list of images (its steps
inline: a shard is the unit of distribution, flows.tasks.shard_execute);
segment_batch_flow lists the images, opens the MLflow batch run and runs them in its own
run, or split in shards that run as `segment` deployment runs on any worker
(flows.fanout). One bad image fails alone; the batch finishes the rest and lists the failures.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Literal, Optional, Union

from prefect import flow

from flows.params import PipelineParams, RuntimeParams, ShardParams
from flows.tasks import flow_run_id, prefect_execute, shard_execute
from samseg.edges import shutdown
from samseg.edges.run_schema import BATCH_FLOW, EXPERIMENT_DEFAULT, IMAGE_FLOW, SHARD_FLOW, SHARD_REPORT, SHARDED
from samseg.engine.batch import ClassesRequest, dataset_classes_wanted, run_batch
from samseg.engine.publish import Tracking
from samseg.engine.request import SegmentJob
from samseg.engine.runner import Execute
from samseg.engine.segment import ImageFailed, segment_overlapped, start_one

log = logging.getLogger(__name__)
FanOut = Literal["auto", "local", "deployment"]


def segment_job(settings: PipelineParams, runtime: RuntimeParams, out: str, tracking: Tracking) -> SegmentJob:
    """The engine's job for these flow parameters."""
    return SegmentJob(settings.to_config(), runtime.to_config(), out, tracking)


@flow(name=IMAGE_FLOW, log_prints=True)
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
    """Segment one image (path or s3:// URI) into OUT/<name>/ through the batch loop, as a
    batch of one (no batch run, no batch_summary.json); returns its report entry. A failed
    image fails the flow run with its one line (ImageFailed).

    batch_run_id: an MLflow batch run this image's run is nested under; batch_resumed: that run
    was resumed after a kill (an image already logged is not logged again). name: output dir
    name (None = the file stem)."""
    from samseg.edges.outdirs import safe_dir_name

    # its own dir's check only: a large shared OUT is not listed for each image
    [entry] = segment_images([image], out, [name or safe_dir_name(image)], settings, runtime, track, experiment,
                             batch_run_id, batch_resumed)
    if entry["status"] != "completed":
        raise ImageFailed(entry["error"])
    return entry


@flow(name=SHARD_FLOW, log_prints=True)
def segment_shard_flow(
    images: list[str],
    out: str,
    names: Optional[list[str]] = None,
    settings: PipelineParams = PipelineParams(),
    runtime: RuntimeParams = RuntimeParams(),
    track: bool = True,
    experiment: str = EXPERIMENT_DEFAULT,
    batch_run_id: Optional[str] = None,
    batch_resumed: bool = False,
    classes_from: Optional[str] = None,
    classes_sha256: Optional[str] = None,
) -> list[dict[str, Any]]:
    """Segment a shard of a batch (paths or s3:// URIs) into OUT/<name>/ each: the engine's
    batch loop (one model load, each image's publish overlapping the next one's compute),
    its steps in this run's process, not task runs (flows.tasks.shard_execute: I/O steps
    retried as their tasks would be). One bad image fails alone; the shard's report (one row
    per image) is returned and kept as a table artifact, which is how a batch that fanned
    the shard out to a worker reads it back (flows.fanout). names: the batch's output dir
    names for these images (default: their unique stems). classes_from: the batch's classes
    given beforehand (pinned run id, classes.json, models:/ URI), classes_sha256 the table the
    batch checked: each image's masks are assigned to them here, where the masks are
    (samseg.engine.dataset.GivenClasses; another table than the batch's fails the shard). In a
    tracked batch (batch_run_id) the shard logs one MLflow run holding its images' table, not a
    run per image (samseg.edges.mlflow.shard_runs)."""
    from samseg.engine.dataset import GivenClasses

    given = GivenClasses.load(classes_from, classes_sha256) if classes_from else None
    shard_run, untracked = _start_shard_run(settings, runtime, out, experiment, batch_run_id) if track else (None, None)
    try:  # a batch's shard: its one MLflow run holds its images, not a run each
        entries = segment_images(images, out, names, settings, runtime, track and not batch_run_id, experiment,
                                 batch_run_id, batch_resumed, given, execute=shard_execute)
    except BaseException as exc:
        if shard_run is not None:
            from samseg.edges.mlflow.shard_runs import end_shard_run
            from samseg.edges.shutdown import bounded

            status = "FAILED" if isinstance(exc, Exception) else "KILLED"  # a stop: SIGTERM, Ctrl-C
            bounded(lambda: end_shard_run(shard_run, [], status))
        raise
    if batch_run_id and track:
        untracked = untracked or _end_shard_run(shard_run, entries)
        for e in entries:
            e["mlflow_shard_run_id"] = shard_run
            if untracked and e["status"] == "completed":
                e["tracking_error"] = untracked
    try:
        from prefect.artifacts import create_table_artifact

        create_table_artifact(entries, description=f"{SHARD_REPORT}: {len(entries)} images of a samseg batch")
    except Exception as exc:  # noqa: BLE001 — the images are written: the batch finds them by their summary.json
        _run_logger().warning("shard report not stored (%s); the batch reads the image dirs instead", exc)
    return entries


def _start_shard_run(settings: PipelineParams, runtime: RuntimeParams, out: str, experiment: str,
                     batch_run_id: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """(the shard's MLflow run id, None), or (None, why not): one run for a batch's shard; none
    outside a batch (a list of images given to the deployment logs a run per image)."""
    if not batch_run_id:
        return None, None
    from samseg.edges.mlflow.client import TrackingError
    from samseg.edges.mlflow.shard_runs import start_shard_run

    from prefect.runtime import flow_run

    cfg = settings.to_config()
    params = {**cfg.flat(), "model_type": cfg.model_type}
    run_id = flow_run_id()
    name = flow_run.name or f"shard-{run_id}"  # the batch names its shard runs shard-<index>-try<attempt>
    try:
        return start_shard_run(experiment, batch_run_id, name, params, run_id, out), None
    except TrackingError as exc:  # the images are still written: the batch reports them unlogged
        _run_logger().warning("%s", exc)
        return None, str(exc)


def _end_shard_run(shard_run: str, entries: list[dict[str, Any]]) -> Optional[str]:
    """End the shard's MLflow run with its images' table; why it could not, or None."""
    from samseg.edges.mlflow.client import TrackingError
    from samseg.edges.mlflow.shard_runs import end_shard_run

    try:
        end_shard_run(shard_run, entries)
    except TrackingError as exc:
        _run_logger().warning("%s", exc)
        return str(exc)
    return None


def segment_images(images: list[str], out: str, names: Optional[list[str]], settings: PipelineParams,
                   runtime: RuntimeParams, track: bool, experiment: str, batch_run_id: Optional[str],
                   batch_resumed: bool, assign_to: Any = None, execute: Execute = prefect_execute) -> list[dict[str, Any]]:
    """The engine's batch loop inside the current flow run (a shard run, or a batch run that
    keeps its images here), every step its Prefect task (a shard: flows.tasks.shard_execute).
    assign_to: SegmentJob.assign_to."""
    import dataclasses

    tracking = Tracking(track=track, experiment=experiment, nested_under=batch_run_id, resumed=batch_resumed)
    job = dataclasses.replace(segment_job(settings, runtime, out, tracking), assign_to=assign_to)
    run_id = flow_run_id()
    with shutdown.relayed():
        return segment_overlapped(images, out, lambda uri, name: start_one(uri, job, name, execute, run_id),
                                  names=names)


@flow(name=BATCH_FLOW, log_prints=True)
def segment_batch_flow(
    source: Union[str, list[str]],
    out: str,
    settings: PipelineParams = PipelineParams(),
    runtime: RuntimeParams = RuntimeParams(),
    track: bool = True,
    experiment: str = EXPERIMENT_DEFAULT,
    fan_out: FanOut = "auto",
    shards: ShardParams = ShardParams(),
    classes: Optional[Literal["image", "dataset"]] = None,
    classes_from: Optional[str] = None,
    max_cluster: Optional[int] = None,
    register_classes: Optional[str] = None,
) -> dict[str, Any]:
    """Segment every image of a folder, glob, file or s3:// prefix (or a list); returns the
    report also written to OUT/batch_summary.json. fan_out: "deployment" (the images split in
    shards of `shards.size`, one `segment` deployment run per shard, any worker), "local" (every
    image's tasks in this run), "auto" (deployment when it exists). classes="dataset" or
    classes_from (run id, classes.json, models:/ URI) give dataset-level ids
    (samseg.engine.dataset; a sharded batch of more than shards.fit_images images is fitted on
    that many and assigned in its shards); max_cluster caps the masks clustered at once; register_classes
    names the MLflow model the batch's new classes are registered as
    (samseg.edges.mlflow.class_registry). `shards`: how a fan-out is split and waited for
    (samseg.engine.request.ShardPlan)."""
    from flows.fanout import deployment_exists, run_shards

    use_deployments = fan_out != "local" and deployment_exists()  # one look-up, whichever fan_out asked it
    if fan_out == "deployment" and not use_deployments:  # before any MLflow run or image
        from prefect.settings import PREFECT_API_URL

        from samseg.core.errors import UnavailableError
        from samseg.edges.run_schema import SEGMENT_DEPLOYMENT

        raise UnavailableError(f"the Prefect server at {PREFECT_API_URL.value() or '(temporary)'} has no {SEGMENT_DEPLOYMENT} deployment "
                               "for the shards: prefect deploy --all --prefect-file deployments/prefect.yaml "
                               "(or samseg serve), then start a worker")
    job = segment_job(settings, runtime, out, Tracking(track=track, experiment=experiment))
    wanted = dataset_classes_wanted(classes, classes_from)  # "image" with classes_from: a ValueError, as everywhere
    plan = shards.to_config()
    request = ClassesRequest(classes_from, max_cluster, register_classes, plan.fit_images if use_deployments else None) \
        if wanted else None

    def run_images(uris: Iterable[str], per_image: SegmentJob, names: Optional[Iterable[str]]) -> Iterable[dict[str, Any]]:
        t, image_settings = per_image.tracking, PipelineParams.from_config(per_image.cfg)
        kwargs = dict(out=out, settings=image_settings, runtime=runtime, track=t.track, experiment=experiment,
                      batch_run_id=t.nested_under, batch_resumed=t.resumed)
        if use_deployments:  # classes given beforehand travel as their pinned reference: each shard assigns its own masks
            given = per_image.assign_to
            return run_shards(uris, {**kwargs, "settings": image_settings.model_dump(), "runtime": runtime.model_dump(),
                                     "classes_from": given.ref if given else None,
                                     "classes_sha256": given.sha256 if given else None}, plan, names=names)
        return segment_images(list(uris), names=None if names is None else list(names), **kwargs,  # a local batch's lists
                              assign_to=per_image.assign_to)  # the batch's own run holds its images' tasks

    with shutdown.relayed():
        report = run_batch(source, job, run_images, request, SHARDED if use_deployments else "local", prefect_execute)
    for r in report["images"]:  # the Prefect run log (the CLI prints its own line, and silences this one)
        if r["status"] != "completed":
            _run_logger().warning("%s", r["error"])
    return report


def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return log
