"""A batch's own records: its inputs, its MLflow parent run, its report (batch_summary.json).

Used by the CLI's local orchestrator and by the segment-batch flow alike.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from collections.abc import MutableSet
from typing import Any, Callable, Iterable, Iterator, Optional, Union

from samseg.core.config import PipelineConfig
from samseg.edges.owned_files import BATCH_SUMMARY_JSON, CLASSES_JSON, CONTACT_SHEET_PNG, FITTED_CLASSES_JSON
from samseg.edges.run_schema import KIND_BATCH, PARAM_MAX_CLUSTER, SHARDED, TAG_KIND, TAG_SOURCE
from samseg.engine.publish import Tracking
from samseg.engine.runner import Execute, inline
from samseg.engine.request import SegmentJob
from samseg.engine.segment import one_line

Source = Union[str, list[str]]
# (image URIs, the job each image runs as: its config and how it is logged, their output dir names or
# None for the URIs' unique names) -> the per-image report entries (a sharded batch's: on disk, edges.spill)
RunImages = Callable[[Iterable[str], SegmentJob, Optional[list[str]]], Iterable[dict[str, Any]]]


def in_memory(run_images: RunImages) -> RunImages:
    """`run_images` whose entries come back as one list (for the readers that index them)."""
    return lambda uris, job, names: list(run_images(uris, job, names))


@dataclass(frozen=True)
class ClassesRequest:
    """Dataset-level classes for a batch: new ones (classes_from None) or those of an earlier
    dataset run / classes.json / models:/ URI; max_cluster caps the masks clustered at once;
    register: the MLflow model name the new classes are registered as; fit_images: new classes of
    a batch with more images than this are fitted on a sample of them and assigned where each
    image is computed (samseg.engine.dataset.fit_then_assign); None: fitted on all of them."""

    classes_from: Optional[str] = None
    max_cluster: Optional[int] = None
    register: Optional[str] = None
    fit_images: Optional[int] = None  # a sharded batch: fitted on this many images, assigned in the shards (ShardPlan)


def dataset_classes_wanted(classes: Optional[str], classes_from: Optional[str]) -> bool:
    """True when a batch gives dataset-level ids: classes="dataset", or classes_from given (classes
    None or "dataset"); classes None or "image" alone: each image's own ids. ValueError for another
    classes, or classes="image" with classes_from (the CLI says it with its flags' names)."""
    if classes not in (None, "image", "dataset"):
        raise ValueError(f"classes must be 'image' or 'dataset', got {classes!r}")
    if classes == "image" and classes_from:
        raise ValueError("classes_from gives dataset-level ids; it cannot be combined with classes='image'")
    return classes == "dataset" or bool(classes_from)


def run_batch(source: Source, job: SegmentJob, run_images: RunImages, classes: Optional[ClassesRequest] = None,
              fan_out: str = "local", execute: Execute = inline) -> dict[str, Any]:
    """A whole batch: list the images, open the MLflow batch run (or resume a killed one),
    run every image through `run_images`, give dataset-level ids when asked, write
    OUT/batch_summary.json and end the batch run; returns the report."""
    from samseg.engine.dataset import check_dataset_request, record_assigned, relabel_and_track

    from samseg.edges import owned_files

    given = None
    if classes is not None:  # fail before any image is computed
        from samseg.sam.source import ModelSource

        model = ModelSource(job.model).identity() if classes.classes_from else None
        given = check_dataset_request(job.out, classes.classes_from, model)
    job.fetch_weights()  # every missing weight named once, before any image or MLflow run
    # a sharded batch's parent holds neither its inputs nor their entries (samseg.edges.spill)
    uris: Union[list[str], Listing] = Listing(source) if fan_out == SHARDED else list_sources(source)
    from samseg.engine.progress import report

    report("listed", n_images=len(uris))
    # A user's file where a top-level file goes refuses the batch now; OUT stays marked
    # incomplete until the batch's files all agree (an interrupted batch is never served).
    owned_files.begin_batch(job.out, top_level_files(classes is not None))
    relabel = classes is not None and given is None
    sampled = relabel and classes.fit_images is not None and len(uris) > classes.fit_images
    # classes fitted on every image read every entry back: held in memory (a sharded batch only
    # up to ShardPlan.fit_images images); classes assigned in the shards are added up as they stream
    if classes is not None and (fan_out != SHARDED or (relabel and not sampled)):
        uris, run_images = list(uris), in_memory(run_images)
    if relabel and not sampled:  # an earlier sampled batch's fitted classes are not this batch's
        owned_files.remove_own(job.out, [FITTED_CLASSES_JSON])
    t = job.tracking
    # a batch that fits its classes under --max-cluster records it: a recluster of the batch fits them alike
    fit = {PARAM_MAX_CLUSTER: classes.max_cluster} if relabel and classes.max_cluster is not None else {}
    source = recorded_source(source)  # as its images are recorded: the UI and recluster read it from anywhere
    batch_run_id, resumed = start_batch(t.track, t.experiment, job.cfg, source, job.out, len(uris), fit)
    # new dataset classes: image runs are logged after relabelling, so they carry the dataset ids;
    # classes given beforehand are assigned as each image is computed, which is logged as it is written
    per_image = dataclasses.replace(t, track=t.track and not relabel, nested_under=batch_run_id, resumed=resumed)
    fit_error = None
    from samseg.sam.gram import gram_for

    gram = gram_for(job.runtime.device) if relabel else None  # the fit's block products: torch's on CUDA
    try:
        if sampled:  # fitted on a sample, then every image assigned where it is computed, and logged there
            from samseg.engine.dataset import fit_then_assign

            def job_for(logged: bool, to: Any) -> SegmentJob:
                return image_job(job, dataclasses.replace(per_image, track=t.track and logged), True, to)

            given, results, fit_error = fit_then_assign(uris, job, job_for, classes, run_images, execute, gram, resumed)
        else:
            results = run_images(uris, image_job(job, per_image, classes is not None, given), None)
    except BaseException:  # SIGTERM / Ctrl-C: the batch run ends as KILLED, not RUNNING forever
        from samseg.edges.shutdown import bounded

        bounded(lambda: end_batch(batch_run_id, "KILLED"))  # a frozen server: the next start's sweep ends it
        raise
    class_report = None
    from samseg.edges.spill import SpilledEntries, spill_entries

    if not isinstance(results, (list, SpilledEntries)):  # read twice below (the classes, the report): kept on disk
        results = spill_entries(results)
    if fit_error is not None:  # the sample as computed; the images not started fail, naming why
        results, class_report = not_started(uris, results, fit_error), {"error": fit_error}
        results = spill_entries(results) if isinstance(uris, Listing) else list(results)
    elif given is not None:
        class_report = record_assigned(job.out, results, given, batch_run_id, execute,
                                       register=classes.register if sampled else None,
                                       mode="dataset" if sampled else "assigned")
        if sampled and not class_report.get("error"):  # what the classes were fitted on, for the report's line
            class_report["fitted_on"] = f"{len(given.table.image_names)} of {len(uris)} images"
    elif classes is not None:
        from samseg.engine.naming import dataset_namer

        namer = dataset_namer(job.cfg.names, job.runtime.device, job.runtime.seed)
        # a sharded batch logs no run per image: its record (batch_summary.json) lists them (edges.mlflow.shard_runs)
        class_report = relabel_and_track(job.out, results, job.cfg.cluster, batch_run_id, classes.max_cluster,
                                         t.track and fan_out != SHARDED, t.experiment, classes.register, execute=execute,
                                         namer=namer, gram=gram)
    report = batch_report(source, job.out, results, batch_run_id, fan_out, class_report)
    if not report.get("summary_error") and not (class_report or {}).get("error"):
        owned_files.end_batch(job.out)
    from samseg.edges.mlflow.client import TrackingError

    try:
        end_batch(batch_run_id, batch_status(report), quiet=False, record=report)
    except TrackingError as exc:  # the images' results are already on disk: report them, and this
        report["tracking_error"] = one_line(f"MLflow batch run {batch_run_id} not ended: {exc}")
    return report


def segment_local(source: Source, job: SegmentJob, classes: Optional[ClassesRequest] = None) -> dict[str, Any]:
    """A batch in this process (the CLI's local orchestrator, samseg.segment_batch): each image's
    export, upload and MLflow logging overlap the next image's compute; returns the report."""
    from samseg.engine.segment import segment_overlapped, start_one

    def run_images(uris: list[str], per_image: SegmentJob, names: Optional[list[str]]) -> list[dict[str, Any]]:
        return segment_overlapped(uris, job.out, lambda uri, name: start_one(uri, per_image, name), names=names)

    return run_batch(source, job, run_images, classes)


def not_started(uris: Iterable[str], done: list[dict[str, Any]], why: str) -> Iterator[dict[str, Any]]:
    """Every image's entry in input order, one at a time: those of `done`, and a failed one naming
    `why` for the rest."""
    from samseg.edges.outdirs import named_inputs
    from samseg.engine.segment import failed_entry

    by_uri = {r["image"]: r for r in done}
    return (by_uri.get(u) or failed_entry(u, n, f"{u}: not segmented: {why}") for u, n in named_inputs(uris))


def image_job(job: SegmentJob, tracking: Tracking, dataset: bool, assign_to: Any = None) -> SegmentJob:
    """The job each image of a batch runs as. With dataset-level classes the images are not named
    on their own ids: the batch names its classes once (samseg.engine.naming.dataset_namer), or
    they come with `assign_to`, the classes given beforehand that each image is assigned to."""
    cfg = job.cfg
    if dataset and cfg.names.enabled:
        cfg = cfg.replace(names=dataclasses.replace(cfg.names, vocabulary="none"))
    return dataclasses.replace(job, cfg=cfg, tracking=tracking, assign_to=assign_to)


def top_level_files(dataset: bool) -> list[str]:
    """The files a batch writes into OUT itself, beside the image dirs."""
    return [BATCH_SUMMARY_JSON, *((CLASSES_JSON, CONTACT_SHEET_PNG, FITTED_CLASSES_JSON) if dataset else ())]


def list_sources(source: Source) -> list[str]:
    """Every image of a folder, glob, file or s3:// prefix (or a list of them), once each;
    local paths made absolute so the runs stay usable from any directory (UI, recluster)."""
    from samseg.edges.storage import list_images

    return list(_iter_sources(source, set(), list_images))


def iter_sources(source: Source) -> Iterator[str]:
    """list_sources' images one by one, an S3 prefix page by page (several specs may give one twice)."""
    return _iter_sources(source, None)


class Listing:
    """`list_sources` for a batch too large to hold its inputs (a sharded parent): listed once, an
    S3 prefix page by page, into a local file (edges.spill.SpooledStrings) that is read back as
    often as asked, so its count and what runs agree; the inputs of several specs made unique on
    disk (DiskSet). Raises as list_sources does, here."""

    def __init__(self, source: Source) -> None:
        from samseg.edges.spill import DiskSet, SpooledStrings

        from samseg.edges.storage import is_s3_uri

        specs = [source] if isinstance(source, str) else list(source)
        # one S3 prefix lists each key once; a local glob may name one file twice (a/x/../p.png, a/y/../p.png)
        once = len(specs) == 1 and is_s3_uri(str(specs[0]))
        self.source = source
        self._uris = SpooledStrings(_iter_sources(source, None if once else DiskSet()))

    def __iter__(self) -> Iterator[str]:
        return iter(self._uris)

    def __len__(self) -> int:
        return len(self._uris)


def _iter_sources(source: Source, seen: Optional[MutableSet[str]],
                  lister: Optional[Callable[[str], Iterable[str]]] = None) -> Iterator[str]:
    """list_sources' images one by one; seen: those given so far (None: the source lists none twice);
    lister: a spec's images (default storage.iter_images: an S3 prefix page by page, in S3's order)."""
    from samseg.edges.storage import iter_images

    for spec in [source] if isinstance(source, str) else list(source):
        try:
            for uri in map(absolute, (lister or iter_images)(spec)):
                if seen is None or uri not in seen:
                    if seen is not None:
                        seen.add(uri)
                    yield uri
        except OSError as exc:  # a folder this user cannot read: one line naming it
            from samseg.edges.images import ImageError

            raise ImageError(str(spec), f"cannot list it ({exc.strerror or exc})") from None


def absolute(where: Any) -> str:
    """A local path (folder, glob, file, OUT) made absolute, an s3:// URI as it is: how a batch
    records its inputs, source and output, usable from any directory (UI, recluster, a rerun's key)."""
    from samseg.edges.storage import is_s3_uri

    return str(where) if is_s3_uri(str(where)) else os.path.abspath(os.fspath(where))


def recorded_source(source: Source) -> Source:
    """`source` as a batch records it (each spec `absolute`)."""
    return absolute(source) if isinstance(source, (str, os.PathLike)) else [absolute(spec) for spec in source]


def start_batch(track: bool, experiment: str, cfg: PipelineConfig, source: Source, out: str,
                n: int, more: Optional[dict[str, Any]] = None) -> tuple[Optional[str], bool]:
    """(batch run id or None when untracked, resumed after a kill); `more`: params beside the config's."""
    if not track:
        return None, False
    from samseg.edges.mlflow.batch_runs import batch_key, open_batch_run

    params = {**cfg.flat(), **(more or {}), "n_images": n}
    tags = {TAG_KIND: KIND_BATCH, TAG_SOURCE: source if isinstance(source, str) else " ".join(map(str, source))}
    key = batch_key(experiment, source, absolute(out), params)  # `--out o` in two folders is two batches
    return open_batch_run(experiment, f"batch-{time.strftime('%Y%m%d-%H%M%S')}", params, tags, key, owner_pid=os.getpid())


def end_batch(run_id: Optional[str], status: str, quiet: bool = True, record: Optional[dict[str, Any]] = None) -> None:
    """Terminate the batch run (FINISHED / FAILED / KILLED); quiet: an MLflow error is ignored.
    record: the batch report, logged on the run as the list of its image runs."""
    if run_id is None:
        return
    from samseg.edges.mlflow.client import TrackingError
    from samseg.edges.mlflow.tracking import end_run

    try:
        end_run(run_id, status, record)
    except TrackingError:
        if not quiet:
            raise


def batch_report(source: Source, out: str, results: Iterable[dict[str, Any]], batch_run_id: Optional[str],
                 fan_out: str, classes: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The batch report, written to OUT/batch_summary.json (a failed write is recorded in
    `summary_error`, never a lost report). results: a list, or a sharded batch's SpilledEntries."""
    from samseg.edges.spill import SpilledEntries, count_entries

    if isinstance(results, SpilledEntries):  # counted as they arrived: never read back whole
        counts = dict(results.counts)
    else:
        results = list(results)
        counts = count_entries(results)
    report = {"source": source, "out": out, "images": results, **counts,
              "mlflow_run_id": batch_run_id, "fan_out": fan_out, "classes": classes or {"mode": "image"}}
    try:
        write_batch_summary(out, report)
    except Exception as exc:  # noqa: BLE001 — the images' results must still reach the caller
        report["summary_error"] = one_line(f"batch_summary.json not written: {exc}")
    return report


def write_batch_summary(out: str, report: dict[str, Any]) -> None:
    """OUT/batch_summary.json (a local dir or s3:// prefix), replacing only samseg's own; a
    sharded batch's through a local file, its entries streamed from disk."""
    import tempfile
    from pathlib import Path

    from samseg.edges.owned_files import BATCH_SUMMARY_JSON, write_files

    if isinstance(report.get("images"), list):  # in memory already: no file in TMPDIR needed
        write_files(out, {BATCH_SUMMARY_JSON: json.dumps(report, indent=2, default=str).encode("utf-8")})
        return
    from samseg.edges.spill import write_json

    with tempfile.TemporaryDirectory(prefix="samseg-summary-") as tmp:
        path = Path(tmp) / BATCH_SUMMARY_JSON
        write_json(report, str(path))
        write_files(out, {BATCH_SUMMARY_JSON: path})


def batch_status(report: dict[str, Any]) -> str:
    """The MLflow status the batch run ends with."""
    return "FAILED" if report["failed"] or report.get("untracked") or (report.get("classes") or {}).get("error") else "FINISHED"
