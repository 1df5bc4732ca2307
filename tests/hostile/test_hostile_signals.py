"""Signals a user's tools send: SIGTERM (timeout, docker stop, systemd, CI) and SIGKILL.

Real subprocesses of `samseg segment`, as users run it.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from samseg.edges import owned_files

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = ["--model", "tiny-random", "--preset", "smoke", "--points-per-side", "4", "--device", "cpu", "--no-track", "-q"]


def _images(folder: Path, n: int, side: int = 96) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def _samseg(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "samseg.apps.cli", *args], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(pred, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_sigterm_stops_the_batch_like_ctrl_c_and_a_rerun_resumes(prefect_api, tmp_path: Path) -> None:
    n = 6  # enough that the signal lands mid-batch (it follows the first image)
    _images(tmp_path / "in", n)
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ["segment", str(tmp_path / "in"), "--out", str(out), "--cache", str(cache), *TINY]
    proc = _samseg(argv, prefect_api.env)
    try:
        # each image's line as it finishes, also to a pipe: a log shows what a stopped batch finished
        assert select.select([proc.stdout], [], [], 240)[0], "no line after 240 s"
        first = proc.stdout.readline()
        assert first.startswith("img00.png: ") and proc.poll() is None, (first, proc.communicate())
        proc.send_signal(signal.SIGTERM)
        at_signal = len(list(out.glob("*/summary.json")))
        stdout, stderr = proc.communicate(timeout=30)  # a hang detector, not a speed target
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, stderr
    assert "img00.png: " not in stdout  # printed once
    assert "TypeError" not in stderr and "Traceback" not in stderr
    done = sorted(p.parent.name for p in out.glob("*/summary.json"))
    assert 1 <= len(done) <= at_signal + 1 and len(done) < n, done  # at most the image in flight, nothing new
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != owned_files.LEDGER]  # no half-written dir
    assert owned_files.incomplete_since(str(out)) is not None  # readers see the batch did not finish
    rerun = subprocess.run([sys.executable, "-m", "samseg.apps.cli", *argv], cwd=REPO_ROOT, env=prefect_api.env,
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert len(list(out.glob("*/summary.json"))) == n
    assert owned_files.incomplete_since(str(out)) is None
    for name in done:  # finished images come from the cache
        assert f"{name}.png:" in rerun.stdout and "(cache hits: 2/2)" in next(
            line for line in rerun.stdout.splitlines() if line.startswith(f"{name}.png:"))


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(d.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_kill9_leaves_no_temporary_prefect_server_behind(tmp_path: Path) -> None:
    _images(tmp_path / "in", 6)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    # --orchestrator prefect without PREFECT_API_URL: the flows on Prefect's temporary server
    proc = _samseg(["segment", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "c"),
                    "--orchestrator", "prefect", *TINY], env)
    server = None
    try:
        def server_up() -> bool:  # the server and its watchdog (started within ~10 ms of it)
            nonlocal server
            kids = _children(proc.pid)
            found = [p for p in kids if "uvicorn" in _cmdline(p)]
            server = found[0] if found and any("samseg.apps.watchdog" in _cmdline(p) for p in kids) else None
            return server is not None or proc.poll() is not None

        _wait_for(server_up, 120, "the temporary Prefect server")
        assert server is not None, proc.communicate()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        _wait_for(lambda: not _alive(server), 15, f"the orphaned server {server} to stop")
    finally:
        if server is not None and _alive(server):
            os.kill(server, signal.SIGKILL)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _group(pgid: int) -> list[int]:
    """The live processes of process group `pgid`."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.getpgid(int(entry.name)) == pgid:
                pids.append(int(entry.name))
        except (ProcessLookupError, PermissionError):
            continue
    return pids


