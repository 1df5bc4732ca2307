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
from samseg.edges.run_schema import DATASET_MODES, FROM_RUN_ARTIFACTS, KIND_RECLUSTER, RECLUSTER_OF
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
                      kind: str = KIND_RECLUSTER, extra: Optional[dict[str, Any]] = None, cache: Any = None,
                      name: bool = True) -> RunSummary:
    """The new run's summary: `summarize` plus where its inputs came from and whose run it re-tunes.
    parent: the parent's summary.json; a parent with dataset-wide ids is noted, since a
    recluster of one image gives per-image ids. A recluster of a named run names its new
    classes (its config's `names`, samseg.engine.naming; from the crops `cache` holds, when given); an edit or an
    exemplar class brings its own."""
    from samseg.engine.naming import name_run

    # new class ids: named again, never carried over (name=False: a dataset batch names its classes once)
    named = name_run(run, cache=cache) if kind == KIND_RECLUSTER and name else None
    inputs_from = "run" if FROM_RUN_ARTIFACTS in run.status.values() else "cache"
    more: dict[str, Any] = {"recluster": {"parent_run_id": parent_run_id, "inputs_from": inputs_from}}
    if parent_run_id is not None:
        more.update(parent_run_id=parent_run_id, kind=kind)
    if parent and parent.get("classes") in DATASET_MODES:
        more["rerun_of_dataset_ids"] = parent["classes"]
    from samseg.engine.curate import EDITS

    edits = (parent or {}).get(EDITS)
    if isinstance(edits, list) and edits:  # a person's renames and merges were of the old classes: said, not silently lost
        more["recluster"]["edits_not_kept"] = len(edits)
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
                  name: Optional[str] = None, name_classes: bool = True) -> dict[str, Any]:
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
        summary = recluster_summary(run, None if of_dir else run_id, parent, extra=of_dir, cache=cache, name=name_classes)
        summary.prefect_flow_run_id = flow_run_id
        where = publish(run, summary, out, name or safe_dir_name(image.uri), tracking, execute=execute)
    return {**summary.to_dict(), **where}


