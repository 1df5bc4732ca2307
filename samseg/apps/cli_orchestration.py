"""CLI handler of `samseg segment` (through the Prefect flows + MLflow), plus the pieces the
other run commands (samseg.apps.cli_runs: recluster, runs compare, serve) share: Prefect's
quieting and guarded temporary server, the checked stage cache, one-line errors.

Hooked into samseg.apps.cli by `add_parser(subparsers)` (which adds samseg.apps.cli_runs' commands)
and, for the existing `segment` parser, `add_segment_arguments(parser)` + `run_segment(args)`.
Prefect, MLflow and the flows are imported inside handlers so `samseg --help` stays fast.

Defaults are embedded: without PREFECT_API_URL Prefect runs flows against a temporary
local API (under a watchdog: it dies with this process); without MLFLOW_TRACKING_URI
MLflow logs to its own local default; the stage cache is $SAMSEG_CACHE or
~/.cache/samseg/cache, checked before any compute.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator

FAN_OUT = ("local", "auto", "deployment")


def _quiet_prefect(verbose: bool) -> None:
    """Prefect logs every task at INFO and each failure with a traceback; the CLI prints
    its own one-line errors instead (--verbose keeps Prefect's log)."""
    if not os.environ.get("PREFECT_API_URL"):
        # The temporary local API Prefect starts for us would try to send usage telemetry and
        # log an ERROR line on machines without internet; it is our server, so say no.
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
    _quiet_prefect_loggers(verbose)
    from samseg.apps.watchdog import guard_prefect_ephemeral

    # Prefect's temporary server, started now under a watchdog: it dies with this process,
    # even after kill -9 (Prefect alone stops it from an atexit hook, which SIGKILL skips).
    guard_prefect_ephemeral()


def _quiet_prefect_loggers(verbose: bool) -> None:
    if not verbose:
        import logging

        # Prefect may be imported already (the CLI called from another Python program): then
        # the variable alone comes too late. Importing `flow` runs Prefect's logging setup
        # (prefect.main) now, so the levels set below are not reset by it later.
        from prefect import flow  # noqa: F401

        for name in ("prefect", "prefect.extra"):
            try:
                logging.getLogger(name).setLevel(os.environ["PREFECT_LOGGING_LEVEL"].upper())
            except ValueError:  # a level name logging does not know: leave Prefect's own
                pass


def _print_error(message: str) -> None:
    from tqdm import tqdm  # tqdm.write: a line printed while progress bars show does not tear them

    tqdm.write(f"error: {' '.join(str(message).split())}", file=sys.stderr)


# ------------------------------------------------------------------ segment (via flows)


def add_segment_arguments(p: argparse.ArgumentParser) -> None:
    """Flags `samseg segment` gains when it runs through the flows; --out may be s3://…"""
    for action in p._actions:  # pathlib would turn s3://b/k into s3:/b/k
        if action.dest == "out":
            action.type, action.metavar = str, "DIR_OR_S3"
    g = p.add_argument_group("orchestration (Prefect, MLflow, S3)")
    g.add_argument("--no-track", action="store_true", help="do not log MLflow runs")
    g.add_argument("--experiment", default=None,
                   help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME, the experiment of $MLFLOW_EXPERIMENT_ID, else samseg)")
    g.add_argument("--cache", default=None, metavar="DIR_OR_S3", help="stage cache root (default: $SAMSEG_CACHE or ~/.cache/samseg/cache)")
    g.add_argument("--no-cache", action="store_true",
                   help="use no persistent stage cache (a private temporary one, removed when the command ends)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars (they show only on a terminal anyway)")
    g.add_argument("--fan-out", choices=FAN_OUT, default="local",
                   help="local: every image in this process (default); deployment: one `segment` deployment run "
                   "per image, taken by any worker; auto: deployment when the server has it")
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
    d.add_argument("--max-cluster", type=int, default=None, metavar="N",
                   help="most masks clustered at once for --classes dataset; beyond it a seeded sample is "
                   "clustered and the rest assigned by prototype (default: per algorithm, 200000 for dbscan)")


def run_segment(args: argparse.Namespace) -> int:
    """`samseg segment INPUT... --out DIR|s3://…` through segment_image_flow (one image,
    fan-out local) or segment_batch_flow (MLflow parent run + one child per image).

    Uses samseg.apps.cli.config_from_args for the preset + flags. Exit 0 = all images done,
    1 = some failed (one error line each), 2 = usage error (raised as UsageError).
    """
    from samseg.apps.cli import UsageError, config_from_args
    from samseg.edges.images import max_pixels_from_env

    cfg = config_from_args(args)
    try:
        max_pixels_from_env()  # a bad SAMSEG_MAX_PIXELS is a usage error, not N image errors
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    out = str(args.out)
    _check_out(out)
    _quiet_prefect(getattr(args, "verbose", False))
    from flows.params import RuntimeParams
    from flows.segment import list_sources

    try:
        uris = list_sources(list(args.inputs))
    except Exception as exc:  # StorageError listing an s3:// prefix
        _print_error(exc)
        return 1
    if not uris:
        raise UsageError(f"no images found in: {' '.join(args.inputs)}")
    fan_out = getattr(args, "fan_out", "local")
    with stage_cache_root(args, shared=fan_out == "deployment") as cache:
        runtime = RuntimeParams(checkpoint=args.checkpoint, device=args.device, seed=args.seed,
                                cache=cache, save_features=bool(getattr(args, "save_features", False)))
        return _segment(args, cfg, uris, out, runtime, fan_out)


def _segment(args: argparse.Namespace, cfg: Any, uris: list[str], out: str, runtime: Any, fan_out: str) -> int:
    from flows.params import PipelineParams
    from flows.segment import segment_batch_flow, segment_image_flow

    common = dict(out=out, settings=PipelineParams.from_config(cfg), runtime=runtime,
                  track=not getattr(args, "no_track", False), experiment=_experiment(args))
    classes = _classes_request(args, out)
    if fan_out == "local" and not _preload_model(cfg.model_type, runtime, cfg.precision):
        return 1
    if len(uris) == 1 and fan_out == "local" and not classes:  # one image: one MLflow run, no batch parent
        from samseg.edges.outdirs import refused_outputs, safe_dir_name

        refused = refused_outputs(out, uris, [safe_dir_name(uris[0])])
        if refused:  # before any compute
            _print_error(refused[uris[0]])
            return 1
        with _progress_bars(args, 1):
            state = segment_image_flow(image=uris[0], **common, return_state=True)
        return _report_image(state, uris[0])
    with _progress_bars(args, len(uris)):
        state = segment_batch_flow(source=list(args.inputs), fan_out=fan_out, **common, **classes, return_state=True)
    return _report_batch(state)


def _experiment(args: argparse.Namespace) -> str:
    """--experiment, else MLflow's own environment (samseg.edges.tracking_conventions)."""
    if getattr(args, "experiment", None):
        return str(args.experiment)
    if getattr(args, "no_track", False):
        return "samseg"  # nothing is logged: do not ask MLflow
    from samseg.edges.tracking_conventions import default_experiment

    return default_experiment()


def _check_out(out: str) -> None:
    """--out is checked before any compute: a local path that is a file, `s3://` without a
    bucket, or a bucket that does not exist is a usage error now, not N image errors later."""
    from samseg.apps.cli import UsageError
    from samseg.edges.storage import StorageError, check_bucket

    if not _is_s3(out):
        if os.path.exists(out) and not os.path.isdir(out):
            raise UsageError(f"--out {out} exists and is not a directory")
        return
    try:
        check_bucket(out)
    except StorageError as exc:
        raise UsageError(f"--out {exc}") from None


@contextmanager
def stage_cache_root(args: argparse.Namespace, shared: bool = False) -> Iterator[str]:
    """The stage cache this command uses: --cache / $SAMSEG_CACHE / the default, checked
    once before any compute. --no-cache, or a cache that cannot be written (one warning
    line says why), gives a private temporary cache removed at the end of the command."""
    import shutil
    import tempfile

    from samseg.edges.cache import default_cache_root, unusable_reason
    from samseg.apps.cli import UsageError

    root = getattr(args, "cache", None) or default_cache_root()
    reason = None if getattr(args, "no_cache", False) else unusable_reason(root)
    if not getattr(args, "no_cache", False) and reason is None:
        yield root
        return
    if shared:
        raise UsageError(f"--fan-out deployment needs a stage cache that every worker can use ({reason or '--no-cache'})")
    if reason:
        print(f"warning: stage cache {reason}; running without the cache (use --cache DIR or --no-cache)", file=sys.stderr)
    tmp = tempfile.mkdtemp(prefix="samseg-nocache-")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _progress_bars(args: argparse.Namespace, n_images: int) -> Iterator[None]:
    """Bars over images and the stages of the current image (samseg.engine.progress.TqdmReporter)
    while the flows run; none with --verbose (Prefect's log lines would interleave) or --quiet.
    Log records go through tqdm.write meanwhile; the bars are gone before results print."""
    if getattr(args, "verbose", False) or getattr(args, "quiet", False):
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    from samseg.engine import progress

    bars = progress.TqdmReporter(n_images)
    try:
        with progress.reporting(bars), logging_redirect_tqdm():
            yield
    finally:
        bars.close()


def _classes_request(args: argparse.Namespace, out: str) -> dict[str, Any]:
    """segment_batch_flow's classes/classes_from/max_cluster from the flags; {} = per-image ids."""
    from samseg.apps.cli import UsageError

    mode, source, max_cluster = getattr(args, "classes", None), getattr(args, "classes_from", None), getattr(args, "max_cluster", None)
    register = getattr(args, "register_classes", None)
    if register and (mode != "dataset" or source or getattr(args, "no_track", False)):
        raise UsageError("--register-classes needs --classes dataset (new classes, not --classes-from) and MLflow tracking")
    if mode == "image" and source:
        raise UsageError("--classes-from gives dataset-level ids; it cannot be combined with --classes image")
    if max_cluster is not None and max_cluster < 2:
        raise UsageError("--max-cluster must be >= 2")
    if mode != "dataset" and not source:
        if max_cluster is not None:
            raise UsageError("--max-cluster needs --classes dataset")
        return {}
    if _is_s3(out):
        raise UsageError(f"--out {out}: dataset-level classes need a local output directory for now")
    return {"classes": "dataset", "classes_from": source, "max_cluster": max_cluster, "register_classes": register}


def _preload_model(model_type: str, runtime: Any, precision: str = "fp32") -> bool:
    """Load the model once for this process (the flows' tasks reuse it); a checkpoint
    problem is one error line here instead of one per image. False after printing it."""
    from samseg.apps.cli import UsageError
    from samseg.sam.model import CheckpointError

    from flows.tasks import get_model

    try:
        get_model(model_type, runtime, precision)
    except CheckpointError as exc:
        _print_error(exc)
        return False
    except ValueError as exc:  # unknown device, etc.
        raise UsageError(str(exc)) from None
    return True


def _report_image(state: Any, uri: str) -> int:
    try:
        res = state.result()
    except Exception as exc:  # ImageError, StorageError, CheckpointError … as one line
        from flows.segment import describe_failure

        _print_error(describe_failure(uri, exc))
        return 1
    print(_image_line(res["image"]["file_name"], res, res["out_dir"]))
    if res.get("mlflow_run_id"):
        print(f"MLflow run: {res['mlflow_run_id']}")
    return 0


def _report_batch(state: Any) -> int:
    try:
        report = state.result()
    except Exception as exc:  # the batch itself failed (listing, MLflow parent run, …)
        _print_error(exc)
        return 1
    from pathlib import PurePosixPath

    for r in report["images"]:
        if r["status"] == "completed":
            where = r.get("out_dir") or f"(deployment run {r.get('flow_run_id')})"
            print(_image_line(PurePosixPath(r["image"]).name, r, where))
        else:
            _print_error(r["error"])
    classes = report.get("classes") or {}
    if classes.get("error"):
        _print_error(f"dataset-level classes: {classes['error']}")
    elif classes.get("classes_json"):
        print(f"dataset classes ({classes['mode']}): {classes['n_classes']} classes -> {classes['classes_json']}, "
              f"{classes['contact_sheet']}")
        if classes.get("registered"):
            print(f"registered classes: {classes['registered']['model_uri']}")
    if report.get("mlflow_run_id"):
        print(f"MLflow batch run: {report['mlflow_run_id']}")
    if report.get("summary_error"):
        _print_error(report["summary_error"])
    if report["failed"]:
        print(f"{report['failed']} of {len(report['images'])} images failed", file=sys.stderr)
    return 1 if report["failed"] or classes.get("error") or report.get("summary_error") else 0


def _image_line(file_name: str, r: dict[str, Any], where: str) -> str:
    """"<file>: N masks, K classes, M noise -> OUT/<name> (cache hits: h/3)"; counts when known."""
    counts = ""
    if r.get("n_masks") is not None:
        counts = f" {r['n_masks']} masks, {r['n_clusters']} classes, {r['n_noise']} noise"
    hits = f" (cache hits: {sum(v == 'hit' for v in r['cache'].values())}/3)" if r.get("cache") else ""
    return f"{file_name}:{counts} -> {where}{hits}"


def _is_s3(s: str) -> bool:
    return str(s).startswith("s3://")


# ------------------------------------------------------------------ registration


def add_parser(subparsers: Any) -> None:
    """samseg.apps.cli COMMAND_MODULES hook: recluster, runs (compare) and serve live in samseg.apps.cli_runs."""
    from samseg.apps import cli_runs

    cli_runs.add_parsers(subparsers)