def test_sigterm_to_the_process_group_with_a_temporary_prefect_server_exits_143(tmp_path: Path) -> None:
    """What a terminal's Ctrl-C or systemd does: the signal reaches samseg and Prefect's temporary
    server at once. The server dies first, and the flow's next call fails to connect; that is the
    stop itself, so the command ends with 143 and the interrupted line, not 'unexpected ConnectError'
    after a minute of Prefect's retries."""
    _images(tmp_path / "in", 8)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               SAMSEG_HOME=str(tmp_path / "home"))
    proc = _samseg(["segment", str(tmp_path / "in"), "--out", str(out), "--cache", str(tmp_path / "c"),
                    "--orchestrator", "prefect", *TINY], env)
    try:
        _wait_for(lambda: (out / "img00" / "summary.json").exists() or proc.poll() is not None, 240, "the first image")
        assert proc.poll() is None, proc.communicate()
        # Whatever the dying server prints under load (its database session's traceback) goes to its
        # log, never to the terminal: its stderr is that file, not samseg's (no timing involved).
        servers = [pid for pid in _group(proc.pid) if b"uvicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert servers, "no temporary Prefect server in samseg's process group"
        log = tmp_path / "home" / "logs" / "prefect-temporary-server.log"
        assert all(os.readlink(f"/proc/{pid}/fd/2") == str(log) for pid in servers)
        os.killpg(proc.pid, signal.SIGTERM)  # samseg and the server it started share the group
        _stdout, stderr = proc.communicate(timeout=40)  # a hang detector, not a speed target
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, stderr
    assert "unexpected" not in stderr and "Traceback" not in stderr and "interrupted" in stderr


def test_sigterm_to_serve_exits_143(prefect_api, tmp_path: Path) -> None:
    """`samseg serve` stops on SIGTERM (docker stop, systemd) with the documented 143, not 0.
    The signal goes once serve says it is serving: from then on either samseg's handler (while the
    deployments register) or Prefect's runner's (once it runs) takes it, and both end in 143."""
    proc = _samseg(["serve"], {**prefect_api.env, "SAMSEG_HOME": str(tmp_path / "home")})
    seen = []
    try:
        for line in proc.stderr:  # blocks until serve speaks; pytest's timeout bounds a hang
            seen.append(line)
            if line.startswith("serving the segment"):
                break
        assert proc.poll() is None, "".join(seen)
        proc.send_signal(signal.SIGTERM)
        _stdout, stderr = proc.communicate(timeout=60)  # a hang detector, not a speed target
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, "".join(seen) + stderr[-2000:]
    assert "Traceback" not in stderr


def test_a_second_stop_signal_during_the_clean_up_does_not_escape_it(monkeypatch) -> None:
    """The process group's SIGTERM and the SIGTERM Prefect's engine sends itself again (or a second
    Ctrl-C) reach the command while it cleans up after the first: one KeyboardInterrupt, no second
    one out of the clean-up (Python would then end the process by SIGINT, exit -2, not 143)."""
    from samseg.edges import shutdown

    monkeypatch.setattr(shutdown, "_deadline", lambda: None)  # the stop's deadline would end this test process
    monkeypatch.setattr(shutdown, "_received", [])  # this process's later tests must not see a stop requested
    monkeypatch.setattr(shutdown, "_raised", [])
    with shutdown.handled():
        try:
            signal.raise_signal(signal.SIGTERM)
            raise AssertionError("the first stop signal raised nothing")
        except KeyboardInterrupt:
            signal.raise_signal(signal.SIGTERM)  # in the clean-up: noted, not raised
            signal.raise_signal(signal.SIGINT)
        assert shutdown.requested() and shutdown.exit_code() == 143
    with shutdown.handled():  # Prefect's engine took the signal (a runner's cancel): the stop raises at check()
        shutdown.received(signal.SIGTERM)
        try:
            shutdown.check()
            raise AssertionError("a stop noted elsewhere raised nothing")
        except KeyboardInterrupt:
            signal.raise_signal(signal.SIGTERM)  # in the clean-up: noted, not raised
    with shutdown.handled():  # the next command's first stop raises again
        try:
            signal.raise_signal(signal.SIGINT)
            raise AssertionError("a new stop raised nothing")
        except KeyboardInterrupt:
            assert shutdown.exit_code() == 130


HUNG_CLEAN_UP = """
import os, signal, time
from samseg.edges import shutdown

with shutdown.handled("the served deployments stay paused"):
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)
    except KeyboardInterrupt:
        time.sleep(60)  # a clean-up that hangs on a peer
"""


def test_a_stop_the_deadline_ends_says_what_this_command_left_not_another_commands() -> None:
    """The deadline's line carries the command's own stop hint (serve has no stage cache to resume from)."""
    env = {**os.environ, "SAMSEG_STOP_DEADLINE_S": "4"}  # at least the grace time + 1 s
    done = subprocess.run([sys.executable, "-c", HUNG_CLEAN_UP], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 143, done.stderr
    assert done.stderr.strip().splitlines()[-1] == ("interrupted; exiting without what still waited after 4 s "
                                                    "(the served deployments stay paused)")


STOP_INSIDE_EXEC = """
import atexit, sys
from samseg.edges import shutdown

atexit.register(lambda: print("exit handlers ran", file=sys.stderr))

def main():
    with shutdown.handled():
        try:  # the signal lands while exec() of a string runs (a dataclass or namedtuple being made)
            exec("import os, signal, time; os.kill(os.getpid(), signal.SIGTERM); time.sleep(60)")
        except KeyboardInterrupt:
            return shutdown.exit_code()
    return 0

shutdown.exit_process(main())
"""


def test_a_sigterm_landing_inside_exec_of_a_string_still_exits_143(tmp_path: Path) -> None:
    """CPython remembers a KeyboardInterrupt that unwound through exec()/eval() of a string as
    unhandled, though the command caught it, and would end a `python -m` process by SIGINT (exit
    -2): under load the process group's SIGTERM lands there now and then. The stop's exit code is
    still 143, and the exit handlers still run."""
    (tmp_path / "stopped_in_exec.py").write_text(STOP_INSIDE_EXEC)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "stopped_in_exec"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 143, done.stderr
    assert "exit handlers ran" in done.stderr


def test_ending_runs_after_a_stop_gets_what_the_deadline_leaves_not_only_the_grace(monkeypatch) -> None:
    """A publish still logging holds the MLflow process, so ending the batch run as KILLED can take
    longer than the publish's grace on a healthy store: it gets until shortly before the deadline
    (a run left RUNNING misleads `runs list` and the next rerun); a frozen peer is still cut off."""
    import time as clock

    from samseg.edges import shutdown

    monkeypatch.setenv("SAMSEG_STOP_GRACE_S", "0.1")
    monkeypatch.setenv("SAMSEG_STOP_DEADLINE_S", "60")
    monkeypatch.setattr(shutdown, "_deadline", lambda: None)  # the stop's deadline would end this test process
    monkeypatch.setattr(shutdown, "_received", [])
    monkeypatch.setattr(shutdown, "_raised", [])
    monkeypatch.setattr(shutdown, "_stopped_at", [])
    assert shutdown.left_s() == shutdown.grace_s()  # no stop yet: the grace alone
    shutdown.received(signal.SIGTERM)
    assert shutdown.left_s() > 30  # the deadline's 60 s, less what passed and the exit's margin

    def slow_end() -> str:  # ends the run after the grace has passed, well before the deadline
        clock.sleep(0.5)
        return "KILLED"

    assert shutdown.bounded(slow_end) == "KILLED"
    assert shutdown.bounded(slow_end, timeout_s=0.01) is None  # an explicit bound still cuts it off
