"""`samseg ui`: start the web UI (FastAPI app served by uvicorn).

Hooked into samseg.apps.cli by `add_parser(subparsers)`; the handler is `run_ui(args) -> int`.
Imports of FastAPI/uvicorn/MLflow happen inside the handler so `samseg --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from samseg.apps.cli.common import UsageError, experiment_name
from samseg.edges.run_schema import RECLUSTER_DEPLOYMENT

DEFAULT_HOST = "127.0.0.1"  # loopback: the UI can start runs, so it is private by default
DEFAULT_PORT = 8765
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


def add_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "ui",
        help="web UI: browse runs, rerun clustering, exemplar queries, compare runs",
        description="Serve the samseg web UI over the MLflow runs of an experiment. "
        "Loopback only unless --host says otherwise; set SAMSEG_UI_TOKEN to require a token.",
    )
    p.add_argument("--host", default=DEFAULT_HOST, help=f"bind address (default {DEFAULT_HOST}; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--experiment", default=None, type=experiment_name, help="MLflow experiment to show (default: samseg)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or MLflow's default)")
    p.add_argument("--cache", default=None, help="stage cache root for pooling changes (default: $SAMSEG_CACHE or ~/.cache/samseg/cache)")
    p.add_argument("--ui-cache", default=None, help="where downloaded run artifacts are kept (default: ~/.cache/samseg/ui)")
    p.add_argument("--mlflow-ui-url", default=None, help="base URL of an MLflow UI for run links when the tracking URI is not http(s)")
    p.add_argument("--prefect-ui-url", default=None, help="base URL of the Prefect UI for flow-run links (default: from PREFECT_API_URL)")
    p.add_argument("--submit", default="auto", choices=("auto", "local", "prefect"),
                   help="where reruns run: auto = the Prefect deployment when PREFECT_API_URL is set and it exists, else in this process")
    p.add_argument("--prefect-deployment", default=RECLUSTER_DEPLOYMENT, help=f"deployment for --submit prefect/auto (default {RECLUSTER_DEPLOYMENT})")
    p.add_argument("--prefect-out", default=None, help="output dir or s3:// prefix the recluster flow writes to (default: under --ui-cache)")
    p.add_argument("--image-root", action="append", default=None, metavar="DIR",
                   help="serve run input photos only from under this folder (repeatable; default: any local path, "
                   "always checked against the sha256 the run recorded)")
    p.add_argument("--label-studio", default=None, metavar="URL",
                   help="a Label Studio server: the run pages get 'Send to Label Studio' (token: $LABEL_STUDIO_API_KEY)")
    p.add_argument("--label-studio-project", default="samseg", metavar="NAME_OR_ID",
                   help="the Label Studio project the button pushes to (id, or title: created if missing; default %(default)s)")
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(handler=run_ui, subparser=p)
    return p


# samseg.apps.cli's COMMAND_MODULES convention is `add_parser(subparsers)`.


def build_settings(args: argparse.Namespace) -> "UiSettings":  # noqa: F821 - lazy import
    from pathlib import Path

    from samseg.apps.ui.guards import is_loopback
    from samseg.apps.ui.service import UiSettings

    return UiSettings(
        tracking_uri=args.tracking_uri,
        experiment=args.experiment or _default_experiment(),
        cache_dir=Path(args.ui_cache).expanduser() if args.ui_cache else None,
        stage_cache=args.cache,
        token=os.environ.get("SAMSEG_UI_TOKEN") or None,
        mlflow_ui_url=args.mlflow_ui_url,
        prefect_ui_url=args.prefect_ui_url,
        submit=args.submit,
        prefect_deployment=args.prefect_deployment,
        prefect_out=args.prefect_out,
        # the bound address itself is always an accepted Host (127.0.0.2 is loopback too)
        allowed_hosts=tuple(dict.fromkeys((*LOOPBACK_NAMES, args.host))) if is_loopback(args.host) else None,
        image_roots=tuple(Path(r).expanduser().resolve() for r in args.image_root) if args.image_root else None,
        label_studio=args.label_studio,
        label_studio_project=args.label_studio_project,
    )


def _default_experiment() -> str:
    from samseg.edges.mlflow.conventions import default_experiment

    return default_experiment()


def run_ui(args: argparse.Namespace) -> int:
    """Serve until interrupted (0 on Ctrl-C); a bad option is a UsageError (exit 2), before anything starts."""
    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port} is not a TCP port (1-65535)")
    _check_port_free(args.host, args.port)
    from samseg.apps.ui.guards import is_loopback

    if args.submit == "prefect" and not os.environ.get("PREFECT_API_URL"):
        raise UsageError("--submit prefect needs PREFECT_API_URL (the Prefect server's API)")
    if args.tracking_uri:
        # samseg.edges.mlflow.tracking (which logs the UI's reruns) reads the URI from the environment.
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    from samseg.edges.mlflow.client import missing_store, tracking_uri

    problem = missing_store(tracking_uri())
    if problem:
        raise UsageError(f"{problem} (or --tracking-uri)")
    for root in args.image_root or ():
        if not os.path.isdir(root):
            raise UsageError(f"--image-root {root}: not a folder")
    if args.label_studio:
        from samseg.edges.labelstudio import LabelStudioError, check_url

        try:
            check_url(args.label_studio)
        except LabelStudioError as exc:
            raise UsageError(f"--label-studio: {exc}") from None
    settings = build_settings(args)
    if not is_loopback(args.host):
        print(
            f"WARNING: samseg ui is listening on {args.host}:{args.port}, reachable from other machines; "
            "anyone who can reach it can view runs and start reruns"
            + ("" if settings.token else " — set SAMSEG_UI_TOKEN to require a token"),
            file=sys.stderr,
        )
    from samseg.apps.ui import create_app

    app = create_app(settings)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"samseg ui: http://{shown}:{args.port}/" + ("?token=…" if settings.token else ""), file=sys.stderr, flush=True)
    serve(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def serve(app: Any, **config: Any) -> None:
    """Serve `app` with uvicorn (`config`: uvicorn.Config's), telling samseg's stop handling the
    signal uvicorn takes: a job's loop then stops at its next image and ends its run KILLED
    (samseg.apps.ui.jobs), and the command exits 130 or 143."""
    import uvicorn

    from samseg.edges import shutdown

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            shutdown.received(sig)
            super().handle_exit(sig, frame)

    Server(uvicorn.Config(app, **config)).run()


def _check_port_free(host: str, port: int) -> None:
    """UsageError when host:port cannot be bound (another server has it): said before the URL is
    printed, which would be the other server's. Bound as uvicorn binds it (SO_REUSEADDR)."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            why = "is in use (another samseg ui?)" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
            raise UsageError(f"--port {port}: {host}:{port} {why}; pass another --port") from None
