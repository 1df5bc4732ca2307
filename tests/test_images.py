"""samseg.edges.images: every supported mode decodes to H×W×3 uint8; every bad input is one ImageError line."""

from __future__ import annotations

import hashlib
import struct
import zlib
from io import BytesIO
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samseg.edges.images import IMAGE_SUFFIXES, ImageError, LoadedImage, decode_image, find_images, load_image


def _png(img: Image.Image, **kw) -> bytes:
    buf = BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _jpeg(arr: np.ndarray, **kw) -> bytes:
    buf = BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height (valid CRCs) with no real pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def _assert_rgb(img: LoadedImage, hw: tuple[int, int]) -> None:
    assert img.rgb.shape == (*hw, 3)
    assert img.rgb.dtype == np.uint8
    assert img.rgb.flags["C_CONTIGUOUS"]


def _assert_one_line(exc: pytest.ExceptionInfo, name: str, fragment: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"{name}: ")
    assert fragment in msg.lower()


def test_rgb_jpeg_sha256_and_names(tmp_path: Path) -> None:
    arr = np.zeros((20, 30, 3), np.uint8)
    arr[:, 15:] = (200, 30, 30)
    data = _jpeg(arr)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    img = load_image(path)
    _assert_rgb(img, (20, 30))
    assert img.sha256 == hashlib.sha256(data).hexdigest()
    assert img.name == "photo.jpg" and img.uri == str(path) and img.stem == "photo"
    assert abs(int(img.rgb[10, 25, 0]) - 200) < 12 and img.rgb[10, 2].max() < 12


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError) as exc:
        load_image(tmp_path / "empty.jpg")
    _assert_one_line(exc, str(tmp_path / "empty.jpg"), "empty file")


