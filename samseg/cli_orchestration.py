"""CLI handlers that go through Prefect + MLflow: `segment` (via flows), `recluster`,
`runs compare`, `serve`.

Hooked into samseg.cli by `add_parser(subparsers)` (recluster, runs, serve) and, for the
existing `segment` parser, `add_segment_arguments(parser)` + handler `run_segment(args)`.
Prefect, MLflow and the flows are imported inside handlers so `samseg --help` stays fast.

Defaults are embedded: without PREFECT_API_URL Prefect runs flows against a temporary
local API; without MLFLOW_TRACKING_URI MLflow logs to its own local default; the stage
cache is $SAMSEG_CACHE or ~/.cache/samseg/cache.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

FAN_OUT = ("local", "auto", "deployment")


def _quiet_prefect(verbose: bool) -> None:
    """Prefect logs every task at INFO and each failure with a traceback; the CLI prints
    its own one-line errors instead (--verbose keeps Prefect's log)."""
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")


def _print_error(message: str) -> None:
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)


# ------------------------------------------------------------------ segment (via flows)


def add_segment_arguments(p: argparse.ArgumentParser) -> None:
    """Flags `samseg segment` gains when it runs through the flows; --out may be s3://…"""
    for action in p._actions:  # pathlib would turn s3://b/k into s3:/b/k
        if action.dest == "out":
            action.type, action.metavar = str, "DIR_OR_S3"
    g = p.add_argument_group("orchestration (Prefect, MLflow, S3)")
    g.add_argument("--no-track", action="store_true", help="do not log MLflow runs")
    g.add_argument("--experiment", default="samseg", help="MLflow experiment (default: %(default)s)")
    g.add_argument("--cache", default=None, metavar="DIR_OR_S3", help="stage cache root (default: $SAMSEG_CACHE or ~/.cache/samseg/cache)")
    g.add_argument("--fan-out", choices=FAN_OUT, default="local",
                   help="local: every image in this process (default); deployment: one `segment` deployment run "
                   "per image, taken by any worker; auto: deployment when the server has it")


def run_segment(args: argparse.Namespace) -> int:
    """`samseg segment INPUT... --out DIR|s3://…` through segment_image_flow (one image,
    fan-out local) or segment_batch_flow (MLflow parent run + one child per image).

    Uses samseg.cli.config_from_args for the preset + flags. Exit 0 = all images done,
    1 = some failed (one error line each), 2 = usage error (raised as UsageError).
    """
    from samseg.cli import UsageError, config_from_args

    cfg = config_from_args(args)
    out = str(args.out)
    if not _is_s3(out) and os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} exists and is not a directory")
    _quiet_prefect(getattr(args, "verbose", False))
    from flows.params import PipelineParams, RuntimeParams
    from flows.segment import list_sources, segment_batch_flow, segment_image_flow

    try:
        uris = list_sources(list(args.inputs))
    except Exception as exc:  # StorageError listing an s3:// prefix
        _print_error(exc)
        return 1
    if not uris:
        raise UsageError(f"no images found in: {' '.join(args.inputs)}")
    runtime = RuntimeParams(checkpoint=args.checkpoint, device=args.device, seed=args.seed,
                            cache=getattr(args, "cache", None), save_features=bool(getattr(args, "save_features", False)))
    common = dict(out=out, settings=PipelineParams.from_config(cfg), runtime=runtime,
                  track=not getattr(args, "no_track", False), experiment=getattr(args, "experiment", "samseg"))
    fan_out = getattr(args, "fan_out", "local")
    if len(uris) == 1 and fan_out == "local":  # one image: one MLflow run, no batch parent
        return _report_image(segment_image_flow(image=uris[0], **common, return_state=True), uris[0])
    return _report_batch(segment_batch_flow(source=list(args.inputs), fan_out=fan_out, **common, return_state=True))


def _report_image(state: Any, uri: str) -> int:
    try:
        res = state.result()
    except Exception as exc:  # ImageError, StorageError, CheckpointError … as one line
        _print_error(exc)
        return 1
    hits = sum(v == "hit" for v in res["cache"].values())
    print(f"{uri} -> {res['out_dir']} (cache hits: {hits}/3)")
    if res.get("mlflow_run_id"):
        print(f"MLflow run: {res['mlflow_run_id']}")
    return 0


def _report_batch(state: Any) -> int:
    try:
        report = state.result()
    except Exception as exc:  # the batch itself failed (listing, MLflow parent run, …)
        _print_error(exc)
        return 1
    for r in report["images"]:
        if r["status"] == "completed":
            hits = sum(v == "hit" for v in (r.get("cache") or {}).values())
            print(f"{r['image']} -> {r.get('out_dir', '(deployment run ' + str(r.get('flow_run_id')) + ')')}"
                  + (f" (cache hits: {hits}/3)" if r.get("cache") else ""))
        else:
            _print_error(r["error"])
    if report.get("mlflow_run_id"):
        print(f"MLflow batch run: {report['mlflow_run_id']}")
    if report["failed"]:
        print(f"{report['failed']} of {len(report['images'])} images failed", file=sys.stderr)
    return 1 if report["failed"] else 0


def _is_s3(s: str) -> bool:
    return str(s).startswith("s3://")


# ------------------------------------------------------------------ recluster


