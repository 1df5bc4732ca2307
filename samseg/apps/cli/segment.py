"""CLI handler of `samseg segment`: the engine in this process (--orchestrator local, the
default without PREFECT_API_URL) or the Prefect flows (--orchestrator prefect), with MLflow
tracking, progress bars and one-line errors either way.

Hooked into samseg.apps.cli by `add_segment_arguments(parser)` + `run_segment(args)`.
Prefect, MLflow, torch and the flows are imported inside handlers so `samseg --help` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
from contextlib import contextmanager
from collections.abc import MutableSet
from typing import Any, Callable, Collection, Iterator, Optional

from samseg.apps import count
from samseg.apps.cli.common import add_orchestrator_argument, experiment, is_s3, orchestrator, print_error, quiet_prefect
from samseg.apps.cli.common import experiment_name, stage_cache_root

FAN_OUT = ("local", "auto", "deployment")


def add_segment_arguments(p: argparse.ArgumentParser) -> None:
    """Flags `samseg segment` gains when it runs through the flows; --out may be s3://…"""
    for action in p._actions:  # pathlib would turn s3://b/k into s3:/b/k
        if action.dest == "out":
            action.type, action.metavar = str, "DIR_OR_S3"
    g = p.add_argument_group("orchestration (Prefect, MLflow, S3)")
    add_orchestrator_argument(g)
    g.add_argument("--no-track", action="store_true", help="do not log MLflow runs")
    g.add_argument("--experiment", default=None, type=experiment_name,
                   help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME, the experiment of $MLFLOW_EXPERIMENT_ID, else samseg)")
    g.add_argument("--cache", default=None, metavar="DIR_OR_S3", help="stage cache root (default: $SAMSEG_CACHE, else $SAMSEG_HOME/cache, "
                   "$SAMSEG_HOME defaulting to ~/.cache/samseg)")
    from samseg.apps.cli.common import CACHE_MAX_HELP

    g.add_argument("--cache-max", default=None, metavar="SIZE", help=CACHE_MAX_HELP)
    g.add_argument("--no-cache", action="store_true",
                   help="use no persistent stage cache (a private temporary one, removed when the command ends)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars (they show only on a terminal anyway)")
    g.add_argument("--fan-out", choices=FAN_OUT, default="local",
                   help="local: every image in this process (default); deployment: the images split in shards, "
                   "one `segment` deployment run per shard, taken by any worker; auto: deployment when the server has it")
    from samseg.engine.request import ShardPlan

    g.add_argument("--shard-size", type=int, default=ShardPlan.size, metavar="N",
                   help=f"images per deployment run with --fan-out deployment (default {ShardPlan.size}): one model "
                   "load per shard; a crashed shard runs again for the images it had not written")
    d = p.add_argument_group("dataset-level classes")
    d.add_argument("--classes", choices=("image", "dataset"), default=None,
                   help="image: class ids per image (default); dataset: one set of ids for all images, "
                   "written to OUT/classes.json + OUT/contact_sheet.png and logged on the MLflow batch run")
    d.add_argument("--classes-from", default=None, metavar="RUN_ID_OR_FILE",
                   help="label the images with the classes of an earlier dataset run (MLflow batch run id, or a "
                   "classes.json path / s3:// URI): stable ids across batches, no re-clustering")
    d.add_argument("--register-classes", default=None, metavar="NAME",
                   help="with --classes dataset: register the batch's classes as a new version of the MLflow model NAME "
                   "(then --classes-from models:/NAME/VERSION or models:/NAME@ALIAS)")
    d.add_argument("--fit-images", type=int, default=ShardPlan.fit_images, metavar="N",
                   help=f"with --classes dataset and --fan-out deployment: a batch of more images than N (default "
                   f"{ShardPlan.fit_images}) has its classes fitted on N of them, spread over the input, and every image "
                   "assigned to them in its own shard; the batch's process never reads the whole dataset back")
    d.add_argument("--max-cluster", type=int, default=None, metavar="N",
                   help="most masks clustered at once for --classes dataset; beyond it a seeded sample is "
                   "clustered and the rest assigned by prototype (default: per algorithm, 200000 for dbscan)")


def run_segment(args: argparse.Namespace) -> int:
    """`samseg segment INPUT... --out DIR|s3://…`: one image (one MLflow run) or a batch
    (an MLflow parent run + one child per image), through the engine or the flows.

    Exit 0 = all images done, 1 = some failed (one error line each), 2 = usage error.
    """
    from samseg.edges.mlflow.process import started

    # mlflow imports in its own process while this one computes (a run to log, a table to read)
    with started(needed=not getattr(args, "no_track", False) or bool(getattr(args, "classes_from", None))):
        return _run_segment(args)


