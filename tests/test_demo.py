"""The demo's model choice (samseg.apps.demo): a real checkpoint when one can be had, else
tiny-random with one clear line. No network is touched: the I/O is injected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from samseg.apps import demo


def _never(*_a):
    raise AssertionError("must not be called")


def test_offline_falls_back_to_tiny_random_with_one_clear_line() -> None:
    model, line = demo.choose(None, have=lambda m: False, probe=lambda m: "dl.fbaipublicfiles.com is not reachable",
                              download=_never)
    assert model == "tiny-random"
    assert "\n" not in line and "not reachable" in line and "samseg weights download vit_b" in line
    assert "meaningless" in line


def test_cached_vit_b_is_used_without_probing() -> None:
    model, line = demo.choose("auto", have=lambda m: m == "vit_b", probe=_never, download=_never)
    assert model == "vit_b" and "cached" in line


def test_reachable_host_downloads_vit_b_and_a_failed_download_falls_back() -> None:
    got = []
    assert demo.choose(None, lambda m: False, lambda m: None, got.append)[0] == "vit_b" and got == ["vit_b"]

    def broken(m):
        raise OSError("connection reset mid-download")

    model, line = demo.choose(None, lambda m: False, lambda m: None, broken)
    assert model == "tiny-random" and "connection reset" in line


def test_forced_model_is_never_silently_replaced() -> None:
    assert demo.choose("tiny-random", _never, _never, _never)[0] == "tiny-random"
    with pytest.raises(demo.DemoError, match="SAMSEG_DEMO_MODEL=vit_h but no vit_h checkpoint"):
        demo.choose("vit_h", lambda m: False, lambda m: "offline", _never)
    with pytest.raises(demo.DemoError, match="must be one of"):
        demo.choose("vit_x", _never, _never, _never)


def test_probe_of_a_closed_port_gives_up_in_seconds() -> None:
    import socket
    import time

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    t0 = time.monotonic()
    reason = demo.reachable(f"https://127.0.0.1:{port}/x.pth", timeout_s=1.0)
    assert reason and "not reachable" in reason and time.monotonic() - t0 < 3.0


def test_choose_command_prints_the_model_on_stdout(tmp_path: Path) -> None:
    env = {"SAMSEG_DEMO_MODEL": "tiny-random", "SAMSEG_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "samseg.apps.demo", "choose"], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[1], timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "tiny-random" and "meaningless" in proc.stderr


def test_demo_features_dinov2_s_when_it_can_be_had_else_sam() -> None:
    assert demo.choose_features("tiny-random", _never, _never, _never)[0] == "sam"
    assert demo.choose_features("vit_b", lambda n: n == "dinov2-s", _never, _never)[0] == "dinov2-s"
    got = []
    assert demo.choose_features("vit_b", lambda n: False, lambda n: None, got.append)[0] == "dinov2-s" and got == ["dinov2-s"]
    name, line = demo.choose_features("vit_b", lambda n: False, lambda n: "huggingface.co is not reachable", _never)
    assert name == "sam" and "\n" not in line and "samseg weights download dinov2-s" in line


def test_the_demo_installs_and_segments_without_apt_get_dpkg_or_root(tmp_path: Path) -> None:
    """scripts/demo.sh with a PATH that has no apt-get and no dpkg (Fedora, Arch, a container):
    its setup completes (the runtime setup asks for no system package) and it segments."""
    import os
    import shutil

    from PIL import Image

    repo = Path(__file__).resolve().parents[1]
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("bash", "dirname", "cat", "id"):
        os.symlink(shutil.which(tool), bindir / tool)
    assert not any((bindir / t).exists() for t in ("apt-get", "dpkg", "sudo"))
    images = tmp_path / "images"
    images.mkdir()
    Image.open(repo / "tests" / "data" / "photos" / "corgi.jpg").resize((96, 64)).save(images / "corgi.jpg")
    env = {"PATH": str(bindir), "HOME": str(tmp_path), "SAMSEG_HOME": str(tmp_path / "home"),
           "SAMSEG_PYTHON": getattr(sys, "_base_executable", sys.executable), "SAMSEG_DEMO_MODEL": "tiny-random",
           "SAMSEG_DEMO_OUT": str(tmp_path / "out"), "SAMSEG_CACHE": str(tmp_path / "cache"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PREFECT_HOME": str(tmp_path / "prefect")}
    proc = subprocess.run([shutil.which("bash"), "scripts/demo.sh", str(images)], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "apt-get" not in proc.stdout + proc.stderr
    assert (tmp_path / "out" / "corgi" / "labels.png").is_file() and "meaningless" in proc.stdout


def test_demo_names_with_coco_stuff_when_clip_can_be_had_else_none() -> None:
    assert demo.choose_names("tiny-random", _never, _never, _never)[0] == "none"
    assert demo.choose_names("vit_b", lambda n: n == "clip-b16", _never, _never)[0] == "coco-stuff"
    name, line = demo.choose_names("vit_b", lambda n: False, lambda n: "huggingface.co is not reachable", _never)
    assert name == "none" and "\n" not in line and "samseg weights download clip-b16" in line
