"""Hostile inputs against the output directories: samseg deletes only what it wrote.

Real files and symlinks, the real CLI in-process (tiny-random, 4x4 prompts) against the
session's Prefect server.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_run import run_cli
from samseg.edges import outdirs

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = ["--model", "tiny-random", "--preset", "smoke", "--points-per-side", "4", "--device", "cpu", "--no-track"]


def _png(path: Path, seed: int = 0, hw: tuple[int, int] = (48, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(path, format="PNG")
    return path


def _segment(inputs: list[Path], out: Path, cache: Path) -> tuple[int, str, str]:
    return run_cli(["segment", *map(str, inputs), "--out", str(out), "--cache", str(cache), *TINY])


# ------------------------------------------------------------------ names (pure)
@pytest.mark.parametrize("uri", ["in/..png", "in/...png", "in/.png", "in/.hidden.jpg", "x/a\\..\\b.png",
                                 "in/con\x07trol.png", "in/ .png", "in/..\u202e.png", "s3://b/k/..png",
                                 "in/" + "a" * 300 + ".png", "in/a:b.png", "in/.. .png"])
def test_hostile_stem_gives_one_safe_component(uri: str, tmp_path: Path) -> None:
    name = outdirs.safe_dir_name(uri)
    assert name and name not in (".", "..") and "/" not in name and "\\" not in name
    assert not name.startswith(".") and all(ch.isprintable() for ch in name) and len(name) <= 110
    assert outdirs.safe_dir_name(uri) == name  # deterministic
    child = outdirs.child_dir(tmp_path, name)
    assert child.parent == tmp_path and child.resolve().parent == tmp_path.resolve()


def test_plain_stems_are_kept_and_odd_ones_never_collide() -> None:
    assert outdirs.safe_dir_name("/p/bears.jpg") == "bears"
    assert outdirs.safe_dir_name("s3://b/k/my photo (2).png") == "my photo (2)"
    odd = [outdirs.safe_dir_name(u) for u in ("a/..png", "a/...png", "a/.png", "a/?.png", "a/*.png")]
    assert len(set(odd)) == len(odd)
    assert outdirs.unique_names(["a/x.jpg", "b/x.png"]) == ["x", "x-2"]


# ------------------------------------------------------------------ the CLI
def test_input_named_dot_png_does_not_wipe_out(prefect_api, tmp_path: Path) -> None:
    out = tmp_path / "OUT"
    (out / "keep").mkdir(parents=True)
    (out / "keep" / "thesis.txt").write_text("years of work")
    (out / "notes.txt").write_text("mine")
    inputs = [_png(tmp_path / "in" / "a.png", 1), _png(tmp_path / "in" / "..png", 2), _png(tmp_path / "in" / "...png", 3)]
    rc, stdout, stderr = _segment(inputs, out, tmp_path / "cache")
    assert rc == 0, stderr
    assert (out / "notes.txt").read_text() == "mine" and (out / "keep" / "thesis.txt").read_text() == "years of work"
    assert (out / "a" / "labels.png").is_file()
    dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(dirs) == 4 and all(not d.startswith(".") for d in dirs), dirs  # keep, a, and one each for the odd two
    assert stdout.count("-> ") == 3


def test_input_inside_out_stem_dir_is_never_deleted(prefect_api, tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    photo = _png(proj / "bears" / "bears.png", 4)
    (proj / "bears" / "notes.txt").write_text("field notes")
    other = _png(tmp_path / "in" / "corgi.png", 5)
    rc, stdout, stderr = _segment([photo, other], proj, tmp_path / "cache")
    assert rc == 1
    assert photo.is_file() and (proj / "bears" / "notes.txt").read_text() == "field notes"
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "holds the input" in errors[0] and str(proj / "bears") in errors[0]
    assert (proj / "corgi" / "labels.png").is_file()  # the rest of the batch goes on


def test_existing_dir_samseg_did_not_write_is_refused(prefect_api, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "pic").mkdir(parents=True)
    (out / "pic" / "mine.txt").write_text("not samseg's")
    rc, _, stderr = _segment([_png(tmp_path / "pic.png", 6)], out, tmp_path / "cache")
    assert rc == 1 and "holds files samseg did not write (mine.txt)" in stderr
    assert (out / "pic" / "mine.txt").read_text() == "not samseg's"
    (out / "pic" / "mine.txt").unlink()
    (out / "pic").rmdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", out / "pic")  # a link is never samseg's either
    rc, _, stderr = _segment([_png(tmp_path / "pic.png", 6)], out, tmp_path / "cache")
    assert rc == 1 and "symbolic link" in stderr and (out / "pic").is_symlink()


def test_rerun_replaces_samseg_dir_but_not_a_file_added_to_it(prefect_api, tmp_path: Path) -> None:
    out, photo = tmp_path / "out", _png(tmp_path / "pic.png", 7)
    assert _segment([photo], out, tmp_path / "cache")[0] == 0
    assert _segment([photo], out, tmp_path / "cache")[0] == 0  # samseg's own dir: replaced
    (out / "pic" / "my-edit.png").write_bytes(b"x")
    rc, _, stderr = _segment([photo], out, tmp_path / "cache")
    assert rc == 1 and "my-edit.png" in stderr and (out / "pic" / "my-edit.png").exists()


def test_relative_input_path_is_recorded_absolute(prefect_api, tmp_path: Path, monkeypatch) -> None:
    _png(tmp_path / "in1" / "rel.png", 8)
    monkeypatch.chdir(tmp_path)
    rc, _, stderr = run_cli(["segment", "in1/rel.png", "--out", "out", "--cache", "cache", *TINY])
    assert rc == 0, stderr
    summary = json.loads((tmp_path / "out" / "rel" / "summary.json").read_text())
    assert summary["image"]["uri"] == str(tmp_path / "in1" / "rel.png")


# ------------------------------------------------------------------ leftovers, modes
def _fake_dir(parent: Path, name: str, marker: bool = True) -> Path:
    d = parent / name
    d.mkdir()
    (d / "labels.png").write_bytes(b"partial")
    if marker:
        (d / outdirs.MARKER).write_text(json.dumps({"written_by": "samseg", "files": ["labels.png"]}))
    return d


def test_kill9_during_export_leftovers_are_removed_on_rerun(tmp_path: Path) -> None:
    dead = 2**22 + 12345  # above the default pid_max: never a live process
    stale_tmp = _fake_dir(tmp_path, f".pic.tmp-{dead}-{'a' * 12}", marker=False)
    stale_old = _fake_dir(tmp_path, f".pic.old-{dead}-{'b' * 12}")
    live = _fake_dir(tmp_path, f".pic.tmp-{os.getpid()}-{'c' * 12}")  # ours: in use
    user = tmp_path / f".pic.tmp-{dead}-{'d' * 12}"
    user.mkdir()
    (user / "diary.txt").write_text("a user's folder that happens to look like ours")
    removed = outdirs.remove_stale_temps(tmp_path / "pic")
    assert set(removed) == {stale_tmp, stale_old}
    assert live.is_dir() and (user / "diary.txt").is_file()


def test_written_files_follow_the_umask_not_0600(prefect_api, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        out, cache = tmp_path / "out", tmp_path / "cache"
        rc, _, stderr = _segment([_png(tmp_path / "m1.png", 9), _png(tmp_path / "m2.png", 10)], out, cache)
    finally:
        os.umask(old)
    assert rc == 0, stderr
    files = [out / "batch_summary.json", *[p for p in cache.rglob("*") if p.is_file()]]
    assert len(files) > 3
    for p in files:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & 0o044 == 0o044, f"{p} is {oct(mode)}"  # group/other can read, as with open()


def test_an_image_with_no_class_can_be_written_again(tmp_path: Path) -> None:
    # zero classes leave an empty classes/ dir: it is samseg's own, so a rerun may replace the dir
    from samseg.core.types import ClusterResult, MaskSet
    from samseg.edges.image_dir import write_image_dir
    from samseg.edges.images import LoadedImage

    rgb = np.zeros((8, 10, 3), np.uint8)
    image = LoadedImage(rgb, "a" * 64, "flat.png", str(tmp_path / "flat.png"))
    empty = MaskSet.empty((8, 10))
    args = (image, empty, np.zeros((0, 4), np.float32), ClusterResult(np.zeros(0, np.int64)), np.zeros((8, 10), np.uint16), {})
    write_image_dir(tmp_path / "out" / "flat", *args)
    assert (tmp_path / "out" / "flat" / "classes").is_dir()
    write_image_dir(tmp_path / "out" / "flat", *args)  # no "holds files samseg did not write (classes)"
    (tmp_path / "out" / "flat" / "classes" / "mine.txt").write_text("user file")
    with pytest.raises(Exception, match="mine.txt"):
        write_image_dir(tmp_path / "out" / "flat", *args)


def test_a_fifo_named_like_an_image_fails_alone_and_the_batch_goes_on(tmp_path: Path) -> None:
    """A named pipe given explicitly (or through a shell glob) used to block the batch at
    open() forever; it is refused before it is opened, in one line, and the next image runs."""
    fifo = tmp_path / "in" / "b.jpg"
    good = _png(tmp_path / "in" / "c.png")
    os.mkfifo(fifo)
    rc, stdout, stderr = _segment([fifo, good], tmp_path / "out", tmp_path / "cache")
    assert rc == 1, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "b.jpg" in errors[0] and "FIFO" in errors[0]
    assert (tmp_path / "out" / "c" / "summary.json").is_file() and "c.png:" in stdout


PUBLISHER = """
import sys
from pathlib import Path
from samseg.edges import image_dir, outdirs
out = Path(sys.argv[1]) / "img"
for i in range(int(sys.argv[2])):
    tmp = outdirs.temp_sibling(out, "tmp")
    tmp.mkdir()
    (tmp / "summary.json").write_text('{"writer": "%s", "i": %d}' % (sys.argv[3], i))
    outdirs.write_marker(tmp, "test")
    image_dir._replace_dir(tmp, out)
