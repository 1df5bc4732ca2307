"""Hostile requests refused before any compute: a backbone input of 1,400,000 px, another
backbone's classes for --classes-from, an s3:// prefix no key can be built on; and a run deleted
in MLflow that the UI must not serve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_run import run_cli

TINY = ["--model", "tiny-random", "--preset", "smoke", "--points-per-side", "4", "--device", "cpu", "--no-track"]


def _inputs(tmp: Path, n: int = 2) -> Path:
    src = tmp / "in"
    src.mkdir()
    for i in range(n):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(src / f"r{i}.png")
    return src


def test_a_features_size_of_1_4_million_px_is_a_usage_error(tmp_path: Path) -> None:
    rc, _, err = run_cli(["segment", str(_inputs(tmp_path)), "--out", str(tmp_path / "o"), "--features", "tiny-random",
                          "--features-size", "1400000", *TINY])
    assert rc == 2 and "--features-size must be <=" in err.strip().splitlines()[-1] and "unexpected" not in err, err
    assert not (tmp_path / "o").exists()


def test_classes_of_another_backbone_are_refused_before_any_image(tmp_path: Path) -> None:
    from samseg.core.dataset import CLASSES_FORMAT

    classes = tmp_path / "other.json"
    classes.write_text(json.dumps({
        "format": CLASSES_FORMAT, "n_classes": 1, "n_noise": 0, "n_images": 1, "embedding_dim": 2,
        "image_names": ["x.png"], "cluster": {}, "sample": {"features": "dinov2-b", "features_sha256": "d" * 64},
        "classes": [{"id": 0, "size": 3, "images": ["x.png"], "image_counts": {"x.png": 3}, "image_coverage": 1.0,
                     "radius": 0.1, "prototype": [1.0, 0.0]}]}))
    out = tmp_path / "o"
    rc, _, err = run_cli(["segment", str(_inputs(tmp_path)), "--out", str(out), "--classes-from", str(classes), *TINY])
    assert rc in (1, 2) and "dinov2-b" in err and "refusing to mix" in err, err
    assert not any(p.is_dir() for p in out.iterdir()) if out.exists() else True  # no image was computed
    from samseg.edges.owned_files import BatchIncomplete, check_complete

    if out.exists():
        try:
            check_complete(str(out), str(out))
        except BatchIncomplete:
            pytest.fail("OUT was left marked incomplete")


def test_an_s3_out_with_an_empty_segment_is_refused_before_any_image(tmp_path: Path) -> None:
    rc, _, err = run_cli(["segment", str(_inputs(tmp_path)), "--out", "s3://b//out", *TINY])
    assert rc == 2 and "'s3://b//out'" in err.strip().splitlines()[-1], err


def test_a_run_deleted_in_mlflow_is_404_in_the_ui(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient
    from mlflow import MlflowClient

    from samseg.apps.ui import UiSettings, create_app
    from samseg.edges.mlflow.tracking import log_image_run
    from ui_synthetic import sqlite_store, write_image_outputs

    [alpha, _] = sqlite_store(tmp_path, "deleted-runs", monkeypatch)
    summary = write_image_outputs(tmp_path / "out" / "alpha", alpha)
    rid = log_image_run(tmp_path / "out" / "alpha", summary, experiment="deleted-runs")
    app = create_app(UiSettings(experiment="deleted-runs", cache_dir=tmp_path / "ui", stage_cache=str(tmp_path / "sc")))
    with TestClient(app) as c:
        assert c.get(f"/api/runs/{rid}").status_code == 200
        MlflowClient().delete_run(rid)
        for path in (f"/api/runs/{rid}", f"/runs/{rid}/files/labels.png", f"/runs/{rid}/files/input.jpg"):
            assert c.get(path).status_code == 404, path
        assert c.post(f"/api/runs/{rid}/rerun", json={"eps": 0.1}).status_code == 404
