"""MLflow in a process of its own while a short command works.

`import mlflow` and its store's modules take about 2 s on a 2-core machine: more than a warm
rerun's whole work (read the cache, cluster, compose, write). The `samseg` command starts this
process first (`started()`); the child imports mlflow while the command computes, on the other
core, and the tracking functions marked `@in_mlflow_process` run there. Their arguments and
results are plain values (ids, dicts, paths), so these calls never import mlflow in the
command. Every call waits for its answer: nothing is logged later than it would have been, and
an error is raised where the call was made, with its type (one that does not pickle comes
back as a TrackingError line). After a stop the calls run in the command again, so a stop's
clean-up never waits behind the pipe.

Only the command line's own process starts one (`allow()`, from samseg.apps.cli.run): a program
that calls samseg from Python (a notebook, the UI, a Prefect worker, an in-process test) keeps
its calls where they are, in a process that imports mlflow once for its whole life.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from typing import Any, Callable, Iterator, Optional, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)

_allowed = False
_child: Optional["_Child"] = None


def allow() -> None:
    """This process is the samseg command itself: `started()` may start the child."""
    global _allowed
    _allowed = True


def in_mlflow_process(fn: F) -> F:
    """`fn` runs in the child while one is started (and as it is otherwise). `fn` must be a
    module-level function whose arguments and result pickle without mlflow's classes; a call
    whose arguments do not pickle (an MlflowClient passed in) runs here."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        child = _child
        if child is None:
            return fn(*args, **kwargs)
        return child.call(fn, args, kwargs)

    return call  # type: ignore[return-value]


@contextlib.contextmanager
def started(needed: bool = True) -> Iterator[None]:
    """Around a command that will talk to MLflow (`needed`): the child, started now, ended when
    the command ends (a call in flight gets the stop's grace time to finish first)."""
    global _child
    if not (needed and _allowed) or _child is not None:
        yield
        return
    try:
        _child = _Child()
    except Exception:  # noqa: BLE001 — no process to be had (a main module without its guard, no /dev/shm):
        log.debug("samseg's MLflow process did not start; MLflow is called here", exc_info=True)
        yield  # the calls stay in this process, as a Python caller's do
        return
    try:
        yield
    finally:
        child, _child = _child, None
        child.close()


class _Child:
    """The child process and the pipe to it; one call at a time (the publish thread and the
    main thread share it). After a stop, or once the child is gone, calls run in the command
    itself: a stop's clean-up (a batch run ended KILLED) never waits behind the pipe."""

    def __init__(self) -> None:
        import multiprocessing

        from samseg.edges.logs import verbose

        # spawn, not fork: the command's threads (BLAS, the publish thread) are not copied
        ctx = multiprocessing.get_context("spawn")
        self._conn, theirs = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(theirs, verbose()), name="samseg-mlflow", daemon=True)
        self._proc.start()
        theirs.close()
        self._lock = threading.Lock()
        self._gone = False

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        import pickle

        from samseg.edges import shutdown
        from samseg.edges.mlflow.client import TrackingError

        try:
            request = pickle.dumps((fn.__module__, fn.__name__, args, kwargs))
        except Exception:  # noqa: BLE001 — an argument that cannot travel: the call runs here
            request = None
        if request is not None and not self._gone and not shutdown.requested():
            with self._lock:
                if not self._gone:
                    try:
                        self._conn.send_bytes(request)
                        ok, value = self._answer()
                    except (EOFError, OSError):
                        self._proc.join(1.0)  # its pipe closes as it dies: its exit code follows
                        self._gone = True
                        raise TrackingError(f"samseg's MLflow process ended (exit code {self._proc.exitcode})") from None
                    if ok:
                        return value
                    raise value
        return fn(*args, **kwargs)

    def _answer(self) -> tuple[bool, Any]:
        """The answer to the request just sent. A stop while waiting (Ctrl-C: this is the main
        thread) lets the call finish in the child, which ignores the signal, for up to the grace
        time, so its run is whole and the pipe stays in step; then the stop goes on. Until that
        answer is read, no other call may take it for theirs: they run in the command."""
        from samseg.edges import shutdown

        reading = False
        try:
            while not self._conn.poll(0.1):  # a signal lands between polls, not inside a half-read answer
                pass
            reading = True
            return self._conn.recv()
        except (EOFError, OSError):  # the child is gone: the caller says so
            raise
        except BaseException:
            self._gone = True
            if not reading and self._conn.poll(shutdown.grace_s()):
                self._conn.recv_bytes()
                self._gone = False
            raise

    def close(self) -> None:
        """End the child: once a call in flight has finished (at most the stop's grace time),
        so nothing it writes is cut off; between calls it only imports or waits."""
        from samseg.edges import shutdown

        held = self._lock.acquire(timeout=shutdown.grace_s())
        try:
            self._proc.kill()
            self._proc.join()
            self._conn.close()
        finally:
            if held:
                self._lock.release()


def _serve(conn: Any, verbose: bool) -> None:
    """The child: import mlflow, then answer calls until the pipe closes.
    A stop (Ctrl-C, SIGTERM to the process group) is the command's to handle: it gives a call
    in flight its grace time, then kills this process."""
    import importlib
    import signal
    import traceback

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from samseg.edges.logs import setup_logging

    setup_logging(verbose)  # as the command logs
    _warm()
    while True:
        try:
            module, name, args, kwargs = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply = (True, getattr(importlib.import_module(module), name).__wrapped__(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 — every error is the caller's, raised where it called
            exc.add_note(f"in samseg's MLflow process:\n{traceback.format_exc()}")
            reply = (False, exc)
        try:
            conn.send_bytes(_pickled(reply))
        except (OSError, ValueError):  # the command is gone
            return


def _pickled(reply: tuple[bool, Any]) -> bytes:
    """The reply as the command's `recv` reads it; a value or an error that does not come back
    whole from pickling (an exception with a constructor of its own) comes back as one
    TrackingError line."""
    import pickle

    try:
        data = pickle.dumps(reply)
        pickle.loads(data)
        return data
    except Exception as exc:  # noqa: BLE001
        from samseg.core.errors import one_line
        from samseg.edges.mlflow.client import TrackingError

        what = reply[1] if not reply[0] else exc
        return pickle.dumps((False, TrackingError(f"{type(what).__name__}: {one_line(what)}")))


def _warm() -> None:
    """What the first call would wait for: mlflow's import and its store's module (about 2 s).
    Imports only: a store is opened (created, migrated) by a call, so ending this process
    between calls can never cut a migration short."""
    from samseg.edges.mlflow import client

    with contextlib.suppress(Exception):
        import mlflow  # noqa: F401

        if client.tracking_uri().split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "mysql", "mssql"):
            import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