"""


def test_concurrent_publishes_of_one_image_dir_last_complete_writer_wins(tmp_path: Path) -> None:
    """Six processes publishing OUT/img at once through the image-dir writer's replace step
    (two batches into one OUT): none fails with a raw OSError, no .img.old-*/.img.tmp-* is
    left, and OUT/img is one writer's complete dir."""
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", PUBLISHER, str(out), "200", f"w{k}"], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(6)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert all(rc == 0 for rc, _ in results), [err[-500:] for rc, err in results if rc]
    assert sorted(p.name for p in out.iterdir()) == ["img"]  # no leftovers beside it
    assert outdirs.foreign_entries(out / "img") == []  # complete: every file its marker lists, nothing else
    assert json.loads((out / "img" / "summary.json").read_text())["i"] == 199  # a writer's last publish


def test_a_file_name_with_a_newline_or_tab_stays_on_its_own_line(tmp_path: Path) -> None:
    good = _png(tmp_path / "in" / "odd\nname\t.png")
    rc, stdout, stderr = _segment([good], tmp_path / "out", tmp_path / "cache")
    assert rc == 0, stderr
    lines = stdout.splitlines()
    assert any(line.startswith("odd\\nname\\t.png:") for line in lines), stdout
    assert not any(line.startswith("name") for line in lines)


