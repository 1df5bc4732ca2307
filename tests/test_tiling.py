"""Tiled segmentation: the tile grid, RLE run arithmetic, the cross-tile merge, and the engine
on a large synthetic image whose objects sit across tile seams.

The engine test replaces SAM with known parts (as tests/test_semantic.py does): the image's
pixels hold an object id and the object's class (benchmarks/tiles_scene.py); the stand-in AMG
returns each object piece a tile sees (plus the tile's background), and the stand-in encoder
gives every 16-px cell its majority class's vector plus noise. The real tiling, merge, pool,
cluster, compose and cache code runs. Every object must come back as exactly one mask (its
pieces joined at the seams, no duplicate from a neighbouring tile), IoU >= 0.95 with the
truth, and one class per shape.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from benchmarks.tiles_scene import install_standins, scene
from samseg.core import rle
from samseg.core.config import PipelineConfig, TileConfig, get_preset
from samseg.core.eval import evaluate_label_maps
from samseg.core.tiling import TileMasks, merge_tiles, tile_boxes
from samseg.core.types import MaskSet
from samseg.edges.cache import StageCache
from samseg.edges.images import LoadedImage
from samseg.engine import stages
from samseg.engine.runner import run_image
from samseg.sam.source import ModelIdentity

HW = (1100, 1500)
TILE = TileConfig(size=512, overlap=128)
MODEL = ModelIdentity("tiny-random", "c" * 64, None, "cpu")


# ---------------------------------------------------------------- RLE runs


def _coco_counts(m_hw: np.ndarray) -> str:
    return mask_utils.encode(np.asfortranarray(m_hw.astype(np.uint8)))["counts"].decode("ascii")


def _random_masks(seed: int, n: int):
    """(t, rng, H×W bool) n times: random densities, every 3rd a solid corner block, every 8th empty."""
    rng = np.random.default_rng(seed)
    for t in range(n):
        h, w = (int(v) for v in rng.integers(1, 70, 2))
        m = rng.random((h, w)) < rng.random()
        if t % 3 == 0:
            m[:] = False
            m[int(rng.integers(0, h)):, int(rng.integers(0, w)):] = t % 8 != 0
        yield t, rng, m


def test_counts_codec_is_byte_identical_to_pycocotools() -> None:
    for _t, _rng, m in _random_masks(0, 300):
        h, w = m.shape
        counts = _coco_counts(m)
        runs = rle.decode_counts(counts)
        assert runs.sum() == h * w
        assert rle.encode_counts(runs, (h, w)) == counts
    for solid in (np.ones((5, 7), bool), np.zeros((5, 7), bool)):  # one run of ones / of zeros only
        assert rle.encode_counts(rle.decode_counts(_coco_counts(solid)), solid.shape) == _coco_counts(solid)
    big = np.zeros((3000, 4000), bool)
    big[1000:2900, 7:3990] = True  # runs far beyond one 5-bit digit
    assert rle.encode_counts(rle.decode_counts(_coco_counts(big)), big.shape) == _coco_counts(big)


def test_translate_places_a_tile_mask_exactly_where_pycocotools_would() -> None:
    rng = np.random.default_rng(1)
    for t in range(200):
        th, tw = (int(v) for v in rng.integers(1, 40, 2))
        tile = rng.random((th, tw)) < 0.4
        h = th if t % 3 == 0 else th + int(rng.integers(0, 30))  # full-height tiles: runs join across columns
        w = tw + int(rng.integers(0, 30))
        y0, x0 = int(rng.integers(0, h - th + 1)), int(rng.integers(0, w - tw + 1))
        image = np.zeros((h, w), bool)
        image[y0:y0 + th, x0:x0 + tw] = tile
        placed = rle.translate({"size": [th, tw], "counts": _coco_counts(tile)}, (y0, x0), (h, w))
        assert placed == {"size": [h, w], "counts": _coco_counts(image)}
        out_wh = np.zeros((w, h), np.uint16)
        rle.paint(out_wh, placed, 3)
        np.testing.assert_array_equal(out_wh.T == 3, image)
    with pytest.raises(ValueError, match="does not fit"):
        rle.translate({"size": [4, 4], "counts": _coco_counts(np.ones((4, 4), bool))}, (2, 0), (5, 5))


def test_sampling_a_mask_at_grid_points_equals_decoding_it() -> None:
    for _t, rng, m in _random_masks(2, 200):
        h, w = m.shape
        rows = np.unique(rng.integers(0, h, int(rng.integers(1, h + 1))))
        cols = np.unique(rng.integers(0, w, int(rng.integers(1, w + 1))))
        got = rle.sample_grid({"size": [h, w], "counts": _coco_counts(m)}, rows, cols)
        np.testing.assert_array_equal(got, m[np.ix_(rows, cols)])


# ---------------------------------------------------------------- grid and config


def test_tiles_cover_the_image_and_neighbours_share_the_overlap() -> None:
    boxes = tile_boxes(HW, TILE)
    assert len(boxes) == 3 * 4  # starts 0, 384, 588 down; 0, 384, 768, 988 across
    covered = np.zeros(HW, np.int32)
    for x0, y0, x1, y1 in boxes:
        assert (x1 - x0, y1 - y0) == (512, 512)
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1
    xs = sorted({b[0] for b in boxes})
    assert all(b - a <= TILE.size - TILE.overlap for a, b in zip(xs, xs[1:]))  # >= overlap shared
    assert tile_boxes((300, 400), TILE) == [(0, 0, 400, 300)]  # smaller than a tile: one tile, the image
    assert tile_boxes(HW, TileConfig()) == []


def test_auto_tiles_only_images_over_two_tile_sides_and_keys_follow() -> None:
    auto = TileConfig(size=1024, auto=True)
    assert auto.for_image((1500, 2048)) == TileConfig()  # SAM sees it at >= half resolution: one image
    assert auto.for_image((1500, 2049)) == TileConfig(size=1024)
    small = PipelineConfig(tile=auto).for_image((800, 800))
    assert small == PipelineConfig()  # untiled images keep the untiled config, so their cache keys
    key = stages.stage_key("tiles", "a" * 64, "c" * 64, PipelineConfig(tile=TileConfig(size=1024)))
    assert key != stages.stage_key("tiles", "a" * 64, "c" * 64, PipelineConfig(tile=TileConfig(size=1024, overlap=128)))
    with pytest.raises(ValueError, match="not cached"):  # a tiled image's masks live in its tiles entry
        stages.stage_key("amg", "a" * 64, "c" * 64, PipelineConfig(tile=TileConfig(size=1024)))
    for bad, match in ((dict(size=32), "tile.size"), (dict(size=512, overlap=300), "at most half"),
                       (dict(size=512, merge_iou=0), "merge_iou")):
        with pytest.raises(ValueError, match=match):
            TileConfig(**bad)


# ---------------------------------------------------------------- merge rules on hand-made tiles


def _tile(box: tuple[int, int, int, int], image_masks: list[np.ndarray], emb: list[list[float]]) -> TileMasks:
    x0, y0, x1, y1 = box
    return TileMasks(box, MaskSet.from_binary(np.stack([m[y0:y1, x0:x1] for m in image_masks])),
                     np.asarray(emb, np.float32))


def test_an_object_and_its_part_in_one_tile_stay_two_masks() -> None:
    hw = (100, 180)
    whole, part = np.zeros(hw, bool), np.zeros(hw, bool)
    whole[30:70, 60:120] = True
    part[30:70, 60:90] = True  # the left half: inside the shared region x 60..100
    a, b = (0, 0, 100, 100), (60, 0, 180, 100)
    merged = merge_tiles([_tile(a, [whole, part], [[1, 0], [0, 1]]), _tile(b, [whole], [[1, 0]])], hw, 0.5)
    assert len(merged.masks) == 2 and merged.n_merged == 1
    got = merged.masks.decode()
    assert (got[0] == whole).all() and (got[1] == part).all()
    np.testing.assert_allclose(merged.embeddings[0], [1, 0])  # area-weighted mean of the pieces


def test_containment_joins_a_piece_one_tile_sees_smaller_and_never_an_uncut_object() -> None:
    hw = (100, 200)
    obj = np.zeros(hw, bool)
    obj[20:80, 50:150] = True
    a, b = (0, 0, 120, 100), (80, 0, 200, 100)
    seen_by_b = obj.copy()
    seen_by_b[20:80, 80:120] = False  # B's mask keeps 1 column in 5 of the shared region: IoU 0.2 there
    seen_by_b[20:80, 80:120][:, ::5] = True
    merged = merge_tiles([_tile(a, [obj], [[1.0]]), _tile(b, [seen_by_b], [[1.0]])], hw, 0.5)
    assert len(merged.masks) == 2  # IoU in the shared region is under 0.5 and containment is too weak

    b_piece = obj.copy()
    b_piece[20:30, 80:120] = False  # B misses a strip: IoU in the shared region 0.83, contained in A's
    merged = merge_tiles([_tile(a, [obj], [[1.0]]), _tile(b, [b_piece], [[1.0]])], hw, 0.9)
    assert len(merged.masks) == 1 and (merged.masks.decode()[0] == obj).all()

    small = np.zeros(hw, bool)
    small[40:50, 95:105] = True  # whole inside the shared region, inside A's big mask, cut by no seam
    merged = merge_tiles([_tile(a, [obj], [[1.0]]), _tile(b, [small], [[1.0]])], hw, 0.5)
    assert len(merged.masks) == 2


# ---------------------------------------------------------------- the engine on a tiled image


CENTRES = [(200, 448), (448, 448), (800, 448), (250, 832), (640, 640), (470, 1000), (900, 1050),
           (150, 1250), (700, 1300), (1000, 200), (560, 160), (980, 700)]  # on seams, in 2- and 4-tile overlaps
SIZES = (40, 70, 30, 90, 55, 60, 45, 80, 65, 50, 35, 75)  # many wider than the 128-px overlap


def _scene() -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(H×W×3 pixels with the objects written in, H×W class map, the objects' masks)."""
    rgb, classes = scene(HW, [(cy, cx, s) for (cy, cx), s in zip(CENTRES, SIZES)])
    ids = rgb[:, :, 0].astype(np.int32) + 256 * rgb[:, :, 1].astype(np.int32)
    return rgb, classes, [ids == k + 1 for k in range(len(CENTRES))]


