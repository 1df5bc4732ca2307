"""No process samseg starts may outlive it, even after `kill -9` or the OOM killer.

Without PREFECT_API_URL, Prefect runs flows against a temporary API server that it starts
as a child process (~200 MB, listening on a port) and stops from an `atexit` hook; a
process killed with SIGKILL runs no hook, so the server stayed behind. `guard_child(pid)`
starts a tiny watchdog process that polls its parent; when the parent is gone (whatever
killed it) it stops the child: SIGTERM, then SIGKILL after a grace period. The watchdog
ends by itself as soon as the child has ended.

`guard_prefect_ephemeral()` starts Prefect's temporary server now (it is a per-process
singleton, the same one Prefect's client would start on first use) and guards it; the server's
own output goes to a log file (`server_log`), never to the terminal samseg prints to.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Iterator

from samseg.edges.shutdown import pid_alive

POLL_S = 0.25
GRACE_S = 3.0
# How long samseg polls the temporary server for its first answer (Prefect's default, 20 s of its
# polling, is too short for a first start that creates its database on a slow or busy machine);
# PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, when the user sets it, is the user's choice.
SERVER_START_S = 120


def guard_child(child_pid: int) -> subprocess.Popen[bytes]:
    """Start the watchdog for `child_pid` (a process this one started)."""
    return subprocess.Popen([sys.executable, "-m", "samseg.apps.watchdog", str(os.getpid()), str(child_pid)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # Ctrl-C to the terminal's group must not kill it first


def guard_prefect_ephemeral() -> str | None:
    """Start Prefect's temporary API server (when no PREFECT_API_URL is set) under a
    watchdog; returns its API URL, or None when a real server is configured."""
    from prefect.settings import get_current_settings

    if os.environ.get("PREFECT_API_URL") or get_current_settings().api.url:  # a real server (env, profile, settings)
        return None
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    guarded: set[int] = set()

    def guard_new() -> None:  # the server process exists long before it answers: guard it at once
        proc = server.server_process
        if proc is not None and proc.pid not in guarded:
            guarded.add(proc.pid)
            guard_child(proc.pid)

    done = threading.Event()

    def poll() -> None:
        while not done.wait(0.01):
            guard_new()

    poller = threading.Thread(target=poll, name="samseg-guard-prefect", daemon=True)
    poller.start()
    import httpx

    # the user's bound (environment, profile, prefect.toml) when set, else samseg's
    chosen = "startup_timeout_seconds" in get_current_settings().server.ephemeral.model_fields_set
    try:
        with _stderr_to(server_log()):
            server.start(timeout=None if chosen else SERVER_START_S)
    except (RuntimeError, httpx.HTTPError) as exc:  # Prefect's "Timed out while attempting to connect …"
        from samseg.core.errors import UnavailableError, one_line

        server.stop()  # Prefect leaves a server that did not answer running
        raise UnavailableError(f"Prefect's temporary server did not start ({one_line(exc)}); its log: {server_log()}. "
                               "Set PREFECT_API_URL to a running server, or use --orchestrator local") from None
    finally:
        done.set()
        poller.join()
        guard_new()
    return server.api_url


def server_log() -> str:
    """Where the temporary server's own output goes: `$SAMSEG_HOME/logs/prefect-temporary-server.log`.
    Not the terminal: a stop signal reaches the server with samseg's process group, and under
    load it prints its database session's traceback while it dies — after samseg's one line."""
    from samseg.sam.files import samseg_home

    path = samseg_home() / "logs" / "prefect-temporary-server.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path)


@contextlib.contextmanager
def _stderr_to(path: str) -> Iterator[None]:
    """fd 2 pointed at `path` while a child is started (it inherits it), then restored. Prefect
    starts its server with this process's stdout/stderr and offers no other choice."""
    sys.stderr.flush()
    saved = os.dup(2)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(log, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(log)


def watch(parent_pid: int, child_pid: int) -> int:
    """Poll until the parent or the child is gone; if the parent went first, stop the child."""
    while pid_alive(child_pid):
        if os.getppid() != parent_pid or not pid_alive(parent_pid):
            _stop(child_pid)
            return 0
        time.sleep(POLL_S)
    return 0


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


if __name__ == "__main__":  # python -m samseg.apps.watchdog PARENT_PID CHILD_PID
    sys.exit(watch(int(sys.argv[1]), int(sys.argv[2])))
