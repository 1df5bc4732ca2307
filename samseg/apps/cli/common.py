"""What the run commands (segment, recluster, runs, serve) share: the orchestrator choice,
Prefect's quieting and guarded temporary server, the checked stage cache, one-line errors,
the default experiment.

Defaults are embedded: without PREFECT_API_URL runs go through the engine in this process
(`--orchestrator local`); with it, through the Prefect flows, so they show in its UI.
Without MLFLOW_TRACKING_URI MLflow logs to its own local default; the stage cache is
$SAMSEG_CACHE or ~/.cache/samseg/cache, checked before any compute.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator

ORCHESTRATORS = ("auto", "local", "prefect")
CACHE_MAX_HELP = ("most the stage cache may hold, e.g. 20G or 500M; the least recently used entries go first "
                  "(default: $SAMSEG_CACHE_MAX, else 20G)")  # --cache-max of segment and recluster, --max of `cache`


from samseg.core.errors import UsageError  # noqa: E402 — re-exported: the CLI's modules import it from here


def add_orchestrator_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--orchestrator", choices=ORCHESTRATORS, default="auto",
                   help="local: the engine in this process (no Prefect server); prefect: through the Prefect flows "
                   "(runs show in its UI; without PREFECT_API_URL Prefect starts a temporary server); "
                   "auto (default): prefect when PREFECT_API_URL is set, else local")


def orchestrator(args: argparse.Namespace, needs_prefect: bool = False) -> str:
    """"local" or "prefect" for this command (needs_prefect: e.g. --fan-out deployment)."""
    chosen = getattr(args, "orchestrator", "auto") or "auto"
    if chosen == "local" and needs_prefect:
        raise UsageError("--fan-out deployment runs through Prefect; it cannot be combined with --orchestrator local")
    if needs_prefect and not os.environ.get("PREFECT_API_URL"):  # a temporary server has no worker to take shards
        raise UsageError("--fan-out deployment needs PREFECT_API_URL: the Prefect server whose workers take the "
                         "shards (docs/orchestration.md, Scale-out)")
    if chosen == "auto":
        return "prefect" if needs_prefect or os.environ.get("PREFECT_API_URL") else "local"
    return chosen


def no_telemetry_from_our_server() -> None:
    """The temporary local API Prefect starts for a command (no PREFECT_API_URL) would try to send
    usage telemetry and log an ERROR line on machines without internet; it is our server, so say no."""
    if not os.environ.get("PREFECT_API_URL"):
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def quiet_prefect(verbose: bool) -> None:
    """Prefect logs every task at INFO and each failure with a traceback; the CLI prints
    its own one-line errors instead (--verbose keeps Prefect's log)."""
    no_telemetry_from_our_server()
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


def run_ref(ref: str) -> str:
    """A run id as the user typed it: whole, or a unique prefix (TrackingError in one line otherwise)."""
    from samseg.edges.mlflow.tracking import resolve_run_id

    return resolve_run_id(ref)


def classes_ref(ref: str | None) -> str | None:
    """--classes-from: a classes.json path, an s3:// or models:/ URI as given; else a run id or its prefix."""
    if ref is None or os.path.exists(ref) or "://" in ref or ref.startswith("models:/"):
        return ref
    return run_ref(ref)


def print_error(message: Any) -> None:
    """The one error line of every command, "error: <message>" on stderr as one line (that does not tear a tqdm bar)."""
    from tqdm import tqdm  # tqdm.write: a line printed while progress bars show does not tear them

    tqdm.write(f"error: {' '.join(str(message).split())}", file=sys.stderr)


def experiment_name(value: str) -> str:
    """argparse type of --experiment: a name MLflow can store, refused before any compute."""
    from samseg.edges.run_schema import EXPERIMENT_NAME_MAX

    if not value.strip():
        raise argparse.ArgumentTypeError("an experiment name must not be empty")
    if len(value) > EXPERIMENT_NAME_MAX:
        raise argparse.ArgumentTypeError(f"an experiment name has at most {EXPERIMENT_NAME_MAX} characters "
                                         f"(this one has {len(value)})")
    if not value.isprintable():
        raise argparse.ArgumentTypeError("an experiment name must not contain control characters")
    return value


def experiment(args: argparse.Namespace) -> str:
    """--experiment, else MLflow's own environment (samseg.edges.mlflow.conventions)."""
    if getattr(args, "experiment", None):
        return str(args.experiment)
    if getattr(args, "no_track", False):
        from samseg.edges.run_schema import EXPERIMENT_DEFAULT

        return EXPERIMENT_DEFAULT  # nothing is logged: do not ask MLflow
    from samseg.edges.mlflow.conventions import default_experiment

    return default_experiment()


@contextmanager
def stage_cache_root(args: argparse.Namespace, shared: bool = False) -> Iterator[str]:
    """The stage cache this command uses: --cache / $SAMSEG_CACHE / the default, checked
    once before any compute. --no-cache, or a cache that cannot be written (one warning
    line says why), gives a private temporary cache removed at the end of the command."""
    import shutil
    import tempfile

    from samseg.edges.cache import default_cache_root, unusable_reason

    from samseg.edges.cache_bound import max_bytes, prune

    root = getattr(args, "cache", None) or default_cache_root()
    try:
        limit = max_bytes(getattr(args, "cache_max", None))  # a bad bound is a usage error before any compute
    except ValueError as exc:  # the flag's, or $SAMSEG_CACHE_MAX's (its message names it)
        raise UsageError(f"--cache-max: {exc}" if getattr(args, "cache_max", None) is not None else str(exc)) from None
    reason = None if getattr(args, "no_cache", False) else unusable_reason(root)
    if not getattr(args, "no_cache", False) and reason is None:
        yield root
        if not is_s3(root):  # the command's entries are in: the least recently used go past the bound
            try:
                prune(root, limit)
            except OSError as exc:  # a cache that cannot be pruned never fails the command's results
                print(f"warning: stage cache {root}: not pruned ({exc})", file=sys.stderr)
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


def write_csv(df: "object", path: str) -> bool:
    """df.to_csv(path) for a table a command printed, its folder made if missing (as `eval --csv`
    does); an unwritable path is one error line (False)."""
    from pathlib import Path

    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(path, index=False)  # type: ignore[attr-defined]
    except OSError as exc:
        print_error(f"{path}: {exc.strerror or exc}")
        return False
    return True


def is_s3(s: str) -> bool:
    return str(s).startswith("s3://")