def _run_segment(args: argparse.Namespace) -> int:
    from samseg.apps.cli.common import UsageError
    from samseg.apps.cli.config import config_from_args
    from samseg.edges.images import max_pixels_from_env
    from samseg.engine.batch import iter_sources, list_sources

    cfg = config_from_args(args)
    try:
        max_pixels_from_env()  # a bad SAMSEG_MAX_PIXELS is a usage error, not N image errors
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    out = str(args.out)
    if not _check_out(out):
        return 1
    if getattr(args, "classes_from", None):
        from samseg.apps.cli.common import classes_ref

        args.classes_from = classes_ref(args.classes_from)  # a run id prefix is the run it starts (TrackingError: main's line)
    fan_out = getattr(args, "fan_out", "local")
    _check_shards(args, fan_out)
    how = orchestrator(args, needs_prefect=fan_out == "deployment")
    if how == "prefect":
        quiet_prefect(getattr(args, "verbose", False))
    # a StorageError listing an s3:// prefix: main's one line, exit 1. A fan-out's batch lists its source
    # itself (a million keys take minutes): here its first image says that it has one
    inputs = list(args.inputs)
    uris = list_sources(inputs) if fan_out == "local" else list(itertools.islice(iter_sources(inputs), 1))
    if not uris:
        raise UsageError(f"no images found in: {' '.join(args.inputs)}")
    # nothing to run: a mistyped path, a glob that matched none (workers of a deployment may see paths this host does not)
    found = uris if fan_out == "local" else iter_sources(inputs)  # auto: read until the first image that exists
    missing = fan_out != "deployment" and not any(is_s3(u) or os.path.exists(u) for u in found)
    del found  # a listing stopped early: its sort runs on disk go now, not when the batch ends
    if missing:
        raise UsageError(f"not found: {' '.join(args.inputs)}")
    with stage_cache_root(args, shared=fan_out == "deployment") as cache:
        job = _job(args, cfg, out, cache)
        if not _check_model(job):
            return 1
        if how == "prefect":
            return _segment_prefect(args, job, uris, fan_out)
        return _segment_local(args, job, uris)


def _check_shards(args: argparse.Namespace, fan_out: str) -> None:
    from samseg.apps.cli.common import UsageError
    from samseg.engine.request import ShardPlan

    size = getattr(args, "shard_size", ShardPlan.size)
    fit = getattr(args, "fit_images", ShardPlan.fit_images)
    if size != ShardPlan.size and fan_out == "local":
        raise UsageError("--shard-size splits a --fan-out deployment batch; this batch runs here (--fan-out local)")
    if fit != ShardPlan.fit_images and (fan_out == "local" or getattr(args, "classes", None) != "dataset"
                                        or getattr(args, "classes_from", None)):
        raise UsageError("--fit-images samples a --classes dataset batch split in shards (--fan-out deployment) to fit "
                         "new classes; a batch run here is fitted on all of its masks (--max-cluster caps them)")
    try:
        ShardPlan(size=size, fit_images=fit)
    except ValueError as exc:
        raise UsageError(f"--shard-size / --fit-images: {exc}") from None


def _job(args: argparse.Namespace, cfg: Any, out: str, cache: str) -> Any:
    from samseg.engine.publish import Tracking
    from samseg.engine.request import Runtime, SegmentJob

    tracking = Tracking(track=not getattr(args, "no_track", False), experiment=experiment(args))
    return SegmentJob(cfg, Runtime.of(vars(args), cache=cache), out, tracking)


def _check_model(job: Any) -> bool:
    """The model's identity before any image (a missing checkpoint file is one error line
    here, a bad device a usage error); the weights themselves load only when a stage needs them,
    except a --features-checkpoint file: it is loaded now, so a file of another backbone (or not
    a weights file) is one line before any image, not one per image."""
    from samseg.apps.cli.common import UsageError
    from samseg.sam.weights import CheckpointError
    from samseg.sam.source import ModelSource

    try:
        job.fetch_weights()  # all missing weights in one line, before any image
        if job.model.device not in (None, "auto", "cpu"):  # a device asked for must exist (imports torch)
            from samseg.sam.model import select_device

            select_device(job.model.device)
        source = ModelSource(job.model)
        source.identity()
        if job.model.features_checkpoint is not None:
            source.get_backbone()
    except CheckpointError as exc:
        print_error(exc)
        return False
    except ValueError as exc:  # unknown device, fp16 on a CPU, ...
        raise UsageError(str(exc)) from None
    return True