def _add_recluster_parser(sub: Any) -> None:
    p = sub.add_parser(
        "recluster",
        help="re-cluster a previous image run with new clustering settings",
        description="Reuse the masks and embeddings of an MLflow image run (stage cache first, else the run's "
        "artifacts), run only cluster + export, and log a new run tagged with the parent run id. "
        "Flags left out keep the parent run's value.",
    )
    p.add_argument("run_id", metavar="RUN_ID", help="MLflow run id of an image run")
    p.add_argument("--out", required=True, metavar="DIR_OR_S3", help="output root; the image goes to OUT/<image stem>/")
    p.add_argument("--algorithm", choices=("dbscan", "hdbscan", "agglomerative"), default=None)
    p.add_argument("--eps", type=float, default=None)
    p.add_argument("--min-samples", type=int, default=None)
    p.add_argument("--metric", default=None)
    p.add_argument("--distance-threshold", type=float, default=None)
    p.add_argument("--no-track", action="store_true", help="do not log an MLflow run")
    p.add_argument("--experiment", default="samseg", help="MLflow experiment of the new run (default: %(default)s)")
    p.add_argument("--cache", default=None, metavar="DIR_OR_S3", help="stage cache root")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(handler=run_recluster, subparser=p)


def recluster_cluster_params(run_params: dict[str, str], args: argparse.Namespace) -> Any:
    """ClusterParams = the parent run's cluster.* params, then the flags given."""
    from flows.params import ClusterParams

    base = {k.split(".", 1)[1]: v for k, v in run_params.items() if k.startswith("cluster.")}
    flags = {"algorithm": args.algorithm, "eps": args.eps, "min_samples": args.min_samples,
             "metric": args.metric, "distance_threshold": args.distance_threshold}
    return ClusterParams(**{**base, **{k: v for k, v in flags.items() if v is not None}})


def run_recluster(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from samseg.cli import UsageError

    _quiet_prefect(args.verbose)
    from flows.params import RuntimeParams
    from flows.recluster import recluster_flow

    try:
        params = _run_params(args.run_id)
    except Exception as exc:  # TrackingError: unknown run, MLflow unreachable
        _print_error(exc)
        return 1
    try:
        cluster = recluster_cluster_params(params, args)
    except ValidationError as exc:
        raise UsageError("; ".join(e["msg"] for e in exc.errors())) from None
    state = recluster_flow(cluster=cluster, out=str(args.out), run_id=args.run_id, runtime=RuntimeParams(cache=args.cache),
                           track=not args.no_track, experiment=args.experiment, return_state=True)
    try:
        res = state.result()
    except Exception as exc:
        _print_error(exc)
        return 1
    print(f"{res['image']['uri']} -> {res['out_dir']} ({res['n_clusters']} classes, {res['n_noise']} noise masks)")
    if res.get("mlflow_run_id"):
        print(f"MLflow run: {res['mlflow_run_id']} (parent {args.run_id})")
    return 0


def _run_params(run_id: str) -> dict[str, str]:
    from samseg.tracking import TrackingError, _client, _get_run  # the tracking edge owns MLflow access

    try:
        return dict(_get_run(_client(), run_id).data.params)
    except TrackingError:
        raise
    except Exception as exc:
        raise TrackingError(f"MLflow run {run_id}: {exc}") from None


# ------------------------------------------------------------------ runs compare


def _add_runs_parser(sub: Any) -> None:
    p = sub.add_parser("runs", help="inspect MLflow runs", description="Inspect samseg's MLflow runs.")
    rsub = p.add_subparsers(title="actions", metavar="ACTION")
    c = rsub.add_parser("compare", help="table of runs: the params that differ, and every metric",
                        description="Compare runs by id, or every run of an experiment.")
    c.add_argument("run_ids", nargs="*", metavar="RUN_ID")
    c.add_argument("--experiment", default=None, help="compare every run of this experiment (default: samseg)")
    c.add_argument("--csv", default=None, metavar="FILE", help="also write the table as CSV")
    c.set_defaults(handler=run_runs_compare, subparser=c)
    p.set_defaults(subparser=p)


def run_runs_compare(args: argparse.Namespace) -> int:
    from samseg.tracking import TrackingError, compare_runs, format_compare

    try:
        df = compare_runs(args.run_ids or None, args.experiment)
    except TrackingError as exc:
        _print_error(exc)
        return 1
    print(format_compare(df))
    if args.csv:
        try:
            df.to_csv(args.csv, index=False)
        except OSError as exc:
            _print_error(f"{args.csv}: {exc.strerror or exc}")
            return 1
    return 0


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
    p.set_defaults(handler=run_serve, subparser=p)


def run_serve(args: argparse.Namespace) -> int:
    from samseg.cli import UsageError

    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be >= 1")
    if args.cron and not (args.source and args.out):
        raise UsageError("--cron needs --source and --out (the scheduled runs' parameters)")
    from flows.serve import serve_all

    serve_all(args.cron, args.source, args.out, limit=args.limit)
    return 0


# ------------------------------------------------------------------ registration


def add_parser(subparsers: Any) -> None:
    """samseg.cli COMMAND_MODULES hook: adds recluster, runs (compare) and serve."""
    _add_recluster_parser(subparsers)
    _add_runs_parser(subparsers)
    _add_serve_parser(subparsers)


add_parsers = add_parser  # the name the orchestration brief used
