"""`samseg export`: every format read back by its own tool's library or a strict schema.

Known structure: the UI tests' synthetic run (12 rectangles, 2 classes + 2 noise masks), so
what each export must contain is known exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_run import run_cli
from ui_synthetic import GROUP_A, GROUP_B, OUTLIERS, H, W, rect_masks, write_two_runs


@pytest.fixture(scope="module")
def out_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("exports")
    write_two_runs(tmp)
    return tmp


def _export(out_root: Path, fmt: str, *extra: str) -> Path:
    dst = out_root / f"export-{fmt}"
    rc, stdout, stderr = run_cli(["export", str(out_root / "out"), "--format", fmt, "--out", str(dst), *extra])
    assert rc == 0, stderr
    assert f"{fmt}: 2 images" in stdout and "4 categories, one per (image, class)" in stdout
    return dst


PER_IMAGE = ["alpha:class_0", "alpha:class_1", "beta:class_0", "beta:class_1"]  # two runs of per-image classes


def _class_of(mask_index: int) -> int:
    return 0 if mask_index in GROUP_A else 1  # DBSCAN numbers classes by size: A (6) then B (4)


def test_coco_read_back_by_pycocotools(out_root: Path) -> None:
    from pycocotools.coco import COCO

    coco = COCO(str(_export(out_root, "coco") / "annotations.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == PER_IMAGE  # class 0 of alpha is not beta's
    assert len(coco.getImgIds()) == 2
    assert {a["category_id"] for a in coco.loadAnns(coco.getAnnIds(imgIds=[2]))} == {3, 4}
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert len(anns) == len(GROUP_A) + len(GROUP_B)  # noise masks are not annotations
    truth = rect_masks()
    for ann in anns:
        m = coco.annToMask(ann).astype(bool)
        i = int(np.argmax([(m & t).sum() for t in truth]))
        assert (m == truth[i]).all() and ann["category_id"] == _class_of(i) + 1


def test_cvat_layout_is_coco_1_0(out_root: Path) -> None:
    from pycocotools.coco import COCO

    dst = _export(out_root, "cvat", "--copy-images")
    coco = COCO(str(dst / "annotations" / "instances_default.json"))
    assert len(coco.getAnnIds()) == 2 * (len(GROUP_A) + len(GROUP_B))
    assert sorted(p.name for p in (dst / "images").iterdir()) == ["alpha.png", "beta.png"]


def test_labelstudio_tasks_decode_with_the_label_studio_sdk(out_root: Path) -> None:
    import xml.etree.ElementTree as ET

    from label_studio_sdk.converter.brush import decode_rle

    dst = _export(out_root, "labelstudio", "--image-root", "http://files.example/photos")
    tasks = json.loads((dst / "tasks.json").read_text())
    cfg = ET.fromstring((dst / "labeling_config.xml").read_text())
    brush = cfg.find("BrushLabels")
    assert brush.get("name") == "tag" and brush.get("toName") == cfg.find("Image").get("name") == "image"
    assert [lab.get("value") for lab in brush.findall("Label")] == PER_IMAGE
    assert tasks[0]["data"]["image"] == "http://files.example/photos/alpha.png"
    results = tasks[0]["predictions"][0]["result"]
    assert {r["value"]["brushlabels"][0] for r in results} == {"alpha:class_0", "alpha:class_1"}
    assert {r["value"]["brushlabels"][0] for r in tasks[1]["predictions"][0]["result"]} == {"beta:class_0", "beta:class_1"}
    truth = rect_masks()
    for r in results:
        assert r["from_name"] == "tag" and r["to_name"] == "image" and r["type"] == "brushlabels"
        decoded = decode_rle(r["value"]["rle"]).reshape(r["original_height"], r["original_width"], 4)[:, :, 3] > 0
        c = int(r["value"]["brushlabels"][0].rsplit("_", 1)[1])
        want = np.any([truth[i] for i in range(12) if i not in OUTLIERS and _class_of(i) == c], axis=0)
        assert (decoded == want).all()


def test_yolo_seg_polygons_and_data_yaml(out_root: Path) -> None:
    import yaml

    dst = _export(out_root, "yolo-seg")
    data = yaml.safe_load((dst / "data.yaml").read_text())
    assert data["nc"] == 4 and data["names"] == PER_IMAGE
    assert "--copy-images" in (dst / "data.yaml").read_text().splitlines()[0]  # images/ is empty: the file says so
    assert {line.split()[0] for line in (dst / "labels" / "beta.txt").read_text().splitlines()} == {"2", "3"}
    lines = (dst / "labels" / "alpha.txt").read_text().splitlines()
    assert len(lines) == len(GROUP_A) + len(GROUP_B)
    for line in lines:
        cls, *coords = line.split()
        xy = np.asarray(coords, float).reshape(-1, 2)
        assert cls in ("0", "1") and len(xy) >= 3 and ((0 <= xy) & (xy <= 1)).all()
        # a 16x16 rectangle's outer contour: its corners, normalised (pixel centres 0..15)
        w_span, h_span = (xy[:, 0].max() - xy[:, 0].min()) * W, (xy[:, 1].max() - xy[:, 1].min()) * H
        assert w_span == pytest.approx(15) and h_span == pytest.approx(15)


def test_index_png_palette_matches_labels(out_root: Path) -> None:
    from samseg.edges.image_dir import read_label_png

    dst = _export(out_root, "index-png")
    with Image.open(dst / "alpha.png") as img:
        assert img.mode == "P"
        idx = np.asarray(img)
    assert (idx == read_label_png(out_root / "out" / "alpha" / "labels.png")).all()  # each image's own ids
    with Image.open(dst / "beta.png") as img:
        assert (np.asarray(img) == read_label_png(out_root / "out" / "beta" / "labels.png")).all()
    assert (dst / "classes.txt").read_text().splitlines() == [  # which value is which category, per image
        "background", "alpha.png 1 alpha:class_0", "alpha.png 2 alpha:class_1", "beta.png 1 beta:class_0",
        "beta.png 2 beta:class_1"]


def test_an_index_png_is_named_after_its_image_not_the_folder_it_was_read_from(out_root: Path, tmp_path: Path) -> None:
    """A run exported by its id is read from a folder named after the run: its PNG is still alpha.png."""
    import shutil

    src = tmp_path / "c7a59c1c23e94e3da75b2dc3404b8874"
    shutil.copytree(out_root / "out" / "alpha", src)
    rc, _, stderr = run_cli(["export", str(src), "--format", "index-png", "--out", str(tmp_path / "x")])
    assert rc == 0, stderr
    assert sorted(p.name for p in (tmp_path / "x").glob("*.*") if not p.name.startswith(".")) == ["alpha.png", "classes.txt"]
    assert (tmp_path / "x" / "classes.txt").read_text().splitlines()[1].startswith("alpha.png 1 ")


def test_dataset_classes_export_one_category_per_class(out_root: Path, tmp_path: Path) -> None:
    """Images that carry one dataset's class ids share categories (class c is one thing)."""
    import shutil

    from samseg.edges.annotations import categories, read_image_dirs

    for name in ("alpha", "beta"):
        shutil.copytree(out_root / "out" / name, tmp_path / "ds" / name)
        summary = json.loads((tmp_path / "ds" / name / "summary.json").read_text())
        (tmp_path / "ds" / name / "summary.json").write_text(json.dumps({**summary, "classes": "dataset"}))
    results = read_image_dirs([tmp_path / "ds" / "alpha", tmp_path / "ds" / "beta"])
    cats = categories(results)
    assert cats.shared and cats.names == ["class_0", "class_1"] and cats.index(1, 1) == 1
    assert "the dataset classes, shared by every image" in cats.line()
    mixed = read_image_dirs([tmp_path / "ds" / "alpha", out_root / "out" / "beta"])  # one per-image run in it
    assert not categories(mixed).shared