def _single(args: argparse.Namespace, job: Any, uris: list[str]) -> bool:
    """One image and no dataset classes: one MLflow run, no batch parent."""
    return len(uris) == 1 and getattr(args, "fan_out", "local") == "local" and not _classes_request(args, job.out)


def _segment_local(args: argparse.Namespace, job: Any, uris: list[str]) -> int:
    from samseg.engine.batch import segment_local
    from samseg.edges.outdirs import safe_dir_name
    from samseg.engine.segment import segment_overlapped, start_one

    if _single(args, job, uris):  # the batch's own loop, without a batch run or batch_summary.json
        with _progress_bars(args, 1):
            [entry] = segment_overlapped(uris, job.out, lambda uri, name: start_one(uri, job, name), overlap=False,
                                         names=[safe_dir_name(uris[0])])  # its own dir's check: one listing on S3
        return _report_entry(entry)

    classes = _classes(_classes_request(args, job.out))  # a usage error before any compute
    total = len(uris) if getattr(args, "fan_out", "local") == "local" else None  # else: the batch's "listed"
    with _progress_bars(args, total, lines=classes is None) as printed:
        try:
            report = segment_local(list(args.inputs), job, classes)
        except Exception as exc:  # the batch itself failed (listing, MLflow parent run, …)
            return _batch_failed(exc)
    return report_batch(report, printed)


def _segment_prefect(args: argparse.Namespace, job: Any, uris: list[str], fan_out: str) -> int:
    from flows.params import PipelineParams, RuntimeParams, ShardParams
    from flows.segment import segment_batch_flow, segment_image_flow
    from samseg.engine.segment import ImageFailed, describe_failure

    runtime = RuntimeParams(**dataclasses.asdict(job.runtime))
    common = dict(out=job.out, settings=PipelineParams.from_config(job.cfg), runtime=runtime, track=job.tracking.track,
                  experiment=job.tracking.experiment)
    if _single(args, job, uris):  # the batch loop in one flow run, as the local path runs it in this process
        with _progress_bars(args, 1):
            state = segment_image_flow(image=uris[0], **common, return_state=True)
        try:
            entry = state.result()
        except ImageFailed as exc:
            entry = {"status": "failed", "error": str(exc)}
        except Exception as exc:  # the flow run itself failed
            entry = {"status": "failed", "error": describe_failure(uris[0], exc)}
        return _report_entry(entry)
    classes = _classes_request(args, job.out)
    sharded = fan_out != "local"  # its image count comes from the batch's listing ("listed")
    with _progress_bars(args, None if sharded else len(uris), lines=not classes, on_disk=sharded) as printed:
        state = segment_batch_flow(source=list(args.inputs), fan_out=fan_out, shards=ShardParams(size=args.shard_size, fit_images=args.fit_images), **common,
                                   **classes, return_state=True)
    try:
        report = state.result()
    except Exception as exc:  # the batch itself failed (listing, MLflow parent run, …)
        return _batch_failed(exc)
    return report_batch(report, printed)


def _batch_failed(exc: Exception) -> int:
    """One line for a batch that could not run, and the taxonomy's exit code (2: the user's files in OUT's way)."""
    from samseg.core.errors import exit_code_of

    print_error(exc)
    return exit_code_of(exc)


def _report_entry(entry: dict[str, Any]) -> int:
    """A single image's entry of the batch loop (in this process, or the segment-image flow run's):
    its line and run id, or its one error line; the exit code."""
    from pathlib import PurePosixPath

    if entry["status"] != "completed":
        print_error(entry["error"])
        return 1
    uri = entry["image"]
    print(image_line(PurePosixPath(uri).name, entry, entry["out_dir"]))
    warn_of(entry)
    if entry.get("mlflow_run_id"):
        print(f"MLflow run: {entry['mlflow_run_id']}")
    if entry.get("tracking_error"):
        print_error(_untracked_line(uri, entry["tracking_error"]))
        return 1
    return 0


