"""SIGTERM acts like Ctrl-C: start nothing new, leave no half-written output, exit 143.

`timeout`, `docker stop`, systemd and CI stop a process with SIGTERM. `handled()` (the CLI
runs every command inside it) makes SIGTERM raise KeyboardInterrupt in the main thread, like Ctrl-C, and
remembers which signal came. Loops that start work call `check()` before each item, so
even a stage that swallowed the interrupt (Prefect turns it into a crashed state) cannot
make the batch go on. The atomic export and the cache's atomic writes mean that whatever
was interrupted is simply missing, and a rerun computes only that.

A stop never waits on a peer for long: clean-up that talks to one (ending an MLflow run as KILLED)
runs `bounded`, until shortly before the stop's deadline, a publish in flight gets `STOP_GRACE_S`, and
`exit_process` ends the process even while a background thread is still blocked on a
frozen server (what it cut off is swept on the next start, as killed batch runs are).
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, TypeVar

T = TypeVar("T")

# After a stop request: how long a publish in flight, or a clean-up call to a peer, may
# still take before the command exits without it (SAMSEG_STOP_GRACE_S overrides).
STOP_GRACE_S = 2.0

# After a stop request the process ends within this many seconds whatever its main thread waits
# on: a Ctrl-C to the terminal's process group also kills Prefect's temporary server, and Prefect's
# engine then retries reporting the flow's state to it for minutes (SAMSEG_STOP_DEADLINE_S overrides).
STOP_DEADLINE_S = 10.0

_received: list[int] = []
_raised: list[bool] = []  # handled() raised its KeyboardInterrupt
_hint: list[str] = []  # what the command's stopped work left, for the deadline's line (handled(hint))
_stopped_at: list[float] = []  # time.monotonic() of the first stop signal
# Of the deadline, what a clean-up call to a peer leaves for the exit's hooks and flush (beyond
# exit_process's grace_s() wait for threads still publishing).
EXIT_MARGIN_S = 1.0


def _handler(signum: int, _frame: object) -> None:
    """One stop, one KeyboardInterrupt. A second signal (the process group's SIGTERM and the one
    Prefect's engine sends itself again; a second Ctrl-C) is noted only: raised again, it would
    escape the first one's clean-up (`main`'s "interrupted") and Python would end the process by
    SIGINT (exit -2, not 143). The stop's deadline still bounds how long the clean-up takes."""
    _note(signum)
    if not _raised:
        _raised[:] = [True]
        raise KeyboardInterrupt


def _note(signum: int) -> None:
    """Remember the first stop signal and start its deadline."""
    if not _received:
        _received.append(signum)
        _stopped_at[:] = [time.monotonic()]
        threading.Thread(target=_deadline, name="samseg-stop-deadline", daemon=True).start()


def _deadline() -> None:
    """The stop's last word: still running `deadline_s()` after the signal, exit without the rest
    (outputs and cache entries are atomic; a run left RUNNING is swept on the next start)."""
    time.sleep(deadline_s())
    print(f"interrupted; exiting without what still waited after {deadline_s():g} s"
          + (f" ({_hint[0]})" if _hint else ""), file=sys.stderr)
    _flush()
    os._exit(exit_code())


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


