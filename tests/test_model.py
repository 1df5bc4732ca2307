"""samseg.sam.model: registry, tiny-random determinism, verified downloads, local checkpoints, devices.

Downloads are tested against a loopback http.server on 127.0.0.1 serving a small file;
the real MODELS rows are only ever changed through monkeypatch (restored after).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import socket
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from samseg.sam import model as model_mod
from samseg.sam.files import file_sha256, samseg_home
from samseg.sam.model import MODEL_TYPES, MODELS, SAM_WEIGHTS, build_tiny_random, load_model, select_device
from samseg.sam.weights import CheckpointError, CheckpointWarning, WeightsFile, state_dict_sha256, weight


def checkpoint_path(model_type: str, home=None) -> Path:
    return weight(model_type, SAM_WEIGHTS, home).path


def download_checkpoint(model_type: str, home=None, url=None) -> Path:
    """A SAM checkpoint through the one weights factory (samseg.sam.weights)."""
    return weight(model_type, SAM_WEIGHTS, home).download(url)

PAYLOAD = b"not really a checkpoint, just bytes to download\n" * 1000


# --------------------------------------------------------------------------- registry


def test_registry_pins_meta_checkpoints() -> None:
    assert MODEL_TYPES == ("vit_h", "vit_l", "vit_b", "tiny-random")
    assert MODELS["vit_h"].checkpoint == WeightsFile(
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        2_564_550_879,
    )
    assert MODELS["vit_l"].checkpoint.sha256 == "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"
    assert MODELS["vit_b"].checkpoint.filename == "sam_vit_b_01ec64.pth"
    assert MODELS["vit_b"].checkpoint.sha256 == "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"
    assert MODELS["tiny-random"].checkpoint is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        MODELS["vit_b"].checkpoint.sha256 = "x"  # type: ignore[misc]


def test_a_row_is_all_the_registry_knows(monkeypatch, tmp_path) -> None:
    """A model added with register_model alone is downloadable, resolvable and identified
    (no second table to edit): the row's checkpoint is what `weights`, paths and identity read."""
    from samseg.sam.model import ModelEntry
    from samseg.sam.registry import downloadable
    from samseg.sam.source import ModelRequest, ModelSource

    info = WeightsFile("http://127.0.0.1:9/unused", "new_model.pth", "ab" * 32, 10)
    monkeypatch.setitem(MODELS, "new_model", ModelEntry(build_tiny_random, info, embed_dim=32))
    monkeypatch.setattr(model_mod, "MODEL_TYPES", tuple(MODELS))
    assert {"new_model", "vit_b"} <= {w.name for w in downloadable()} and "tiny-random" not in {w.name for w in downloadable()}
    assert checkpoint_path("new_model", home=tmp_path) == tmp_path / "checkpoints" / "new_model.pth"
    monkeypatch.setenv("SAMSEG_HOME", str(tmp_path))
    assert ModelSource(ModelRequest("new_model", None, "cpu", 0, "fp32")).identity().checkpoint_sha256 == "ab" * 32
    assert MODELS["tiny-random"].grid_side == 64 and MODELS["vit_h"].embed_dim == 256


def test_unknown_model_type_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown model type 'vit_x'"):
        load_model("vit_x")
    with pytest.raises(ValueError, match="seeded weights; there is nothing to download"):
        download_checkpoint("tiny-random")


def test_samseg_home_env_and_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SAMSEG_HOME", str(tmp_path))
    assert samseg_home() == tmp_path
    assert checkpoint_path("vit_b") == tmp_path / "checkpoints" / "sam_vit_b_01ec64.pth"
    monkeypatch.delenv("SAMSEG_HOME")
    assert samseg_home() == Path.home() / ".cache" / "samseg"


# --------------------------------------------------------------------------- tiny-random


def test_tiny_random_is_deterministic_per_seed() -> None:
    rng_before = torch.random.get_rng_state()
    a, b, c = build_tiny_random(0), build_tiny_random(0), build_tiny_random(1)
    assert torch.equal(rng_before, torch.random.get_rng_state()), "global RNG must be left untouched"
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert state_dict_sha256(a) == state_dict_sha256(b) != state_dict_sha256(c)


def test_tiny_random_shapes_and_loaded_model_fields() -> None:
    m = load_model("tiny-random", device="cpu")
    assert m.model_type == "tiny-random" and m.device == "cpu" and m.checkpoint_path is None
    assert m.checkpoint_sha256 == state_dict_sha256(build_tiny_random(0))
    assert len(m.checkpoint_sha256) == 64
    assert not m.sam.training
    assert m.sam.image_encoder.img_size == 1024
    assert m.sam.prompt_encoder.embed_dim == 32
    assert load_model("tiny-random", seed=3, device="cpu").checkpoint_sha256 != m.checkpoint_sha256


