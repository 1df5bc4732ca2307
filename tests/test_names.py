"""Names for classes without training (samseg.core.namers, samseg.sam.namer, samseg.engine.naming):
a known answer from constructed embeddings, noise that stays unnamed, the vocabularies, and the
plumbing end to end on the seeded tiny namer (`--namer tiny-random`: its names are MEANINGLESS —
these tests check where names go, never that they are right)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli_run import run_cli
from samseg.core.namers import pick_names, vocabulary
from mlflow_store import sqlite_uri

PHOTOS = Path(__file__).parent / "data" / "photos"


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def text() -> tuple[list[str], np.ndarray]:
    names = vocabulary("coco-stuff")
    return names, _unit(np.random.default_rng(0).normal(size=(len(names), 512)))


def test_a_class_whose_crops_match_a_name_gets_it(text) -> None:
    names, t = text
    rng = np.random.default_rng(1)
    image = _unit(t[[5, 40]] + 0.5 * rng.normal(size=(2, 512)) / np.sqrt(512))  # near "bus" and "wine glass"
    rows = pick_names(image, t, names, min_prob=0.3)
    assert [r["name"] for r in rows] == ["bus", "wine glass"] and all(r["score"] > 0.9 for r in rows)
    assert rows[0]["runner_up"] and rows[0]["runner_up_score"] < rows[0]["score"]


def test_noise_is_never_a_confident_name(text) -> None:
    """Embeddings unrelated to every name: CLIP's softmax alone would still be peaked; the z test keeps them unnamed."""
    names, t = text
    for seed in range(100, 140):
        image = _unit(np.random.default_rng(seed).normal(size=(4, 512)))
        assert all(r["name"] is None for r in pick_names(image, t, names, min_prob=0.3))


def test_vocabularies(tmp_path: Path) -> None:
    assert len(vocabulary("coco-stuff")) == 171 and len(vocabulary("ade20k")) == 150
    assert vocabulary("none") == [] and vocabulary(" road, sky ,road") == ["road", "sky"]
    f = tmp_path / "v.txt"
    f.write_text("# my classes\nroad\n\nsky  # above\n")
    assert vocabulary(str(f)) == ["road", "sky"]
    for bad, message in ((",,", "no names"), ("ok,\x1b[2Jbad", "printable")):
        with pytest.raises(ValueError, match=message):
            vocabulary(bad)


def test_named_classes_reach_the_summary_masks_json_an_export_and_mlflow(tmp_path: Path, monkeypatch) -> None:
    rc, out, err = run_cli(["segment", str(PHOTOS / "bears.jpg"), "--out", str(tmp_path / "o"), "--model", "tiny-random",
                            "--points-per-side", "4", "--device", "cpu", "--no-track", "--no-cache", "-q",
                            "--orchestrator", "local", "--names", "road,sky,grass,bear,water", "--namer", "tiny-random",
                            "--names-min-prob", "0.01"])
    assert rc == 0, err
    d = tmp_path / "o" / "bears"
    summary = json.loads((d / "summary.json").read_text())
    naming = summary["naming"]
    assert naming["namer"] == "tiny-random" and naming["vocabulary"] == "road,sky,grass,bear,water"
    assert [c["id"] for c in naming["classes"]] == list(range(summary["n_clusters"]))
    assert all(c["best"] in ("road", "sky", "grass", "bear", "water") for c in naming["classes"])
    named = summary["class_names"]
    assert named == {str(c["id"]): c["name"] for c in naming["classes"] if c["name"]}
    for c in naming["classes"]:  # a named class's cut-out carries its name
        from samseg.edges.layout import cutout_name

        assert (d / cutout_name(c["id"], c["name"])).is_file()
    # the class table: one row per class, its name, the namer's score and runner-up, masks, pixels
    from samseg.edges.image_dir import read_image_dir, read_label_png

    _, _, labels = read_image_dir(d)
    label_map = read_label_png(d / "labels.png")
    by_id = {c["id"]: c for c in naming["classes"]}
    assert [r["id"] for r in summary["class_table"]] == sorted({int(v) for v in labels[labels >= 0]})
    for r in summary["class_table"]:
        assert r["masks"] == int((labels == r["id"]).sum()) and r["pixels"] == int((label_map == r["id"] + 1).sum())
        assert r["name"] == by_id[r["id"]]["name"]
        assert (r["score"], r["runner_up"]) == ((by_id[r["id"]]["score"], by_id[r["id"]]["runner_up"]) if r["name"]
                                                else (None, None))
    cats = json.loads((d / "masks.json").read_text())["categories"]
    assert [c["name"] for c in cats] == [named.get(str(k), f"class_{k}") for k in range(len(cats))]
    rc, _, err = run_cli(["export", str(d), "--format", "coco", "--out", str(tmp_path / "coco")])
    assert rc == 0, err
    exported = [c["name"] for c in json.loads((tmp_path / "coco" / "annotations.json").read_text())["categories"]]
    assert exported == [f"bears:{n}" for n in [c["name"] for c in cats]]

    import mlflow

    from samseg.edges.mlflow.tracking import CLASS_NAMES_TABLE, log_image_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri(tmp_path / 'mlflow.db'))
    run_id = log_image_run(d, summary, experiment="names")
    import pandas as pd

    path = mlflow.MlflowClient().download_artifacts(run_id, CLASS_NAMES_TABLE, str(tmp_path))
    doc = json.loads(Path(path).read_text())  # MLflow's table artifact: {"columns", "data"}
    table = pd.DataFrame(doc["data"], columns=doc["columns"])
    assert list(table["id"]) == [c["id"] for c in naming["classes"]]
    assert list(table["name"]) == [c["name"] or "" for c in naming["classes"]]
    assert list(table["best"]) == [c["best"] for c in naming["classes"]]
    params = mlflow.get_run(run_id).data.params
    assert params["names.vocabulary"] == "road,sky,grass,bear,water" and params["names.namer"] == "tiny-random"
    from samseg.edges.mlflow.compare import compare_runs

    shown = " ".join(f"{c}:{n}" for c, n in named.items()) or "-"
    assert list(compare_runs([run_id])["class_names"]) == [shown]  # what `samseg runs compare` prints


