"""The public Python API (samseg.segment, samseg.segment_batch, Result): docs/python.md's calls,
on the tiny-random model (its classes mean nothing; these tests check the plumbing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import samseg

PHOTOS = Path(__file__).parent / "data" / "photos"
TINY = dict(model="tiny-random", points_per_side=4, device="cpu")


@pytest.fixture(scope="module")
def bears() -> samseg.Result:
    return samseg.segment(PHOTOS / "bears.jpg", cache=False, **TINY)


def test_import_samseg_shows_the_api_and_imports_nothing_heavy() -> None:
    assert {"segment", "segment_batch", "Result", "configure"} <= set(dir(samseg))
    code = "import sys, samseg; print(sorted(m for m in ('torch', 'numpy', 'sklearn', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_path_a_pil_image_and_an_array_give_the_same_result(bears: samseg.Result) -> None:
    pil = Image.open(PHOTOS / "bears.jpg")
    from_pil = samseg.segment(pil, cache=False, **TINY)
    from_array = samseg.segment(np.asarray(pil.convert("RGB")), cache=False, **TINY)
    h, w = bears.label_map.shape
    assert (h, w) == (pil.height, pil.width) and bears.label_map.dtype == np.uint16
    for other in (from_pil, from_array):
        np.testing.assert_array_equal(other.label_map, bears.label_map)
        np.testing.assert_array_equal(other.embeddings, bears.embeddings)
    assert len(bears.masks) == len(bears.embeddings) == len(bears.labels) > 0
    assert bears.masks[0]["size"] == [h, w] and bears.embeddings.dtype == np.float32


def test_classes_count_masks_and_pixels_of_the_label_map(bears: samseg.Result) -> None:
    rows = bears.classes
    assert [r["id"] for r in rows] == list(range(len(rows)))
    assert sum(r["masks"] for r in rows) == int((bears.labels >= 0).sum())
    for r in rows:
        assert r["pixels"] == int((bears.label_map == r["id"] + 1).sum())


def test_recluster_loads_no_model_and_runs_no_amg(bears: samseg.Result, monkeypatch) -> None:
    from samseg.sam.source import ModelSource

    def no_model(self):
        raise AssertionError("recluster loaded a model")

    monkeypatch.setattr(ModelSource, "get", no_model)
    again = bears.recluster(eps=0.5, min_samples=2)
    assert again.config.cluster.eps == 0.5 and again.config.cluster.min_samples == 2
    assert again.config.amg == bears.config.amg and again.mask_set is bears.mask_set
    assert again.summary["cache"]["amg"] == again.summary["cache"]["pool"] == "parent_run"
    assert bears.recluster(eps="auto").summary["config"]["cluster.eps_auto"] is True


def test_overlay_save_and_the_files_the_cli_writes(bears: samseg.Result, tmp_path: Path) -> None:
    overlay = bears.overlay()
    assert overlay.size == (bears.label_map.shape[1], bears.label_map.shape[0]) and overlay.mode == "RGB"
    d = bears.save(tmp_path / "bears")
    assert {"labels.png", "masks.json", "embeddings.npy", "overlay.png", "summary.json"} <= {p.name for p in d.iterdir()}
    assert json.loads((d / "summary.json").read_text())["n_masks"] == len(bears.masks)
    np.testing.assert_array_equal(np.load(d / "embeddings.npy"), bears.embeddings)
    bears.save(d)  # samseg's own dir: replaced


def test_attack_save_over_a_users_folder_refuses_and_keeps_it(bears: samseg.Result, tmp_path: Path) -> None:
    from samseg.edges.image_dir import OutputsError

    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("mine")
    with pytest.raises(OutputsError):
        bears.save(mine)
    assert (mine / "chapter1.tex").read_text() == "mine"


@pytest.mark.parametrize("call, message", [
    (lambda: samseg.segment(PHOTOS / "bears.jpg", epss=0.1, **TINY), "unknown setting 'epss'; did you mean eps"),
    (lambda: samseg.segment(PHOTOS / "bears.jpg", eps=-1.0, **TINY), "cluster.eps"),
    (lambda: samseg.segment(np.zeros((8, 8)), **TINY), r"H×W×3 uint8"),
    (lambda: samseg.segment(42, **TINY), "must be a path, an s3:// URI, a PIL image"),
    (lambda: samseg.segment(PHOTOS / "bears.jpg", track=True, **TINY), "give out="),
    (lambda: samseg.segment_batch(PHOTOS, out="o", classes="everything", **TINY), "classes must be"),
    (lambda: samseg.segment_batch(PHOTOS, out="o", classes="image", classes_from="classes.json", **TINY),
     "cannot be combined with classes='image'"),
])
def test_a_wrong_argument_is_one_value_error_naming_it(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_recluster_of_anything_but_clustering_is_refused(bears: samseg.Result) -> None:
    with pytest.raises(ValueError, match="clustering only, not points_per_side"):
        bears.recluster(points_per_side=8)


def test_segment_batch_writes_what_the_cli_writes_and_returns_its_report(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(PHOTOS.parent)  # a source given relative to here is recorded as the absolute path it is
    report = samseg.segment_batch(["photos/bears.jpg", "photos/corgi.jpg"], out=tmp_path / "out", cache=False, **TINY)
    assert [(r["name"], r["status"]) for r in report["images"]] == [("bears", "completed"), ("corgi", "completed")]
    recorded = json.loads((tmp_path / "out" / "batch_summary.json").read_text())
    assert recorded["succeeded"] == 2 and recorded["source"] == [str(PHOTOS / "bears.jpg"), str(PHOTOS / "corgi.jpg")]
    assert (tmp_path / "out" / "corgi" / "labels.png").is_file()


def test_tracked_segment_logs_an_mlflow_run_of_the_dir_it_wrote(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    result = samseg.segment(PHOTOS / "corgi.jpg", out=tmp_path / "out", track=True, experiment="api-test", cache=False,
                            **TINY)
    assert result.out_dir == str(tmp_path / "out" / "corgi") and result.mlflow_run_id
    run = MlflowClient().get_run(result.mlflow_run_id)
    assert int(run.data.metrics["n_masks"]) == len(result.masks)
