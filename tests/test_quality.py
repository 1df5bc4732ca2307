"""benchmarks/quality.py, the harness that compares backbones where real weights exist: here on
injected masks and stand-in features, through the real features → pool → cluster → compose path.

A backbone whose features encode the true class must let samseg recover the classes (IoU >= 0.95
per class); one whose features encode position only must not, and the harness must say so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import quality
from samseg.core.types import EncodedImage, ImageGeometry, MaskSet
from mlflow_store import sqlite_uri

SIZES = ((96, 128), (112, 144))  # two images, told apart by size


def _scene(hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(N×H×W instance masks, H×W class ids): 4 squares (class 1) and 4 bars (class 2) on background 0,
    alternating sides row by row, so position alone cannot tell the classes apart."""
    h, w = hw
    masks, gt = [], np.zeros(hw, np.uint8)
    for k in range(4):
        left, right = (slice(6, 20), slice(40, w - 10)) if k % 2 == 0 else (slice(w - 24, w - 10), slice(6, w - 44))
        square = np.zeros(hw, bool)
        square[8 + 20 * k: 22 + 20 * k, left] = True
        bar = np.zeros(hw, bool)
        bar[10 + 20 * k: 16 + 20 * k, right] = True
        masks += [square, bar]
        gt[square], gt[bar] = 1, 2
    return np.stack(masks), gt