# --------------------------------------------------------------------------- devices


def test_select_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert select_device("cpu") == "cpu"
    assert select_device(None) in ("cuda", "mps", "cpu")
    assert select_device("auto") == select_device(None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        select_device("cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        select_device("gpu0")


# --------------------------------------------------------------------------- downloads


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture()
def server(tmp_path: Path):
    """Loopback HTTP server serving tmp_path/served/ckpt.pth (= PAYLOAD); yields (url, requests)."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "ckpt.pth").write_bytes(PAYLOAD)
    handler = type("Handler", (_Handler,), {"requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/ckpt.pth", handler.requests
    finally:
        httpd.shutdown()
        httpd.server_close()


def _fake_entry(monkeypatch: pytest.MonkeyPatch, sha256: str, url: str = "http://127.0.0.1:9/unused") -> None:
    info = WeightsFile(url=url, filename="sam_vit_b_01ec64.pth", sha256=sha256, size=len(PAYLOAD))
    monkeypatch.setitem(MODELS, "vit_b", dataclasses.replace(MODELS["vit_b"], checkpoint=info))


def _unreachable_url() -> str:
    with socket.socket() as s:  # a port that was just free: connection refused, no waiting
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/sam.pth"


def test_download_verifies_hash_and_skips_valid_cache(monkeypatch, tmp_path, server) -> None:
    url, requests = server
    _fake_entry(monkeypatch, hashlib.sha256(PAYLOAD).hexdigest(), url)
    home = tmp_path / "home"
    path = download_checkpoint("vit_b", home=home)
    assert path == home / "checkpoints" / "sam_vit_b_01ec64.pth"
    assert path.read_bytes() == PAYLOAD
    assert not path.with_name(path.name + ".part").exists()
    assert len(requests) == 1
    assert download_checkpoint("vit_b", home=home) == path
    assert len(requests) == 1, "a valid cached file must not be downloaded again"
    path.write_bytes(b"corrupted")
    download_checkpoint("vit_b", home=home)
    assert path.read_bytes() == PAYLOAD and len(requests) == 2


def test_download_url_override(monkeypatch, tmp_path, server) -> None:
    url, requests = server
    _fake_entry(monkeypatch, hashlib.sha256(PAYLOAD).hexdigest())  # table URL unreachable
    path = download_checkpoint("vit_b", home=tmp_path, url=url)
    assert path.read_bytes() == PAYLOAD and requests == ["/ckpt.pth"]


def test_download_wrong_hash_discards_file(monkeypatch, tmp_path, server) -> None:
    url, _ = server
    _fake_entry(monkeypatch, "0" * 64, url)
    with pytest.raises(CheckpointError) as err:
        download_checkpoint("vit_b", home=tmp_path)
    msg = str(err.value)
    assert "0" * 64 in msg and hashlib.sha256(PAYLOAD).hexdigest() in msg and "\n" not in msg
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_download_unreachable_names_expected_path(monkeypatch, tmp_path) -> None:
    _fake_entry(monkeypatch, "0" * 64, _unreachable_url())
    expected = tmp_path / "checkpoints" / "sam_vit_b_01ec64.pth"
    with pytest.raises(CheckpointError) as err:
        download_checkpoint("vit_b", home=tmp_path)
    assert str(expected) in str(err.value) and "--checkpoint" in str(err.value) and "\n" not in str(err.value)
    assert not expected.exists() and not expected.with_name(expected.name + ".part").exists()


def test_load_model_offline_without_checkpoint(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SAMSEG_HOME", str(tmp_path))
    _fake_entry(monkeypatch, MODELS["vit_b"].checkpoint.sha256, _unreachable_url())
    with pytest.raises(CheckpointError, match="sam_vit_b_01ec64.pth"):
        load_model("vit_b", device="cpu")


def test_download_that_cannot_fit_the_disk_is_refused_before_it_starts(monkeypatch, tmp_path) -> None:
    info = dataclasses.replace(MODELS["vit_b"].checkpoint, url=_unreachable_url(), size=1 << 60)
    monkeypatch.setitem(MODELS, "vit_b", dataclasses.replace(MODELS["vit_b"], checkpoint=info))
    with pytest.raises(CheckpointError, match="GiB free") as err:
        download_checkpoint("vit_b", home=tmp_path)
    assert "\n" not in str(err.value) and "--checkpoint" in str(err.value)


def test_real_table_is_intact_after_monkeypatching() -> None:
    assert MODELS["vit_b"].checkpoint.url == "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"


# --------------------------------------------------------------------------- local checkpoints


def test_local_checkpoint_round_trip_warns_unknown_hash(tmp_path) -> None:
    ref = load_model("tiny-random", seed=0, device="cpu")
    path = tmp_path / "tiny.pth"
    torch.save(ref.sam.state_dict(), path)
    with pytest.warns(CheckpointWarning, match="not"):
        loaded = load_model("tiny-random", checkpoint=path, seed=7, device="cpu")  # seed ignored: weights from file
    assert loaded.checkpoint_path == str(path)
    assert loaded.checkpoint_sha256 == file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert state_dict_sha256(loaded.sam) == ref.checkpoint_sha256
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 3, 1024, 1024)).astype(np.float32))
    with torch.inference_mode():
        assert torch.equal(ref.sam.image_encoder(x), loaded.sam.image_encoder(x))


def test_pinned_hash_is_accepted_without_warning(monkeypatch, tmp_path) -> None:
    path = tmp_path / "weights.pth"
    path.write_bytes(PAYLOAD)
    _fake_entry(monkeypatch, hashlib.sha256(PAYLOAD).hexdigest())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert weight("vit_b", SAM_WEIGHTS).identity(path, warn=True) == (str(path), hashlib.sha256(PAYLOAD).hexdigest())
    _fake_entry(monkeypatch, "f" * 64)
    with pytest.warns(CheckpointWarning, match="f" * 64):
        weight("vit_b", SAM_WEIGHTS).identity(path, warn=True)


def test_garbage_checkpoint_is_a_clear_error(tmp_path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00\x01 this is not a torch file")
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError, match="garbage.pth") as err:
        load_model("tiny-random", checkpoint=garbage, device="cpu")
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="missing.pth: checkpoint file not found"):
        load_model("tiny-random", checkpoint=tmp_path / "missing.pth", device="cpu")


def test_checkpoint_for_another_architecture_is_a_clear_error(tmp_path) -> None:
    wrong = tmp_path / "wrong.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1, 2, 3)}, wrong)
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError, match="wrong.pth: weights do not fit"):
        load_model("tiny-random", checkpoint=wrong, device="cpu")


def test_a_failed_load_is_answered_from_memory_then_tried_again(monkeypatch) -> None:
    """A batch hears a bad checkpoint once, not per image; a long-running UI recovers from a
    transient failure after RETRY_AFTER_S without a restart (the clock is the test's, no waiting)."""
    from samseg.sam import source

    now = [1000.0]
    monkeypatch.setattr(source, "_FAILED", {})
    monkeypatch.setattr("time.monotonic", lambda: now[0])
    calls: list[int] = []

    def load() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise CheckpointError("download cut short")
        return "model"

    loaded: dict = {}
    for _ in range(3):  # the first fails; the next two within the back-off hear the same error, no load
        with pytest.raises(CheckpointError, match="cut short"):
            source._once(loaded, "k", load)
    assert len(calls) == 1
    now[0] += source.RETRY_AFTER_S
    assert source._once(loaded, "k", load) == "model" and len(calls) == 2
    assert source._once(loaded, "k", load) == "model" and len(calls) == 2  # loaded once, kept


# --------------------------------------------------------------------------- the one weights factory


@pytest.mark.parametrize("family", ["sam", "backbone", "namer"])
def test_every_family_identifies_and_loads_seeded_weights_the_same_way(family, tmp_path, monkeypatch) -> None:
    """SAM, a feature backbone and a namer go through one factory: the identity a cached run
    records without building the model is the hash of the weights the load builds."""
    from samseg.sam.registry import FAMILIES

    monkeypatch.setenv("SAMSEG_HOME", str(tmp_path))
    w = weight("tiny-random", {f.name: f for f in FAMILIES}[family])
    sha = w.identity(seed=3)[1]
    assert f"seeded:{family}:tiny-random:seed=3:" in (tmp_path / "checkpoint-sha256.json").read_text()  # remembered
    model, path, loaded = w.load(seed=3)
    assert path is None and loaded == sha == state_dict_sha256(model) != w.identity(seed=4)[1]


def test_a_given_file_warns_when_it_is_read_not_each_time_it_is_identified(tmp_path) -> None:
    """A run identifies its weights once per image (cache keys) but reads them once: the warning
    that a file is not the pinned one comes with the read."""
    path = tmp_path / "tiny.pth"
    torch.save(build_tiny_random(0).state_dict(), path)
    w = weight("tiny-random", SAM_WEIGHTS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert w.identity(path) == w.identity(path) == (str(path), file_sha256(path))
    with pytest.warns(CheckpointWarning, match="tiny-random has none"):
        assert w.load(path)[1:] == (str(path), file_sha256(path))