def _from_run(run_id: str, workdir: Any) -> tuple[dict[str, Any], PipelineConfig, ModelIdentity, dict[str, Any]]:
    """(parent summary, its config, its model, fallbacks reading its downloaded artifacts)."""
    from samseg.edges.image_dir import read_image_dir
    from samseg.edges.layout import SUMMARY_JSON
    from samseg.edges.mlflow.tracking import fetch_run_inputs

    parent = fetch_run_inputs(run_id, workdir, (SUMMARY_JSON,))  # the masks and embeddings: when the cache misses
    try:
        base = PipelineConfig.from_flat(parent["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ReclusterError(f"MLflow run {run_id}: summary.json config is not a samseg config ({exc})") from None
    outputs: dict[str, Any] = {}

    def artifact(i: int) -> Callable[[], Any]:
        def load() -> Any:
            if not outputs:
                fetch_run_inputs(run_id, workdir)
                outputs["v"] = read_image_dir(workdir)  # masks, embeddings, labels
            return outputs["v"][i]
        return load

    return parent, base, parent_model(parent), {"amg": artifact(0), "pool": artifact(1)}


def recluster_batch(batch_run_id: str, images: dict[str, str], cluster_for: Callable[[str], Any], out: str,
                    tracking: Any, cache_root: str, params: Optional[dict[str, Any]] = None,
                    batch_cluster: Any = None, max_cluster: Optional[int] = None,
                    record_dirs: bool = True) -> dict[str, Any]:
    """Every image run of a batch ({run id: its OUT/<name>}, the batch's record) reclustered (`cluster_for(run id)`: its ClusterConfig)
    into OUT/<name>/, as one new batch run: its image runs nested under it, each tagged with the
    run it re-tunes, its report in OUT/batch_summary.json and on the run. One image fails alone.
    A batch that fitted dataset classes is clustered as it was made: its images' masks together
    again at `batch_cluster` (the batch's ClusterConfig with the new settings), new dataset ids in
    every image dir, named once for the batch, classes.json and the contact sheet in OUT, as
    `segment --classes dataset` writes them. A batch whose classes were assigned from an earlier
    table is refused: eps does not change an assignment. max_cluster: the most masks clustered at
    once, as the batch was fitted (None: the algorithm's default). record_dirs=False: OUT is a
    temporary folder (the UI's), so the runs and the batch's record name the runs, not its dirs."""
    import dataclasses
    import time
    from pathlib import PurePosixPath

    from samseg.edges import owned_files, shutdown
    from samseg.edges.mlflow.tracking import ImageDir
    from samseg.edges.run_schema import TAG_HOST, TAG_PARENT_RUN, TAG_PID, TAG_SOURCE
    from samseg.engine.batch import batch_report, batch_status, end_batch, top_level_files
    from samseg.engine.segment import describe_failure, failed_entry, image_entry

    # 1. what the batch's classes are: per image, or fitted on the batch (refit here)
    dataset = batch_cluster is not None and _dataset_classes(batch_run_id)
    # 2. the new batch run (host and pid: a killed recluster's run is ended by the next batch's sweep)
    new_batch = None
    if tracking.track:
        import os
        import socket

        from samseg.edges.mlflow.tracking import start_batch_run

        tags = {TAG_PARENT_RUN: batch_run_id, TAG_SOURCE: f"{RECLUSTER_OF}{batch_run_id}",
                TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid())}
        new_batch = start_batch_run(tracking.experiment, f"recluster-{time.strftime('%Y%m%d-%H%M%S')}",
                                    {**(params or {}), "n_images": len(images)}, tags)
    results: list[dict[str, Any]] = []
    class_report, config = None, None  # config: a reclustered image's, for the batch's namer
    try:
        if dataset:  # a user's file where classes.json goes refuses the batch; OUT is incomplete until it agrees
            owned_files.begin_batch(out, top_level_files(True))
        # 3. each image alone (one fails alone); with dataset classes, logged once relabelled, and named by the batch
        for rid in images:
            shutdown.check()  # a stop (the UI's too, whose job thread no signal reaches): no new image, the run ends KILLED
            try:
                # a sharded batch's image is its dir, not a run: the new batch run names the batch it re-tunes
                t = dataclasses.replace(tracking, kind=KIND_RECLUSTER, parent_run_id=None if isinstance(rid, ImageDir) else rid,
                                        nested_under=new_batch, track=tracking.track and not dataset)
                # the batch's own OUT/<name>: unique over it, as `samseg segment` named them
                res = recluster_job(cluster_for(rid), out, t, cache_root, run_id=rid, name=images[rid] or None,
                                    name_classes=not dataset)
                results.append(image_entry(res["image"]["uri"], PurePosixPath(res["out_dir"]).name, res))
                config = config or res.get("config")
            except Exception as exc:  # noqa: BLE001 — one image fails alone
                what = f"image dir {rid}" if isinstance(rid, ImageDir) else f"MLflow run {rid}"
                results.append(failed_entry(rid, images[rid] or rid, describe_failure(what, exc)))
        # 4. dataset classes: the images' masks together, at the new settings
        if dataset:
            class_report = _refit(out, results, batch_cluster, new_batch, tracking, config,
                                  (params or {}).get("names.vocabulary"), max_cluster, record_dirs)
    except BaseException as exc:  # a stop, a user's file in OUT: the new batch run ends, never RUNNING
        status = "FAILED" if isinstance(exc, Exception) else "KILLED"
        shutdown.bounded(lambda: end_batch(new_batch, status))  # a frozen server: the next batch's sweep ends it
        raise
    # 5. the batch's record, in OUT and on its run
    report = batch_report(f"{RECLUSTER_OF}{batch_run_id}", out, results, new_batch, "local", class_report)
    if not record_dirs:  # the record read later names the runs; OUT is gone by then
        report = {**report, "out": None, "images": [{**e, "out_dir": None} for e in report["images"]]}
    if dataset and not report.get("summary_error") and not class_report.get("error"):
        owned_files.end_batch(out)
    from samseg.edges.mlflow.client import TrackingError
    from samseg.engine.segment import one_line

    try:
        end_batch(new_batch, batch_status(report), quiet=False, record=report)
    except TrackingError as exc:  # the images are written: report them, and this
        report["tracking_error"] = one_line(f"MLflow batch run {new_batch} not ended: {exc}")
    return report


def _dataset_classes(batch_run_id: str) -> bool:
    """True when the batch fitted dataset classes; ReclusterError when they were assigned from an
    earlier table (a new eps changes nothing in an assignment by prototype)."""
    from samseg.edges.mlflow.tracking import tags_of
    from samseg.edges.run_schema import TAG_CLASSES, TAG_CLASSES_FROM

    tags = tags_of(batch_run_id)
    if tags.get(TAG_CLASSES) == "assigned":
        raise ReclusterError(f"batch run {batch_run_id}: its classes were assigned from {tags.get(TAG_CLASSES_FROM) or 'an earlier table'}; "
                             "a new eps does not change an assignment: recluster the batch they were fitted on, or "
                             "segment again with --classes dataset")
    return tags.get(TAG_CLASSES) in DATASET_MODES


def _refit(out: str, results: list[dict[str, Any]], cluster_cfg: Any, batch_run_id: Optional[str],
           tracking: Any, config: Optional[dict[str, Any]], vocabulary: Optional[str],
           max_cluster: Optional[int], record_dirs: bool) -> dict[str, Any]:
    """Dataset classes for the reclustered images (samseg.engine.dataset.relabel_and_track), named
    once for the batch as the batch was: its `vocabulary` (its images' own is "none": a dataset
    batch names its classes, not each image) with the namer settings of an image's `config`."""
    import dataclasses

    from samseg.engine.dataset import relabel_and_track
    from samseg.engine.naming import dataset_namer

    namer = None
    if config is not None and vocabulary:
        names = PipelineConfig.from_flat(config).names
        namer = dataset_namer(dataclasses.replace(names, vocabulary=vocabulary))
    return relabel_and_track(out, results, cluster_cfg, batch_run_id, max_cluster, tracking.track, tracking.experiment,
                             namer=namer, record_dirs=record_dirs)