def test_names_off_leaves_no_trace(tmp_path: Path) -> None:
    rc, _, err = run_cli(["segment", str(PHOTOS / "corgi.jpg"), "--out", str(tmp_path / "o"), "--model", "tiny-random",
                          "--points-per-side", "4", "--device", "cpu", "--no-track", "--no-cache", "-q",
                          "--orchestrator", "local"])  # tiny-random's smoke preset names nothing
    assert rc == 0, err
    summary = json.loads((tmp_path / "o" / "corgi" / "summary.json").read_text())
    assert "naming" not in summary and summary["config"]["names.vocabulary"] == "none"


def test_a_short_vocabulary_can_name_and_a_typo_is_refused() -> None:
    """Five names: the largest z of five values is 2, so the margin scales with the list; a name
    that is no vocabulary (`coco_stuff`) is one error, not a vocabulary of one that names everything."""
    from samseg.core.config import configure

    names = ["road", "car", "tree", "sky", "building"]
    t = _unit(np.random.default_rng(0).normal(size=(5, 64)))
    assert pick_names(t[[3]], t, names, min_prob=0.3)[0]["name"] == "sky"
    with pytest.raises(ValueError, match="not coco-stuff, ade20k, a file of names"):
        configure(names="coco_stuff")
    assert configure(names="road,").names.vocabulary == "road,"


def test_a_recluster_of_a_named_run_names_its_new_classes(tmp_path: Path) -> None:
    """New class ids after a recluster: they are named again under the run's vocabulary (never
    the old ids' names carried over). Seeded tiny namer: only where the names go is checked."""
    import samseg

    photo = PHOTOS / "bears.jpg"
    result = samseg.segment(photo, model="tiny-random", points_per_side=4, device="cpu", cache=str(tmp_path / "c"),
                            names="grass,water", namer="tiny-random", **{"names.min_prob": 0.01})
    again = result.recluster(eps=0.5)
    naming = again.summary["naming"]
    assert naming["vocabulary"] == "grass,water" and naming["namer"] == "tiny-random"
    assert [c["id"] for c in naming["classes"]] == list(range(again.summary["n_clusters"]))
    assert again.summary.get("class_names", {}) == {str(c["id"]): c["name"] for c in naming["classes"] if c["name"]}


def test_the_legend_says_each_name_with_its_score_and_a_persons_name_without() -> None:
    import numpy as np

    from samseg.core.render import _legend_rows
    from samseg.core.types import ClusterResult

    res = ClusterResult(np.array([0, 0, 1, -1]), names={0: "road", 1: "sky"}, scores={0: 0.3149})
    assert res.legend() == {0: "road 0.31", 1: "sky"}  # sky: a person's name, no namer score
    rows = [text for _, text in _legend_rows(2, res.sizes(), res.n_noise, res.legend())]
    assert rows == ["0 road 0.31 (2 masks)", "1 sky (1 mask)", "noise (1 mask)"]


def test_a_class_with_no_mask_in_this_image_is_not_in_its_legend() -> None:
    """Dataset ids: this image holds classes 0 and 2 of the batch's three (or an edit emptied class 1)."""
    import numpy as np

    from samseg.core.render import _legend_rows
    from samseg.core.types import ClusterResult

    res = ClusterResult(np.array([0, 2, 2, -1]), names={1: "road", 2: "sky"})
    rows = [text for _, text in _legend_rows(3, res.sizes(), res.n_noise, res.legend())]
    assert rows == ["class 0 (1 mask)", "2 sky (2 masks)", "noise (1 mask)"]


def test_a_new_vocabulary_or_a_rerun_names_from_the_cached_crops(tmp_path: Path) -> None:
    """The namer's image side (the masks' crops) is cached by the image, the masks' pixels and the
    namer: a new vocabulary or the same command again embeds no crop, and names as a fresh run does."""
    def segment(out: str, vocabulary: str) -> dict:
        rc, _, err = run_cli(["segment", str(PHOTOS / "bears.jpg"), "--out", str(tmp_path / out), "--model", "tiny-random",
                              "--points-per-side", "4", "--device", "cpu", "--no-track", "--cache", str(tmp_path / "cache"),
                              "-q", "--orchestrator", "local", "--names", vocabulary, "--namer", "tiny-random"])
        assert rc == 0, err
        return json.loads((tmp_path / out / "bears" / "summary.json").read_text())["naming"]

    first = segment("a", "road,sky,grass,bear,water")
    assert first["crops_embedded"] > 0
    other = segment("b", "cat,dog,tree")
    assert other["crops_embedded"] == 0 and {c["best"] for c in other["classes"]} <= {"cat", "dog", "tree"}
    again = segment("c", "road,sky,grass,bear,water")
    assert again["crops_embedded"] == 0
    assert [(c["best"], round(c["score"], 4)) for c in again["classes"]] == [(c["best"], round(c["score"], 4))
                                                                          for c in first["classes"]]
