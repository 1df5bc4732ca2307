"""Hostile and broken S3 against `samseg segment` (moto's HTTP server on 127.0.0.1)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from cli_run import run_cli

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = ["--model", "tiny-random", "--preset", "smoke", "--points-per-side", "4", "--device", "cpu", "--no-track"]


def _png_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_verbose_log_carries_no_credentials(prefect_api, s3_bucket, s3_env, tmp_path: Path) -> None:
    client = s3_env.client()
    client.put_object(Bucket=s3_bucket, Key="in/a.png", Body=_png_bytes(1))
    env = {**prefect_api.env, **s3_env.env, "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEXAMPLESESSIONTOKEN"}
    proc = subprocess.run([sys.executable, "-m", "samseg.apps.cli", "segment", f"s3://{s3_bucket}/in/", "--out",
                           str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), "-v", *TINY],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "botocore" in log  # the debug log is there ...
    assert env["AWS_SESSION_TOKEN"] not in log and env["AWS_ACCESS_KEY_ID"] not in log  # ... without credentials
    assert env["AWS_SECRET_ACCESS_KEY"] not in log


def test_one_hostile_key_fails_alone(prefect_api, s3_bucket, s3_env, tmp_path: Path) -> None:
    client = s3_env.client()
    client.put_object(Bucket=s3_bucket, Key="weird/good.png", Body=_png_bytes(2))
    client.put_object(Bucket=s3_bucket, Key="weird/../escape.png", Body=_png_bytes(3))
    client.put_object(Bucket=s3_bucket, Key="weird/ok2.png", Body=_png_bytes(4))
    rc, stdout, stderr = run_cli(["segment", f"s3://{s3_bucket}/weird/", f"s3://{s3_bucket}/weird/../escape.png",
                                  "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "c"), *TINY])
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert rc == 1 and len(errors) == 1 and f"s3://{s3_bucket}/weird/../escape.png" in errors[0], stderr  # bucket named
    assert (tmp_path / "out" / "good" / "labels.png").is_file() and (tmp_path / "out" / "ok2" / "labels.png").is_file()
    assert "1 of 3 images failed" in stderr


def test_missing_output_bucket_is_found_before_computing(prefect_api, s3_env, tmp_path: Path) -> None:
    img = tmp_path / "a.png"
    img.write_bytes(_png_bytes(5))
    for out in ("s3://no-such-bucket-here/out", "s3://"):
        rc, stdout, stderr = run_cli(["segment", str(img), "--out", out, "--cache", str(tmp_path / "c"), *TINY])
        assert rc == 2, (out, stderr)
        assert "does not exist" in stderr or "no bucket" in stderr
        assert not (tmp_path / "c").exists()  # nothing was computed (no cache entry written)


def test_unreachable_output_endpoint_is_one_line_exit_1_not_a_usage_error(tmp_path: Path, monkeypatch) -> None:
    """--out s3://… whose endpoint refuses the connection (or rejects the credentials): a
    network error, said in one line with exit 1 — not exit 2 with the whole usage text."""
    from servers import free_port

    img = tmp_path / "a.png"
    img.write_bytes(_png_bytes(5))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens here
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1"), ("SAMSEG_S3_RETRIES", "0"), ("SAMSEG_S3_CONNECT_TIMEOUT", "1")):
        monkeypatch.setenv(key, value)
    rc, stdout, stderr = run_cli(["segment", str(img), "--out", "s3://bucket/out", "--cache", str(tmp_path / "c"), *TINY])
    assert rc == 1, stderr
    assert "usage:" not in stderr and len(stderr.strip().splitlines()) == 1 and "s3://bucket/out" in stderr
    assert not (tmp_path / "c").exists()  # nothing was computed


def test_dead_endpoint_at_the_end_still_prints_every_result(prefect_api, tmp_path: Path, monkeypatch) -> None:
    import samseg.engine.batch as batch
    from samseg.edges.storage import StorageError

    def dead(out, report):
        raise StorageError("s3://bkt/out/batch_summary.json: write failed after retries: Could not connect")

    monkeypatch.setattr(batch, "write_batch_summary", dead)
    for i in range(2):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / f"p{i}.png").write_bytes(_png_bytes(10 + i))
    (tmp_path / "in" / "bad.png").write_bytes(b"not a png")
    rc, stdout, stderr = run_cli(["segment", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--cache",
                                  str(tmp_path / "c"), *TINY])
    assert rc == 1
    assert "p0.png:" in stdout and "p1.png:" in stdout
    assert "1 of 3 images failed" in stderr and "batch_summary.json not written" in stderr
    assert os.path.isfile(tmp_path / "out" / "p0" / "labels.png")


def test_black_hole_endpoint_is_given_a_bounded_number_of_tries(monkeypatch) -> None:
    """An endpoint that accepts connections and never answers: samseg's read timeout and retry
    budget (storage._DEFAULT_*) end the read, in one line, after exactly 1 + retries tries —
    not MLflow-style minutes (botocore's own default is a 60 s read timeout and 4 tries)."""
    from samseg.edges import storage
    from servers import black_hole

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SAMSEG_S3_READ_TIMEOUT", "1")  # the budget's shape, not its length, is under test
    with black_hole() as (endpoint, accepted):
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        try:
            storage.read_bytes("s3://bucket/in/a.png")
            raise AssertionError("a black-hole endpoint answered")
        except storage.StorageError as exc:
            assert "\n" not in str(exc) and "s3://bucket/in/a.png" in str(exc)
        assert len(accepted) == 1 + storage._DEFAULT_RETRIES


def test_attack_a_users_object_under_an_s3_output_is_never_overwritten(s3_bucket, s3_env, tmp_path: Path) -> None:
    """What a local OUT/<name> folder of the user's gets, an S3 prefix gets: refused before compute,
    one line, the object untouched; the other images written; samseg's own publish is replaced."""
    client = s3_env.client()
    src = tmp_path / "in"
    src.mkdir()
    for i, name in enumerate(("a.png", "b.png")):
        (src / name).write_bytes(_png_bytes(10 + i))
    client.put_object(Bucket=s3_bucket, Key="out/a/labels.png", Body=b"my own labels, not samseg's")
    client.put_object(Bucket=s3_bucket, Key="out/b/notes.txt", Body=b"mine, beside samseg's files")  # no clash: kept
    argv = ["segment", str(src), "--out", f"s3://{s3_bucket}/out", "--cache", str(tmp_path / "c"), "--orchestrator",
            "local", "-q", *TINY]
    rc, stdout, stderr = run_cli(argv)
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert rc == 1 and len(errors) == 1 and "out/a: holds 'labels.png'" in errors[0] and "did not write" in errors[0], stderr
    assert client.get_object(Bucket=s3_bucket, Key="out/a/labels.png")["Body"].read() == b"my own labels, not samseg's"
    assert {o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="out/a/")["Contents"]} == {"out/a/labels.png"}
    assert {"out/b/_SUCCESS", "out/b/notes.txt"} <= {o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="out/b/")["Contents"]}
    rc, stdout, stderr = run_cli(argv[:1] + [str(src / "b.png")] + argv[2:])  # samseg's own dir: replaced
    assert rc == 0, stderr


def test_attack_an_object_put_there_after_the_check_stops_the_publish_before_any_write(s3_bucket, s3_env,
                                                                                        tmp_path: Path) -> None:
    from samseg.edges.storage import StorageRefused, upload_dir

    client = s3_env.client()
    local = tmp_path / "d"
    local.mkdir()
    (local / "labels.png").write_bytes(b"samseg's")
    upload_dir(local, f"s3://{s3_bucket}/o/x")  # samseg's publish: its manifest lists labels.png
    client.put_object(Bucket=s3_bucket, Key="o/x/overlay.png", Body=b"mine")  # the user's, in between
    (local / "labels.png").write_bytes(b"samseg's, again")
    (local / "overlay.png").write_bytes(b"samseg's overlay")
    try:
        upload_dir(local, f"s3://{s3_bucket}/o/x")
        raise AssertionError("the publish did not refuse")
    except StorageRefused as exc:
        assert "'overlay.png'" in str(exc)
    assert client.get_object(Bucket=s3_bucket, Key="o/x/labels.png")["Body"].read() == b"samseg's"  # nothing written
    assert client.get_object(Bucket=s3_bucket, Key="o/x/overlay.png")["Body"].read() == b"mine"
