"""MLflow's conventions: the experiment from MLflow's environment, the input image as a
dataset input (lineage), the overlay in MLflow's image view (SQLite store in a tmp dir)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cli_run import run_cli
from mlflow_store import sqlite_uri

TINY = ["--model", "tiny-random", "--preset", "smoke", "--points-per-side", "4", "--device", "cpu"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    uri = sqlite_uri(tmp_path / 'mlflow.db')
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    client.create_experiment("bars", artifact_location=(tmp_path / "art").as_uri())
    img = tmp_path / "pic.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(img)
    return client, img, tmp_path


def _runs(client, name):
    exp = client.get_experiment_by_name(name)
    return [] if exp is None else client.search_runs([exp.experiment_id])


def test_mlflow_experiment_name_env_is_honoured(prefect_api, store, monkeypatch) -> None:
    client, img, tmp = store
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "bars")
    rc, stdout, stderr = run_cli(["segment", str(img), "--out", str(tmp / "o"), "--cache", str(tmp / "c"), *TINY])
    assert rc == 0, stderr
    assert len(_runs(client, "bars")) == 1 and not _runs(client, "samseg")


def test_mlflow_experiment_id_env_and_flag_precedence(prefect_api, store, monkeypatch) -> None:
    client, img, tmp = store
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", client.get_experiment_by_name("bars").experiment_id)
    assert run_cli(["segment", str(img), "--out", str(tmp / "o"), "--cache", str(tmp / "c"), *TINY])[0] == 0
    assert len(_runs(client, "bars")) == 1
    args = ["segment", str(img), "--out", str(tmp / "o2"), "--cache", str(tmp / "c"), "--experiment", "flagged", *TINY]
    assert run_cli(args)[0] == 0
    assert len(_runs(client, "flagged")) == 1 and len(_runs(client, "bars")) == 1  # the flag wins


def test_input_image_is_a_dataset_input_and_overlay_an_mlflow_image(prefect_api, store, monkeypatch) -> None:
    client, img, tmp = store
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "bars")
    assert run_cli(["segment", str(img), "--out", str(tmp / "o"), "--cache", str(tmp / "c"), *TINY])[0] == 0
    (run,) = _runs(client, "bars")
    run = client.get_run(run.info.run_id)
    (ds,) = run.inputs.dataset_inputs
    import hashlib

    assert ds.dataset.name == "pic.png" and hashlib.sha256(img.read_bytes()).hexdigest().startswith(ds.dataset.digest)
    assert str(img) in ds.dataset.source and {t.key: t.value for t in ds.tags}["mlflow.data.context"] == "input"
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert any("overlay" in p for p in images), images