@pytest.fixture()
def labelled(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i, hw in enumerate(SIZES):
        _, gt = _scene(hw)
        Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(data / f"img{i}.jpg")
        Image.fromarray(gt).save(data / f"img{i}.png")
    return data


def _inject(monkeypatch: pytest.MonkeyPatch, semantic: bool) -> None:
    """SAM's AMG returns the true instances; the backbone returns a grid whose cells carry the
    class mix of their pixels (semantic) or their position only."""
    def masks(_model, rgb, _encoded, _cfg):
        return MaskSet.from_binary(_scene(rgb.shape[:2])[0])

    def features(_backbone, rgb, long_side):
        hw = rgb.shape[:2]
        g = ImageGeometry.for_image(hw, long_side, 14, square=False)
        (gh, gw), (ih, iw), (fh, fw) = g.feature_hw, g.input_hw, g.padded_hw
        if semantic:  # each cell: the fraction of its input-frame pixels of each class
            ys = np.minimum(((np.arange(ih) + 0.5) * hw[0] / ih).astype(int), hw[0] - 1)
            xs = np.minimum(((np.arange(iw) + 0.5) * hw[1] / iw).astype(int), hw[1] - 1)
            framed = np.zeros((fh, fw), np.uint8)
            framed[:ih, :iw] = _scene(hw)[1][np.ix_(ys, xs)]
            cells = framed.reshape(gh, 14, gw, 14)
            grid = np.stack([(cells == c).mean(axis=(1, 3)) for c in (1, 2)])
            grid = grid + np.random.default_rng(gh).normal(0.1, 0.05, grid.shape)  # real features are never exact
        else:
            rows, cols = np.meshgrid(np.arange(gh) / gh, np.arange(gw) / gw, indexing="ij")
            grid = np.stack([rows, cols, np.ones_like(rows)]).astype(np.float32)
        return EncodedImage(np.ascontiguousarray(grid, np.float32), g)

    monkeypatch.setattr("samseg.sam.amg.generate_masks", masks)
    monkeypatch.setattr("samseg.sam.backbones.encode_features", features)


def _harness(labelled: Path, out: Path) -> list[dict]:
    rc = quality.main([str(labelled), "--model", "tiny-random", "--preset", "smoke", "--backbones", "tiny-random",
                       "--eps", "auto", "0.1", "--out", str(out)])
    assert rc == 0
    import json

    return json.loads((out / "quality.json").read_text())["rows"]


def test_class_features_recover_the_classes(labelled: Path, tmp_path: Path, monkeypatch, home) -> None:
    _inject(monkeypatch, semantic=True)
    rows = _harness(labelled, tmp_path / "q")
    assert [(r["backbone"], r["eps"]) for r in rows] == [("tiny-random", "auto"), ("tiny-random", "0.1")]
    fixed = next(r for r in rows if r["eps"] == "0.1")
    assert fixed["n_images"] == 2 and fixed["mean_miou"] >= 0.95 and fixed["mean_ari"] > 0.9
    assert all(c["iou"] >= 0.95 for c in fixed["per_class"] if c["gt_class"] in (1, 2))
    # --eps auto is scored too (4 instances a class are too few for a sharp k-distance knee: the
    # table shows what it chose and what that cost, which is what the harness is for)
    auto = next(r for r in rows if r["eps"] == "auto")
    assert auto["n_images"] == 2 and len(auto["eps_chosen"]) >= 1 and 0 <= auto["mean_miou"] <= 1
    assert "| tiny-random | auto |" in (tmp_path / "q" / "quality.md").read_text()


def test_position_only_features_are_reported_as_failing(labelled: Path, tmp_path: Path, monkeypatch, home) -> None:
    _inject(monkeypatch, semantic=False)
    rows = _harness(labelled, tmp_path / "q")
    assert all(r["mean_miou"] < 0.9 for r in rows)  # the harness shows it: classes not recovered
    table = (tmp_path / "q" / "quality.md").read_text()
    assert all(f"{r['mean_miou']:.4f}" in table for r in rows)


def test_a_folder_without_labels_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    assert quality.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no IMAGE.jpg with an IMAGE.png" in err


@pytest.fixture()
def home(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("SAMSEG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri(tmp_path / 'mlflow.db'))
    return tmp_path / "home"


def test_name_scores_count_right_wrong_and_unnamed_classes() -> None:
    from samseg.core.eval import name_scores

    gt = np.zeros((4, 6), np.uint8)
    gt[:, :3], gt[:, 3:] = 1, 2  # GT: square | bar
    pred = np.zeros((4, 6), np.uint16)
    pred[:, :3], pred[:2, 3:], pred[2:, 3:] = 1, 2, 3  # class 0 = square; classes 1, 2 split the bar
    gt_names = {1: "square", 2: "bar"}
    s = name_scores(pred, {0: "square", 1: "road"}, gt, gt_names)  # class 2 unnamed
    assert (s["classes"], s["named"], s["correct"]) == (3, 2, 1)
    assert s["name_miou"] == pytest.approx((1.0 + 0.0) / 2)  # "square" exact; no pixel called "bar"
    s = name_scores(pred, {0: "square", 1: "bar", 2: "bar"}, gt, gt_names)  # one name may cover two classes
    assert (s["correct"], s["name_miou"]) == (3, 1.0)


def test_the_harness_scores_names_against_names_txt(labelled: Path, tmp_path: Path, monkeypatch, home) -> None:
    """An oracle namer (each class gets the GT name of its masks' pixels) through the real
    naming path: the harness must report every named class right and name mIoU ~ class mIoU."""
    import samseg.sam.namer as namer_mod

    _inject(monkeypatch, semantic=True)
    (labelled / "names.txt").write_text("square\nbar\n")

    def oracle(_namer, rgb, masks, labels, _emb, names, _min_prob, _k, _crops=None):
        gt = _scene(rgb.shape[:2])[1]
        out = {}
        for c in sorted({int(v) for v in labels[labels >= 0]}):
            pixels = masks.decode(list(np.flatnonzero(labels == c))).any(axis=0)
            g = int(np.bincount(gt[pixels], minlength=3)[1:].argmax()) + 1
            out[c] = {"name": names[g - 1], "best": names[g - 1], "score": 1.0, "runner_up": None, "runner_up_score": 0.0}
        return out

    monkeypatch.setattr(namer_mod, "load_namer", lambda *a, **k: type("N", (), {"sha256": "oracle", "image_size": 224})())
    monkeypatch.setattr(namer_mod, "name_classes", oracle)
    rc = quality.main([str(labelled), "--model", "tiny-random", "--preset", "smoke", "--backbones", "tiny-random",
                       "--eps", "0.1", "--out", str(tmp_path / "q"), "--extra", "--namer", "tiny-random"])
    assert rc == 0
    import json

    [row] = json.loads((tmp_path / "q" / "quality.json").read_text())["rows"]
    assert row["name_accuracy"] == 1.0 and row["named_fraction"] == 1.0
    assert row["mean_name_miou"] >= 0.95
    assert "name_accuracy" in (tmp_path / "q" / "quality.md").read_text()
