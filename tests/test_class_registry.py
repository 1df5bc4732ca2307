"""Dataset classes through the MLflow model registry: register, load with pyfunc, predict,
aliases, --classes-from models:/..., and refusals (another checkpoint, another dimension).
Against the SQLite store here and the real `mlflow server` of the integration tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from samseg.core.dataset import ClassTable, ClassTableError
from mlflow_store import sqlite_uri


def _table(dim: int = 8, ckpt: str = "c" * 64) -> ClassTable:
    protos = np.eye(dim, dtype=np.float32)[:2]
    return ClassTable(prototypes=protos, radii=np.array([0.1, 0.1], np.float32), sizes=np.array([5, 3]),
                      image_counts=[{"a.png": 5}, {"a.png": 3}], image_names=["a.png"],
                      cluster={"algorithm": "dbscan", "eps": 0.06}, sample={"checkpoint_sha256": ckpt, "model_type": "vit_b"})


def _batch_run(tmp: Path, table: ClassTable) -> tuple[str, Path]:
    from samseg.edges.mlflow.tracking import start_batch_run

    path = tmp / "classes.json"
    path.write_text(table.to_json())
    return start_batch_run("registry-test", "batch", {}, {"samseg.classes": "dataset"}), path


def _round_trip(tmp: Path) -> None:
    import mlflow
    from mlflow import MlflowClient

    from samseg.edges.mlflow.class_registry import load_registered_classes, register_classes
    from samseg.edges.mlflow.client import tracking_uri

    run_id, path = _batch_run(tmp, _table())
    first = register_classes(run_id, "samseg-classes-test", path)
    second = register_classes(run_id, "samseg-classes-test", path)
    assert (first["version"], second["version"]) == (1, 2) and first["model_uri"] == "models:/samseg-classes-test/1"
    MlflowClient(tracking_uri()).set_registered_model_alias("samseg-classes-test", "production", "2")
    # mlflow.pyfunc resolves models:/ through MLFLOW_TRACKING_URI (set by the fixtures); never
    # mlflow.set_tracking_uri here: it is process-wide and would leak into later tests.
    for uri in ("models:/samseg-classes-test/1", "models:/samseg-classes-test@production"):
        model = mlflow.pyfunc.load_model(uri)
        x = np.zeros((3, 8), np.float32)
        x[0, 0], x[1, 1], x[2, 5] = 1, 1, 1
        assert list(model.predict(x)) == [0, 1, -1]
        with pytest.raises(Exception, match="N×8"):
            model.predict(np.zeros((2, 4), np.float32))
        meta = model.metadata.metadata
        assert meta["checkpoint_sha256"] == "c" * 64 and meta["embedding_dim"] == 8
    table = load_registered_classes("models:/samseg-classes-test@production")
    assert table.n_classes == 2 and table.sample["run_id"] == "models:/samseg-classes-test@production"
    # a batch pins the alias once: every shard loads version 2, even if the alias moves mid-batch
    from samseg.engine.dataset import GivenClasses

    given = GivenClasses.load("models:/samseg-classes-test@production")
    assert given.ref == "models:/samseg-classes-test/2"
    MlflowClient(tracking_uri()).set_registered_model_alias("samseg-classes-test", "production", "1")
    assert GivenClasses.load(given.ref, given.sha256).ref == given.ref


def test_registry_round_trip_sqlite(tmp_path: Path, monkeypatch) -> None:
    from mlflow import MlflowClient

    uri = sqlite_uri(tmp_path / 'mlflow.db')
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    MlflowClient(uri).create_experiment("registry-test", artifact_location=(tmp_path / "art").as_uri())
    _round_trip(tmp_path)


@pytest.mark.integration
def test_registry_round_trip_mlflow_server(mlflow_env, tmp_path: Path) -> None:
    _round_trip(tmp_path)


def test_classes_from_another_checkpoint_are_refused(tmp_path: Path) -> None:
    from samseg.edges.dataset_outputs import DatasetOutputsError, _check_same_model

    with pytest.raises(DatasetOutputsError, match="refusing to mix"):
        _check_same_model(_table(ckpt="a" * 64), {"checkpoint_sha256": "b" * 64, "model_type": "vit_h"})
    _check_same_model(_table(ckpt="a" * 64), {"checkpoint_sha256": "a" * 64})  # same: fine


def test_classes_from_another_backbone_are_refused_in_one_line() -> None:
    """The registered classes record the backbone (name + weights sha256); images embedded by another are refused."""
    from samseg.edges.dataset_outputs import DatasetOutputsError, _check_same_model, _embedding_model

    dino = _table()
    dino = ClassTable(**{**dino.__dict__, "sample": {**dino.sample, "features": "dinov2-b", "features_sha256": "d" * 64}})
    summaries = [{"model": {"checkpoint_sha256": "c" * 64, "type": "vit_b"}, "features": {"name": "sam", "sha256": "c" * 64}}]
    made_by = _embedding_model(summaries)
    assert made_by == {"checkpoint_sha256": "c" * 64, "model_type": "vit_b", "features": "sam", "features_sha256": "c" * 64}
    with pytest.raises(DatasetOutputsError, match=r"built from dinov2-b embeddings .* embedded by sam .*--features dinov2-b") as err:
        _check_same_model(dino, made_by)
    assert "\n" not in str(err.value)
    _check_same_model(dino, {**made_by, "features": "dinov2-b", "features_sha256": "d" * 64})  # same backbone: fine
    mixed = summaries + [{"model": {"checkpoint_sha256": "c" * 64}, "features": {"name": "dinov2-s", "sha256": "e" * 64}}]
    with pytest.raises(DatasetOutputsError, match="different feature backbones"):
        _embedding_model(mixed)


def test_registered_classes_carry_the_backbone(tmp_path: Path, monkeypatch) -> None:
    from mlflow import MlflowClient

    from samseg.edges.mlflow.class_registry import load_registered_classes, register_classes

    uri = sqlite_uri(tmp_path / 'mlflow.db')
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    MlflowClient(uri).create_experiment("registry-test", artifact_location=(tmp_path / "art").as_uri())
    t = _table()
    t = ClassTable(**{**t.__dict__, "sample": {**t.sample, "features": "dinov2-b", "features_sha256": "d" * 64}})
    run_id, path = _batch_run(tmp_path, t)
    uri = register_classes(run_id, "samseg-classes-backbone", path)["model_uri"]
    loaded = load_registered_classes(uri)
    assert loaded.sample["features"] == "dinov2-b" and loaded.sample["features_sha256"] == "d" * 64


def test_classes_of_another_dimension_are_refused() -> None:
    from samseg.core.dataset import assign_to_classes

    with pytest.raises(ClassTableError, match="C=4 but the classes were built from C=8"):
        assign_to_classes(np.ones((2, 4), np.float32), _table())


def test_cli_register_classes_and_classes_from_models_uri(prefect_api, tmp_path: Path, monkeypatch) -> None:
    from mlflow import MlflowClient
    from PIL import Image

    from cli_run import run_cli

    uri = sqlite_uri(tmp_path / 'mlflow.db')
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    MlflowClient(uri).create_experiment("reg-cli", artifact_location=(tmp_path / "art").as_uri())
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(src / f"r{i}.png")
    common = ["--model", "tiny-random", "--preset", "smoke", "--points-per-side", "4", "--device", "cpu",
              "--experiment", "reg-cli", "--cache", str(tmp_path / "c")]
    rc, stdout, stderr = run_cli(["segment", str(src), "--out", str(tmp_path / "o1"), "--classes", "dataset",
                                  "--register-classes", "reg-cli-classes", "--eps", "0.5", *common])
    assert rc == 0, stderr
    assert "registered classes: models:/reg-cli-classes/1" in stdout
    rc, stdout, stderr = run_cli(["segment", str(src), "--out", str(tmp_path / "o2"), "--classes-from",
                                  "models:/reg-cli-classes/1", *common])
    assert rc == 0, stderr
    classes = json.loads((tmp_path / "o2" / "classes.json").read_text())
    assert classes["sample"]["assigned_from"] == "models:/reg-cli-classes/1"
    rc, _, stderr = run_cli(["segment", str(src), "--out", str(tmp_path / "o3"), "--register-classes", "x", *common])
    assert rc == 2 and "--register-classes needs --classes dataset" in stderr