def _standins(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    return install_standins(monkeypatch)


def _cfg(**tile) -> PipelineConfig:
    base = get_preset("smoke").replace(cluster={"eps": 0.15, "min_samples": 3})
    return dataclasses.replace(base, tile=dataclasses.replace(TILE, **tile))


def test_objects_across_seams_come_back_one_mask_and_one_class_each(monkeypatch, tmp_path: Path) -> None:
    calls = _standins(monkeypatch)
    rgb, classes, objects = _scene()
    image = LoadedImage(rgb=rgb, sha256="e" * 64, name="scene.png", uri="scene.png")
    image_size_decodes = []
    decode_wh = MaskSet.decode_wh
    monkeypatch.setattr(MaskSet, "decode_wh", lambda self, idx=None: (
        image_size_decodes.append(1) if tuple(self.image_hw) == HW else None) or decode_wh(self, idx))
    cache = StageCache(tmp_path)
    run = run_image(image, _cfg(), MODEL, cache, load_model=lambda: object())

    assert calls == {"encode": 12, "amg": 12} and run.tiling()["n_tiles"] == 12
    assert image_size_decodes == []  # no mask was ever decoded at the image's size
    assert len(run.masks) == len(objects) + 1  # each object once, plus the one background
    got = run.masks.decode()
    best = [max(range(len(got)), key=lambda i: (got[i] & gt).sum() / (got[i] | gt).sum()) for gt in objects]
    assert len(set(best)) == len(objects)
    for k, (i, gt) in enumerate(zip(best, objects)):
        assert (got[i] & gt).sum() / (got[i] | gt).sum() >= 0.95, k
    labels = run.clusters.labels
    assert len({labels[best[k]] for k in range(0, 12, 2)}) == 1  # every disc one class
    assert len({labels[best[k]] for k in range(1, 12, 2)}) == 1  # every square one class
    assert labels[best[0]] != labels[best[1]] and run.clusters.n_clusters == 2
    res = evaluate_label_maps(run.label_map, classes)
    assert run.label_map.shape == HW and min(res.per_class_iou.values()) >= 0.95, res.per_class_iou
    assert run.status["tiles"] == "computed" and run.cache_status()["tiles"] == "computed"

    warm = run_image(image, _cfg().replace(cluster={"eps": 0.2}), MODEL, cache, load_model=None)
    assert warm.status["tiles"] == warm.status["amg"] == warm.status["pool"] == "hit"
    assert calls == {"encode": 12, "amg": 12}  # the merged entry alone: no tile was read or computed
    remerged = run_image(image, _cfg(merge_iou=0.6), MODEL, cache, load_model=None)
    assert remerged.status["tiles"] == "computed" and calls == {"encode": 12, "amg": 12}  # every tile a hit
    np.testing.assert_array_equal(remerged.label_map, run.label_map)


def test_tile_progress_counts_tiles(monkeypatch, tmp_path: Path) -> None:
    from samseg.engine import progress

    _standins(monkeypatch)
    rgb, _, _ = _scene()
    image = LoadedImage(rgb=rgb, sha256="f" * 64, name="scene.png", uri="scene.png")
    events: list[tuple[str, dict]] = []
    with progress.reporting(lambda event, **info: events.append((event, info))):
        run_image(image, _cfg(), MODEL, StageCache(tmp_path), load_model=lambda: object())
    tiles = [info for event, info in events if event == "tile"]
    assert [t["done"] for t in tiles] == list(range(1, 13)) and {t["total"] for t in tiles} == {12}
    stage_events = [info["stage"] for event, info in events if event == "stage"]
    assert stage_events == ["tiles", "amg", "pool", "cluster", "compose"]  # tiles' own stages stay quiet


def test_recluster_of_a_tiled_image_reads_its_tiles_entry_before_any_fallback(monkeypatch, tmp_path: Path) -> None:
    from samseg.engine.recluster import recluster, recluster_summary

    _standins(monkeypatch)
    rgb, _, _ = _scene()
    image = LoadedImage(rgb=rgb, sha256="9" * 64, name="scene.png", uri="scene.png")
    cold = run_image(image, _cfg(), MODEL, StageCache(tmp_path / "c"), load_model=lambda: object())

    def never() -> None:
        raise AssertionError("the fallback was asked although the tiles entry is cached")

    re = recluster(image, _cfg().replace(cluster={"eps": 0.3}), MODEL, StageCache(tmp_path / "c"),
                   fallback={"amg": never, "pool": never})
    assert re.status["tiles"] == re.status["amg"] == re.status["pool"] == "hit"
    assert recluster_summary(re, "r1").extra["recluster"]["inputs_from"] == "cache"
    elsewhere = recluster(image, _cfg(), MODEL, StageCache(tmp_path / "empty"),
                          fallback={"amg": lambda: cold.masks, "pool": lambda: cold.embeddings})
    assert elsewhere.status["amg"] == elsewhere.status["pool"] == "run" and elsewhere.status["tiles"] == "skipped"
    np.testing.assert_array_equal(elsewhere.label_map, cold.label_map)
