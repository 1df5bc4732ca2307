"""Hostile files and settings against `samseg segment` (in-process CLI, tiny-random)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_run import run_cli

TINY = ["--model", "tiny-random", "--preset", "smoke", "--points-per-side", "4", "--device", "cpu"]


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_1x100000_png_gets_a_clear_message(prefect_api, tmp_path: Path) -> None:
    thin = tmp_path / "thin.png"
    Image.fromarray(np.zeros((1, 100_000, 3), np.uint8)).save(thin)
    rc, _, stderr = run_cli(["segment", str(thin), "--out", str(tmp_path / "o"), "--no-track", *TINY])
    assert rc == 1 and "thin.png" in stderr and "too thin for SAM" in stderr and "height and width" not in stderr


def test_max_pixels_env_above_pils_bomb_limit_is_honoured(tmp_path: Path, monkeypatch) -> None:
    from samseg.edges.images import decode_image

    monkeypatch.setenv("SAMSEG_MAX_PIXELS", str(300_000_000))
    big = tmp_path / "big.png"
    Image.new("L", (18_000, 10_000)).save(big)  # 180 MP > PIL's 178,956,970 bomb limit
    img = decode_image(big.read_bytes(), "big.png")
    assert img.hw == (10_000, 18_000)


@pytest.mark.parametrize("make", ["dangling_symlink", "unmatched_glob", "missing_file"])
def test_expected_io_errors_are_printed_once_and_not_unexpected(prefect_api, tmp_path: Path, make: str) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(np.full((32, 40, 3), 90, np.uint8)).save(good)
    bad = {"dangling_symlink": tmp_path / "link.png", "unmatched_glob": tmp_path / "nothing-*.png",
           "missing_file": tmp_path / "gone.png"}[make]
    if make == "dangling_symlink":
        os.symlink(tmp_path / "target-that-is-gone.png", bad)
    rc, _, stderr = run_cli(["segment", str(good), str(bad), "--out", str(tmp_path / "o"), "--no-track", *TINY])
    errors = _errors(stderr)
    assert rc == 1 and len(errors) == 1, stderr
    assert "unexpected" not in errors[0].lower() and bad.name in errors[0]
    assert stderr.count(bad.name) == 1, stderr  # no second (logger) line


def test_cache_that_is_a_file_warns_once_and_runs_without_it(prefect_api, tmp_path: Path) -> None:
    img = tmp_path / "a.png"
    Image.fromarray(np.full((32, 40, 3), 50, np.uint8)).save(img)
    not_a_dir = tmp_path / "cache-file"
    not_a_dir.write_text("a regular file")
    rc, stdout, stderr = run_cli(["segment", str(img), "--out", str(tmp_path / "o"), "--cache", str(not_a_dir),
                                  "--no-track", *TINY])
    assert rc == 0, stderr
    assert stderr.count("warning: stage cache") == 1 and "running without the cache" in stderr
    assert not_a_dir.read_text() == "a regular file" and (tmp_path / "o" / "a" / "labels.png").is_file()


def test_samseg_home_that_is_a_file(prefect_api, tmp_path: Path, monkeypatch) -> None:
    img = tmp_path / "a.png"
    Image.fromarray(np.full((32, 40, 3), 60, np.uint8)).save(img)
    home = tmp_path / "home-file"
    home.write_text("x")
    monkeypatch.setenv("SAMSEG_HOME", str(home))
    monkeypatch.delenv("SAMSEG_CACHE", raising=False)
    rc, _, stderr = run_cli(["segment", str(img), "--out", str(tmp_path / "o"), "--no-track", *TINY])
    assert rc == 0 and "warning: stage cache" in stderr and "Errno" not in stderr


def test_no_cache_leaves_no_cache_behind(prefect_api, tmp_path: Path, monkeypatch) -> None:
    import tempfile

    img = tmp_path / "a.png"
    Image.fromarray(np.full((32, 40, 3), 70, np.uint8)).save(img)
    # a temp dir of this test's own: other tests' --no-cache runs (other workers) come and go in the shared one
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    rc, stdout, stderr = run_cli(["segment", str(img), "--out", str(tmp_path / "o"), "--no-cache", "--no-track", *TINY])
    assert rc == 0, stderr
    assert not list(private.glob("samseg-nocache-*"))
    assert "warning" not in stderr


def test_killed_batch_run_is_not_left_running_and_rerun_logs_no_duplicates(prefect_api, tmp_path: Path) -> None:
    """A batch whose process died (its pid is gone) is resumed by the same command, not duplicated."""
    from mlflow import MlflowClient

    from samseg.edges.mlflow import client as mlflow_client, tracking
    from samseg.edges.run_schema import TAG_BATCH_KEY, TAG_HOST, TAG_PID

    exp = f"hostile-kill-{os.getpid()}"
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        Image.fromarray(np.full((32, 40, 3), 20 * i, np.uint8)).save(src / f"k{i}.png")
    argv = ["segment", str(src), "--out", str(tmp_path / "o"), "--experiment", exp, *TINY]
    assert run_cli(argv)[0] == 0
    client = MlflowClient(mlflow_client.tracking_uri())
    exp_id = client.get_experiment_by_name(exp).experiment_id
    (batch,) = client.search_runs([exp_id], "tags.`samseg.kind` = 'batch'")
    # As if the process had been killed mid-batch: still RUNNING, its pid dead.
    client.update_run(batch.info.run_id, status="RUNNING")
    client.set_tag(batch.info.run_id, TAG_PID, str(2**22 + 99))
    # ... and one image's run cut off while its artifacts uploaded: RUNNING too.
    cut = client.search_runs([exp_id], "tags.`samseg.kind` = 'image'")[0].info.run_id
    client.update_run(cut, status="RUNNING")
    other = tracking.start_batch_run(exp, "other", {}, {TAG_HOST: batch.data.tags[TAG_HOST], TAG_PID: str(2**22 + 98),
                                                        TAG_BATCH_KEY: "x"})
    from samseg.edges.mlflow.shard_runs import start_shard_run

    shard = start_shard_run(exp, other, "shard-00000-try1", {}, None, str(tmp_path / "o"))
    client.set_tag(shard, TAG_PID, str(2**22 + 97))  # its process (on this host) died with the batch
    live = start_shard_run(exp, other, "shard-00001-try1", {}, None, str(tmp_path / "o"))
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # ... this one still runs
    client.set_tag(live, TAG_PID, str(worker.pid))
    try:
        assert run_cli(argv)[0] == 0
    finally:
        worker.kill()
        worker.wait()
    batches = client.search_runs([exp_id], "tags.`samseg.kind` = 'batch'")
    assert len(batches) == 2  # resumed, not a third
    assert client.get_run(batch.info.run_id).info.status == "FINISHED"
    assert client.get_run(other).info.status == "KILLED"
    assert client.get_run(cut).info.status == "FAILED"  # the orphan image run is ended, not RUNNING forever
    assert client.get_run(shard).info.status == "KILLED"  # an orphan's shard run too, as the batch would have
    assert client.get_run(live).info.status == "RUNNING"  # never one whose process runs: it ends itself
    images = client.search_runs([exp_id], "tags.`samseg.kind` = 'image' and attributes.status = 'FINISHED'")
    assert len(images) == 2, [r.data.tags.get("samseg.out_dir") for r in images]  # the cut-off image logged again