def test_export_of_a_non_samseg_dir_is_one_line(tmp_path: Path) -> None:
    rc, _, stderr = run_cli(["export", str(tmp_path), "--format", "coco", "--out", str(tmp_path / "x")])
    assert rc == 2 and stderr.count("\n") == 1 and "no samseg image dirs" in stderr


def test_export_from_an_mlflow_image_run(out_root: Path, tmp_path: Path, monkeypatch) -> None:
    from samseg.edges.image_dir import read_summary
    from samseg.edges.mlflow.tracking import log_image_run
    from ui_synthetic import sqlite_store

    sqlite_store(tmp_path, "export-test", monkeypatch)
    run_id = log_image_run(out_root / "out" / "alpha", read_summary(out_root / "out" / "alpha"), experiment="export-test")
    rc, stdout, stderr = run_cli(["export", run_id, "--format", "coco", "--out", str(tmp_path / "x")])
    assert rc == 0, stderr
    data = json.loads((tmp_path / "x" / "annotations.json").read_text())
    assert len(data["images"]) == 1 and len(data["annotations"]) == len(GROUP_A) + len(GROUP_B)


def test_the_categories_line_counts_in_words_a_person_reads() -> None:
    """One image's export has its classes, no (image, class) note; one category is singular."""
    from samseg.edges.annotations import Categories

    assert Categories(["class_0"], [{0: 0}], False).line() == "1 category: the image's classes"
    assert Categories(["a", "b"], [{0: 0}, {0: 1}], False).line().startswith("2 categories, one per (image, class)")
    assert Categories(["x"], [{0: 0}, {0: 0}], True).line() == "1 category: the dataset classes, shared by every image"
