"""The user's files beside samseg's: `samseg export --out DIR` and a batch's top-level files
replace only what samseg wrote there, and an interrupted batch OUT is never served.

Real files, the real CLI in-process (tiny-random, 4x4 prompts); exports of the UI tests'
synthetic run (known masks and classes).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_run import run_cli
from samseg.edges import owned_files
from ui_synthetic import H, W, write_image_outputs

TINY = ["--model", "tiny-random", "--preset", "smoke", "--points-per-side", "4", "--device", "cpu", "--no-track",
        "--orchestrator", "local", "-q"]


def _png(path: Path, seed: int = 0, hw: tuple[int, int] = (48, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*hw, 3), dtype=np.uint8)).save(path, format="PNG")
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("user-files")
    img = tmp / "images" / "alpha.png"
    img.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(img)
    write_image_outputs(tmp / "out" / "alpha", img, seed=0)
    return tmp / "out" / "alpha"


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# the user's own files that each format's export would write over
USERS_FILES = {
    "coco": ["annotations.json"],
    "cvat": ["annotations/instances_default.json"],
    "labelstudio": ["tasks.json"],
    "yolo-seg": ["labels/alpha.txt", "data.yaml"],
    "index-png": ["alpha.png", "classes.txt"],
}


@pytest.mark.parametrize("fmt", sorted(USERS_FILES))
def test_export_into_a_dir_with_the_users_files_refuses_and_writes_nothing(run_dir: Path, tmp_path: Path, fmt: str) -> None:
    dst = tmp_path / "mine"
    for k, name in enumerate(USERS_FILES[fmt]):
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        (dst / name).write_bytes(b"the user's own work %d" % k)
    before = _files(dst)
    rc, stdout, stderr = run_cli(["export", str(run_dir), "--format", fmt, "--out", str(dst)])
    assert rc == 2, stderr
    assert len(stderr.strip().splitlines()) == 1 and USERS_FILES[fmt][0] in stderr and "did not write" in stderr
    assert _files(dst) == before  # nothing replaced, nothing added


@pytest.mark.parametrize("fmt", sorted(USERS_FILES))
def test_export_again_replaces_its_own_files_but_not_one_the_user_edited(run_dir: Path, tmp_path: Path, fmt: str) -> None:
    dst = tmp_path / "export"
    for _ in range(2):  # a second export into the same DIR replaces the first one's files
        rc, _stdout, stderr = run_cli(["export", str(run_dir), "--format", fmt, "--out", str(dst)])
        assert rc == 0, stderr
    edited = dst / USERS_FILES[fmt][0]
    edited.write_bytes(edited.read_bytes() + b"\n")  # the user corrects samseg's file by hand
    rc, _stdout, stderr = run_cli(["export", str(run_dir), "--format", fmt, "--out", str(dst)])
    assert rc == 2 and USERS_FILES[fmt][0] in stderr, stderr
    assert edited.read_bytes().endswith(b"\n")


@pytest.mark.parametrize("name", ["batch_summary.json", "classes.json", "contact_sheet.png"])
def test_batch_refuses_an_out_with_the_users_top_level_file(tmp_path: Path, name: str) -> None:
    inputs = [_png(tmp_path / "in" / f"img{i}.png", seed=i) for i in range(2)]
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(b"the user's own " + name.encode())
    rc, _stdout, stderr = run_cli(["segment", *map(str, inputs), "--out", str(out), "--cache", str(tmp_path / "c"),
                                   "--classes", "dataset", *TINY])
    assert rc == 2, stderr
    assert name in stderr and "Traceback" not in stderr and "usage:" not in stderr
    assert sorted(p.name for p in out.iterdir()) == [name]  # nothing computed into OUT, nothing written
    assert (out / name).read_bytes() == b"the user's own " + name.encode()


def test_batch_rerun_replaces_its_own_top_level_files(tmp_path: Path) -> None:
    inputs = [_png(tmp_path / "in" / f"img{i}.png", seed=i) for i in range(2)]
    argv = ["segment", *map(str, inputs), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "c"), *TINY]
    for _ in range(2):
        rc, _stdout, stderr = run_cli([*argv, "--classes", "dataset"])
        assert rc == 0, stderr
    rc, _stdout, stderr = run_cli(argv)  # a plain batch after a dataset one: batch_summary is samseg's
    assert rc == 0, stderr
    assert json.loads((tmp_path / "out" / "batch_summary.json").read_text())["succeeded"] == 2
    assert owned_files.incomplete_since(str(tmp_path / "out")) is None


def test_batch_written_before_the_ledger_is_still_samsegs(tmp_path: Path) -> None:
    inputs = [_png(tmp_path / "in" / f"img{i}.png", seed=i) for i in range(2)]
    argv = ["segment", *map(str, inputs), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "c"), *TINY]
    assert run_cli(argv)[0] == 0
    (tmp_path / "out" / owned_files.LEDGER).unlink()  # as an OUT written by an older samseg
    rc, _stdout, stderr = run_cli(argv)
    assert rc == 0, stderr


def test_interrupted_dataset_batch_is_never_served_with_mixed_class_ids(tmp_path: Path, monkeypatch) -> None:
    from samseg.edges import dataset_outputs

    inputs = [_png(tmp_path / "in" / f"img{i}.png", seed=i, hw=(64, 80)) for i in range(3)]
    out = tmp_path / "out"
    argv = ["segment", *map(str, inputs), "--out", str(out), "--cache", str(tmp_path / "c"), *TINY]
    assert run_cli([*argv, "--classes", "dataset"])[0] == 0  # batch A: complete
    assert run_cli(["export", str(out), "--format", "coco", "--out", str(tmp_path / "ok")])[0] == 0

    real, calls = dataset_outputs._rewrite_dir, []

    def stop_after_first(*a, **kw):  # noqa: ANN002, ANN003 — SIGTERM right after one image dir was relabelled
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(dataset_outputs, "_rewrite_dir", stop_after_first)
    rc, _stdout, _stderr = run_cli([*argv, "--classes", "dataset", "--eps", "0.5"])  # batch B
    assert rc == 130 and calls == [1]
    monkeypatch.setattr(dataset_outputs, "_rewrite_dir", real)
    assert owned_files.incomplete_since(str(out)) is not None

    # every reader of the batch OUT refuses it in one line
    for source in (out, out / "img0"):
        rc, _stdout, stderr = run_cli(["export", str(source), "--format", "coco", "--out", str(tmp_path / "x")])
        assert rc == 1 and "did not finish" in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "x").exists()
    rc, _stdout, stderr = run_cli(["segment", str(inputs[0]), "--out", str(tmp_path / "out2"), "--cache",
                                   str(tmp_path / "c"), "--classes-from", str(out / "classes.json"), *TINY])
    assert rc == 1 and "did not finish" in stderr, stderr

    # the rerun completes B: the mark goes, and every image's ids are classes of classes.json
    rc, _stdout, stderr = run_cli([*argv, "--classes", "dataset", "--eps", "0.5"])
    assert rc == 0, stderr
    assert owned_files.incomplete_since(str(out)) is None
    n_classes = json.loads((out / "classes.json").read_text())["n_classes"]
    for i in range(3):
        summary = json.loads((out / f"img{i}" / "summary.json").read_text())
        assert summary["dataset_n_classes"] == n_classes
    assert run_cli(["export", str(out), "--format", "coco", "--out", str(tmp_path / "x")])[0] == 0


def test_a_corrected_file_in_an_image_dir_refuses_that_image_and_stays(tmp_path: Path) -> None:
    """A person fixed img0's labels.png by hand: the same batch again keeps their file (that image
    refused, in one line naming it), and replaces the untouched img1 as before."""
    inputs = [_png(tmp_path / "in" / f"img{i}.png", seed=i) for i in range(2)]
    out = tmp_path / "out"
    argv = ["segment", *map(str, inputs), "--out", str(out), "--cache", str(tmp_path / "c"), *TINY]
    rc, _stdout, stderr = run_cli(argv)
    assert rc == 0, stderr
    (out / "img0" / "labels.png").write_bytes(b"the person's corrected labels")
    before = (out / "img1" / "summary.json").read_bytes()
    rc, _stdout, stderr = run_cli([*argv, "--eps", "0.2"])
    assert rc == 1 and "img0: holds files changed since samseg wrote them (labels.png)" in stderr, stderr
    assert (out / "img0" / "labels.png").read_bytes() == b"the person's corrected labels"
    assert (out / "img1" / "summary.json").read_bytes() != before  # its own dir, replaced


def test_an_unreadable_file_in_an_image_dir_refuses_that_image_not_the_batch(tmp_path: Path, monkeypatch) -> None:
    from samseg.edges import outdirs

    inputs = [_png(tmp_path / "in" / f"img{i}.png", seed=i) for i in range(2)]
    out = tmp_path / "out"
    argv = ["segment", *map(str, inputs), "--out", str(out), "--cache", str(tmp_path / "c"), *TINY]
    rc, _stdout, stderr = run_cli(argv)
    assert rc == 0, stderr
    hash_file = outdirs._file_sha256

    def unreadable(path: Path) -> str:
        if path == out / "img0" / "labels.png":
            raise PermissionError(13, "Permission denied")
        return hash_file(path)

    monkeypatch.setattr(outdirs, "_file_sha256", unreadable)
    rc, _stdout, stderr = run_cli([*argv, "--eps", "0.2"])
    assert rc == 1 and "img0: holds files changed since samseg wrote them (labels.png (cannot read it: Permission denied))" in stderr
    assert "1 of 2 images failed" in stderr


def test_attack_a_hand_made_marker_naming_files_outside_its_dir_is_not_read(tmp_path: Path) -> None:
    from samseg.edges import outdirs

    d = tmp_path / "OUT" / "img"
    d.mkdir(parents=True)
    (d / "labels.png").write_bytes(b"x")
    secret = tmp_path / "secret"
    secret.write_bytes(b"not samseg's")
    marker = {"written_by": "samseg", "files": ["labels.png", "../../secret"], "dirs": [],
              "sha256": {"labels.png": outdirs._file_sha256(d / "labels.png"), "../../secret": "0" * 64, "/etc/hostname": "0" * 64}}
    (d / outdirs.MARKER).write_text(json.dumps(marker))
    assert outdirs.changed_entries(d) == []
