"""CLI handlers for the commands around runs: `recluster`, `runs compare`, `serve`.

Registered through samseg.apps.cli.COMMAND_MODULES (`add_parser`); Prefect, MLflow and the
flows are imported inside the handlers so `samseg --help` stays fast.
"""

from __future__ import annotations

import argparse
from typing import Any

from samseg.apps.cli.config import add_section_flags, flag_errors
from samseg.core.config import DEFAULT, ClusterConfig

from samseg.apps.cli.common import add_orchestrator_argument, experiment, orchestrator, print_error, quiet_prefect
from samseg.apps.cli.common import classes_ref, experiment_name, run_ref, stage_cache_root, write_csv


def add_parser(sub: Any) -> None:
    _add_recluster_parser(sub)
    _add_runs_parser(sub)
    _add_serve_parser(sub)
    _add_sweep_parser(sub)


# ------------------------------------------------------------------ recluster


def _add_recluster_parser(sub: Any) -> None:
    p = sub.add_parser(
        "recluster",
        help="re-cluster a previous image run (or every image of a batch run) with new clustering settings",
        description="Reuse the masks and embeddings of an MLflow image run (stage cache first, else the run's "
        "artifacts), run only cluster + compose + write, and log a new run tagged with the parent run id. "
        "Flags left out keep the parent run's value. A --classes dataset batch's images are clustered together "
        "again, as the batch was (new dataset classes, classes.json, contact sheet).",
    )
    p.add_argument("run_id", metavar="RUN_ID", help="MLflow run id (or a unique prefix) of an image run, or of a batch "
                   "run: each of its images, as one new batch run")
    p.add_argument("--out", required=True, metavar="DIR_OR_S3", help="output root; the image goes to OUT/<image stem>/")
    add_section_flags(p.add_argument_group("clustering (left out: the parent run's value)"), ClusterConfig, DEFAULT.cluster)
    p.add_argument("--no-track", action="store_true", help="do not log an MLflow run")
    p.add_argument("--experiment", default=None, type=experiment_name,
                   help="MLflow experiment of the new run (default: $MLFLOW_EXPERIMENT_NAME / _ID, else samseg)")
    p.add_argument("--cache", default=None, metavar="DIR_OR_S3", help="stage cache root")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the stage cache (use the run's artifacts)")
    from samseg.apps.cli.common import CACHE_MAX_HELP

    p.add_argument("--cache-max", default=None, metavar="SIZE", help=CACHE_MAX_HELP)
    add_orchestrator_argument(p)
    p.add_argument("-v", "--verbose", action="store_true")
    from samseg.apps.cli import RESUMES

    p.set_defaults(handler=run_recluster, subparser=p, stop_hint=RESUMES)


def _cluster_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The cluster flags given: {knob: value} (None = not given)."""
    return {key.split(".", 1)[1]: value for key, value in vars(args).items() if key.startswith("cluster.")}


def run_recluster(args: argparse.Namespace) -> int:
    from samseg.edges.mlflow.process import started
    from samseg.engine.segment import importing_ahead

    # mlflow imports in its own process; meanwhile this one imports what it clusters and writes
    # with, then waits for MLflow's answers (the run's inputs), clusters and writes
    with started():
        importing_ahead()
        return _run_recluster(args)


def _run_recluster(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from samseg.apps.cli.common import UsageError

    how = orchestrator(args)
    if how == "prefect":
        quiet_prefect(args.verbose)
    from samseg.edges.mlflow.tracking import images_of_batch

    # TrackingError (an unknown run, MLflow unreachable, a batch without its record): main's one line, exit 1
    args.run_id = run_ref(args.run_id)  # a unique prefix is the run it starts
    params = _run_params(args.run_id)
    images = images_of_batch(args.run_id)
    if images is not None:
        return _recluster_batch(args, images, params)
    from samseg.apps.batch_recluster import cluster_params

    try:
        cluster = cluster_params(params, _cluster_changes(args))
    except ValidationError as exc:
        raise UsageError(flag_errors(exc)) from None
    with stage_cache_root(args) as cache:
        try:
            res = _recluster(args, how, cluster, cache)
        except Exception as exc:
            print_error(exc)
            return 1
    from pathlib import PurePosixPath

    from samseg.apps.cli.segment import image_line, warn_of
    from samseg.engine.segment import image_entry

    entry = image_entry(res["image"]["uri"], PurePosixPath(res["out_dir"]).name, res)  # as segment prints an image
    print(image_line(PurePosixPath(entry["image"]).name, entry, res["out_dir"]))
    warn_of(entry)
    if res.get("mlflow_run_id"):
        print(f"MLflow run: {res['mlflow_run_id']} (parent {args.run_id})")
    return 0


def _recluster_batch(args: argparse.Namespace, images: dict[str, str], batch_params: dict[str, str]) -> int:
    """A batch run's id: each of its images reclustered (the flags over each image's own
    settings), as one new batch run, in this process (samseg.apps.batch_recluster, as the UI's
    batch page does it); its lines as `samseg segment` prints a batch's."""
    from pydantic import ValidationError

    from samseg.apps.batch_recluster import recluster_batch_run
    from samseg.apps.cli.common import UsageError
    from samseg.apps.cli.segment import report_batch
    from samseg.engine.publish import Tracking

    tracking = Tracking(track=not args.no_track, experiment=experiment(args))
    with stage_cache_root(args) as cache:
        try:
            # a batch run that cannot start, classes assigned from a table, a user's file where classes.json goes:
            # main's one line, with the taxonomy's exit code
            report = recluster_batch_run(args.run_id, images, batch_params, _cluster_changes(args), str(args.out),
                                         tracking, cache)
        except ValidationError as exc:
            raise UsageError(flag_errors(exc)) from None
    return report_batch(report)


