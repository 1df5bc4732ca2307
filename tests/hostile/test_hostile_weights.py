"""Hostile weights: downloads that are not whole (cut short, an HTML page with status 200, an
endless stream), a bad file an older samseg recorded as trusted, a file changed in place with its
mtime put back, weights full of NaN. None is kept, trusted or used; each is one line naming it."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest

from samseg.core.backbones import TINY_RANDOM
from samseg.sam.weights import CheckpointError


def _dinov2_s():
    """dinov2-s's row in the one weights factory (samseg.sam.weights)."""
    from samseg.sam.backbones import BACKBONE_WEIGHTS
    from samseg.sam.weights import weight

    return weight("dinov2-s", BACKBONE_WEIGHTS)


def _save(net, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SAMSEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture()
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """dinov2-s's row pointed at a tiny ViT; the loopback server answers what `answer` says:
    {"body": bytes, "length": announced Content-Length or None, "repeat": times to send body}."""
    from samseg.core import backbones
    from samseg.sam.backbones import build_backbone

    row = backbones.BACKBONES[TINY_RANDOM]
    good = _save(build_backbone(TINY_RANDOM, seed=3), tmp_path / "served.safetensors").read_bytes()
    monkeypatch.setitem(backbones.BACKBONES, "dinov2-s",
                        backbones.BackboneEntry(row.timm_name, 14, 32, 224, backbones.APACHE, timm_kwargs=row.timm_kwargs))
    answer = {"body": good, "length": len(good), "repeat": 1}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            if answer["length"] is not None:
                self.send_header("Content-Length", str(answer["length"]))
            self.end_headers()
            try:
                for _ in range(answer["repeat"]):
                    self.wfile.write(answer["body"])
            except OSError:  # the client hung up (the bound was reached)
                pass
            self.close_connection = True

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/model.safetensors", answer, good
    httpd.shutdown()


def _nothing_kept() -> None:
    from samseg.sam.weights import RECORDED

    path = _dinov2_s().path
    assert not path.exists() and not path.with_name(path.name + RECORDED).exists()
    assert not list(path.parent.glob("*.part")) if path.parent.exists() else True


def test_a_body_cut_short_of_its_content_length_is_deleted_and_named(home: Path, server) -> None:

    url, answer, good = server
    answer.update(body=good[: len(good) // 2], length=len(good))
    with pytest.raises(CheckpointError, match="dinov2-s") as err:
        _dinov2_s().download(url)
    assert "\n" not in str(err.value) and url in str(err.value)
    _nothing_kept()


def test_an_html_page_served_with_status_200_is_not_kept_as_weights(home: Path, server) -> None:

    url, answer, _ = server
    page = b"<!doctype html><html><body>Sign in to continue</body></html>"
    answer.update(body=page, length=len(page))
    with pytest.raises(CheckpointError, match="not a safetensors weights file") as err:
        _dinov2_s().download(url)
    assert "the download from" in str(err.value) and ".part" not in str(err.value)
    _nothing_kept()


def test_an_endless_stream_for_an_unpinned_row_stops_at_the_bound(home: Path, server, monkeypatch) -> None:
    from samseg.sam import weights

    url, answer, _ = server
    monkeypatch.setattr(weights, "MAX_DOWNLOAD_BYTES", 4 << 20)
    answer.update(body=b"\0" * (1 << 20), length=None, repeat=64)  # 64 MiB, no Content-Length
    with pytest.raises(CheckpointError, match="sent more than"):
        _dinov2_s().download(url)
    _nothing_kept()


def test_a_content_length_over_the_bound_is_refused_before_the_body(home: Path, server, monkeypatch) -> None:
    from samseg.sam import weights

    url, answer, good = server
    monkeypatch.setattr(weights, "MAX_DOWNLOAD_BYTES", len(good) - 1)
    with pytest.raises(CheckpointError, match="offers"):
        _dinov2_s().download(url)
    _nothing_kept()


def test_a_bad_file_an_older_samseg_recorded_is_downloaded_again(home: Path, server) -> None:
    from samseg.sam.backbones import load_backbone
    from samseg.sam.weights import RECORDED

    url, _, good = server
    path = _dinov2_s().path
    path.parent.mkdir(parents=True)
    path.write_bytes(b"<html>not weights</html>")
    path.with_name(path.name + RECORDED).write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")
    assert _dinov2_s().download(url).read_bytes() == good
    assert load_backbone("dinov2-s", device="cpu").sha256 == hashlib.sha256(good).hexdigest()


def test_a_weights_file_changed_in_place_with_its_mtime_put_back_is_hashed_again(tmp_path: Path, home: Path) -> None:
    from samseg.sam.files import remembered_sha256

    path = tmp_path / "w.safetensors"
    path.write_bytes(b"a" * 1000)
    first = remembered_sha256(path)
    st = os.stat(path)
    with open(path, "r+b") as f:  # same size, other bytes, mtime put back
        f.write(b"b" * 1000)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns
    assert remembered_sha256(path) == hashlib.sha256(b"b" * 1000).hexdigest() != first


def test_nan_backbone_weights_are_one_line_naming_the_file(tmp_path: Path, home: Path) -> None:
    import torch

    from samseg.sam.backbones import build_backbone, load_backbone

    net = build_backbone(TINY_RANDOM, seed=1)
    with torch.no_grad():
        next(p for p in net.parameters() if p.dim() > 1).fill_(float("nan"))
    path = _save(net, tmp_path / "nan.safetensors")
    with pytest.raises(CheckpointError, match="NaN") as err:
        load_backbone(TINY_RANDOM, checkpoint=path, device="cpu")
    assert str(path) in str(err.value) and "\n" not in str(err.value)
