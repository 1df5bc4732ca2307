"""Prefect flows `segment-image` and `segment-batch` (entrypoints used by deployments/prefect.yaml).

Thin adapters over samseg.engine: segment_image_flow is engine.segment_one with every step
run as its Prefect task; segment_batch_flow lists the images, opens the MLflow batch run and
runs one image flow per image — as `segment` deployment runs when a server has that
deployment (any worker takes any image), else as local subflows. One bad image fails
alone; the batch finishes the rest and lists the failures.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Optional, Union

from prefect import flow

from flows.params import PipelineParams, RuntimeParams
from flows.tasks import flow_run_id, prefect_execute
from samseg.edges import shutdown
from samseg.edges.run_schema import BATCH_FLOW, EXPERIMENT_DEFAULT, IMAGE_FLOW
from samseg.engine.batch import ClassesRequest, run_batch
from samseg.engine.publish import Tracking
from samseg.engine.request import SegmentJob
from samseg.engine.segment import segment_many, segment_one

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
    """Segment one image (path or s3:// URI) into OUT/<name>/; returns its summary.

    batch_run_id: the MLflow run of the batch this image belongs to (its run is nested);
    batch_resumed: that run was resumed after a kill (images already logged are not logged again).
    name: output dir name (None = the file stem); a batch passes samseg.edges.outdirs.unique_names' name.
    """
    tracking = Tracking(track=track, experiment=experiment, nested_under=batch_run_id, resumed=batch_resumed)
    job = segment_job(settings, runtime, out, tracking)
    with shutdown.relayed():
        return segment_one(image, job, name, execute=prefect_execute, flow_run_id=flow_run_id())


@flow(name=BATCH_FLOW, log_prints=True)
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
    (run id, classes.json, models:/ URI) give dataset-level ids (samseg.engine.dataset);
    max_cluster caps the masks clustered at once; register_classes names the MLflow model
    the batch's new classes are registered as (samseg.edges.mlflow.class_registry)."""
    from flows.fanout import deployment_exists, run_deployments

    use_deployments = fan_out == "deployment" or (fan_out == "auto" and deployment_exists())
    job = segment_job(settings, runtime, out, Tracking(track=track, experiment=experiment))
    wanted = classes == "dataset" or classes_from is not None
    request = ClassesRequest(classes_from, max_cluster, register_classes) if wanted else None

    def run_images(uris: list[str], t: Tracking) -> list[dict[str, Any]]:
        kwargs = dict(out=out, track=t.track, experiment=experiment, batch_run_id=t.nested_under, batch_resumed=t.resumed)
        if use_deployments:
            return run_deployments(uris, {**kwargs, "settings": settings.model_dump(), "runtime": runtime.model_dump()},
                                   image_timeout_s)
        return segment_many(uris, out, lambda uri, name: image_subflow(image=uri, name=name, settings=settings,
                                                                       runtime=runtime, **kwargs))

    with shutdown.relayed():
        report = run_batch(source, job, run_images, request, "deployment" if use_deployments else "local", prefect_execute)
    for r in report["images"]:  # the Prefect run log (the CLI prints its own line, and silences this one)
        if r["status"] != "completed":
            _run_logger().warning("%s", r["error"])
    return report


def image_subflow(**params: Any) -> dict[str, Any]:
    """One image of a local batch as a `segment-image` subflow run, without a heartbeat of its own.

    Prefect's flow-run heartbeat thread sleeps in 1-s steps and is joined when the run ends, so
    it cost ~0.6 s per image (measured: an empty subflow 1.19 s with it, 0.62 s without). The
    batch flow run, in the same process, keeps its heartbeat: a crashed process still shows as
    its batch run's missing heartbeats.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        return segment_image_flow(**params)


def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return log