def _recluster(args: argparse.Namespace, how: str, cluster: Any, cache: str) -> dict[str, Any]:
    if how == "prefect":
        from flows.params import RuntimeParams
        from flows.recluster import recluster_flow

        state = recluster_flow(cluster=cluster, out=str(args.out), run_id=args.run_id, runtime=RuntimeParams(cache=cache),
                               track=not args.no_track, experiment=experiment(args), return_state=True)
        return state.result()
    from samseg.edges.run_schema import KIND_RECLUSTER
    from samseg.engine.publish import Tracking
    from samseg.engine.recluster import recluster_job

    tracking = Tracking(track=not args.no_track, experiment=experiment(args), kind=KIND_RECLUSTER, parent_run_id=args.run_id)
    return recluster_job(cluster.to_config(), str(args.out), tracking, cache, run_id=args.run_id)


def _run_params(run_id: str) -> dict[str, str]:
    """An image run's params (or a sharded batch's image dir's); TrackingError (one line) for unknown runs."""
    from samseg.edges.mlflow.tracking import image_params

    return image_params(run_id)


# ------------------------------------------------------------------ runs compare


def _add_runs_parser(sub: Any) -> None:
    p = sub.add_parser("runs", help="inspect MLflow runs", description="Inspect samseg's MLflow runs.")
    rsub = p.add_subparsers(title="actions", metavar="ACTION")
    c = rsub.add_parser("compare", help="table of runs: the params that differ, and every metric",
                        description="Compare runs by id, or every run of an experiment.")
    c.add_argument("run_ids", nargs="*", metavar="RUN_ID")
    c.add_argument("--experiment", default=None, type=experiment_name, help="compare every run of this experiment (default: samseg)")
    c.add_argument("--csv", default=None, metavar="FILE", help="also write the table as CSV")
    c.set_defaults(handler=run_runs_compare, subparser=c)
    ls = rsub.add_parser("list", help="the newest runs: id, kind, image or batch, start, status, classes, backbone",
                         description="The newest MLflow runs of samseg, newest first. Every command that takes a run "
                         "id takes the id printed here, or a unique prefix of it (8 characters, as the UI shows).")
    ls.add_argument("--experiment", default=None, type=experiment_name, help="one experiment (default: all of them)")
    ls.add_argument("--limit", type=_positive, default=20, metavar="N", help="how many runs (default: %(default)s)")
    ls.set_defaults(handler=run_runs_list, subparser=ls)
    p.set_defaults(subparser=p)