def _check_out(out: str) -> bool:
    """--out is checked before any compute: a local path that is a file, `s3://` without a
    bucket, or a bucket that does not exist is a usage error now, not N image errors later.
    An S3 endpoint that refuses or does not answer (credentials, network) is not a usage
    error: one line, and False (exit 1)."""
    from samseg.apps.cli.common import UsageError
    from samseg.edges.storage import StorageError, StorageNotFound, check_bucket, split_s3_uri, validate_key

    if not is_s3(out):
        if not out.strip():
            raise UsageError("--out is empty; name an output directory (or s3:// prefix)")
        if os.path.exists(out) and not os.path.isdir(out):
            raise UsageError(f"--out {out} exists and is not a directory")
        return True
    try:  # s3:// without a bucket, or a prefix no key can be built on (s3://b//out): now, not per image
        _bucket, prefix = split_s3_uri(out)
        if prefix.rstrip("/"):
            validate_key(prefix.rstrip("/"), shown=repr(out))
    except StorageError as exc:
        raise UsageError(f"--out {exc}") from None
    try:
        check_bucket(out)
    except StorageNotFound as exc:
        raise UsageError(f"--out {exc}") from None
    except StorageError as exc:
        print_error(f"--out {exc}")
        return False
    return True


@contextmanager
def _progress_bars(args: argparse.Namespace, n_images: Optional[int], lines: bool = False,
                   on_disk: bool = False) -> Iterator[MutableSet[str]]:
    """Bars over images and the stages of the current image (samseg.engine.progress.TqdmReporter)
    while the flows run; none with --verbose (Prefect's log lines would interleave) or --quiet.
    Log records go through tqdm.write meanwhile; the bars are gone before results print.
    lines: each image's line is printed as the image finishes (a log file or CI follows the batch,
    and a stopped batch has said what it finished); yields the images printed, which the batch's
    report leaves out. Not for dataset classes: an image's ids are known once the batch is done.
    on_disk: the images finished are kept on disk (a sharded batch of a million images)."""
    from samseg.engine import progress

    seen: Callable[[], MutableSet[str]] = set
    if on_disk:  # (imported only then: a command of a few images does without it)
        from samseg.edges.spill import DiskSet

        seen = DiskSet
    printed = seen()  # _key of each image printed
    quiet = getattr(args, "verbose", False) or getattr(args, "quiet", False)
    bars = None if quiet else progress.TqdmReporter(n_images, finished=seen())

    def reporter(event: str, **info: Any) -> None:
        if bars is not None:
            bars(event, **info)
        entry = info.get("entry")
        if lines and entry is not None and _key(entry) not in printed:
            printed.add(_key(entry))
            print_entry(entry)

    try:
        if bars is None:
            with progress.reporting(reporter):
                yield printed
            return
        from tqdm.contrib.logging import logging_redirect_tqdm

        with progress.reporting(reporter), logging_redirect_tqdm():
            yield printed
    finally:
        if bars is not None:
            bars.close()


def _classes_request(args: argparse.Namespace, out: str) -> dict[str, Any]:
    """segment_batch_flow's classes/classes_from/max_cluster from the flags; {} = per-image ids."""
    from samseg.apps.cli.common import UsageError

    mode, source, max_cluster = getattr(args, "classes", None), getattr(args, "classes_from", None), getattr(args, "max_cluster", None)
    register = getattr(args, "register_classes", None)
    if register and (mode != "dataset" or source or getattr(args, "no_track", False)):
        raise UsageError("--register-classes needs --classes dataset (new classes, not --classes-from) and MLflow tracking")
    from samseg.engine.batch import dataset_classes_wanted

    try:
        wanted = dataset_classes_wanted(mode, source)
    except ValueError:  # the engine's rule, said with the flags' names
        raise UsageError("--classes-from gives dataset-level ids; it cannot be combined with --classes image") from None
    if max_cluster is not None and max_cluster < 2:
        raise UsageError("--max-cluster must be >= 2")
    if not wanted:
        if max_cluster is not None:
            raise UsageError("--max-cluster needs --classes dataset")
        return {}
    return {"classes": "dataset", "classes_from": source, "max_cluster": max_cluster, "register_classes": register}


def _classes(request: dict[str, Any]) -> Any:
    """The engine's ClassesRequest for _classes_request's dict (None = per-image ids)."""
    from samseg.engine.batch import ClassesRequest

    if not request:
        return None
    return ClassesRequest(request["classes_from"], request["max_cluster"], request["register_classes"])



def _key(entry: dict[str, Any]) -> str:
    """input NUL output name (no path holds a NUL): what the batch's report lists an image by."""
    return f"{entry['image']}\0{entry.get('name')}"