@contextmanager
def handled(hint: Optional[str] = None) -> Iterator[None]:
    """While inside: SIGTERM (and SIGINT) → KeyboardInterrupt in the main thread, and the
    signal is remembered; the previous handlers come back on exit. No-op off the main thread.
    hint: what the command's stopped work leaves (its "interrupted" line's), said again if the
    stop's deadline ends it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    _raised.clear()
    _stopped_at.clear()
    _hint[:] = [hint] if hint else []
    previous = {s: signal.signal(s, _handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def relayed() -> Iterator[None]:
    """Inside a Prefect flow run (call it in the flow's body): Prefect's engine has replaced the
    SIGTERM handler with its own, which turns the signal into a crashed flow state, reported to
    the API first. A SIGTERM is noted here before it is handed on, so the stop deadline runs even
    when that API is gone (a process-group SIGTERM kills Prefect's temporary server too)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    inner = signal.getsignal(signal.SIGTERM)

    def relay(signum: int, frame: Any) -> None:
        _note(signum)
        if callable(inner):
            inner(signum, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, relay)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, inner)


def received(signum: int) -> None:
    """Record a stop signal that another handler took (Prefect's runner handles SIGTERM itself):
    the command then ends as that signal's stop (143 for SIGTERM)."""
    _note(signum)


def requested() -> bool:
    """True once SIGTERM or SIGINT was received."""
    return bool(_received)


def check() -> None:
    """Raise KeyboardInterrupt when a stop was requested (call before starting new work)."""
    if _received:
        _raised[:] = [True]  # this stop's KeyboardInterrupt: a later signal must not raise a second one
        raise KeyboardInterrupt


def exit_code() -> int:
    """128 + the signal's number: 143 for SIGTERM, 130 for SIGINT / a plain Ctrl-C."""
    return 128 + (_received[0] if _received else signal.SIGINT)


def pid_alive(pid: int) -> bool:
    """True while process `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def grace_s() -> float:
    """Seconds a stop waits for work in flight (STOP_GRACE_S unless SAMSEG_STOP_GRACE_S is set)."""
    return _seconds("SAMSEG_STOP_GRACE_S", STOP_GRACE_S)


def deadline_s() -> float:
    """Seconds after a stop request by which the process has ended (never less than the grace)."""
    return max(_seconds("SAMSEG_STOP_DEADLINE_S", STOP_DEADLINE_S), grace_s() + 1.0)


def _seconds(env: str, default: float) -> float:
    try:
        return max(0.0, float(os.environ.get(env, default)))
    except ValueError:
        return default


def left_s() -> float:
    """After a stop: the seconds until its deadline, less what the exit itself takes
    (exit_process's grace_s() for threads, EXIT_MARGIN_S), never negative; before a stop: grace_s()."""
    if not _stopped_at:
        return grace_s()
    return max(0.0, deadline_s() - (time.monotonic() - _stopped_at[0]) - grace_s() - EXIT_MARGIN_S)


def bounded(fn: Callable[[], T], timeout_s: Optional[float] = None) -> Optional[T]:
    """fn() in a daemon thread, waited for at most `timeout_s` (default: left_s(), what the stop's
    deadline leaves: ending a run as KILLED can wait on a publish still logging, and a run left
    RUNNING misleads `runs list` and the next rerun); None when it did not finish in time or
    raised. For clean-up after a stop: a frozen peer must not hold the exit (the thread is a
    daemon, so it does not keep the process alive either)."""
    box: list[T] = []

    def call() -> None:
        try:
            box.append(fn())
        except Exception:  # noqa: BLE001 — best-effort clean-up; the stop itself is what matters
            pass

    worker = threading.Thread(target=call, name="samseg-cleanup", daemon=True)
    worker.start()
    worker.join(left_s() if timeout_s is None else timeout_s)
    return box[0] if box else None


def exit_process(rc: int) -> None:
    """Exit with `rc`. After a stop request, threads still blocked (a publish waiting on a
    frozen tracking server) get grace_s() to end; then the process exits without them, since
    the interpreter would otherwise join them for as long as the peer stays silent, and
    without the interpreter's finalization, whatever a KeyboardInterrupt went through."""
    if requested():
        waiting = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
        deadline = time.monotonic() + grace_s()
        for t in waiting:
            t.join(max(0.0, deadline - time.monotonic()))
        if not any(t.is_alive() for t in waiting):
            # CPython marks a KeyboardInterrupt that unwound through exec()/eval() of a string (a
            # dataclass or namedtuple being made as the signal landed) as unhandled, though `main`
            # caught it, and after finalizing ends the process by SIGINT (exit -2, not 143). So a
            # stopped command runs the exit hooks itself, in the interpreter's order, then ends with its own code.
            import atexit

            threading._shutdown()  # type: ignore[attr-defined]  # the threads' exit hooks (Prefect flushes its logs there)
            atexit._run_exitfuncs()
        _flush()
        os._exit(rc)
    # The interpreter's last garbage collections walk every object the command's imports made
    # (scikit-learn's and pandas' alone: ~0.2 s of a 3-s recluster); frozen, they are skipped.
    # Objects are still released by reference counting, and atexit handlers still run.
    gc.freeze()
    sys.exit(rc)
