"""Feature backbones: the registry, pooling on any grid, the timm build + safetensors load, and
the bad inputs (unknown name, another backbone's file, truncated / wrong-hash file, bad size)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from samseg.core.backbones import BACKBONES, SAM, TINY_RANDOM, backbone_entry
from samseg.core.config import DEFAULT, NOTEBOOK, SMOKE, ClusterConfig, FeaturesConfig, PipelineConfig, PoolConfig
from samseg.core.pool import pool_embeddings
from samseg.core.types import EncodedImage, ImageGeometry, MaskSet
from samseg.sam.weights import CheckpointError

# ---------------------------------------------------------------- the registry and the config


def test_registry_rows_agree_with_timm() -> None:
    """patch, channels and licence of every timm row are timm's own (built on the meta device: no memory, no download)."""
    import timm
    import torch

    for name, row in BACKBONES.items():
        if row.timm_name is None:
            continue
        with torch.device("meta"):
            net = timm.create_model(row.timm_name, pretrained=False, num_classes=0, **row.timm_kwargs)
        assert net.patch_embed.patch_size == (row.patch_size, row.patch_size), name
        assert net.embed_dim == row.embed_dim, name
        assert row.input_size % row.patch_size == 0
        if not row.seeded:
            licence = timm.models.get_pretrained_cfg(row.timm_name).license
            assert ("DINOv3" in row.licence) == (licence == "dinov3-license"), name
            assert row.url.startswith("https://huggingface.co/timm/" + row.timm_name + "/resolve/")


def test_presets_notebook_is_sam_default_is_dinov2_b_with_eps_auto() -> None:
    assert NOTEBOOK.features.name == SAM and NOTEBOOK.cluster.eps == 0.06 and not NOTEBOOK.cluster.eps_auto
    assert DEFAULT.features.name == "dinov2-b" and DEFAULT.cluster.eps_auto  # no measured eps for DINOv2 features
    assert SMOKE.features.name == SAM
    back = DEFAULT.with_features(SAM)
    assert back.cluster.eps == 0.06 and not back.cluster.eps_auto  # SAM's eps is the measured one
    assert PipelineConfig.from_flat(DEFAULT.flat()) == DEFAULT
    old = {k: v for k, v in NOTEBOOK.flat().items() if not k.startswith("features.")}  # a summary from before backbones
    assert PipelineConfig.from_flat(old).features.name == SAM


