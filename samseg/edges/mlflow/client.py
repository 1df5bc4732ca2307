"""The one way samseg talks to MLflow: a client with HTTP timeouts, the tracking URI, one-line errors.

Every edge module that needs MLflow (tracking, batch_runs, class_registry, dataset_outputs,
tracking_conventions) and the UI's run store get their client here, so none waits MLflow's
default ~4.5 minutes on a dead server and every error line is scrubbed of secrets.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Iterator

from samseg.core.secrets import scrub_secrets


class TrackingError(Exception):
    """An MLflow operation failed; one line naming the run/experiment."""


# ---------------------------------------------------------------- pure helpers


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else MLflow's own default (3.x: ``sqlite:///mlflow.db``
    in the working dir, or ``./mlruns`` when such a store already exists)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    import mlflow

    return mlflow.get_tracking_uri()


# MLflow's own HTTP defaults (120 s timeout, 7 retries, backoff factor 2) take many minutes to
# give up on a server that accepts connections and never answers; samseg's: 10 s a try, one
# retry after 1 s, so about 21 s a call (docs/orchestration.md). Values set by the user are
# kept (a slow link: raise MLFLOW_HTTP_REQUEST_TIMEOUT).
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# MLflow prints "🏃 View run … / 🧪 View experiment …" to stdout at each run's end and draws
# "Downloading artifacts" bars on stderr: samseg's console is its own lines (-q: none of them),
# and a batch's log is not a place for progress bars. Set either variable to have them back.
# Set on import: every MLflow call samseg makes (downloads too) goes through a module that imports this one.
_CONSOLE_DEFAULTS = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
for _key, _value in _CONSOLE_DEFAULTS.items():
    os.environ.setdefault(_key, _value)


def client(uri: str | None = None) -> Any:
    """An MlflowClient for `uri` (default: tracking_uri()) with samseg's HTTP retry/timeout
    defaults; a SQLite store is created and migrated once, under a lock (`_sqlite_ready`)."""
    from mlflow import MlflowClient

    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    target = uri or tracking_uri()
    with _first_use(target):
        return MlflowClient(tracking_uri=target)


_READY: set[str] = set()
_READY_LOCK = threading.Lock()


@contextlib.contextmanager
def _first_use(uri: str) -> Iterator[None]:
    """The first use of a SQLite store (opening it creates and migrates its schema) under an
    exclusive flock on the database's folder: two commands started together would both
    migrate it, and the second dies ("duplicate column name"). No lock file is left beside
    the database; once this process has opened the store, the lock is not taken again."""
    folder = os.path.dirname(os.path.abspath(uri[len("sqlite:///"):])) if uri.startswith("sqlite:///") else ""
    if not folder or uri in _READY or not os.path.isdir(folder):
        yield
        return
    import fcntl

    with _READY_LOCK:
        fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
            _READY.add(uri)  # opening the store (MlflowClient's construction) created / migrated it
        finally:
            os.close(fd)


def where() -> str:
    return scrub_secrets(tracking_uri())


# What a store on a full disk says somewhere in the exception chain (SQLite, SQLAlchemy, the OS);
# the top of the chain may be a later symptom ("Query-invoked autoflush ...").
_DISK_FULL = ("database or disk is full", "No space left on device")


def error_line(exc: BaseException) -> str:
    seen: BaseException | None = exc
    while seen is not None:
        said = str(getattr(seen, "message", None) or seen)
        for marker in _DISK_FULL:
            if marker in said:
                return f"the MLflow store's disk is full ({marker})"
        seen = seen.__cause__ or seen.__context__
    text = str(getattr(exc, "message", None) or exc).strip()
    return scrub_secrets(text.splitlines()[0] if text else type(exc).__name__)
