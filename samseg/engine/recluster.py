"""New clustering settings on masks and embeddings computed before: the same runner, fed
the earlier run's values.

`recluster` is the one recluster path: `samseg recluster` (local and the Prefect flow),
the UI's rerun, its live preview and its saved exemplar classes. Where masks/embeddings
come from is recorded per stage (hit = stage cache, parent_run = the run started from,
run = that run's MLflow artifacts), never guessed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from samseg.core.errors import SamsegError
from samseg.core.config import PipelineConfig
from samseg.edges.run_schema import DATASET_MODES, FROM_RUN_ARTIFACTS, KIND_RECLUSTER
from samseg.engine.runner import Execute, ImageRun, ModelRequired, inline, run_image
from samseg.engine.stages import OUTPUTS
from samseg.engine.summary import RunSummary, summarize
from samseg.sam.source import ModelIdentity

if TYPE_CHECKING:
    from samseg.edges.cache import StageCache


class ReclusterError(SamsegError, RuntimeError):
    """The inputs a recluster needs are not there (one line)."""


def recluster(image: Any, cfg: PipelineConfig, model: ModelIdentity, cache: "StageCache", *,
              given: Optional[Mapping[str, tuple[Any, str]]] = None,
              fallback: Optional[Mapping[str, Callable[[], Any]]] = None,
              load_model: Optional[Callable[[], Any]] = None, load_backbone: Optional[Callable[[], Any]] = None,
              execute: Execute = inline) -> ImageRun:
    """Run cluster + compose under `cfg` on the image's earlier masks/embeddings.

    given: values already in hand (a parent run's masks and, when the pool config is
    unchanged, its embeddings); otherwise the stage cache, then `fallback` (e.g. the parent
    run's MLflow artifacts). A pooling change re-pools from the cached encoder features.
    With no `load_model`, a stage that would need SAM raises ReclusterError (one line);
    `load_backbone` lets a re-pool with another feature backbone compute its features.
    """
    try:
        return run_image(image, cfg, model, cache, given=given, fallback=fallback, load_model=load_model,
                         load_backbone=load_backbone, want=OUTPUTS, execute=execute)
    except ModelRequired:
        raise ReclusterError(f"{image.uri}: no cached masks/embeddings (or encoder features) for this model and "
                             "AMG/pool config; run `samseg segment` on it first") from None


def recluster_summary(run: ImageRun, parent_run_id: Optional[str], parent: Optional[dict[str, Any]] = None,
                      kind: str = KIND_RECLUSTER, extra: Optional[dict[str, Any]] = None, cache: Any = None) -> RunSummary:
    """The new run's summary: `summarize` plus where its inputs came from and whose run it re-tunes.
    parent: the parent's summary.json; a parent with dataset-wide ids is noted, since a
    recluster of one image gives per-image ids. A recluster of a named run names its new
    classes (its config's `names`, samseg.engine.naming; from the crops `cache` holds, when given); an edit or an
    exemplar class brings its own."""
    from samseg.engine.naming import name_run

    named = name_run(run, cache=cache) if kind == KIND_RECLUSTER else None  # new class ids: named again, never carried over
    inputs_from = "run" if FROM_RUN_ARTIFACTS in run.status.values() else "cache"
    more: dict[str, Any] = {"recluster": {"parent_run_id": parent_run_id, "inputs_from": inputs_from}}
    if parent_run_id is not None:
        more.update(parent_run_id=parent_run_id, kind=kind)
    if parent and parent.get("classes") in DATASET_MODES:
        more["rerun_of_dataset_ids"] = parent["classes"]
    return summarize(run, extra={**more, **(named or {}), **(extra or {})})


def parent_model(summary: dict[str, Any]) -> ModelIdentity:
    """The model a run's summary.json records; ReclusterError when it lacks what the cache keys need."""
    model = ModelIdentity.from_summary(summary)
    if not model.checkpoint_sha256 or not (summary.get("image") or {}).get("sha256"):
        raise ReclusterError("summary.json lacks the image or checkpoint sha256 a recluster needs")
    return model


def recluster_job(cluster_cfg: Any, out: str, tracking: Any, cache_root: str, *, run_id: Optional[str] = None,
                  image_uri: Optional[str] = None, base: Optional[PipelineConfig] = None, model_request: Any = None,
                  execute: Execute = inline, flow_run_id: Optional[str] = None,
                  name: Optional[str] = None) -> dict[str, Any]:
    """`samseg recluster`: from an MLflow image run (`run_id`) or from an image + its segment
    config (`image_uri`, `base`, `model_request`; its cache entries must exist). Writes
    OUT/<stem>/ and logs a run tagged with its parent; returns summary + out_dir/mlflow_run_id."""
    import tempfile
    from pathlib import Path

    from samseg.edges.cache import StageCache
    from samseg.edges.outdirs import safe_dir_name
    from samseg.engine.publish import publish
    from samseg.engine.segment import READ_STEP, read_image

    if (run_id is None) == (image_uri is None):
        raise ReclusterError("recluster needs exactly one of run_id or image")
    cache = StageCache(cache_root)
    with tempfile.TemporaryDirectory(prefix="samseg-recluster-") as tmp:
        if run_id is not None:
            parent, base, model, fallback = _from_run(run_id, Path(tmp))
            image = execute(READ_STEP, lambda: read_image(parent["image"]["uri"]))
            if image.sha256 != parent["image"]["sha256"]:
                raise ReclusterError(f"{image.uri}: file changed since run {run_id} (sha256 differs)")
        else:
            from samseg.sam.source import ModelSource

            parent, fallback, model = None, None, ModelSource(model_request).identity()
            image = execute(READ_STEP, lambda: read_image(image_uri))
        run = recluster(image, base.replace(cluster=cluster_cfg), model, cache, fallback=fallback, execute=execute)
        from samseg.edges.mlflow.tracking import ImageDir

        # a sharded batch's image is its dir, not a run: recorded as what it re-tunes, never as a run id
        of_dir = {"recluster_of": str(run_id)} if isinstance(run_id, ImageDir) else None
        summary = recluster_summary(run, None if of_dir else run_id, parent, extra=of_dir, cache=cache)
        summary.prefect_flow_run_id = flow_run_id
        where = publish(run, summary, out, name or safe_dir_name(image.uri), tracking, execute=execute)
    return {**summary.to_dict(), **where}


def _from_run(run_id: str, workdir: Any) -> tuple[dict[str, Any], PipelineConfig, ModelIdentity, dict[str, Any]]:
    """(parent summary, its config, its model, fallbacks reading its downloaded artifacts)."""
    from samseg.edges.image_dir import read_image_dir
    from samseg.edges.mlflow.tracking import fetch_run_inputs

    parent = fetch_run_inputs(run_id, workdir)
    try:
        base = PipelineConfig.from_flat(parent["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ReclusterError(f"MLflow run {run_id}: summary.json config is not a samseg config ({exc})") from None
    outputs: dict[str, Any] = {}

    def artifact(i: int) -> Callable[[], Any]:
        def load() -> Any:
            if not outputs:
                outputs["v"] = read_image_dir(workdir)  # masks, embeddings, labels
            return outputs["v"][i]
        return load

    return parent, base, parent_model(parent), {"amg": artifact(0), "pool": artifact(1)}


def recluster_batch(batch_run_id: str, images: dict[str, str], cluster_for: Callable[[str], Any], out: str,
                    tracking: Any, cache_root: str, params: Optional[dict[str, Any]] = None,
                    batch_cluster: Any = None) -> dict[str, Any]:
    """Every image run of a batch ({run id: its OUT/<name>}, the batch's record) reclustered (`cluster_for(run id)`: its ClusterConfig)
    into OUT/<name>/, as one new batch run: its image runs nested under it, each tagged with the
    run it re-tunes, its report in OUT/batch_summary.json and on the run. One image fails alone.
    A batch with dataset classes is clustered as it was made: its images' masks together again at
    `batch_cluster` (the batch's ClusterConfig with the new settings), new dataset ids in every
    image dir, classes.json and the contact sheet in OUT, as `segment --classes dataset` writes them."""
    import dataclasses
    import time
    from pathlib import PurePosixPath

    from samseg.edges import owned_files
    from samseg.edges.mlflow.tracking import ImageDir
    from samseg.edges.run_schema import TAG_PARENT_RUN, TAG_SOURCE
    from samseg.engine.batch import batch_report, batch_status, end_batch, top_level_files
    from samseg.engine.curate_dataset import is_dataset_source
    from samseg.engine.segment import describe_failure, failed_entry, image_entry

    dataset = batch_cluster is not None and is_dataset_source(batch_run_id)
    if dataset:  # a user's file where classes.json goes refuses the batch now; OUT is incomplete until it agrees
        owned_files.begin_batch(out, top_level_files(True))
    new_batch = None
    if tracking.track:
        from samseg.edges.mlflow.tracking import start_batch_run

        tags = {TAG_PARENT_RUN: batch_run_id, TAG_SOURCE: f"recluster of batch run {batch_run_id}"}
        new_batch = start_batch_run(tracking.experiment, f"recluster-{time.strftime('%Y%m%d-%H%M%S')}",
                                    {**(params or {}), "n_images": len(images)}, tags)
    results = []
    try:
        for rid in images:
            try:
                # a sharded batch's image is its dir, not a run: the new batch run names the batch it re-tunes
                # dataset ids: each image run is logged once relabelled (relabel_and_track), not before
                t = dataclasses.replace(tracking, kind=KIND_RECLUSTER, parent_run_id=None if isinstance(rid, ImageDir) else rid,
                                        nested_under=new_batch, track=tracking.track and not dataset)
                # the batch's own OUT/<name>: unique over it, as `samseg segment` named them
                res = recluster_job(cluster_for(rid), out, t, cache_root, run_id=rid, name=images[rid] or None)
                results.append(image_entry(res["image"]["uri"], PurePosixPath(res["out_dir"]).name, res))
            except Exception as exc:  # one image fails alone
                what = f"image dir {rid}" if isinstance(rid, ImageDir) else f"MLflow run {rid}"
                results.append(failed_entry(rid, images[rid] or rid, describe_failure(what, exc)))
    except BaseException:
        end_batch(new_batch, "KILLED")
        raise
    class_report = None
    if dataset:
        from samseg.engine.dataset import relabel_and_track

        class_report = relabel_and_track(out, results, batch_cluster, new_batch, None, tracking.track, tracking.experiment)
    report = batch_report(f"recluster of batch run {batch_run_id}", out, results, new_batch, "local", class_report)
    if dataset and not report.get("summary_error") and not class_report.get("error"):
        owned_files.end_batch(out)
    from samseg.edges.mlflow.client import TrackingError
    from samseg.engine.segment import one_line

    try:
        end_batch(new_batch, batch_status(report), quiet=False, record=report)
    except TrackingError as exc:  # the images are written: report them, and this
        report["tracking_error"] = one_line(f"MLflow batch run {new_batch} not ended: {exc}")
    return report