def test_a_full_out_disk_names_the_output_not_the_input(tmp_path: Path, monkeypatch) -> None:
    import errno

    from samseg.edges import image_dir

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(image_dir, "_write_all", full)
    src = _png(tmp_path / "in" / "a.png")
    rc, _, stderr = _segment([src], tmp_path / "out", tmp_path / "cache")
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert rc == 1 and len(errors) == 1, stderr
    assert str(tmp_path / "out" / "a") in errors[0] and "No space left on device" in errors[0]
    assert "unexpected" not in errors[0]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp dir left


# ------------------------------------------------------------------ inputs named like the batch's own files
@pytest.mark.parametrize("name", ["batch_summary.json", "classes.json", "contact_sheet.png", "Batch_Summary.JSON",
                                  "_SUCCESS", "_SAMSEG_PENDING"])
def test_an_input_named_like_a_batch_file_gets_another_dir_name(name: str) -> None:
    got = outdirs.safe_dir_name(f"in/{name}.jpg")
    assert got.casefold() != name.casefold() and got.startswith(name)


def test_inputs_named_like_the_batch_files_do_not_block_the_batch(tmp_path: Path) -> None:
    """batch_summary.json.png, classes.json.png and contact_sheet.png.png in one dataset batch:
    every top-level file is written, OUT is complete, and the same command again succeeds."""
    names = ["batch_summary.json.png", "classes.json.png", "contact_sheet.png.png"]
    inputs = [_png(tmp_path / "in" / n, seed=k) for k, n in enumerate(names)]
    out = tmp_path / "OUT"
    argv = ["segment", str(tmp_path / "in"), "--out", str(out), "--cache", str(tmp_path / "c"), "--classes", "dataset", *TINY]
    for _ in range(2):
        rc, _, err = run_cli(argv)
        assert rc in (0, 1) and "incomplete" not in err and "not samseg's" not in err, err
        assert (out / "batch_summary.json").is_file() and (out / "classes.json").is_file()
        assert len(json.loads((out / "batch_summary.json").read_text())["images"]) == len(inputs)
