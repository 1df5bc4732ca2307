"""SIGTERM acts like Ctrl-C: start nothing new, leave no half-written output, exit 143.

`timeout`, `docker stop`, systemd and CI stop a process with SIGTERM. `handled()` (the CLI
runs every command inside it) makes SIGTERM raise KeyboardInterrupt in the main thread, like Ctrl-C, and
remembers which signal came. Loops that start work call `check()` before each item, so
even a stage that swallowed the interrupt (Prefect turns it into a crashed state) cannot
make the batch go on. The atomic export and the cache's atomic writes mean that whatever
was interrupted is simply missing, and a rerun computes only that.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

_received: list[int] = []


def _handler(signum: int, _frame: object) -> None:
    if not _received:
        _received.append(signum)
    raise KeyboardInterrupt


@contextmanager
def handled() -> Iterator[None]:
    """While inside: SIGTERM (and SIGINT) → KeyboardInterrupt in the main thread, and the
    signal is remembered; the previous handlers come back on exit. No-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {s: signal.signal(s, _handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def requested() -> bool:
    """True once SIGTERM or SIGINT was received."""
    return bool(_received)


def check() -> None:
    """Raise KeyboardInterrupt when a stop was requested (call before starting new work)."""
    if _received:
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
