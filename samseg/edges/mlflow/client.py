"""The one way samseg talks to MLflow: a client with HTTP timeouts, the tracking URI, one-line errors.

Every edge module that needs MLflow (tracking, batch_runs, class_registry, dataset_outputs,
tracking_conventions) and the UI's run store get their client here, so none waits MLflow's
default ~4.5 minutes on a dead server and every error line is scrubbed of secrets.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Callable, ContextManager, Iterator

from samseg.core.errors import EXIT_USAGE, UnavailableError
from samseg.core.secrets import scrub_secrets


class TrackingError(UnavailableError):
    """An MLflow operation failed; one line naming the run/experiment."""


class RunRefError(TrackingError):
    """A run id the person gave that names no run of this store (mistyped, too short a prefix,
    ambiguous, or of another store): a usage error, as a path that does not exist is."""

    exit_code = EXIT_USAGE
    retryable = False


class StoreMissing(TrackingError):
    """The SQLite store named is not there: runs are kept where `samseg segment` ran them, or where
    MLFLOW_TRACKING_URI points (a usage error: a wrong folder or URI, nothing was read)."""

    exit_code = EXIT_USAGE
    retryable = False


# ---------------------------------------------------------------- pure helpers


def missing_store(uri: str | None) -> str | None:
    """Why a sqlite:// tracking URI names no existing database, or None."""
    if not uri or not uri.startswith("sqlite:"):
        return None
    path = uri.split(":///", 1)[1] if ":///" in uri else ""  # sqlite:///rel.db, sqlite:////abs.db
    path = path.split("?", 1)[0]
    if path in ("", ":memory:") or os.path.isfile(path):
        return None
    shown = os.path.abspath(path)
    return (f"no MLflow store at {shown}: runs are kept where samseg segment ran them (./mlflow.db), or where "
            "MLFLOW_TRACKING_URI points; run from that folder or set it")


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


def client(uri: str | None = None, reading: bool = False) -> Any:
    """An MlflowClient for `uri` (default: tracking_uri()) with samseg's HTTP retry/timeout
    defaults, behind a short circuit (`answering`); a SQLite store is created and migrated
    once, under a lock (`_first_use`). reading: for a command that only reads runs, a SQLite
    store that does not exist is StoreMissing (MLflow would create an empty one there and find nothing)."""
    from mlflow import MlflowClient

    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    target = uri or tracking_uri()
    problem = missing_store(target) if reading else None
    if problem:
        raise StoreMissing(problem)
    with _first_use(target):
        return Guarded(MlflowClient(tracking_uri=target), lambda: answering(target))


# After a call got no answer (a timeout, a refused or reset connection), every call to that server
# fails at once for this long: a batch whose tracking server stalls waits one timeout, not one
# per image (its images are reported written but not logged), and a UI answers 503 at once.
NO_ANSWER_COOLDOWN_S = 10.0
_no_answer_until: dict[str, float] = {}


class Guarded:
    """`inner` with each of its method calls made inside `guard()` (a context manager)."""

    def __init__(self, inner: Any, guard: Callable[[], ContextManager[None]]) -> None:
        self._inner, self._guard = inner, guard

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._guard():
                return attr(*args, **kwargs)

        return call


@contextlib.contextmanager
def answering(uri: str) -> Iterator[None]:
    """Around one call to the server at `uri`: refused at once (MlflowException) during the
    cool-down after a call that got no answer; such a call starts the cool-down."""
    import time

    from mlflow.exceptions import MlflowException

    if time.monotonic() < _no_answer_until.get(uri, 0.0):
        raise MlflowException(f"MLflow at {scrub_secrets(uri)} did not answer a moment ago "
                              f"(next try in at most {NO_ANSWER_COOLDOWN_S:g} s)")
    try:
        yield
    except Exception as exc:
        if no_answer(exc):
            _no_answer_until[uri] = time.monotonic() + NO_ANSWER_COOLDOWN_S
        raise


def no_answer(exc: BaseException) -> bool:
    """The call never got an answer (timeout, refused or reset connection), as opposed to an
    answer that was an error (unknown run, bad filter, a locked SQLite file)."""
    import requests

    return any(isinstance(e, (requests.ConnectionError, requests.Timeout)) for e in _chain(exc))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the exceptions it was raised from or while handling, newest first."""
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


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
    for seen in _chain(exc):
        said = str(getattr(seen, "message", None) or seen)
        for marker in _DISK_FULL:
            if marker in said:
                return f"the MLflow store's disk is full ({marker})"
    text = str(getattr(exc, "message", None) or exc).strip()
    return scrub_secrets(text.splitlines()[0] if text else type(exc).__name__)