def print_entry(r: dict[str, Any]) -> None:
    """A batch image's lines: "<file>: … -> OUT/<name>, MLflow run <id>" and its warning, or its error line."""
    from pathlib import PurePosixPath

    from tqdm import tqdm  # tqdm.write: a line printed while progress bars show does not tear them

    if r["status"] != "completed":
        print_error(r["error"])
        return
    where = r.get("out_dir") or f"(deployment run {r.get('flow_run_id')})"
    run = f", MLflow run {r['mlflow_run_id']}" if r.get("mlflow_run_id") else ""  # the id each image's commands take
    if r.get("mlflow_shard_run_id"):  # a sharded batch logs a run per shard: the batch id takes its images
        run = f", MLflow shard run {r['mlflow_shard_run_id'][:8]}"
    tqdm.write(image_line(PurePosixPath(r["image"]).name, r, where) + run, file=sys.stdout)
    warn_of(r)
    if r.get("tracking_error"):
        print_error(_untracked_line(r["image"], r["tracking_error"]))


def report_batch(report: dict[str, Any], printed: Collection[str] = ()) -> int:
    """The batch's lines (each image's, but those `printed` as it finished) and its exit code."""
    for r in report["images"]:
        if _key(r) not in printed:
            print_entry(r)
    classes = report.get("classes") or {}
    if classes.get("error"):
        print_error(f"dataset-level classes: {classes['error']}")
    elif classes.get("classes_json"):
        how = {"dataset": "fitted on this batch", "assigned": "assigned from the classes given"}.get(classes["mode"],
                                                                                                   classes["mode"])
        how = f"fitted on {classes['fitted_on']}" if classes.get("fitted_on") else how
        print(f"dataset classes ({how}): {count(classes['n_classes'], 'class')} -> {classes['classes_json']}, "
              f"{classes['contact_sheet']}")
        if classes.get("registered"):
            print(f"registered classes: {classes['registered']['model_uri']}")
    if report.get("mlflow_run_id"):
        print(f"MLflow batch run: {report['mlflow_run_id']}")
    for problem in ("summary_error", "tracking_error"):
        if report.get(problem):
            print_error(report[problem])
    if report.get("retried"):
        print(f"{report['retried']} images were in a shard run that crashed and ran again on a worker")
    if report["failed"]:
        print(f"{report['failed']} of {len(report['images'])} images failed", file=sys.stderr)
    if report.get("untracked"):
        print(f"{report['untracked']} of {len(report['images'])} images were written but not logged to MLflow; "
              "the same command again logs them (its stages come from the cache)", file=sys.stderr)
    problems = ("failed", "untracked", "summary_error", "tracking_error")
    return 1 if any(report.get(k) for k in problems) or classes.get("error") else 0


def _untracked_line(image: str, error: str) -> str:
    return f"{image}: outputs written, not logged to MLflow ({error})"


def warn_of(r: dict[str, Any]) -> None:
    """An image's warning line (eps auto that found no knee) under its line, on stderr."""
    if r.get("warning"):
        from pathlib import PurePosixPath

        from samseg.engine.segment import shown_name

        from tqdm import tqdm  # not print: inside a flow run Prefect's print goes to its (silenced) run log

        tqdm.write(f"warning: {shown_name(PurePosixPath(str(r.get('image', ''))).name)}: {r['warning']}", file=sys.stderr)


def image_line(file_name: str, r: dict[str, Any], where: str) -> str:
    """"<file>: N masks, K classes, M noise -> OUT/<name> (cache hits: h/n)"; counts when known.
    n counts the cached stages this run needed (a stage skipped because later ones were cached is not)."""
    counts = ""
    if r.get("n_masks") is not None:
        counts = f" {count(r['n_masks'], 'mask')}, {count(r['n_clusters'], 'class')}, {r['n_noise']} noise"
    hits = ""
    if r.get("cache"):
        needed = [v for v in r["cache"].values() if v != "skipped"]
        hits = f" (cache hits: {sum(v == 'hit' for v in needed)}/{len(needed)})"
    from samseg.engine.segment import shown_name

    why = ""
    if r.get("n_masks") == 0 and r.get("no_masks_because"):  # which filter left nothing, as its flag
        import re

        why = " — " + re.sub(r"\b(pred_iou_thresh|stability_score_thresh|points_per_side|crop_n_layers|min_mask_region_area)\b",
                             lambda m: "--" + m.group(1).replace("_", "-"), r["no_masks_because"])
    elif r.get("n_masks") == 0:  # a run that found nothing says so, and what to turn
        why = (" — no mask passed SAM's filters (--pred-iou-thresh, --stability-score-thresh, --box-nms-thresh, "
               "--min-mask-region-area): lower the first two, or raise --points-per-side")
    return f"{shown_name(file_name)}:{counts} -> {shown_name(where)}{hits}{why}"
