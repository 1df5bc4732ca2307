"""samseg.edges.mlflow.tracking: pure helpers, then a real `mlflow server` (SQLite, artifacts on moto S3)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from samseg.edges.mlflow import client as mlflow_client, compare, tracking
from samseg.core.config import SMOKE
from samseg.core.secrets import scrub_secrets
from samseg.edges.mlflow.client import TrackingError

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


# ---------------------------------------------------------------- pure


def test_scrub_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "sess-token-value-123")
    cases = {
        "postgresql://mlflow:hunter2@db:5432/mlflow": "postgresql://***@db:5432/mlflow",
        "https://user@host/x": "https://***@host/x",
        "s3://bucket/key.png": "s3://bucket/key.png",
        "s3://bucket/a@2x.png": "s3://bucket/a@2x.png",
        "https://b.s3.amazonaws.com/k.jpg?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=deadbeef&x=1":
            "https://b.s3.amazonaws.com/k.jpg?X-Amz-Credential=***&X-Amz-Signature=***&x=1",
        "https://x/y?sig=abc&token=t0k": "https://x/y?sig=***&token=***",
        f"secret is {SECRET}!": "secret is ***!",
        "tok=sess-token-value-123": "tok=***",
        "plain text, eps=0.06": "plain text, eps=0.06",
    }  # fmt: skip
    for raw, clean in cases.items():
        assert scrub_secrets(raw) == clean


def _summary(eps: float = 0.06, image_uri: str = "s3://photos/bears.jpg", **extra: Any) -> dict[str, Any]:
    cfg = SMOKE.replace(cluster={"eps": eps})
    return {
        "samseg_version": "0.1.0",
        "image": {"file_name": "bears.jpg", "uri": image_uri, "sha256": "a" * 64, "hw": [30, 40]},
        "model": {"type": "tiny-random", "checkpoint_sha256": "c" * 64, "checkpoint_path": None, "device": "cpu"},
        "config": cfg.flat(),
        "n_masks": 10,
        "n_clusters": 2,
        "n_noise": 4,
        "cluster_sizes": [4, 2],
        "seconds": {"encode": 0.5, "amg": 1.5, "pool": 0.1, "cluster": 0.01, "total": 2.11},
        "cache": {"encode": "hit", "amg": "hit", "pool": "computed"},
        "prefect_flow_run_id": "flow-run-1",
        **extra,
    }


def test_params_metrics_tags_from_summary() -> None:
    s = _summary(silhouette=0.25)
    params = tracking.run_params(s)
    assert params["model_type"] == "tiny-random" and params["amg.points_per_side"] == "8" and params["cluster.eps"] == "0.06"
    assert set(params) == set(SMOKE.flat())
    metrics = tracking.run_metrics(s)
    assert metrics["noise_fraction"] == pytest.approx(0.4) and metrics["cache_hits"] == 2.0
    assert metrics["seconds.amg"] == 1.5 and metrics["silhouette"] == 0.25 and metrics["n_clusters"] == 2.0
    assert "silhouette" not in tracking.run_metrics(_summary())  # unknown → not logged as 0
    tags = tracking.run_tags(s, "image", None, "batch123", {"team": "vision"})
    assert tags["samseg.image_sha256"] == "a" * 64 and tags["samseg.checkpoint_sha256"] == "c" * 64
    assert tags["samseg.prefect_flow_run_id"] == "flow-run-1" and tags["mlflow.parentRunId"] == "batch123"
    assert tags["samseg.cache.pool"] == "computed" and tags["team"] == "vision"
    assert "samseg.parent_run_id" not in tags


def test_tracking_uri_default_is_mlflows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert mlflow_client.tracking_uri() == "http://127.0.0.1:9"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    assert mlflow_client.tracking_uri() == mlflow.get_tracking_uri()


# ---------------------------------------------------------------- against a real server


def _out_dir(root: Path, summary: dict[str, Any], n: int = 10) -> Path:
    out = root / "bears"
    (out / "classes").mkdir(parents=True)
    for name in ("labels.png", "overlay.png", "classes/class_0.png", "classes/class_1.png", "masks.parquet"):
        (out / name).write_bytes(b"\x89PNG fake " + name.encode())
    (out / "masks.json").write_text(json.dumps({"images": [], "annotations": []}))
    (out / "summary.json").write_text(json.dumps(summary))
    np.save(out / "embeddings.npy", np.arange(n * 8, dtype=np.float32).reshape(n, 8))
    return out


def _experiment() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def _artifact_paths(client: Any, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for f in client.list_artifacts(run_id, path):
        out |= _artifact_paths(client, run_id, f.path) if f.is_dir else {f.path}
    return out


@pytest.mark.integration
def test_image_run_logged_with_everything(
    mlflow_env: str, mlflow_server, s3_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    from mlflow import MlflowClient

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)  # server already has its own creds
    signed = f"https://b.s3.amazonaws.com/bears.jpg?X-Amz-Signature=sig123&k={SECRET}"
    summary = _summary(silhouette=0.3, image_uri=signed)
    out = _out_dir(tmp_path, summary)
    exp = _experiment()
    run_id = tracking.log_image_run(out, summary, experiment=exp, extra_tags={"note": f"pw={SECRET}"})

    client = MlflowClient(mlflow_env)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "bears.jpg"
    assert run.data.params["cluster.eps"] == "0.06" and run.data.params["model_type"] == "tiny-random"
    assert run.data.metrics["n_masks"] == 10 and run.data.metrics["seconds.encode"] == 0.5
    assert run.data.metrics["cache_hits"] == 2 and run.data.metrics["noise_fraction"] == pytest.approx(0.4)
    tags = run.data.tags
    assert tags["samseg.kind"] == "image" and tags["samseg.image_sha256"] == "a" * 64
    assert tags["samseg.prefect_flow_run_id"] == "flow-run-1" and "mlflow.parentRunId" not in tags
    assert tags["samseg.image_uri"] == "https://b.s3.amazonaws.com/bears.jpg?X-Amz-Signature=***&k=***"
    for value in [*run.data.params.values(), *tags.values()]:
        assert SECRET not in value and "sig123" not in value

    expected = {"labels.png", "overlay.png", "masks.json", "masks.parquet", "summary.json", "embeddings.npy",
                "classes/class_0.png", "classes/class_1.png"}  # fmt: skip
    assert _artifact_paths(client, run_id) == expected
    # Artifacts really live in the S3 bucket behind the server's proxy.
    bucket, prefix = mlflow_server.artifacts_destination[len("s3://") :].split("/", 1)
    keys = [o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]
    assert any(k.endswith(f"{run_id}/artifacts/embeddings.npy") for k in keys)
    dst = Path(client.download_artifacts(run_id, "summary.json", str(tmp_path / "dl")))
    assert SECRET not in dst.read_text() and json.loads(dst.read_text())["n_masks"] == 10


@pytest.mark.integration
def test_batch_parent_children_and_recluster(mlflow_env: str, tmp_path: Path) -> None:  # noqa: F811
    from mlflow import MlflowClient

    exp = _experiment()
    batch = tracking.start_batch_run(exp, "batch-1", {**SMOKE.flat(), "n_images": 2}, {"samseg.source": "s3://photos/"})
    children = []
    for i, eps in enumerate((0.06, 0.06)):
        out = _out_dir(tmp_path / str(i), _summary(eps))
        children.append(tracking.log_image_run(out, _summary(eps), experiment=exp, nested_under=batch, run_name=f"img{i}"))
    # A batch id passed as parent_run_id is understood as nesting, not as a recluster parent.
    out = _out_dir(tmp_path / "x", _summary())
    children.append(tracking.log_image_run(out, _summary(), experiment=exp, parent_run_id=batch))
    tracking.end_run(batch, "FINISHED")

    client = MlflowClient(mlflow_env)
    parent = client.get_run(batch)
    assert parent.info.status == "FINISHED" and parent.data.tags["samseg.kind"] == "batch"
    assert parent.data.params["n_images"] == "2"
    for cid in children:
        tags = client.get_run(cid).data.tags
        assert tags["mlflow.parentRunId"] == batch and tags["samseg.kind"] == "image"
        assert "samseg.parent_run_id" not in tags

    # A recluster of the first child: tagged with its parent, not nested.
    re_summary = _summary(0.2)
    rid = tracking.log_image_run(_out_dir(tmp_path / "r", re_summary), re_summary, experiment=exp, parent_run_id=children[0])
    tags = client.get_run(rid).data.tags
    assert tags["samseg.kind"] == "recluster" and tags["samseg.parent_run_id"] == children[0]
    assert "mlflow.parentRunId" not in tags
    with pytest.raises(ValueError):
        tracking.end_run(batch, "DONE")


@pytest.mark.integration
def test_compare_runs_shows_only_differing_params(mlflow_env: str, tmp_path: Path) -> None:  # noqa: F811
    exp = _experiment()
    ids = []
    for i, eps in enumerate((0.06, 0.1)):
        s = _summary(eps)
        ids.append(tracking.log_image_run(_out_dir(tmp_path / str(i), s), s, experiment=exp, run_name=f"eps{eps}"))
    df = compare.compare_runs(ids, None)
    assert list(df["run_id"]) == ids and list(df["run_name"]) == ["eps0.06", "eps0.1"]
    assert "cluster.eps" in df.columns and list(df["cluster.eps"]) == ["0.06", "0.1"]
    assert "amg.points_per_side" not in df.columns and "model_type" not in df.columns
    assert {"n_masks", "n_clusters", "seconds.amg", "cache_hits"} <= set(df.columns)
    by_exp = compare.compare_runs(None, exp)
    assert sorted(by_exp["run_id"]) == sorted(ids)
    text = compare.format_compare(df)
    assert ids[0][:8] in text and "cluster.eps" in text and {"status", "started"} <= set(df.columns)
    assert max(len(line) for line in text.splitlines()) <= 120
    single = compare.compare_runs(ids[:1], None)
    assert "amg.points_per_side" in single.columns  # one run: nothing to diff, show all
    with pytest.raises(TrackingError, match="no experiment"):
        compare.compare_runs(None, "no-such-experiment-" + uuid.uuid4().hex)


@pytest.mark.integration
def test_fetch_run_inputs(mlflow_env: str, tmp_path: Path) -> None:  # noqa: F811
    s = _summary()
    out = _out_dir(tmp_path / "src", s)
    run_id = tracking.log_image_run(out, s, experiment=_experiment())
    got = tracking.fetch_run_inputs(run_id, tmp_path / "dst")
    assert got["image"]["sha256"] == "a" * 64 and got["config"] == s["config"]
    for name in ("masks.json", "embeddings.npy"):
        assert (tmp_path / "dst" / name).read_bytes() == (out / name).read_bytes()
    assert tracking.get_run(run_id).data.params["cluster.eps"] == "0.06"
    with pytest.raises(TrackingError, match="not found"):
        tracking.get_run(uuid.uuid4().hex)
    with pytest.raises(TrackingError, match="not found"):
        tracking.fetch_run_inputs(uuid.uuid4().hex, tmp_path / "none")
    with pytest.raises(TrackingError, match="not an MLflow run id"):
        tracking.fetch_run_inputs("../../etc", tmp_path / "none")


def test_dead_server_is_one_clear_error_and_http_retries_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from servers import free_port

    from samseg.edges.mlflow import client as mlflow_client

    for key in mlflow_client._HTTP_DEFAULTS:
        monkeypatch.setenv(key, "x")  # recorded, so the defaults set below are undone afterwards
        monkeypatch.delenv(key)
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    mlflow_client.client()
    assert {k: os.environ[k] for k in mlflow_client._HTTP_DEFAULTS} == mlflow_client._HTTP_DEFAULTS
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a user's own value wins
    mlflow_client.client()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    with pytest.raises(TrackingError) as info:
        tracking.start_batch_run("x", "batch", {}, {})
    assert dead in str(info.value) and "\n" not in str(info.value)


def test_a_store_on_a_full_disk_is_named_so_whatever_sqlalchemy_raised_last() -> None:
    from mlflow.exceptions import MlflowException

    from samseg.edges.mlflow.client import error_line

    try:
        try:
            raise OSError(28, "database or disk is full")
        except OSError as disk:
            raise MlflowException("(sqlalchemy) Query-invoked autoflush; consider using a session.no_autoflush block") from disk
    except MlflowException as exc:
        assert error_line(exc) == "the MLflow store's disk is full (database or disk is full)"
    assert error_line(MlflowException("RESOURCE_DOES_NOT_EXIST: run x\nmore")) == "RESOURCE_DOES_NOT_EXIST: run x"


def test_mlflow_prints_no_run_urls_and_draws_no_download_bars_unless_asked() -> None:
    """samseg's console is its own lines: MLflow's "🏃 View run …" (stdout) and its artifact
    download bars (stderr) are off once samseg's MLflow module is imported."""
    import samseg.edges.mlflow.client  # noqa: F401
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR, MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT

    assert MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.get() is True
    assert MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.get() is False


