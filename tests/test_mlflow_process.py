"""samseg's MLflow process (samseg.edges.mlflow.process): the command's MLflow calls run in a
child that imports mlflow while the command computes. Real processes: the command as
`samseg.apps.cli.run` starts it, a real SQLite store."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlflow_store import sqlite_uri
from samseg.edges.mlflow.client import TrackingError

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny-random", "--preset", "smoke", "--points-per-side", "4", "--device", "cpu", "-q",
        "--orchestrator", "local"]  # this process's own stop handling, whatever Prefect the environment names
# samseg.apps.cli.run's own steps, and then whether the command's process imported mlflow
COMMAND = """
import os
import sys
from samseg.edges.mlflow import process
process.allow()
from samseg.apps.cli import main
rc = main(sys.argv[1:])
print("mlflow in the command's process:", "mlflow" in sys.modules)
print("pid:", os.getpid())
sys.exit(rc)
"""


def _env(tmp_path: Path) -> dict[str, str]:
    # a store that exists (empty): what is looked up there is not found, rather than the store itself
    env = {**os.environ, "MLFLOW_TRACKING_URI": sqlite_uri(tmp_path / "mlflow.db"), "SAMSEG_HOME": str(tmp_path / "home")}
    env.pop("PREFECT_API_URL", None)
    return env


def _command(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", COMMAND, *argv], cwd=REPO, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=600)


def test_a_tracked_segment_and_recluster_log_everything_without_importing_mlflow_in_the_command(photos, tmp_path):
    from mlflow import MlflowClient

    image, out, cache = photos / "building.jpg", tmp_path / "out", tmp_path / "cache"
    first = _command(tmp_path, "segment", str(image), "--out", str(out), "--cache", str(cache), *TINY)
    assert first.returncode == 0, first.stderr
    assert "mlflow in the command's process: False" in first.stdout
    client = MlflowClient(tracking_uri=_env(tmp_path)["MLFLOW_TRACKING_URI"])
    [seg] = client.search_runs([client.get_experiment_by_name("samseg").experiment_id])
    again = _command(tmp_path, "recluster", seg.info.run_id[:8], "--eps", "0.2", "--out", str(tmp_path / "re"),
                     "--cache", str(cache))
    assert again.returncode == 0, again.stderr
    assert "mlflow in the command's process: False" in again.stdout
    runs = client.search_runs([seg.info.experiment_id], order_by=["attributes.start_time DESC"])
    new = runs[0]
    assert new.info.run_id != seg.info.run_id and new.info.status == "FINISHED"
    assert new.data.params["cluster.eps"] == "0.2" and new.data.tags["samseg.parent_run_id"] == seg.info.run_id
    logged = {f.path for f in client.list_artifacts(new.info.run_id)}
    assert {"summary.json", "labels.png", "masks.json", "embeddings.npy"} <= logged


def test_a_tracked_batch_and_its_recluster_are_owned_by_the_command_not_by_mlflows_process(photos, tmp_path):
    """The batch run's pid tag is what a later batch's orphan sweep goes by: the command's pid."""
    from mlflow import MlflowClient

    from samseg.edges.run_schema import KIND_BATCH, TAG_KIND, TAG_PID

    src = tmp_path / "in"
    src.mkdir()
    for name in ("building.jpg", "corgi.jpg"):
        (src / name).write_bytes((photos / name).read_bytes())
    res = _command(tmp_path, "segment", str(src), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "c"), *TINY)
    assert res.returncode == 0, res.stderr
    assert "mlflow in the command's process: False" in res.stdout
    client = MlflowClient(tracking_uri=_env(tmp_path)["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("samseg").experiment_id
    [batch] = client.search_runs([exp], f"tags.`{TAG_KIND}` = '{KIND_BATCH}'")
    assert batch.info.status == "FINISHED" and batch.data.tags[TAG_PID] == res.stdout.split("pid: ")[1].strip()
    again = _command(tmp_path, "recluster", batch.info.run_id[:8], "--eps", "0.2", "--out", str(tmp_path / "re"),
                     "--cache", str(tmp_path / "c"))
    assert again.returncode == 0, again.stderr
    assert "mlflow in the command's process: False" in again.stdout
    [new] = [r for r in client.search_runs([exp], f"tags.`{TAG_KIND}` = '{KIND_BATCH}'") if r.info.run_id != batch.info.run_id]
    assert new.info.status == "FINISHED" and new.data.tags[TAG_PID] == again.stdout.split("pid: ")[1].strip()
    assert len(client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{new.info.run_id}'")) == 2


def test_an_error_raised_in_mlflows_process_keeps_its_type_and_exit_code(tmp_path):
    """A prefix of no run: RunRefError from the child, a usage error (2) in one line, as in-process."""
    res = _command(tmp_path, "recluster", "abcd1234", "--out", str(tmp_path / "o"))
    assert res.returncode == 2, res.stderr
    assert "no MLflow run id starts with abcd1234" in res.stderr and "Traceback" not in res.stderr


CHILD = """
import sys
from samseg.edges.mlflow import process, tracking
process.allow()
with process.started():
    try:
        tracking.resolve_run_id("abcd")  # a prefix of no run: looked up, and refused, in the child
    except Exception as exc:
        print(type(exc).__name__, "|", " ".join(getattr(exc, "__notes__", [""])).splitlines()[0])
    process._child._proc.kill()  # the child dies (OOM killer, a crash)
    try:
        tracking.image_params("0" * 32)
    except Exception as exc:
        print(type(exc).__name__, "|", exc)
"""


def test_a_dead_mlflow_process_is_one_tracking_error_and_an_error_carries_where_it_was_raised(tmp_path):
    res = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, env=_env(tmp_path), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    short, dead = res.stdout.splitlines()
    assert short == "RunRefError | in samseg's MLflow process:"
    assert dead.startswith("TrackingError | samseg's MLflow process ended (exit code -9)")


class _OwnConstructor(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code}: {text}")


def test_an_error_that_does_not_survive_pickling_comes_back_as_its_one_line():
    from samseg.edges.mlflow.process import _pickled

    ok, exc = pickle.loads(_pickled((False, _OwnConstructor(7, "store locked"))))
    assert not ok and isinstance(exc, TrackingError) and str(exc) == "_OwnConstructor: 7: store locked"
    assert pickle.loads(_pickled((True, {"run": "abc"}))) == (True, {"run": "abc"})


def _group(pgid: int) -> list[int]:
    """The live processes of process group `pgid` (a zombie has ended: whoever reaps it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.getpgid(int(entry.name)) == pgid:
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    pids.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return pids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_or_killed_tracked_command_leaves_no_mlflow_process_behind(photos, tmp_path, sig):
    """The child ignores SIGTERM/Ctrl-C (the command gives a call in flight its grace time): a
    stopped command kills it, and a killed command's child ends when its pipe closes."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "samseg.apps.cli", "segment", str(photos), "--out", str(out),
                             "--cache", str(tmp_path / "c"), *TINY], cwd=REPO, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        def cmdline(pid: int) -> bytes:
            try:
                return Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:  # it ended meanwhile
                return b""

        def child_up() -> bool:  # the MLflow process itself (spawn's resource tracker starts before it)
            return any(b"spawn_main" in cmdline(pid) for pid in _group(proc.pid))

        while not child_up() and proc.poll() is None:
            assert time.monotonic() < deadline, "no MLflow process started"
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, sig) if sig == signal.SIGTERM else os.kill(proc.pid, sig)
        _stdout, stderr = proc.communicate(timeout=60)  # a hang detector, not a speed target
        deadline = time.monotonic() + 60
        while _group(proc.pid):
            assert time.monotonic() < deadline, f"left behind: {_group(proc.pid)}"
            time.sleep(0.1)
    finally:
        for pid in _group(proc.pid):
            os.kill(pid, signal.SIGKILL)
    if sig == signal.SIGTERM:
        assert proc.returncode == 143, stderr
        assert "Traceback" not in stderr


def test_no_mlflow_process_to_be_had_leaves_the_calls_in_the_command(monkeypatch, tmp_path):
    """A spawn that fails (a main module without its guard, no /dev/shm): the command goes on,
    its MLflow calls made where they always were."""
    from samseg.edges.mlflow import process, tracking

    def no_child() -> None:
        raise RuntimeError("An attempt has been made to start a new process before ... bootstrapping phase")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", _env(tmp_path)["MLFLOW_TRACKING_URI"])
    monkeypatch.setattr(process, "_allowed", True)
    monkeypatch.setattr(process, "_Child", no_child)
    with process.started():
        assert process._child is None
        with pytest.raises(TrackingError, match="no MLflow run id starts with abcd") as err:  # looked up, here
            tracking.resolve_run_id("abcd")
    assert not getattr(err.value, "__notes__", None)  # raised in this process, not in a child


SLOW = '''
import time
from pathlib import Path

from samseg.edges.mlflow.process import in_mlflow_process


@in_mlflow_process
def slow(started: str, seconds: float, answer: str) -> str:
    Path(started).write_text("in the call")  # the test's cue to send Ctrl-C
    time.sleep(seconds)
    return answer
'''

STOPPED = """
import os, signal, sys, threading, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import slowcalls
from samseg.edges.mlflow import process

cue = Path(sys.argv[1]) / "started"
def ctrl_c():
    while not cue.exists():
        time.sleep(0.02)
    os.kill(os.getpid(), signal.SIGINT)

if __name__ == "__main__":
    process.allow()
    with process.started():
        threading.Thread(target=ctrl_c, daemon=True).start()
        try:
            slowcalls.slow(str(cue), float(sys.argv[2]), "first")
        except KeyboardInterrupt:
            print("interrupted")
        print("in step:", not process._child._gone)
        print("next answer:", slowcalls.slow(str(Path(sys.argv[1]) / "again"), 0, "second"))
"""


@pytest.mark.parametrize("seconds, grace, in_step", [(1.0, "60", True), (30.0, "0.2", False)])
def test_ctrl_c_during_a_call_lets_it_finish_in_its_grace_and_the_next_call_gets_its_own_answer(tmp_path, seconds, grace,
                                                                                               in_step):
    """A stop while the command waits: the call finishes in the child (its run whole) within the
    grace time and the pipe stays in step; past the grace, later calls run in the command, never
    reading the stopped call's answer as theirs."""
    (tmp_path / "slowcalls.py").write_text(SLOW)
    (tmp_path / "stopped.py").write_text(STOPPED)
    res = subprocess.run([sys.executable, str(tmp_path / "stopped.py"), str(tmp_path), str(seconds)], cwd=REPO,
                         env={**_env(tmp_path), "SAMSEG_STOP_GRACE_S": grace}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["interrupted", f"in step: {in_step}", "next answer: second"]


RECORD = """
import json, sys
from samseg.edges.mlflow import process, tracking
from samseg.edges.spill import SpilledEntries
from mlflow import MlflowClient

pickled = []
plain = SpilledEntries.__reduce__
SpilledEntries.__reduce__ = lambda self: pickled.append(1) or plain(self)  # the entries must stay on this side of the pipe
entries = SpilledEntries()
entries.begin(0, ["s3://u:secret@b/a.png", "/in/b.png"])
entries.add(0, [{"image": "/in/b.png", "status": "completed"}, {"image": "s3://u:secret@b/a.png", "status": "failed"}])
process.allow()
with process.started():
    batch = tracking.start_batch_run("spilled", "batch-1", {"n_images": 2}, {})
    tracking.end_run(batch, "FAILED", {"images": entries, "failed": 1, "succeeded": 1})
    assert process._child is not None
client = MlflowClient()
record = tracking.batch_record(client, client.get_run(batch))
print(len(pickled), json.dumps([[e["image"], e["status"]] for e in record["images"]]), client.get_run(batch).data.metrics["images"])
"""


def test_a_sharded_batchs_record_reaches_mlflows_process_as_a_file_not_as_its_entries(tmp_path):
    """The batch's record is written (scrubbed) on the command's side and logged by the child:
    a million spilled entries never cross the pipe as one pickled list."""
    res = subprocess.run([sys.executable, "-c", RECORD], cwd=REPO, env={**_env(tmp_path), "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    pickled, rest = res.stdout.strip().splitlines()[-1].split(" ", 1)
    images, n = rest.rsplit(" ", 1)
    assert pickled == "0" and "secret" not in images and float(n) == 2
    assert [s for _, s in json.loads(images)] == ["failed", "completed"]  # input order