def test_truncated_jpeg_is_rejected_not_partially_loaded() -> None:
    rng = np.random.default_rng(0)
    data = _jpeg(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(ImageError) as exc:
        decode_image(data[: len(data) // 2], "cut.jpg")
    _assert_one_line(exc, "cut.jpg", "truncated")


def test_text_file_named_jpg() -> None:
    with pytest.raises(ImageError) as exc:
        decode_image(b"hello, I am not a picture\n" * 10, "notes.jpg")
    _assert_one_line(exc, "notes.jpg", "not a recognised image")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as exc:
        load_image(tmp_path / "nope.png")
    _assert_one_line(exc, str(tmp_path / "nope.png"), "no such file")
    with pytest.raises(ImageError) as exc:
        load_image(tmp_path)
    _assert_one_line(exc, str(tmp_path), "directory")


def test_16bit_png_scaled_from_full_range() -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)  # → 0, 1, 128, 255
    img = decode_image(_png(Image.fromarray(values)), "deep.png")
    _assert_rgb(img, (1, 4))
    assert img.rgb[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (img.rgb[..., 0] == img.rgb[..., 2]).all()


def test_rgba_composited_over_white() -> None:
    arr = np.zeros((2, 2, 4), np.uint8)
    arr[0, 0] = (10, 20, 30, 255)  # opaque keeps its colour
    arr[0, 1] = (0, 0, 0, 0)  # fully transparent black → white
    arr[1, 0] = (0, 0, 0, 128)  # half-transparent black → mid grey
    img = decode_image(_png(Image.fromarray(arr, "RGBA")), "alpha.png")
    _assert_rgb(img, (2, 2))
    assert img.rgb[0, 0].tolist() == [10, 20, 30]
    assert img.rgb[0, 1].tolist() == [255, 255, 255]
    assert 120 <= int(img.rgb[1, 0, 0]) <= 135


def test_grayscale_and_gray_alpha() -> None:
    gray = np.array([[0, 100, 255]], np.uint8)
    img = decode_image(_png(Image.fromarray(gray, "L")), "g.png")
    assert img.rgb[0, :, 1].tolist() == [0, 100, 255]
    la = Image.merge("LA", [Image.fromarray(gray, "L"), Image.fromarray(np.array([[255, 255, 0]], np.uint8), "L")])
    img = decode_image(_png(la), "la.png")
    assert img.rgb[0].tolist() == [[0, 0, 0], [100, 100, 100], [255, 255, 255]]


def test_palette_with_and_without_transparency() -> None:
    pal = Image.fromarray(np.array([[0, 1]], np.uint8), "L").convert("P")
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img = decode_image(_png(pal), "p.png")
    assert img.rgb[0].tolist() == [[255, 0, 0], [0, 0, 255]]
    img = decode_image(_png(pal, transparency=1), "pt.png")  # index 1 transparent → white
    assert img.rgb[0].tolist() == [[255, 0, 0], [255, 255, 255]]


def test_cmyk_jpeg() -> None:
    cmyk = Image.new("CMYK", (4, 3), (0, 255, 255, 0))  # pure red in CMYK
    buf = BytesIO()
    cmyk.save(buf, format="JPEG", quality=95)
    img = decode_image(buf.getvalue(), "c.jpg")
    _assert_rgb(img, (3, 4))
    r, g, b = (int(v) for v in img.rgb[1, 1])
    assert r > 200 and g < 60 and b < 60


def test_one_pixel_image() -> None:
    img = decode_image(_png(Image.new("RGB", (1, 1), (7, 8, 9))), "dot.png")
    _assert_rgb(img, (1, 1))
    assert img.rgb[0, 0].tolist() == [7, 8, 9]


def test_exif_orientation_6_swaps_size() -> None:
    arr = np.zeros((10, 40, 3), np.uint8)  # stored 40 wide × 10 high
    arr[:, :5] = 255  # white band on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img = decode_image(_jpeg(arr, exif=exif), "rot.jpg")
    _assert_rgb(img, (40, 10))  # displayed 10 wide × 40 high
    assert img.rgb[:5].mean() > 200 and img.rgb[-5:].mean() < 30  # left edge became the top


def test_pixel_limit_argument_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _png(Image.new("RGB", (20, 10)))
    with pytest.raises(ImageError) as exc:
        decode_image(data, "big.png", max_pixels=199)
    _assert_one_line(exc, "big.png", "over the limit of 199")
    assert decode_image(data, "big.png", max_pixels=200).hw == (10, 20)
    monkeypatch.setenv("SAMSEG_MAX_PIXELS", "100")
    with pytest.raises(ImageError):
        decode_image(data, "big.png")
    monkeypatch.setenv("SAMSEG_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="SAMSEG_MAX_PIXELS"):
        decode_image(data, "big.png")


def test_max_pixels_above_pils_bomb_limit_takes_effect() -> None:
    # A header claiming 20000×20000 (> 2× PIL's default MAX_IMAGE_PIXELS): with our limit
    # set above it, PIL's own guard must not refuse first (SAMSEG_MAX_PIXELS is the one
    # knob), so decoding goes on and fails only on the missing pixel data.
    data = _png_header_only(20000, 20000)
    with pytest.raises(ImageError) as exc:
        decode_image(data, "bomb.png", max_pixels=10**12)
    _assert_one_line(exc, "bomb.png", "truncated")
    with pytest.raises(ImageError) as exc:
        decode_image(data, "bomb.png", max_pixels=10**8)
    _assert_one_line(exc, "bomb.png", "over the limit")
    assert "gb of memory" in str(exc.value).lower()


def test_find_images_dirs_globs_and_explicit_files(tmp_path: Path) -> None:
    for n in ("b.JPG", "a.png", "c.txt", ".hidden.png"):
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.png").write_bytes(b"x")
    assert find_images([str(tmp_path)]) == [str(tmp_path / "a.png"), str(tmp_path / "b.JPG")]
    assert find_images([str(tmp_path / "*.png")]) == [str(tmp_path / "a.png")]
    explicit = str(tmp_path / "c.txt")
    missing = str(tmp_path / "gone.jpg")
    assert find_images([explicit, missing, explicit]) == [explicit, missing]
    assert ".png" in IMAGE_SUFFIXES and ".jpg" in IMAGE_SUFFIXES
    assert find_images([str(tmp_path / "*.gif")]) == [str(tmp_path / "*.gif")]  # no match: kept, to fail as that file


def test_a_folder_larger_than_a_sort_run_is_listed_sorted_from_runs_on_disk(tmp_path: Path, monkeypatch) -> None:
    """A folder of a million images is never held whole: its names are sorted in bounded runs,
    spilled and merged, and come out as sorted() would give them (a name that is not UTF-8 too)."""
    from samseg.edges import spill

    odd = b"caf\xe9.png".decode("utf-8", "surrogateescape")  # a Latin-1 name, as os.scandir gives it
    names = [f"{i:02d}.png" for i in range(17, -1, -1)] + [odd, "Z.JPG", "sub.png"]
    for n in names[:-1]:
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()  # a folder named like an image is not one
    scratch = tmp_path.parent / f"{tmp_path.name}-tmp"
    scratch.mkdir()
    monkeypatch.setattr(spill, "SORT_RUN", 4)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    from samseg.edges.images import iter_found_images

    listed = iter_found_images(str(tmp_path))
    first = next(listed)
    assert [p.name for p in scratch.iterdir()][0].startswith("samseg-sort-")  # the runs are on disk while merged
    assert [first, *listed] == [str(tmp_path / n) for n in sorted(names[:-1])]
    assert not list(scratch.iterdir())  # and gone once read
    assert find_images([str(tmp_path)]) == [str(tmp_path / n) for n in sorted(names[:-1])]
    assert list(spill.sorted_strings(iter(["b", "a", "c"]), run=2)) == ["a", "b", "c"]
    assert list(spill.sorted_strings(iter([]))) == []
    many = [f"{i:03d}" for i in range(200)][::-1]  # 67 runs of 3, merged 4 at a time: at most 4 runs kept
    opened = []
    monkeypatch.setattr(spill, "open", lambda *a, **kw: opened.append(a[0]) or open(*a, **kw), raising=False)
    merging = spill.sorted_strings(iter(many), run=3, fan_in=4)
    assert next(merging) == "000" and len(list(scratch.iterdir())) == 1
    assert len(list((next(scratch.iterdir())).iterdir())) <= 4 and len(opened) > 67  # runs and runs of runs
    assert ["000", *merging] == sorted(many)
    monkeypatch.delattr(spill, "open")
    stopped = spill.sorted_strings(iter("qwertyuiop"), run=3)
    assert next(stopped) == "e" and list(scratch.iterdir())
    stopped.close()  # a reader that stops early: its runs go too
    assert not list(scratch.iterdir())


def test_a_link_loop_named_like_an_image_is_not_an_image_of_its_folder(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    assert find_images([str(tmp_path)]) == [str(tmp_path / "a.png")]


def test_shared_photo_loads(photos: Path) -> None:
    img = load_image(photos / "bears.jpg")
    assert img.rgb.dtype == np.uint8 and img.rgb.ndim == 3 and img.hw[0] != img.hw[1]