def test_after_a_call_without_an_answer_the_next_calls_fail_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tracking server that accepts connections and never answers costs one timeout, not one
    per call: for NO_ANSWER_COOLDOWN_S the next calls are refused without reaching it."""
    from mlflow.exceptions import MlflowException

    from samseg.edges.mlflow import client as mlflow_client
    from servers import black_hole

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with black_hole() as (uri, accepted):
        c = mlflow_client.client(uri)
        with pytest.raises(MlflowException):
            c.get_experiment_by_name("x")
        assert len(accepted) == 1
        for _ in range(3):
            with pytest.raises(MlflowException, match="did not answer a moment ago"):
                mlflow_client.client(uri).search_experiments()
        assert len(accepted) == 1  # none of them reached the server
        monkeypatch.setitem(mlflow_client._no_answer_until, uri, 0.0)  # the cool-down over: tried again
        with pytest.raises(MlflowException):
            c.get_experiment_by_name("x")
        assert len(accepted) == 2


def _wide(n_runs: int) -> "Any":
    import pandas as pd

    cols = {"run_id": [f"{i:08x}" + "a" * 24 for i in range(n_runs)], "run_name": [f"photo_{i}.jpg" for i in range(n_runs)],
            "status": ["FINISHED"] * n_runs, "started": ["2026-12-06 17:00"] * n_runs,
            "n_clusters": list(range(n_runs)), "cluster.eps": [0.05 + i / 100 for i in range(n_runs)]}
    cols.update({f"seconds.stage_{k}": [1.0 + k] * n_runs for k in range(30)})
    return pd.DataFrame(cols)


@pytest.mark.parametrize("n_runs", [2, 5, 12])
def test_runs_compare_fits_120_columns_and_keeps_what_matters(n_runs: int) -> None:
    text = compare.format_compare(_wide(n_runs))
    assert max(len(line) for line in text.splitlines()) <= 120
    assert "n_clusters" in text and "cluster.eps" in text and "FINISHED" in text and f"{n_runs - 1:08x}" in text
    if n_runs > 6:  # one line a run: the columns left out are counted, and --csv has them
        assert "more columns: `--csv FILE`" in text


def test_a_sqlite_stores_artifacts_live_beside_its_database_not_in_the_working_dir(tmp_path: Path, monkeypatch) -> None:
    """MLflow puts a new experiment's artifacts in ./mlruns of whichever directory created it, so a
    store named by an absolute path scattered them over working dirs: samseg keeps them beside the db."""
    from mlflow import MlflowClient

    from samseg.edges.mlflow.tracking import artifact_location, experiment_id

    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment(experiment_id(client, "a/b c"))
    assert exp.artifact_location.startswith((db.parent / "mlruns").as_uri() + "/a-b-c-"), exp.artifact_location
    assert artifact_location("sqlite:///mlflow.db", "x") == (elsewhere / "mlruns").as_uri() + "/x-" + \
        __import__("hashlib").sha256(b"x").hexdigest()[:8]
    assert artifact_location("http://127.0.0.1:5000", "x") is None  # a server keeps its own root
    assert not (elsewhere / "mlruns").exists()
