"""samseg.edges.cache: stage keys, local and S3 (moto server) round trips, corrupt entries → miss."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from samseg.edges import storage
from samseg.edges.cache import StageCache, default_cache_root
from samseg.engine.stages import stage_key
from samseg.core.config import SMOKE, PipelineConfig
from samseg.core.types import EncodedImage, ImageGeometry, MaskSet

IMG = "a" * 64
CKPT = "b" * 64


def _encoded(seed: int = 0) -> EncodedImage:
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((8, 64, 64)).astype(np.float32)
    return EncodedImage(feats, ImageGeometry.for_image((30, 40)))


def _masks() -> MaskSet:
    m = np.zeros((3, 30, 40), dtype=bool)
    m[0, :10, :10] = True
    m[1, 10:, 5:35] = True
    m[2, 3:7, 20:39] = True
    return MaskSet.from_binary(m, predicted_iou=np.array([0.9, 0.8, 0.7]), point_coords_xy=np.arange(6).reshape(3, 2))


def _assert_masks_equal(a: MaskSet, b: MaskSet) -> None:
    assert a.image_hw == b.image_hw and a.rles == b.rles
    for field in ("areas", "bbox_xywh", "predicted_iou", "stability_score", "point_coords_xy", "crop_box_xywh"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    np.testing.assert_array_equal(a.decode(), b.decode())


# ---------------------------------------------------------------- keys


def test_stage_key_depends_on_upstream_config_only() -> None:
    cfg = SMOKE
    keys = {s: stage_key(s, IMG, CKPT, cfg) for s in ("encode", "amg", "pool")}
    assert len(set(keys.values())) == 3 and all(len(k) == 64 for k in keys.values())
    assert stage_key("amg", IMG, CKPT, cfg) == keys["amg"]  # deterministic

    # Clustering is never part of a key: re-tuning eps reuses every cached stage.
    retuned = cfg.replace(cluster={"eps": 0.5, "min_samples": 2, "algorithm": "hdbscan"})
    assert {s: stage_key(s, IMG, CKPT, retuned) for s in keys} == keys

    # A pool change invalidates pool only; an AMG change invalidates amg and pool.
    pooled = cfg.replace(pool={"weighting": "coverage"})
    assert stage_key("encode", IMG, CKPT, pooled) == keys["encode"]
    assert stage_key("amg", IMG, CKPT, pooled) == keys["amg"]
    assert stage_key("pool", IMG, CKPT, pooled) != keys["pool"]
    amg = cfg.replace(amg={"points_per_side": 4})
    assert stage_key("encode", IMG, CKPT, amg) == keys["encode"]
    assert stage_key("amg", IMG, CKPT, amg) != keys["amg"]
    assert stage_key("pool", IMG, CKPT, amg) != keys["pool"]

    # Image, weights and model type change everything.
    for stage in keys:
        assert stage_key(stage, "c" * 64, CKPT, cfg) != keys[stage]
        assert stage_key(stage, IMG, "d" * 64, cfg) != keys[stage]
        assert stage_key(stage, IMG, CKPT, dataclasses.replace(cfg, model_type="vit_b")) != keys[stage]
    with pytest.raises(ValueError, match="not cached"):
        stage_key("cluster", IMG, CKPT, cfg)


def test_every_amg_and_pool_field_enters_the_key() -> None:
    base = PipelineConfig()
    changes = {
        "amg": {f.name: f.default for f in dataclasses.fields(base.amg)},
        "pool": {f.name: f.default for f in dataclasses.fields(base.pool)},
    }
    bumped = {"cell_rule": "min_coverage", "weighting": "coverage"}
    for section, fields in changes.items():
        for name, default in fields.items():
            if name in bumped:
                value = bumped[name]
            elif isinstance(default, float):
                value = default / 2 if default else 0.5
            else:
                value = default + 1
            changed = base.replace(**{section: {name: value}})
            assert stage_key("pool", IMG, CKPT, changed) != stage_key("pool", IMG, CKPT, base), f"{section}.{name}"


def test_default_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SAMSEG_CACHE", "s3://bucket/cache")
    assert StageCache().root == "s3://bucket/cache"
    monkeypatch.delenv("SAMSEG_CACHE")
    monkeypatch.setenv("SAMSEG_HOME", str(tmp_path))
    assert default_cache_root() == str(tmp_path / "cache")


# ---------------------------------------------------------------- round trips


def _roundtrip(cache: StageCache) -> None:
    cfg = SMOKE
    k_enc, k_amg, k_pool = (stage_key(s, IMG, CKPT, cfg) for s in ("encode", "amg", "pool"))
    assert cache.load("encode", k_enc, "encoded") is None and cache.load("amg", k_amg, "masks") is None
    assert cache.load("pool", k_pool, "embeddings") is None

    enc, masks = _encoded(), _masks()
    emb = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    cache.save("encode", k_enc, "encoded", enc)
    uri_enc = cache.entry_uri("encode", k_enc)
    cache.save("amg", k_amg, "masks", masks)
    uri_amg = cache.entry_uri("amg", k_amg)
    cache.save("pool", k_pool, "embeddings", emb)
    uri_pool = cache.entry_uri("pool", k_pool)
    assert uri_enc == storage.join_uri(cache.root, "encode", k_enc[:2], k_enc)
    assert uri_amg.endswith(f"amg/{k_amg[:2]}/{k_amg}") and uri_pool.endswith(f"pool/{k_pool[:2]}/{k_pool}")

    got = cache.load("encode", k_enc, "encoded")
    assert got is not None and got.geometry == enc.geometry
    np.testing.assert_array_equal(got.features, enc.features)
    got_masks = cache.load("amg", k_amg, "masks")
    assert got_masks is not None
    _assert_masks_equal(got_masks, masks)
    got_emb = cache.load("pool", k_pool, "embeddings")
    assert got_emb is not None and got_emb.dtype == np.float32
    np.testing.assert_array_equal(got_emb, emb)

    manifest = json.loads(storage.read_bytes(storage.join_uri(uri_enc, "manifest.json")))
    assert manifest["shape"] == [8, 64, 64] and manifest["dtype"] == "float32" and "samseg_version" in manifest
    # Empty mask sets are legal AMG output and must round-trip too.
    k_empty = stage_key("amg", "e" * 64, CKPT, cfg)
    cache.save("amg", k_empty, "masks", MaskSet.empty((5, 6)))
    empty = cache.load("amg", k_empty, "masks")
    assert empty is not None and len(empty) == 0 and empty.image_hw == (5, 6)


def test_local_roundtrip(tmp_path: Path) -> None:
    _roundtrip(StageCache(tmp_path / "cache"))


@pytest.mark.integration
def test_s3_roundtrip(s3_bucket: str) -> None:  # noqa: F811
    _roundtrip(StageCache(f"s3://{s3_bucket}/samseg-cache"))


# ---------------------------------------------------------------- corruption


def _corruptions(cache: StageCache, key: str) -> list[tuple[str, object]]:
    entry = cache.entry_uri("encode", key)
    feats = storage.join_uri(entry, "features.npy")
    manifest = storage.join_uri(entry, "manifest.json")
    good = storage.read_bytes(feats)
    good_manifest = json.loads(storage.read_bytes(manifest))
    wrong_shape = {**good_manifest, "shape": [8, 32, 32]}
    return [
        ("truncated payload", lambda: storage.write_bytes(feats, good[: len(good) // 2])),
        ("flipped byte", lambda: storage.write_bytes(feats, good[:-1] + bytes([good[-1] ^ 0xFF]))),
        ("missing payload", lambda: storage.delete(feats)),
        ("garbage manifest", lambda: storage.write_bytes(manifest, b"{not json")),
        ("manifest of another shape", lambda: storage.write_bytes(manifest, json.dumps(wrong_shape).encode())),
        ("missing manifest", lambda: storage.delete(manifest)),
    ]


@pytest.mark.parametrize("case", range(6))
def test_corrupt_entry_is_a_miss_then_overwritten(tmp_path: Path, case: int, caplog: pytest.LogCaptureFixture) -> None:
    cache = StageCache(tmp_path / "cache")
    key = stage_key("encode", IMG, CKPT, SMOKE)
    cache.save("encode", key, "encoded", _encoded(0))
    name, corrupt = _corruptions(cache, key)[case]
    corrupt()
    with caplog.at_level(logging.WARNING, logger="samseg.edges.cache"):
        assert cache.load("encode", key, "encoded") is None, name
    if name != "missing manifest":  # an absent entry is a plain miss, not worth a warning
        assert any("recomputing" in r.getMessage() for r in caplog.records), name
    fresh = _encoded(1)
    cache.save("encode", key, "encoded", fresh)  # the caller recomputes and overwrites
    got = cache.load("encode", key, "encoded")
    assert got is not None
    np.testing.assert_array_equal(got.features, fresh.features)


@pytest.mark.integration
def test_s3_corrupt_embeddings_are_a_miss(s3_bucket: str) -> None:  # noqa: F811
    cache = StageCache(f"s3://{s3_bucket}/c")
    key = stage_key("pool", IMG, CKPT, SMOKE)
    cache.save("pool", key, "embeddings", np.ones((4, 8), np.float32))
    entry = cache.entry_uri("pool", key)
    storage.write_bytes(storage.join_uri(entry, "embeddings.npy"), b"\x93NUMPY truncated")
    assert cache.load("pool", key, "embeddings") is None
    cache.save("pool", key, "embeddings", np.zeros((4, 8), np.float32))
    np.testing.assert_array_equal(cache.load("pool", key, "embeddings"), np.zeros((4, 8), np.float32))


def test_bad_keys_and_shapes_rejected(tmp_path: Path) -> None:
    cache = StageCache(tmp_path)
    with pytest.raises(ValueError):
        cache.load("encode", "../../etc", "encoded")
    for hostile in ("../amg", "a/b", "", "Encode", "x" * 60):  # a stage name is one safe path component
        with pytest.raises(ValueError, match="stage name"):
            cache.entry_uri(hostile, "a" * 64)
    with pytest.raises(ValueError, match="N×C"):
        cache.save("pool", "a" * 64, "embeddings", np.ones(3, np.float32))


def test_concurrent_writers_never_yield_a_mixed_entry(tmp_path: Path) -> None:
    """Two writers racing on one key (different payloads): a reader gets A, B or a miss."""
    import threading

    cache = StageCache(tmp_path)
    key = stage_key("pool", IMG, CKPT, SMOKE)
    a, b = np.zeros((50, 16), np.float32), np.ones((50, 16), np.float32)
    stop = threading.Event()
    seen = {"a": 0, "b": 0, "miss": 0, "bad": 0}

    def write(arr: np.ndarray) -> None:
        while not stop.is_set():
            cache.save("pool", key, "embeddings", arr)

    def read() -> None:
        for _ in range(200):
            got = cache.load("pool", key, "embeddings")
            if got is None:
                seen["miss"] += 1
            elif np.array_equal(got, a):
                seen["a"] += 1
            elif np.array_equal(got, b):
                seen["b"] += 1
            else:
                seen["bad"] += 1

    writers = [threading.Thread(target=write, args=(x,)) for x in (a, b)]
    for t in writers:
        t.start()
    try:
        read()
    finally:
        stop.set()
        for t in writers:
            t.join()
    assert seen["bad"] == 0 and seen["a"] + seen["b"] + seen["miss"] == 200
    assert cache.load("pool", key, "embeddings") is not None  # once writers stop, the entry is whole


def test_a_cache_that_fills_up_never_fails_the_value_it_was_given(tmp_path: Path, monkeypatch, caplog) -> None:
    """Disk full (or an S3 endpoint gone) at save time: one warning, no exception, a miss later."""
    cache = StageCache(str(tmp_path / "c"))
    key = stage_key("pool", IMG, CKPT, SMOKE)

    def full(uri, data):  # noqa: ANN001
        raise storage.StorageError(f"{uri}: write failed: No space left on device")

    monkeypatch.setattr(storage, "write_bytes", full)
    with caplog.at_level("DEBUG", logger="samseg.edges.cache"):
        cache.save("pool", key, "embeddings", np.ones((4, 8), np.float32))
        cache.save("pool", stage_key("amg", IMG, CKPT, SMOKE), "embeddings", np.ones((4, 8), np.float32))
    warnings_ = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings_) == 1 and "No space left" in warnings_[0].getMessage()  # once per cache
    monkeypatch.undo()
    assert cache.load("pool", key, "embeddings") is None


def test_a_nearly_full_disk_is_an_unusable_cache_up_front(tmp_path: Path, monkeypatch) -> None:
    import shutil

    from samseg.edges.cache import unusable_reason

    assert unusable_reason(str(tmp_path / "c")) is None
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 1 << 20))
    assert "No space left" in unusable_reason(str(tmp_path / "c"))


@pytest.mark.integration
def test_a_missing_s3_cache_bucket_is_an_unusable_cache_up_front(s3_env) -> None:  # noqa: F811
    from samseg.edges.cache import unusable_reason

    assert "does not exist" in unusable_reason("s3://no-such-cache-bucket/c")
