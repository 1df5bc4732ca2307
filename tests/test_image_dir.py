"""samseg.edges.image_dir and samseg.core.render on injected masks: every file, its format, and atomic replace."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from samseg.edges import image_dir
from samseg.edges.image_dir import OutputsError, build_coco, read_label_png, read_image_dir, read_summary, write_image_dir
from samseg.edges.images import LoadedImage
from samseg.core.render import PALETTE, class_color, render_cutout, render_overlay
from samseg.core.types import ClusterResult, MaskSet

H, W = 30, 40  # non-square on purpose: catches h/w swaps


@pytest.fixture()
def case():
    """3 masks on a 30×40 image: two in cluster 0, one noise; label map has values 0, 1 and 700."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    image = LoadedImage(rgb=rgb, sha256="ab" * 32, name="pic.jpg", uri="/data/pic.jpg")
    m = np.zeros((3, H, W), bool)
    m[0, 2:10, 3:20] = True
    m[1, 15:25, 5:9] = True
    m[2, 0:5, 30:40] = True
    masks = MaskSet.from_binary(m, predicted_iou=[0.9, 0.8, 0.7], stability_score=[0.95, 0.9, 0.85])
    emb = np.arange(3 * 4, dtype=np.float32).reshape(3, 4)
    clusters = ClusterResult(labels=np.array([0, 0, -1], dtype=np.int64))
    label_map = np.zeros((H, W), np.uint16)
    label_map[m[0] | m[1]] = 1
    return image, masks, emb, clusters, label_map


def _write(tmp_path: Path, case, features=None) -> Path:
    image, masks, emb, clusters, label_map = case
    summary = {"n_masks": len(masks), "seconds": {"encode": np.float64(0.5)}}
    return write_image_dir(tmp_path / "pic", image, masks, emb, clusters, label_map, summary, features)


def test_labels_png_uint16_roundtrip_high_values(tmp_path: Path) -> None:
    lab = np.zeros((H, W), np.uint16)
    lab[0, 0], lab[5, 7], lab[-1, -1] = 1, 700, 65535
    path = tmp_path / "labels.png"
    image_dir.write_label_png(path, lab)
    back = read_label_png(path)
    assert back.dtype == np.uint16 and back.shape == (H, W) and np.array_equal(back, lab)
    via_cv2 = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # an independent reader agrees
    assert via_cv2.dtype == np.uint16 and np.array_equal(via_cv2, lab)
    with pytest.raises(OutputsError, match="uint16"):
        image_dir.write_label_png(path, lab.astype(np.int32))


def test_every_file_written_with_right_shapes(tmp_path: Path, case) -> None:
    image, masks, emb, clusters, label_map = case
    d = _write(tmp_path, case, features=np.ones((4, 8, 8), np.float32))
    names = {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}
    assert names == {"labels.png", "overlay.png", "classes/class_0.png", "masks.json", "masks.parquet",
                     "embeddings.npy", "features.npy", "summary.json", ".samseg-output.json"}
    assert np.array_equal(read_label_png(d / "labels.png"), label_map)
    overlay = np.asarray(Image.open(d / "overlay.png"))
    assert overlay.shape == (H, W, 3) and overlay.dtype == np.uint8
    cut = np.asarray(Image.open(d / "classes" / "class_0.png"))
    assert cut.shape == (H, W, 4) and Image.open(d / "classes" / "class_0.png").mode == "RGBA"
    assert np.array_equal(cut[..., 3] == 255, label_map == 1)
    assert np.load(d / "features.npy").shape == (4, 8, 8)
    assert json.loads((d / "summary.json").read_text())["seconds"]["encode"] == 0.5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_masks_json_fields(tmp_path: Path, case) -> None:
    image, masks, _, _, _ = case
    coco = json.loads((_write(tmp_path, case) / "masks.json").read_text())
    assert coco["images"] == [{"id": 1, "file_name": "pic.jpg", "height": H, "width": W, "sha256": "ab" * 32}]
    assert coco["categories"] == [{"id": 1, "name": "class_0"}]
    anns = coco["annotations"]
    assert [a["id"] for a in anns] == [1, 2, 3] and [a["cluster"] for a in anns] == [0, 0, -1]
    a = anns[0]
    for key in ("image_id", "segmentation", "area", "bbox", "predicted_iou", "stability_score", "point_coords", "crop_box"):
        assert key in a
    assert isinstance(a["segmentation"]["counts"], str) and a["segmentation"]["size"] == [H, W]
    assert a["area"] == 8 * 17 and a["bbox"] == [3.0, 2.0, 16.0, 7.0]
    assert a["predicted_iou"] == pytest.approx(0.9)
    decoded = MaskSet.from_records((H, W), anns).decode()
    assert np.array_equal(decoded, masks.decode())  # RLE survives the JSON round trip


