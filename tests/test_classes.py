"""Classes a person can correct (`samseg classes [edit]`, samseg.core.curation): on the synthetic
run of known structure (12 rectangles: class 0 = GROUP_A's 6 masks, class 1 = GROUP_B's 4, 2 noise)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from cli_run import run_cli
from samseg.core.config import SMOKE
from samseg.core.curation import Edit, apply_edits, parse_edits
from ui_synthetic import GROUP_A, GROUP_B, OUTLIERS, embeddings, write_two_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("classes")
    write_two_runs(tmp)
    return tmp


def _labels() -> np.ndarray:
    labels = np.full(12, -1)
    labels[list(GROUP_A)], labels[list(GROUP_B)] = 0, 1
    return labels


def test_merge_rename_drop_and_split_relabel_as_asked() -> None:
    emb = embeddings(0)
    merged, names = apply_edits(_labels(), emb, parse_edits(merge=["0,1"], rename=["0=things"]), SMOKE.cluster)
    assert set(merged[list(GROUP_A) + list(GROUP_B)]) == {0} and names == {0: "things"}
    assert (merged[list(OUTLIERS)] == -1).all()
    dropped, _ = apply_edits(_labels(), emb, [Edit("drop", (0,))], SMOKE.cluster)
    assert (dropped[list(GROUP_A)] == -1).all() and (dropped[list(GROUP_B)] == 0).all()  # renumbered: B is 0 now
    split, names = apply_edits(_labels(), emb, [Edit("rename", (0,), name="a"), Edit("split", (0,), eps=1e-9)],
                               SMOKE.cluster)
    assert (split >= 0).sum() == (_labels() >= 0).sum()  # a split loses no mask
    assert "a" in names.values()


@pytest.mark.parametrize("kwargs, message", [
    (dict(rename=["0=a", "0=b"]), "rename: class 0 is renamed twice"),  # which name was meant is not samseg's to pick
    (dict(merge=["0,1"], rename=["1=x"]), "rename: class 1 was merged into 0 by an earlier edit"),
    (dict(drop=["1"], rename=["1=x"]), "rename: class 1 was dropped by an earlier edit"),
])
def test_an_edit_of_a_class_that_earlier_edits_changed_says_what_they_did(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        apply_edits(_labels(), embeddings(0), parse_edits(**kwargs), SMOKE.cluster)


@pytest.mark.parametrize("kwargs, message", [
    (dict(merge=["3,3"]), "a class is named twice"),
    (dict(merge=["3"]), "merging needs two classes"),
    (dict(rename=["0=\x1b[2Jevil"]), "printable characters"),
    (dict(rename=["0=" + "x" * 201]), "1 to 200"),
    (dict(rename=["road"]), "give CLASS=NAME"),
    (dict(split=["0:-1"]), "eps must be > 0"),
])
def test_attack_bad_edits_are_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_edits(**kwargs)


def test_attack_a_split_eps_past_the_largest_cosine_distance_is_the_edits_error() -> None:
    from samseg.core.curation import EditError

    with pytest.raises(EditError, match=r"split of class 0: eps 3 is not one the cosine metric takes"):
        apply_edits(_labels(), embeddings(0), parse_edits(split=["0:3"]), SMOKE.cluster)


def test_unknown_class_is_refused_before_anything_is_written(runs: Path, tmp_path: Path) -> None:
    rc, out, err = run_cli(["classes", "edit", str(runs / "out" / "alpha"), "--drop", "9", "--out", str(tmp_path / "x"),
                            "--no-track"])
    assert rc == 2 and err.count("error:") == 1 and "class 9 is not a class of this run" in err
    assert not (tmp_path / "x").exists()
    rc, _, err = run_cli(["classes", "edit", str(runs / "out" / "alpha"), "--merge", "1,1", "--out", str(tmp_path / "x")])
    assert rc == 2 and "named twice" in err
    rc, out, err = run_cli(["classes", str(runs / "out" / "alpha"), "--merge", "0,1"])  # edit flags without `edit`
    assert rc == 2 and "edit the classes (as `classes edit`): give --out DIR" in err


def test_the_table_then_an_edit_reaches_the_dir_the_summary_and_an_export(runs: Path, tmp_path: Path) -> None:
    src = runs / "out" / "alpha"
    rc, out, err = run_cli(["classes", str(src)])
    assert rc == 0, err
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [("0", "class_0", "6"), ("1", "class_1", "4")]
    rc, out, err = run_cli(["classes", "edit", str(src), "--merge", "0,1", "--rename", "0=things", "--out",
                            str(tmp_path / "cur"), "--no-track"])
    assert rc == 0, err
    assert re.search(r"^\s+0\s+things\s+10\s", out, re.M)
    d = tmp_path / "cur" / "alpha"
    summary = json.loads((d / "summary.json").read_text())
    assert summary["class_names"] == {"0": "things"} and summary["n_clusters"] == 1
    assert summary["edits"] == [{"op": "merge", "classes": [0, 1]}, {"op": "rename", "classes": [0], "name": "things"}]
    assert summary["edited_from"] == str(src) and summary["n_noise"] == len(OUTLIERS)
    assert summary["silhouette"] is None  # measured on the edited classes (one class has none), with the edit's own time
    assert set(summary["seconds"]) == {"edit", "total"}
    assert json.loads((d / "masks.json").read_text())["categories"] == [{"id": 1, "name": "things"}]
    assert sorted(p.name for p in (d / "classes").iterdir()) == ["class_0-things.png"]  # its cut-out carries the name
    rc, out, err = run_cli(["export", str(d), "--format", "coco", "--out", str(tmp_path / "coco")])
    assert rc == 0, err
    cats = json.loads((tmp_path / "coco" / "annotations.json").read_text())["categories"]
    assert [c["name"] for c in cats] == ["alpha:things"]
    assert json.loads((src / "summary.json").read_text()).get("edits") is None  # the source is untouched


def test_a_tracked_edit_of_a_run_id_prefix_is_a_new_run_tagged_with_it(runs: Path, tmp_path: Path, monkeypatch) -> None:
    from mlflow import MlflowClient

    from samseg.edges.image_dir import read_summary
    from samseg.edges.mlflow.tracking import log_image_run
    from ui_synthetic import sqlite_store

    sqlite_store(tmp_path, "classes-test", monkeypatch)
    run_id = log_image_run(runs / "out" / "beta", read_summary(runs / "out" / "beta"), experiment="classes-test")
    rc, out, err = run_cli(["classes", "edit", run_id[:8], "--drop", "1", "--out", str(tmp_path / "cur"),
                            "--experiment", "classes-test"])
    assert rc == 0, err
    new = re.search(r"MLflow run (\w+)", out).group(1)
    run = MlflowClient().get_run(new)
    assert run.data.tags["samseg.parent_run_id"] == run_id and run.data.tags["samseg.kind"] == "recluster"


def test_attack_an_edit_written_into_the_sources_own_out_is_refused(runs: Path) -> None:
    before = (runs / "out" / "alpha" / "labels.png").read_bytes()
    rc, _, err = run_cli(["classes", "edit", str(runs / "out" / "beta"), "--drop", "0", "--out", str(runs / "out"),
                          "--no-track"])
    assert rc == 2 and "source's own output dir" in err
    assert (runs / "out" / "alpha" / "labels.png").read_bytes() == before


@pytest.fixture
def dataset(runs: Path, tmp_path: Path) -> Path:
    """A `--classes dataset` batch of the two synthetic runs: group A is class 0 in both images, B class 1."""
    import shutil

    from samseg.core.config import PipelineConfig
    from samseg.edges.dataset_outputs import apply_dataset_classes
    from samseg.edges.image_dir import read_summary
    from samseg.engine.batch import write_batch_summary

    out = tmp_path / "ds"
    dirs = [Path(shutil.copytree(runs / "out" / n, out / n)) for n in ("alpha", "beta")]
    cluster = PipelineConfig.from_flat(read_summary(dirs[0])["config"]).cluster
    assert apply_dataset_classes(out, dirs, cluster)["n_classes"] == 2
    write_batch_summary(str(out), {"images": [{"name": d.name, "status": "completed"} for d in dirs]})
    return out


def test_a_dataset_batch_is_edited_across_all_its_images(dataset: Path, tmp_path: Path) -> None:
    from samseg.edges.image_dir import read_image_dir

    rc, out, err = run_cli(["classes", str(dataset)])
    assert rc == 0, err
    assert out.split()[:4] == ["ID", "NAME", "MASKS", "IMAGES"]
    assert [line.split() for line in out.splitlines()[1:]] == [["0", "class_0", "12", "2"], ["1", "class_1", "8", "2"]]
    rc, out, err = run_cli(["classes", "edit", str(dataset), "--merge", "0,1", "--rename", "0=things", "--out",
                            str(tmp_path / "ds2"), "--no-track"])
    assert rc == 0, err
    assert re.search(r"^\s+0\s+things\s+20\s+2$", out, re.M)
    for name in ("alpha", "beta"):  # every image of the batch carries the edit
        summary = json.loads((tmp_path / "ds2" / name / "summary.json").read_text())
        assert summary["classes"] == "dataset" and summary["class_names"] == {"0": "things"}
        assert summary["edits"] == [{"op": "merge", "classes": [0, 1]}, {"op": "rename", "classes": [0], "name": "things"}]
        assert summary["edited_from"] == str(dataset.resolve()) and summary["n_noise"] == len(OUTLIERS)
        assert summary["silhouette"] is None  # one class now: measured on the edited ids, not the image's own
        assert set(summary["seconds"]) == {"edit", "total"}  # the edit's own time, not the source's computation
        assert json.loads((dataset / name / "summary.json").read_text()).get("edits") is None  # the source is untouched
    table = json.loads((tmp_path / "ds2" / "classes.json").read_text())
    assert [(c["id"], c["size"]) for c in table["classes"]] == [(0, 20)]
    # a split re-clusters the class's masks of both images together (half the batch's eps): A and B again
    rc, out, err = run_cli(["classes", "edit", str(tmp_path / "ds2"), "--split", "0", "--out", str(tmp_path / "ds3"),
                            "--no-track"])
    assert rc == 0, err
    assert [line.split() for line in out.splitlines()[1:3]] == [["0", "things", "12", "2"], ["1", "class_1", "8", "2"]]
    _, emb, labels = read_image_dir(tmp_path / "ds3" / "beta")
    assert sorted(np.flatnonzero(labels == 0)) == GROUP_A and sorted(np.flatnonzero(labels == 1)) == GROUP_B
    from samseg.core.cluster import silhouette_cosine

    summary = json.loads((tmp_path / "ds3" / "beta" / "summary.json").read_text())
    assert summary["silhouette"] == pytest.approx(silhouette_cosine(emb, labels))  # of the split's two classes


def test_attack_a_dataset_edit_into_its_own_folder_or_of_an_unknown_class_writes_nothing(dataset: Path,
                                                                                       tmp_path: Path) -> None:
    before = (dataset / "alpha" / "labels.png").read_bytes()
    for inside in (dataset, dataset / "alpha", dataset / "alpha" / "x"):  # the folder, or anywhere inside it
        rc, _, err = run_cli(["classes", "edit", str(dataset), "--drop", "0", "--out", str(inside), "--no-track"])
        assert rc == 2 and err.count("error:") == 1 and "source batch's own folder" in err
    assert not (dataset / "alpha" / "x").exists()
    rc, _, err = run_cli(["classes", "edit", str(dataset), "--drop", "9", "--out", str(tmp_path / "x"), "--no-track"])
    assert rc == 2 and err.count("error:") == 1 and "class 9 is not a class" in err
    assert not (tmp_path / "x").exists() and (dataset / "alpha" / "labels.png").read_bytes() == before


def test_a_dataset_batch_and_an_image_dir_on_s3_are_read_from_their_manifests(dataset: Path, s3_bucket: str,
                                                                            tmp_path: Path) -> None:
    from samseg.edges.owned_files import BATCH_SUMMARY_JSON, CLASSES_JSON, write_files
    from samseg.edges.storage import upload_dir

    out = f"s3://{s3_bucket}/ds"
    for name in ("alpha", "beta"):
        upload_dir(dataset / name, f"{out}/{name}")
    write_files(out, {n: (dataset / n).read_bytes() for n in (CLASSES_JSON, BATCH_SUMMARY_JSON)})
    rc, text, err = run_cli(["classes", out])
    assert rc == 0, err
    assert [line.split() for line in text.splitlines()[1:]] == [["0", "class_0", "12", "2"], ["1", "class_1", "8", "2"]]
    rc, text, err = run_cli(["classes", "edit", out, "--drop", "1", "--out", str(tmp_path / "ds2"), "--no-track"])
    assert rc == 0, err
    summary = json.loads((tmp_path / "ds2" / "beta" / "summary.json").read_text())
    assert summary["edited_from"] == out and summary["n_noise"] == len(GROUP_B) + len(OUTLIERS)
    rc, text, err = run_cli(["classes", f"{out}/alpha"])  # one image dir on S3
    assert rc == 0, err
    assert [line.split()[:3] for line in text.splitlines()[1:]] == [["0", "class_0", "6"], ["1", "class_1", "4"]]


def test_names_alone_keep_the_names_of_classes_absent_from_the_masks() -> None:
    labels = np.array([0, 0, 1])  # class 2 of the table has no mask here (an assigned batch)
    out, names = apply_edits(labels, np.eye(3, dtype=np.float32), parse_edits(rename=["0=x"]), SMOKE.cluster,
                             {0: "a", 1: "b", 2: "c"}, renumbered=False)
    assert list(out) == [0, 0, 1] and names == {0: "x", 1: "b", 2: "c"}


def test_names_alone_keep_every_id_and_the_tables_rows(dataset: Path, tmp_path: Path) -> None:
    rc, out, err = run_cli(["classes", "edit", str(dataset), "--rename", "1=b", "--out", str(tmp_path / "ds2"), "--no-track"])
    assert rc == 0, err
    before, after = (json.loads((d / "classes.json").read_text()) for d in (dataset, tmp_path / "ds2"))
    assert [c["prototype"] for c in after["classes"]] == [c["prototype"] for c in before["classes"]]
    assert [c["id"] for c in after["classes"]] == [0, 1] and after["naming"]["classes"] == [{"id": 1, "name": "b", "edited": True}]
    assert "run_id" not in after["sample"] and after["sample"]["edited_from"] == str(dataset.resolve())


def test_attack_an_edit_of_a_batch_run_into_the_folder_it_wrote_is_refused(dataset: Path, tmp_path: Path,
                                                                          monkeypatch) -> None:
    from samseg.edges.dataset_outputs import log_dataset_classes
    from samseg.edges.image_dir import read_summary
    from samseg.edges.mlflow.tracking import end_run, log_image_run, start_batch_run
    from samseg.edges.run_schema import TAG_OUT_DIR
    from ui_synthetic import sqlite_store

    sqlite_store(tmp_path, "classes-test", monkeypatch)
    batch = start_batch_run("classes-test", "ds", {"n_images": 2}, {})
    kids = [log_image_run(dataset / n, read_summary(dataset / n), experiment="classes-test", nested_under=batch,
                          extra_tags={TAG_OUT_DIR: str(dataset / n)}) for n in ("alpha", "beta")]
    log_dataset_classes(batch, {"classes_json": str(dataset / "classes.json"), "contact_sheet": str(dataset / "contact_sheet.png"),
                                "metrics": {}, "mode": "dataset"})
    end_run(batch, "FINISHED", {"images": [{"mlflow_run_id": k, "name": n} for k, n in zip(kids, ("alpha", "beta"))]})
    before = (dataset / "alpha" / "labels.png").read_bytes()
    rc, _, err = run_cli(["classes", "edit", batch[:8], "--drop", "0", "--out", str(dataset), "--experiment", "classes-test"])
    assert rc == 2 and "source batch's own folder" in err and (dataset / "alpha" / "labels.png").read_bytes() == before
    rc, out, err = run_cli(["classes", "edit", batch[:8], "--drop", "0", "--rename", "1=b", "--out", str(tmp_path / "ds2"),
                            "--experiment", "classes-test", "--register-classes", "edited-classes"])
    assert rc == 0, err
    assert re.search(r"MLflow batch run (\w+)", out) and "registered: models:/edited-classes/1" in out
    # the person's classes, registered, assign a batch's images: here the edited batch's own embeddings
    from samseg.core.dataset import assign_to_classes
    from samseg.edges.dataset_outputs import load_class_table
    from samseg.edges.image_dir import read_image_dir

    table = load_class_table("models:/edited-classes/1")
    assert table.n_classes == 1 and table.class_names == {0: "b"}
    _, emb, labels = read_image_dir(tmp_path / "ds2" / "alpha")
    assert (assign_to_classes(emb, table).labels[labels >= 0] == 0).all()
    rc, _, err = run_cli(["classes", "edit", str(dataset), "--drop", "0", "--out", str(tmp_path / "ds3"), "--no-track",
                          "--register-classes", "x"])
    assert rc == 2 and "needs `edit` and MLflow tracking" in err


def test_a_recluster_of_an_edited_run_says_its_edits_are_not_carried_over() -> None:
    """A person's names and merges were of the old classes: a recluster's new ones come without them, and says so."""
    from samseg.engine.segment import image_entry

    summary = {"out_dir": "out/a", "n_masks": 3, "n_clusters": 1, "n_noise": 0, "recluster": {"edits_not_kept": 2}}
    entry = image_entry("photos/a.jpg", "a", summary)
    assert "class edits (names, merges) not carried over" in entry["warning"]
    assert entry["edits_not_kept"] == 2  # what a batch's report counts (the UI's note on a batch recluster)
    assert "warning" not in image_entry("photos/a.jpg", "a", {**summary, "recluster": {}})


def test_a_name_retyped_in_the_ui_is_the_last_rename_not_an_error() -> None:
    """The UI sends each name a person types for a class as one more rename: the last one counts."""
    from samseg.core.curation import edits_from_json

    edits = edits_from_json([{"op": "rename", "classes": [0], "name": "raod"}, {"op": "rename", "classes": [0], "name": "road"}])
    _, names = apply_edits(_labels(), embeddings(0), edits, SMOKE.cluster)
    assert names[0] == "road"
