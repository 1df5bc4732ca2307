"""A tracking server that stops answering mid-batch: Ctrl-C and SIGTERM still win.

The session's real `mlflow server`, reached through a relay (servers.freezable) that is frozen
while a real `samseg segment` batch logs through it: connections are still accepted and nothing
answers, as with a server stopped by SIGSTOP. The command must exit 130/143 within the stop's
grace, not when the server resumes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from samseg.edges.owned_files import LEDGER

from test_hostile_signals import _images, _wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = ["--model", "tiny-random", "--preset", "smoke", "--points-per-side", "4", "--device", "cpu", "-q",
        "--orchestrator", "local"]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_stop_wins_while_the_tracking_server_is_frozen(mlflow_server, moto_s3, tmp_path: Path, sig: int, code: int) -> None:
    from servers import freezable

    _images(tmp_path / "in", 8)
    out = tmp_path / "out"
    argv = ["segment", str(tmp_path / "in"), "--out", str(out), "--cache", str(tmp_path / "cache"), *TINY]
    with freezable(mlflow_server.tracking_uri) as (uri, freeze):
        # MLflow's HTTP timeout far above the hang detector below: only the signal may end the command
        env = {**os.environ, **moto_s3.env, "MLFLOW_TRACKING_URI": uri, "MLFLOW_HTTP_REQUEST_TIMEOUT": "300"}
        env.pop("PREFECT_API_URL", None)
        proc = subprocess.Popen([sys.executable, "-m", "samseg.apps.cli", *argv], cwd=REPO_ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _wait_for(lambda: (out / "img00" / "summary.json").exists() or proc.poll() is not None, 240, "the first image")
            assert proc.poll() is None, proc.communicate()
            freeze()  # mid-batch: every MLflow call now hangs (accepted, never answered)
            time.sleep(3)  # the command reaches its next MLflow call (img00's run) and waits on it
            assert proc.poll() is None, proc.communicate()
            proc.send_signal(sig)
            # MLflow's own timeout (300 s here) must not be what ends the command: 30 s is a
            # hang detector, far under the first HTTP timeout, not a speed target.
            _stdout, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    assert "interrupted" in stderr
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != LEDGER]  # no half-written dir


FIRST_USE = """
import sys
from samseg.edges.mlflow.tracking import end_run, start_batch_run
run = start_batch_run("race", "batch-" + sys.argv[1], {"k": sys.argv[1]}, {})
end_run(run, "FINISHED")
print(run)
"""


def test_two_first_runs_at_once_on_a_fresh_sqlite_store_both_finish(tmp_path: Path) -> None:
    """Commands started together on a store that does not exist yet: MLflow's schema migration
    raced ("duplicate column name: step") and the second command died; now both finish."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"}
    (tmp_path / "fresh").mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", FIRST_USE, str(k)], cwd=REPO_ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(4)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    assert all(rc == 0 for rc, _, _ in results), [err[-800:] for rc, _, err in results if rc]
    assert len({out.strip() for _, out, _ in results}) == 4  # four runs, one each
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir()) == ["mlflow.db"]  # no lock file left


def test_a_tracking_failure_after_the_write_reports_the_images_written_not_failed(tmp_path: Path, monkeypatch) -> None:
    """The artifact store fills (or the server dies) while image runs are logged: every OUT/<img>
    is complete, so each image is reported written-but-not-logged (a line each, and a count),
    not failed; the batch summary says so; a batch run that cannot be ended loses no report."""
    import json

    import numpy as np
    from PIL import Image

    from cli_run import run_cli
    from samseg.edges.mlflow import client as mlflow_client, tracking

    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        Image.fromarray(np.full((32, 40, 3), 40 * i, np.uint8)).save(src / f"t{i}.png")

    def full(*_a, **_k):
        raise mlflow_client.TrackingError("MLflow run x: cannot log artifacts (No space left on device)")

    monkeypatch.setattr(tracking, "log_image_run", full)
    monkeypatch.setattr(tracking, "end_run", full)
    rc, stdout, stderr = run_cli(["segment", str(src), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "c"),
                                  "--experiment", f"untracked-{os.getpid()}", *TINY])
    assert rc == 1
    assert "t0.png:" in stdout and "t1.png:" in stdout  # a line per image, as for any written image
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert sum("outputs written, not logged to MLflow" in line for line in errors) == 2, stderr
    assert any("batch run" in line and "not ended" in line for line in errors), stderr
    assert "2 of 2 images were written but not logged to MLflow" in stderr and "images failed" not in stderr
    report = json.loads((tmp_path / "out" / "batch_summary.json").read_text())
    assert report["failed"] == 0 and report["untracked"] == 2
    assert all(r["status"] == "completed" and "No space left" in r["tracking_error"] for r in report["images"])
    assert all((tmp_path / "out" / f"t{i}" / "summary.json").is_file() for i in range(2))
