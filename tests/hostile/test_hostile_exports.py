"""Hostile runs against `samseg export` and the Label Studio push: a run that names another file
as its image, a run injected into someone else's batch. What a run names is checked before it
is read (the sha256 the run recorded), and a batch's images are the ones its own record lists."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cli_run import run_cli
from ui_synthetic import sqlite_store, write_image_outputs, write_two_runs

SECRET = b"PRIVATE KEY material nobody should see\n"


@pytest.fixture()
def crafted(tmp_path: Path) -> Path:
    """Two image dirs; beta's summary.json names a private text file as its image (its sha256 kept)."""
    write_two_runs(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    summary = json.loads((tmp_path / "out" / "beta" / "summary.json").read_text())
    summary["image"]["uri"] = str(secret)
    (tmp_path / "out" / "beta" / "summary.json").write_text(json.dumps(summary))
    return tmp_path


def test_a_summary_naming_a_private_file_is_not_copied_by_cvat_copy_images(crafted: Path) -> None:
    dst = crafted / "export"
    rc, _, err = run_cli(["export", str(crafted / "out"), "--format", "cvat", "--copy-images", "--out", str(dst)])
    assert rc == 1 and err.count("\n") == 1, err
    assert "beta" in err and "sha256" in err and "Traceback" not in err
    copied = [p.read_bytes() for p in dst.rglob("*") if p.is_file()] if dst.exists() else []
    assert not any(SECRET in b for b in copied)


def test_a_summary_with_no_recorded_sha256_copies_nothing(crafted: Path) -> None:
    summary = json.loads((crafted / "out" / "alpha" / "summary.json").read_text())
    del summary["image"]["sha256"]
    (crafted / "out" / "alpha" / "summary.json").write_text(json.dumps(summary))
    rc, _, err = run_cli(["export", str(crafted / "out"), "--format", "cvat", "--copy-images",
                          "--out", str(crafted / "export")])
    assert rc == 1 and "records no sha256" in err


def test_the_push_reads_no_image_whose_sha256_differs(crafted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The push's task step refuses the crafted image before any request carries it (no server
    needed to see that: the client records every upload; tests/test_labelstudio.py pushes for real)."""
    from samseg.edges import labelstudio
    from samseg.edges.annotations import image_dirs, read_image_dirs

    uploads: list[bytes] = []
    monkeypatch.setattr(labelstudio, "_upload", lambda client, url, pid, name, data: uploads.append(data) or 1)
    beta = [r for r in read_image_dirs(image_dirs(crafted / "out")) if r.stem == "beta"][0]
    with pytest.raises(labelstudio.LabelStudioError, match="sha256"):
        labelstudio._new_task(object(), "http://127.0.0.1:9", 1, beta, beta.summary["image"]["sha256"])
    assert uploads == []


def _batch(tmp: Path, monkeypatch: pytest.MonkeyPatch, record: bool) -> tuple[str, list[str]]:
    """A batch run with two image runs in an SQLite store, and a third run that tags itself as
    the batch's child (someone else's injection); returns (batch id, the batch's own image ids)."""
    from samseg.edges.mlflow import tracking

    exp = "hostile-batch"
    paths = sqlite_store(tmp, exp, monkeypatch)
    batch = tracking.start_batch_run(exp, "batch-1", {"n_images": 2}, {})
    own = []
    for p in paths:
        summary = write_image_outputs(tmp / "out" / p.stem, p)
        own.append(tracking.log_image_run(tmp / "out" / p.stem, summary, experiment=exp, nested_under=batch))
    report = {"images": [{"name": p.stem, "status": "completed", "mlflow_run_id": rid} for p, rid in zip(paths, own)]}
    tracking.end_run(batch, "FINISHED", report if record else None)
    intruder = tmp / "intruder"
    summary = write_image_outputs(intruder, paths[0], seed=3)
    tracking.log_image_run(intruder, summary, experiment=exp, nested_under=batch)
    return batch, own


def test_a_run_injected_into_a_batch_is_not_in_its_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batch, own = _batch(tmp_path, monkeypatch, record=True)
    rc, out, err = run_cli(["export", batch, "--format", "coco", "--out", str(tmp_path / "coco")])
    assert rc == 0, err
    assert "2 images" in out
    from samseg.edges.mlflow.run_dirs import download_image_dirs

    assert list(download_image_dirs(batch, tmp_path / "dl").values()) == own


def test_a_batch_without_its_own_record_is_refused_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batch, _ = _batch(tmp_path, monkeypatch, record=False)
    rc, _, err = run_cli(["export", batch, "--format", "coco", "--out", str(tmp_path / "coco")])
    assert rc == 1 and err.count("\n") == 1 and "no record of its image runs" in err


def test_a_copied_export_source_keeps_working(crafted: Path) -> None:
    """The honest image of the same dirs still copies (the check refuses only the crafted one)."""
    shutil.rmtree(crafted / "out" / "beta")
    dst = crafted / "export"
    rc, _, err = run_cli(["export", str(crafted / "out"), "--format", "cvat", "--copy-images", "--out", str(dst)])
    assert rc == 0, err
    assert (dst / "images" / "alpha.png").read_bytes() == (crafted / "images" / "alpha.png").read_bytes()


def _same_name_twice(tmp: Path) -> Path:
    """OUT with cam1/IMG_0001.png and cam2/IMG_0001.png (different photos), as a batch names them."""
    import numpy as np
    from PIL import Image

    from samseg.edges.outdirs import unique_names

    paths = []
    for k, cam in enumerate(("cam1", "cam2")):
        p = tmp / cam / "IMG_0001.png"
        p.parent.mkdir(parents=True)
        Image.fromarray(np.random.default_rng(k).integers(0, 255, (48, 96, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    for p, name in zip(paths, unique_names([str(p) for p in paths])):
        write_image_outputs(tmp / "out" / name, p, seed=0)
    return tmp / "out"


def test_two_inputs_with_one_file_name_get_two_images_in_a_cvat_export(tmp_path: Path) -> None:
    out = _same_name_twice(tmp_path)
    dst = tmp_path / "cvat"
    rc, _, err = run_cli(["export", str(out), "--format", "cvat", "--copy-images", "--out", str(dst)])
    assert rc == 0, err
    coco = json.loads((dst / "annotations" / "instances_default.json").read_text())
    names = [i["file_name"] for i in coco["images"]]
    assert len(set(names)) == 2 and sorted(p.name for p in (dst / "images").iterdir()) == sorted(names)
    for cam, name in zip(("cam1", "cam2"), names):  # each annotation set sits on its own photo
        assert (dst / "images" / name).read_bytes() == (tmp_path / cam / "IMG_0001.png").read_bytes()


def test_two_inputs_with_one_file_name_get_two_label_studio_urls(tmp_path: Path) -> None:
    out = _same_name_twice(tmp_path)
    dst = tmp_path / "ls"
    rc, _, err = run_cli(["export", str(out), "--format", "labelstudio", "--image-root", "http://files/x",
                          "--out", str(dst)])
    assert rc == 0, err
    urls = [t["data"]["image"] for t in json.loads((dst / "tasks.json").read_text())]
    assert len(set(urls)) == 2


def test_a_jpg_and_a_png_with_one_stem_get_two_yolo_label_files(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from samseg.edges.outdirs import unique_names

    paths = []
    for k, name in enumerate(("a.jpg", "a.png")):
        p = tmp_path / "in" / name
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(np.random.default_rng(k).integers(0, 255, (48, 96, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    for p, name in zip(paths, unique_names([str(p) for p in paths])):
        write_image_outputs(tmp_path / "out" / name, p, seed=0)
    rc, _, err = run_cli(["export", str(tmp_path / "out"), "--format", "yolo-seg", "--copy-images",
                          "--out", str(tmp_path / "yolo")])
    assert rc == 0, err
    labels = sorted(p.stem for p in (tmp_path / "yolo" / "labels").iterdir())
    images = sorted(p.stem for p in (tmp_path / "yolo" / "images").iterdir())
    assert len(labels) == 2 and labels == images  # each image beside its own label file


def test_a_batch_whose_record_cannot_be_logged_is_still_ended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    from samseg.edges.mlflow import tracking
    from samseg.edges.mlflow.client import TrackingError

    sqlite_store(tmp_path, "record-lost", monkeypatch)
    batch = tracking.start_batch_run("record-lost", "batch-1", {"n_images": 0}, {})

    def down(*_a, **_k):
        raise RuntimeError("artifact store unreachable")

    monkeypatch.setattr(MlflowClient, "log_artifact", down)
    with pytest.raises(TrackingError, match="was not logged"):
        tracking.end_run(batch, "FINISHED", {"images": []})
    assert MlflowClient().get_run(batch).info.status == "FINISHED"


def test_a_full_tmpdir_still_ends_the_batch_run_and_says_why_its_record_is_missing(tmp_path: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from mlflow import MlflowClient

    from samseg.edges.mlflow import tracking
    from samseg.edges.mlflow.client import TrackingError

    sqlite_store(tmp_path, "tmp-full", monkeypatch)
    batch = tracking.start_batch_run("tmp-full", "batch-1", {"n_images": 0}, {})

    def full(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "mkdtemp", full)
    with pytest.raises(TrackingError, match="was not logged.*No space left on device"):
        tracking.end_run(batch, "FINISHED", {"images": []})
    assert MlflowClient().get_run(batch).info.status == "FINISHED"