def test_parquet_rows_and_columns(tmp_path: Path, case) -> None:
    df = pd.read_parquet(_write(tmp_path, case) / "masks.parquet")
    assert len(df) == 3
    assert df["cluster"].tolist() == [0, 0, -1]
    assert df[["x", "y", "w", "h"]].iloc[0].tolist() == [3.0, 2.0, 16.0, 7.0]
    assert df["rle_counts"].map(type).eq(str).all() and df["file_name"].eq("pic.jpg").all()
    coco = build_coco(*[case[i] for i in (0, 1, 3)])
    assert df["rle_counts"].tolist() == [a["segmentation"]["counts"] for a in coco["annotations"]]


def test_read_outputs_keeps_embedding_order(tmp_path: Path, case) -> None:
    _, masks, emb, clusters, _ = case
    d = _write(tmp_path, case)
    assert not (d / "features.npy").exists()
    masks2, emb2, labels2 = read_image_dir(d)
    assert len(masks2) == 3 and masks2.image_hw == (H, W)
    assert np.array_equal(emb2, emb) and emb2.dtype == np.float32
    assert np.array_equal(labels2, clusters.labels)
    assert np.array_equal(masks2.areas, masks.areas)
    assert read_summary(d)["n_masks"] == 3


def test_existing_dir_replaced_whole_and_failed_write_leaves_old(tmp_path: Path, case, monkeypatch) -> None:
    d = tmp_path / "pic"
    _write(tmp_path, case)
    (d / "classes" / "class_7.png").write_bytes(b"from an older run")  # stale: listed nowhere
    import json

    marker = json.loads((d / ".samseg-output.json").read_text())
    marker["files"].append("classes/class_7.png")  # as an older run with more classes lists it
    (d / ".samseg-output.json").write_text(json.dumps(marker))
    _write(tmp_path, case)
    assert not (d / "classes" / "class_7.png").exists() and (d / "masks.json").exists()
    before = sorted(p.name for p in d.iterdir())

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(image_dir, "build_mask_table", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        _write(tmp_path, case)
    assert sorted(p.name for p in d.iterdir()) == before  # the previous complete dir is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["pic"]  # temp dir cleaned up


def test_mismatched_inputs_rejected(tmp_path: Path, case) -> None:
    image, masks, emb, clusters, label_map = case
    with pytest.raises(OutputsError, match="embeddings"):
        write_image_dir(tmp_path / "x", image, masks, emb[:2], clusters, label_map, {})
    with pytest.raises(OutputsError, match="label map"):
        write_image_dir(tmp_path / "x", image, masks, emb, clusters, label_map.T, {})
    assert not (tmp_path / "x").exists()


def test_empty_result_writes_valid_files(tmp_path: Path) -> None:
    image = LoadedImage(rgb=np.full((H, W, 3), 128, np.uint8), sha256="0" * 64, name="flat.png", uri="flat.png")
    d = write_image_dir(tmp_path / "flat", image, MaskSet.empty((H, W)), np.zeros((0, 32), np.float32),
                      ClusterResult(np.zeros(0, np.int64)), np.zeros((H, W), np.uint16), {})
    masks, emb, labels = read_image_dir(d)
    assert len(masks) == 0 and emb.shape == (0, 32) and labels.shape == (0,)
    assert len(pd.read_parquet(d / "masks.parquet")) == 0
    assert not list((d / "classes").iterdir())


def test_read_outputs_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(OutputsError) as exc:
        read_image_dir(tmp_path)
    assert "masks.json: missing" in str(exc.value) and "\n" not in str(exc.value)


def test_overlay_colours_boundaries_and_cutout() -> None:
    rgb = np.full((200, 300, 3), 100, np.uint8)
    lab = np.zeros((200, 300), np.uint16)
    lab[100:, :150] = 1
    lab[100:, 150:] = 2
    out = render_overlay(rgb, lab, [5, 2], n_noise=3)
    assert out.shape == (200, 300, 3) and out.dtype == np.uint8
    expected = np.rint(0.5 * 100 + 0.5 * np.array(class_color(1))).astype(np.uint8)
    assert out[180, 250].tolist() == expected.tolist()
    assert out[150, 149].tolist() == [0, 0, 0]  # boundary between the two classes
    assert not np.array_equal(out[:60, :120], rgb[:60, :120])  # legend drawn top-left
    assert np.array_equal(render_overlay(rgb, lab, [5, 2], n_noise=3), out)  # deterministic
    cut = render_cutout(rgb, lab, 1)
    assert cut.shape == (200, 300, 4) and cut[150, 200, 3] == 255 and cut[150, 10, 3] == 0
    with pytest.raises(ValueError, match="class id 1"):
        render_overlay(rgb, lab, [5])


def test_palette_is_fixed_and_distinct() -> None:
    colours = [class_color(c) for c in range(60)]
    assert colours[: len(PALETTE)] == list(PALETTE)
    assert len(set(PALETTE)) == len(PALETTE)
    assert all(0 <= v <= 255 for col in colours for v in col)


def test_recluster_and_summary_on_stored_outputs(tmp_path: Path, case) -> None:
    from samseg.core.config import ClusterConfig, get_preset
    from samseg.edges.cache import StageCache
    from samseg.edges.run_schema import FROM_PARENT_RUN
    from samseg.engine.recluster import recluster, recluster_summary
    from samseg.sam.source import ModelIdentity

    image, masks, _, _, _ = case
    emb = np.array([[1, 0, 0], [0.99, 0.05, 0], [0, 1, 0]], np.float32)  # masks 0 and 1 alike
    cfg = get_preset("smoke").replace(cluster=ClusterConfig(eps=0.1, min_samples=2))
    model = ModelIdentity("tiny-random", "cd" * 32, None, "cpu")
    given = {"amg": (masks, FROM_PARENT_RUN), "pool": (emb, FROM_PARENT_RUN)}
    run = recluster(image, cfg, model, StageCache(tmp_path / "cache"), given=given)  # no model: only cluster + compose
    assert run.clusters.labels.tolist() == [0, 0, -1]
    assert run.label_map.dtype == np.uint16 and run.label_map.shape == (H, W)
    assert set(np.unique(run.label_map)) == {0, 1}
    assert run.status == {"encode": "skipped", "features": "skipped", "amg": "parent_run", "pool": "parent_run", "cluster": "computed",
                          "compose": "computed"}
    s = recluster_summary(run, "parent-run", {"classes": "dataset"}).to_dict()
    assert s["image"] == {"file_name": "pic.jpg", "uri": "/data/pic.jpg", "sha256": "ab" * 32, "hw": [H, W]}
    assert (s["n_masks"], s["n_clusters"], s["n_noise"], s["cluster_sizes"]) == (3, 1, 1, [2])
    stages = {k: v for k, v in s["seconds"].items() if k != "total"}
    assert set(stages) == {"amg", "pool", "cluster", "compose"}  # encode was not needed: no time, no entry
    assert s["seconds"]["total"] == pytest.approx(sum(stages.values()), abs=1e-5)
    assert s["model"]["checkpoint_sha256"] == "cd" * 32 and s["cache"]["amg"] == "parent_run"
    assert s["config"]["cluster.min_samples"] == 2 and s["embedding_dim"] == 3
    assert s["recluster"] == {"parent_run_id": "parent-run", "inputs_from": "cache"}
    assert s["rerun_of_dataset_ids"] == "dataset"  # per-image ids now, and the summary says so
    json.dumps(s)  # JSON-able as is


def test_overlay_blend_table_gives_the_per_pixel_float32_bytes() -> None:
    from samseg.core.render import DEFAULT_ALPHA, _blend, color_lut

    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 40):
        rgb = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
        lab = rng.integers(0, n + 1, (60, 80)).astype(np.int64)
        lut = color_lut(n)
        for alpha in (DEFAULT_ALPHA, 0.3):
            out = rgb.astype(np.float32)  # the blend written pixel by pixel, as overlay.png always was
            sel = lab > 0
            out[sel] = (1.0 - alpha) * out[sel] + alpha * lut[lab[sel]].astype(np.float32)
            np.testing.assert_array_equal(_blend(rgb, lab, lut, alpha), np.rint(out).astype(np.uint8))