@pytest.mark.parametrize("bad, message", [
    (dict(name="dinov9"), "not a feature backbone"),
    (dict(name="dinov2-b", input_size=500), "not a multiple of dinov2-b's 14-px patch"),
    (dict(name=SAM, input_size=518), "does not apply to --features sam"),
    (dict(name="dinov3-b", input_size=-16), ">= 0"),
])
def test_bad_features_config_is_one_line(bad: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        FeaturesConfig(**bad)
    assert "\n" not in str(err.value)


def test_long_side_defaults_to_the_row() -> None:
    assert FeaturesConfig("dinov2-s").long_side == 518 and FeaturesConfig("dinov3-b").long_side == 512
    assert FeaturesConfig("dinov2-s", 280).long_side == 280


# ---------------------------------------------------------------- geometry and pooling on any grid


def test_geometry_of_a_non_square_grid() -> None:
    g = ImageGeometry.for_image((300, 500), img_size=518, patch_size=14, square=False)
    assert g.input_hw == (311, 518)
    assert g.padded_hw == (322, 518) and g.feature_hw == (23, 37) == g.valid_cells_hw
    assert ImageGeometry.from_dict(g.to_dict()) == g
    sam = ImageGeometry.for_image((300, 500))
    assert "frame_hw" not in sam.to_dict() and sam.feature_hw == (64, 64)  # SAM entries stay as they were


def _brute_force(masks: np.ndarray, features: np.ndarray, g: ImageGeometry, cfg: PoolConfig) -> np.ndarray:
    """Per mask, per cell, pixel by pixel: resize each mask pixel-centre nearest to input_hw, count
    it per patch cell, apply the rule and weighting; no cell → the most-covered cell, no pixel
    left after the resize → the cell of its centroid."""
    h, w = g.original_hw
    ih, iw = g.input_hw
    p = g.patch_size
    gh, gw = g.valid_cells_hw
    out = []
    for m in masks:
        ys = np.minimum(((np.arange(ih) + 0.5) * h / ih).astype(int), h - 1)
        xs = np.minimum(((np.arange(iw) + 0.5) * w / iw).astype(int), w - 1)
        framed = m[np.ix_(ys, xs)]
        weights = np.zeros((gh, gw))
        counts = np.zeros((gh, gw), int)
        for r, c in itertools.product(range(gh), range(gw)):
            cell = framed[r * p:(r + 1) * p, c * p:(c + 1) * p]
            counts[r, c] = cell.sum()
            coverage = cell.sum() / cell.size
            used = cell.sum() > cfg.min_pixels if cfg.cell_rule == "min_pixels" else coverage >= cfg.min_coverage
            weights[r, c] = (1.0 if cfg.weighting == "uniform" else coverage) if used else 0.0
        if weights.sum() == 0 and counts.sum():
            weights.flat[int(np.argmax(counts))] = 1.0
        elif weights.sum() == 0:  # vanished under the resize: the cell of its centroid
            yy, xx = np.nonzero(m)
            weights[min(gh - 1, int((yy.mean() + 0.5) * ih / h // p)), min(gw - 1, int((xx.mean() + 0.5) * iw / w // p))] = 1.0
        f = features[:, :gh, :gw].reshape(features.shape[0], -1)
        out.append(f @ (weights.reshape(-1) / weights.sum()))
    return np.array(out)


@pytest.mark.parametrize("cfg", [PoolConfig(), PoolConfig(min_pixels=20), PoolConfig(cell_rule="min_coverage", min_coverage=0.3),
                                 PoolConfig(cell_rule="min_coverage", weighting="coverage"), PoolConfig(weighting="coverage")],
                         ids=lambda c: f"{c.cell_rule}-{c.weighting}-{c.min_pixels}-{c.min_coverage}")
def test_pool_on_a_non_square_14px_grid_matches_brute_force(cfg: PoolConfig) -> None:
    rng = np.random.default_rng(3)
    h, w = 137, 211
    g = ImageGeometry.for_image((h, w), img_size=126, patch_size=14, square=False)  # 82×126 input, 6×9 grid
    masks = np.zeros((6, h, w), bool)
    masks[0, 10:60, 20:90] = True  # a blob
    masks[1, :, 200:] = True  # a strip at the right edge (partly-valid bottom cells)
    masks[2, 130:, :] = True  # the bottom rows: the edge cells' valid pixels only
    masks[3, 70, 100] = True  # one pixel: no cell passes min_pixels → its cell
    masks[4] = rng.random((h, w)) < 0.2  # salt and pepper
    masks[5, 40:45, 150:152] = True  # smaller than a cell
    features = rng.normal(size=(5, *g.feature_hw)).astype(np.float32)
    ours = pool_embeddings(MaskSet.from_binary(masks), EncodedImage(features, g), cfg)
    ref = _brute_force(masks, features, g, cfg)
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_pool_never_nan_for_a_mask_vanishing_on_a_coarse_grid() -> None:
    h, w = 2000, 3000
    g = ImageGeometry.for_image((h, w), img_size=224, patch_size=14, square=False)
    masks = np.zeros((1, h, w), bool)
    masks[0, 1500, 2900] = True  # one pixel of a 6-MP image: gone under the resize to 149×224
    features = np.arange(np.prod(g.feature_hw) * 2, dtype=np.float32).reshape(2, *g.feature_hw)
    emb = pool_embeddings(MaskSet.from_binary(masks), EncodedImage(features, g), PoolConfig())
    r, c = min(g.valid_cells_hw[0] - 1, int((1500.5 * 149 / h) // 14)), int((2900.5 * 224 / w) // 14)
    np.testing.assert_array_equal(emb[0], features[:, r, c])


# ---------------------------------------------------------------- timm build, encode, weights files


@pytest.fixture(scope="module")
def tiny_backbone():
    from samseg.sam.backbones import load_backbone

    return load_backbone(TINY_RANDOM, device="cpu")


def test_encode_features_gives_the_grid_the_geometry_says(tiny_backbone) -> None:
    from samseg.sam.backbones import encode_features

    rgb = np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8)
    enc = encode_features(tiny_backbone, rgb, 224)
    assert enc.features.shape == (32, 10, 16) and enc.features.dtype == np.float32
    assert enc.geometry.input_hw == (134, 224) and enc.geometry.feature_hw == (10, 16)
    assert np.isfinite(enc.features).all()
    again = encode_features(tiny_backbone, rgb, 224)
    np.testing.assert_array_equal(enc.features, again.features)  # deterministic
    with pytest.raises(ValueError, match="not a multiple"):
        encode_features(tiny_backbone, rgb, 225)


def test_bf16_applies_to_the_backbone() -> None:
    import torch

    from samseg.sam.backbones import encode_features, load_backbone

    b16 = load_backbone(TINY_RANDOM, device="cpu", precision="bf16")
    assert next(b16.net.parameters()).dtype == torch.bfloat16 and b16.precision == "bf16"
    rgb = np.random.default_rng(1).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    f16 = encode_features(b16, rgb, 112).features
    f32 = encode_features(load_backbone(TINY_RANDOM, device="cpu"), rgb, 112).features
    assert f16.dtype == np.float32 and np.isfinite(f16).all()
    cos = (f16 * f32).sum(0) / (np.linalg.norm(f16, axis=0) * np.linalg.norm(f32, axis=0))
    assert cos.min() > 0.98  # the same features within bf16 rounding


def backbone_weight(name: str):
    """A backbone's row in the one weights factory (samseg.sam.weights)."""
    from samseg.sam.backbones import BACKBONE_WEIGHTS
    from samseg.sam.weights import weight

    return weight(name, BACKBONE_WEIGHTS)


def _save(net, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def test_features_checkpoint_loads_with_safetensors_and_its_hash_is_the_identity(tmp_path: Path, tiny_backbone) -> None:
    from samseg.sam.backbones import build_backbone, load_backbone
    from samseg.sam.files import file_sha256

    path = _save(build_backbone(TINY_RANDOM, seed=7), tmp_path / "tiny.safetensors")
    loaded = load_backbone(TINY_RANDOM, checkpoint=path, device="cpu")
    assert loaded.sha256 == file_sha256(path) == backbone_weight(TINY_RANDOM).identity(path)[1]
    seeded7 = build_backbone(TINY_RANDOM, seed=7).state_dict()
    for k, v in loaded.net.state_dict().items():
        assert (v == seeded7[k]).all(), k


def test_attack_checkpoint_of_another_backbone_is_one_line(tmp_path: Path, monkeypatch) -> None:
    from samseg.core import backbones
    from samseg.sam.backbones import build_backbone, load_backbone

    other = dict(backbones.BACKBONES[TINY_RANDOM].timm_kwargs, embed_dim=48, num_heads=3)
    monkeypatch.setitem(backbones.BACKBONES, "wide", backbones.BackboneEntry(
        "vit_small_patch14_reg4_dinov2", 14, 48, 224, "none", seeded=True, timm_kwargs=other))
    path = _save(build_backbone("wide"), tmp_path / "wide.safetensors")
    with pytest.raises(CheckpointError, match=r"do not fit the tiny-random backbone .*a checkpoint of another backbone") as err:
        load_backbone(TINY_RANDOM, checkpoint=path, device="cpu")
    assert "\n" not in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"PK\x03\x04 a zip, not tensors"], ids=["empty", "short", "foreign"])
def test_attack_truncated_or_foreign_file_is_one_line(tmp_path: Path, content: bytes) -> None:
    from samseg.sam.backbones import load_backbone

    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a safetensors weights file") as err:
        load_backbone(TINY_RANDOM, checkpoint=path, device="cpu")
    assert "\n" not in str(err.value)


def test_attack_pickle_is_never_executed(tmp_path: Path) -> None:
    """A torch.save pickle renamed .safetensors: safetensors reads tensors only, so its code never runs."""
    import pickle

    from samseg.sam.backbones import load_backbone

    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self):
            return (marker.touch, ())

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(CheckpointError):
        load_backbone(TINY_RANDOM, checkpoint=path, device="cpu")
    assert not marker.exists()


@pytest.fixture()
def home(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("SAMSEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture()
def served_dinov2_s(tmp_path: Path, monkeypatch):
    """dinov2-s's row pointed at a tiny ViT's weights served on loopback (no real weights here)."""
    import http.server
    import threading

    from samseg.core import backbones
    from samseg.sam.backbones import build_backbone

    row = backbones.BACKBONES[TINY_RANDOM]
    payload = _save(build_backbone(TINY_RANDOM, seed=3), tmp_path / "served.safetensors").read_bytes()
    fake = backbones.BackboneEntry(row.timm_name, 14, 32, 224, backbones.APACHE, timm_kwargs=row.timm_kwargs)
    monkeypatch.setitem(backbones.BACKBONES, "dinov2-s", fake)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/model.safetensors", payload
    server.shutdown()


def test_download_records_the_hash_and_a_later_swap_is_refused(home: Path, served_dinov2_s) -> None:
    import hashlib

    from samseg.sam.backbones import load_backbone

    url, payload = served_dinov2_s
    with pytest.raises(CheckpointError, match="samseg weights download dinov2-s.*--features sam"):
        backbone_weight("dinov2-s").identity()  # offline, not downloaded: one line naming both fixes
    path = backbone_weight("dinov2-s").download(url)
    sha = hashlib.sha256(payload).hexdigest()
    assert path.read_bytes() == payload and backbone_weight("dinov2-s").identity() == (str(path), sha)
    assert load_backbone("dinov2-s", device="cpu").sha256 == sha
    path.write_bytes(payload[: len(payload) // 2])  # truncated after download
    with pytest.raises(CheckpointError, match="is not the expected") as err:
        load_backbone("dinov2-s", device="cpu")
    assert "\n" not in str(err.value)


def test_a_download_names_its_licence_once_the_server_answers_and_offline_only_the_error(home: Path, served_dinov2_s,
                                                                                         caplog) -> None:
    url, _ = served_dinov2_s
    with caplog.at_level("WARNING", logger="samseg.sam.weights"):
        with pytest.raises(CheckpointError):
            backbone_weight("dinov2-s").download("http://127.0.0.1:9/nothing-listens-here")  # refused: offline
        assert not [r for r in caplog.records if "downloading" in r.getMessage()]  # no promise of a download
        backbone_weight("dinov2-s").download(url)
    [line] = [r.getMessage() for r in caplog.records if "downloading" in r.getMessage()]
    assert url in line and f"(licence: {backbone_weight('dinov2-s').licence})" in line


def test_pinned_hash_mismatch_discards_the_download(home: Path, served_dinov2_s, monkeypatch) -> None:
    import dataclasses

    from samseg.core import backbones
    
    url, _ = served_dinov2_s
    monkeypatch.setitem(backbones.BACKBONES, "dinov2-s", dataclasses.replace(backbones.BACKBONES["dinov2-s"], sha256="0" * 64))
    with pytest.raises(CheckpointError, match="expected 0000"):
        backbone_weight("dinov2-s").download(url)
    assert not backbone_weight("dinov2-s").path.exists() and not list(backbone_weight("dinov2-s").path.parent.glob("*.part"))


def test_sam_has_no_backbone_to_load() -> None:
    from samseg.sam.backbones import load_backbone

    with pytest.raises(ValueError, match="SAM's own encoder"):
        load_backbone(SAM)


def test_seeded_identity_is_remembered_and_stable(home: Path) -> None:
    from samseg.sam.backbones import load_backbone

    first = backbone_weight(TINY_RANDOM).identity(seed=5)[1]
    assert backbone_weight(TINY_RANDOM).identity(seed=5)[1] == first == load_backbone(TINY_RANDOM, device="cpu", seed=5).sha256
    assert backbone_weight(TINY_RANDOM).identity(seed=6)[1] != first


def test_cluster_config_of_with_features_keeps_other_knobs() -> None:
    cfg = PipelineConfig(cluster=ClusterConfig(min_samples=3)).with_features("dinov3-b")
    assert cfg.cluster.min_samples == 3 and cfg.cluster.eps_auto and cfg.features == FeaturesConfig("dinov3-b")
    assert math.isclose(backbone_entry(SAM).eps or 0, 0.06)


# ---------------------------------------------------------------- the command line


def _segment(tmp_path: Path, *flags: str) -> tuple[int, str, Path]:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from cli_run import run_cli

    out = tmp_path / "out"
    rc, _, err = run_cli(["segment", str(Path(__file__).parent / "data" / "photos" / "bears.jpg"), "--out", str(out),
                          "--no-track", "--no-cache", "-q", *flags])
    return rc, err, out


def test_cli_every_missing_weight_is_named_in_one_line_before_any_image(tmp_path: Path, home: Path,
                                                                       monkeypatch) -> None:
    from samseg.sam.weights import CheckpointError

    tried: list[str] = []

    def offline(w, *a, **k):  # no test touches the network
        tried.append(w.name)
        raise CheckpointError(f"could not download {w.name} (offline); its own hint")

    monkeypatch.setattr("samseg.sam.weights.Weight.download", offline)
    rc, err, out = _segment(tmp_path, "--model", "vit_b", "--features", "dinov2-b")
    assert rc == 1 and err.count("error:") == 1 and "Traceback" not in err
    assert tried == ["vit_b", "dinov2-b", "clip-b16"]  # each tried once (first use), not once per image
    assert "missing weights: vit_b, dinov2-b, clip-b16" in err and "samseg weights download vit_b dinov2-b clip-b16" in err
    assert str(home / "checkpoints") in err  # what to copy where
    assert err.rstrip().endswith("To try samseg without them: --model tiny-random (random weights, meaningless classes)")
    assert not out.exists()  # nothing written


def test_cli_features_checkpoint_of_another_backbone_is_one_line_nothing_written(tmp_path: Path, home: Path,
                                                                                monkeypatch) -> None:
    from samseg.core import backbones
    from samseg.sam.backbones import build_backbone

    monkeypatch.setitem(backbones.BACKBONES, "wide", backbones.BackboneEntry(
        "vit_small_patch14_reg4_dinov2", 14, 48, 224, "none", seeded=True, timm_kwargs={"embed_dim": 48, "depth": 1, "num_heads": 3}))
    path = _save(build_backbone("wide"), tmp_path / "wide.safetensors")
    rc, err, out = _segment(tmp_path, "--model", "tiny-random", "--preset", "smoke", "--features", TINY_RANDOM,
                            "--features-checkpoint", str(path))
    assert rc == 1 and err.count("error:") == 1 and "do not fit the tiny-random backbone" in err and str(path) in err
    assert not out.exists()


@pytest.mark.parametrize("flags, message", [
    (("--features", "dinov9"), "invalid choice"),
    (("--features", TINY_RANDOM, "--features-size", "500"), "not a multiple of tiny-random's 14-px patch"),
    (("--features-size", "512"), "does not apply to --features sam"),
])
def test_cli_bad_features_flags_are_usage_errors(tmp_path: Path, flags: tuple, message: str) -> None:
    rc, err, out = _segment(tmp_path, "--model", "tiny-random", "--preset", "smoke", *flags)
    assert rc == 2 and message in err and "Traceback" not in err and not out.exists()


def test_cli_tiny_random_defaults_to_sam_features_and_a_backbone_run_records_it(tmp_path: Path, home: Path) -> None:
    import json

    from samseg.apps.cli import build_parser
    from samseg.apps.cli.config import config_from_args

    args = build_parser().parse_args(["segment", "x.jpg", "--out", "o", "--model", "tiny-random"])
    assert config_from_args(args).features.name == SAM  # even with the default preset: nothing to download
    args = build_parser().parse_args(["segment", "x.jpg", "--out", "o", "--features", "dinov3-b", "--eps", "0.2"])
    cfg = config_from_args(args)
    assert cfg.features.name == "dinov3-b" and cfg.cluster.eps == 0.2 and not cfg.cluster.eps_auto
    rc, err, out = _segment(tmp_path, "--model", "tiny-random", "--preset", "smoke", "--features", TINY_RANDOM,
                            "--features-size", "112", "--save-features")
    assert rc == 0, err
    summary = json.loads((out / "bears" / "summary.json").read_text())
    assert summary["features"]["name"] == TINY_RANDOM and summary["features"]["patch_size"] == 14
    assert summary["config"]["features.input_size"] == 112 and summary["embedding_dim"] == 32
    gh, gw = summary["features"]["grid_hw"]
    assert np.load(out / "bears" / "features.npy").shape == (32, gh, gw)


def test_cli_tiled_image_pools_per_tile_backbone_features(tmp_path: Path, home: Path) -> None:
    import json

    rc, err, out = _segment(tmp_path, "--model", "tiny-random", "--preset", "smoke", "--points-per-side", "4",
                            "--features", TINY_RANDOM, "--tile", "256", "--tile-overlap", "64")
    assert rc == 0, err
    summary = json.loads((out / "bears" / "summary.json").read_text())
    assert summary["tiling"]["n_tiles"] > 1 and summary["features"]["name"] == TINY_RANDOM
    assert "grid_hw" not in summary["features"]  # one grid per tile
    assert summary["cache"]["tiles"] == "computed" and summary["embedding_dim"] == 32