def _positive(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {raw!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


_WHAT_WIDTH = 27  # the image or source column: the whole line fits 120 characters


def run_runs_list(args: argparse.Namespace) -> int:
    """One line a run, in columns that fit 120 characters: the full id (what every command takes)."""
    import datetime

    from samseg.edges.mlflow.tracking import recent_runs
    from samseg.edges.run_schema import DATASET_MODES, KIND_BATCH, TAG_CLASSES, TAG_KIND, TAG_PARENT_RUN, TAG_SOURCE, derived_how
    from samseg.engine.segment import shown_name

    runs = recent_runs(args.experiment, args.limit)  # a TrackingError is main's one line, exit 1
    if not runs:
        from samseg.edges.mlflow.client import where

        print("no runs" + (f" in experiment {args.experiment!r}" if args.experiment else "") + f" at {where()}")
        return 0
    print(f"{'RUN ID':32}  {'KIND':9}  {'STARTED':16}  {'STATUS':8}  {'CLASSES':>7}  {'FEATURES':9}  IMAGE OR SOURCE")
    for run in runs:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        kind = tags.get(TAG_KIND, "?")
        what = tags.get(TAG_SOURCE) if kind == KIND_BATCH else (run.info.run_name or "")
        started = datetime.datetime.fromtimestamp((run.info.start_time or 0) / 1000).strftime("%Y-%m-%d %H:%M")
        n = metrics.get("n_clusters", metrics.get("n_classes"))  # an image's classes, or a dataset batch's
        classes = f"{int(n)}" if n is not None else "-"
        features = params.get("features.name", "-")
        parent = tags.get(TAG_PARENT_RUN, "")
        if kind == KIND_BATCH and parent:  # a batch's recluster or edit: the batch it re-tunes, as an id prefix one can type
            what = f"{derived_how(tags)} of {parent[:8]}"
        what = shown_name(str(what or ""))
        what = what if len(what) <= _WHAT_WIDTH else "…" + what[-(_WHAT_WIDTH - 1):]  # a path's end says the most
        shown = tags[TAG_CLASSES] if kind == KIND_BATCH and tags.get(TAG_CLASSES) in DATASET_MODES else kind  # as the UI says
        print(f"{run.info.run_id:32}  {shown[:9]:9}  {started:16}  {run.info.status[:8]:8}  {classes:>7}  {features[:9]:9}  "
              f"{what}")
    return 0


def run_runs_compare(args: argparse.Namespace) -> int:
    from samseg.edges.mlflow.compare import compare_runs, format_compare

    df = compare_runs([run_ref(r) for r in args.run_ids] or None, args.experiment)  # TrackingError: main's line
    print(format_compare(df))
    return 0 if not args.csv or write_csv(df, args.csv) else 1


# ------------------------------------------------------------------ serve


def _add_serve_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the segment, nightly-batch and recluster deployments from this process",
        description="Local alternative to workers: registers the three deployments with the Prefect API "
        "(PREFECT_API_URL; start one with `prefect server start`) and runs their flow runs here.",
    )
    p.add_argument("--limit", type=int, default=None, help="most flow runs at once (default: unlimited)")
    p.add_argument("--cron", default=None, help='schedule nightly-batch, e.g. "0 2 * * *" (default: no schedule)')
    p.add_argument("--source", default=None, help="nightly-batch default source (folder, glob or s3:// prefix)")
    p.add_argument("--out", default=None, help="nightly-batch default output root")
    p.add_argument("--classes-from", default=None, metavar="RUN_ID_OR_FILE",
                   help="nightly-batch default classes_from: label new images with the dataset-level classes of "
                   "this MLflow batch run (or classes.json), so ids stay stable night after night")
    p.set_defaults(handler=run_serve, subparser=p)


def run_serve(args: argparse.Namespace) -> int:
    from samseg.apps.cli.common import UsageError

    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be >= 1")
    if args.cron and not (args.source and args.out):
        raise UsageError("--cron needs --source and --out (the scheduled runs' parameters)")
    from flows.serve import serve_all

    classes_from = classes_ref(args.classes_from)  # TrackingError (no such run, an ambiguous prefix): main's line
    import os
    import sys

    from samseg.apps.cli.common import no_telemetry_from_our_server

    no_telemetry_from_our_server()
    if args.cron and not os.environ.get("PREFECT_API_URL"):
        print("warning: no PREFECT_API_URL: the --cron schedule lives on a temporary Prefect server that ends with "
              "this command; for a schedule that lasts, start one (`prefect server start`) and set PREFECT_API_URL",
              file=sys.stderr)
    print("serving the segment, nightly-batch and recluster deployments; Ctrl-C or SIGTERM stops", file=sys.stderr)
    serve_all(args.cron, args.source, args.out, limit=args.limit, classes_from=classes_from)
    return 0


# ------------------------------------------------------------------ sweep


def _add_sweep_parser(sub: Any) -> None:
    p = sub.add_parser(
        "sweep",
        help="n_clusters and noise over a grid of DBSCAN eps values, and the suggested eps",
        description="For an MLflow image run or batch run: DBSCAN at every eps of the range (the run's other "
        "cluster settings kept), and the knee of the sorted k-distance curve (k = min_samples), the eps that "
        "--eps auto takes. A --classes dataset batch's masks are swept together; a batch of per-image classes "
        "image by image, as recluster clusters it (classes and noise summed, the median of the images' knees).",
    )
    p.add_argument("run_id", metavar="RUN_ID", help="MLflow image run or batch run id (or a unique prefix)")
    p.add_argument("--eps-range", default=None, metavar="A:B:STEP", help="eps grid (default: one that covers the run's k-distances, its eps and the knee)")
    p.add_argument("--csv", default=None, metavar="FILE", help="also write the table as CSV")
    p.set_defaults(handler=run_sweep, subparser=p)


def run_sweep(args: argparse.Namespace) -> int:
    from samseg.apps.cli.common import UsageError
    from samseg.core.sweep import EpsRangeError
    from samseg.engine.sweep import format_sweep, sweep_run

    try:  # TrackingError (unknown run, a missing artifact): main's line
        report = sweep_run(run_ref(args.run_id), args.eps_range)  # a bad range: before any download
    except EpsRangeError as exc:  # or past what the run's metric takes (known once its config is read)
        raise UsageError(f"--eps-range: {exc}") from None
    print(format_sweep(report))
    if not args.csv:
        return 0
    import pandas as pd

    return 0 if write_csv(pd.DataFrame(report["rows"]), args.csv) else 1