def test_only_the_classes_an_image_has_get_a_cut_out(tmp_path: Path, case) -> None:
    """Dataset-level ids: an image with only class 2 gets class_2.png, not empty class_0/1 cut-outs."""
    image, masks, emb, _, _ = case
    clusters = ClusterResult(labels=np.array([2, 2, -1], dtype=np.int64))
    label_map = np.zeros((H, W), np.uint16)
    label_map[masks.decode([0, 1]).any(axis=0)] = 3
    d = write_image_dir(tmp_path / "pic", image, masks, emb, clusters, label_map, {"n_masks": 3})
    assert sorted(p.name for p in (d / "classes").iterdir()) == ["class_2.png"]


@pytest.mark.parametrize("name, slug", [("road", "road"), ("Dining table", "dining-table"), ("../../etc/passwd", "etc-passwd"),
                                        ("café—terrace", "caf-terrace"), ("日本", ""), (None, ""), ("x" * 90, "x" * 40)])
def test_a_named_class_cutout_carries_a_safe_slug_of_its_name(name, slug) -> None:
    from samseg.edges.layout import cutout_name, may_write, name_slug

    assert name_slug(name) == slug
    rel = cutout_name(3, name)
    assert rel == (f"classes/class_3-{slug}.png" if slug else "classes/class_3.png")
    assert may_write(rel)  # what samseg writes, it may replace
