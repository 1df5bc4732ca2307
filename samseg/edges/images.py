"""Image loading (file edge): bytes → H×W×3 uint8 RGB, or a one-line `ImageError`.

`decode_image` is the single decoder; `load_image` reads a local file and calls it, and
the S3 edge (`storage.read_bytes`) reads an object and calls it too, so both paths behave identically.

Colour rules, in one place so every caller gets the same pixels:
- EXIF orientation is applied first (`ImageOps.exif_transpose`), so `rgb` and every
  output are in the orientation a viewer shows.
- Grayscale (1, L) and CMYK/YCbCr/LAB/HSV are converted with Pillow's own conversions.
- Alpha (RGBA, LA, PA, palette with a transparent index) is composited over WHITE:
  SAM has no alpha input, and transparent pixels often hold arbitrary RGB (commonly
  black), which would otherwise show up as a spurious dark region to segment. White is
  the colour most viewers show behind transparency.
- 16-bit (I;16*) is scaled from its full 0..65535 range to 0..255; 32-bit integer (I)
  is treated the same when its values fit 0..65535, otherwise (and for float F) its own
  min..max is stretched to 0..255, because there is no fixed full range to scale from.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import itertools
import os
import warnings
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from samseg.core.errors import SamsegError

# 100 megapixels: ~300 MB as RGB uint8 plus AMG working memory; larger inputs are more
# likely a mistake (or a decompression bomb) than a photo to segment on a CPU box.
DEFAULT_MAX_PIXELS = 100_000_000
MAX_PIXELS_ENV = "SAMSEG_MAX_PIXELS"
# Peak memory per input pixel, measured (benchmarks/README.md, "Large images"): a 100-MP PNG
# took 2.05 GB peak RSS with --tile 1024 at 32 points per tile and 1.93 GB untiled (tiny-random);
# 1,937 smooth masks on a 100-MP image took 1.66 GB through the engine. Stated in the limit's
# message so a user raising it knows the cost (a real SAM's weights come on top).
BYTES_PER_PIXEL_MEASURED = 21
# SAM resizes the long side to 1024 px and sees 16-px patches: beyond 64:1 the short side
# falls under one patch (and at 1024:1 under one pixel, which SAM's resize cannot do).
MAX_ASPECT = 64

# Suffixes picked up from directories and globs (lower-cased comparison); samseg.edges.storage
# uses the same tuple for S3 prefixes. An explicitly named file is tried whatever its suffix.
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

_GLOB_CHARS = set("*?[")


class ImageError(SamsegError):
    """A file that cannot be used as an image. str(e) is one line: "<name>: <problem>"."""

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = " ".join(str(problem).split())  # always one line
        super().__init__(f"{name}: {self.problem}")


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """rgb: H×W×3 uint8, C-contiguous, EXIF-corrected. sha256: hex digest of the file
    bytes (not the pixels). name: file name. uri: local path or s3:// URI as given."""

    rgb: np.ndarray
    sha256: str
    name: str
    uri: str
    geo: Any = None  # samseg.edges.geo.GeoRef for a GeoTIFF with a CRS: its outputs are georeferenced too

    @property
    def hw(self) -> tuple[int, int]:
        return (int(self.rgb.shape[0]), int(self.rgb.shape[1]))

    @property
    def stem(self) -> str:
        return Path(self.name).stem


def crop_image(image: LoadedImage, box_xyxy: tuple[int, int, int, int], what: str = "crop") -> LoadedImage:
    """The part `box_xyxy` (end exclusive) of `image` as an image of its own: pixels copied,
    identity sha256(image sha256 + box), uri `<image uri>#<what>=x0,y0,x1,y1`. A tile of a tiled
    run is one: it gets its own cache entries, keyed by that identity."""
    x0, y0, x1, y1 = box_xyxy
    where = f"{what}={x0},{y0},{x1},{y1}"
    sha = hashlib.sha256(f"{image.sha256}#{where}".encode("ascii")).hexdigest()
    rgb = np.ascontiguousarray(image.rgb[y0:y1, x0:x1])
    return LoadedImage(rgb=rgb, sha256=sha, name=f"{image.stem}@{x0}_{y0}.{what}", uri=f"{image.uri}#{where}")


def max_pixels_from_env() -> int:
    """`SAMSEG_MAX_PIXELS` if set (a positive integer), else DEFAULT_MAX_PIXELS."""
    from samseg.edges.env import positive_int_env

    return positive_int_env(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS)


def decode_image(data: bytes, name: str, max_pixels: int | None = None, uri: str | None = None) -> LoadedImage:
    """Decode encoded image bytes into a `LoadedImage`; raises ImageError naming `uri or name`.

    The pixel limit is checked on the header's size, before the pixel data is decoded.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    label = uri or name
    limit = max_pixels_from_env() if max_pixels is None else int(max_pixels)
    if len(data) == 0:
        raise ImageError(label, "empty file (0 bytes)")
    digest = hashlib.sha256(data).hexdigest()
    if Path(name).suffix.lower() in (".tif", ".tiff"):
        geo = _georeferenced(data, label, limit)
        if geo is not None:
            return LoadedImage(rgb=geo[0], sha256=digest, name=name, uri=uri or name, geo=geo[1])
    try:
        with warnings.catch_warnings():
            # Our own limit below replaces PIL's bomb *warning*; its bomb *error* (> 2× PIL's
            # MAX_IMAGE_PIXELS) is still caught and reported as a too-large image.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # Pillow's own bomb limit must not undercut ours: SAMSEG_MAX_PIXELS is the one knob.
            if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
                Image.MAX_IMAGE_PIXELS = limit
            with Image.open(BytesIO(data)) as img:
                w, h = img.size
                check_size(label, w, h, limit)
                img.load()  # full decode now: truncated data raises here, never a partial image
                ImageOps.exif_transpose(img, in_place=True)  # no second full-size copy (a 100-MP PNG: 300 MB)
                rgb = _to_rgb_uint8(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(label, f"image too large ({exc})") from None
    except UnidentifiedImageError:
        raise ImageError(label, "not a recognised image format (unreadable or not an image)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(label, f"corrupt or truncated image data ({exc})") from None
    except Exception as exc:  # noqa: BLE001 — untrusted bytes: any decoder failure is this file's error
        raise ImageError(label, f"cannot decode image ({type(exc).__name__}: {exc})") from None
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(label, f"image has no pixels ({rgb.shape[1]}x{rgb.shape[0]})")
    return LoadedImage(rgb=rgb, sha256=digest, name=name, uri=uri or name)


def _georeferenced(data: bytes, label: str, limit: int) -> Any:
    """(rgb, GeoRef) for a GeoTIFF with a CRS (samseg.edges.geo), else None."""
    from samseg.edges import geo

    try:
        return geo.read_georeferenced(data, lambda w, h: check_size(label, w, h, limit), _scale_to_uint8)
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 — untrusted bytes: a GDAL failure is this file's error
        raise ImageError(label, f"cannot read GeoTIFF ({type(exc).__name__}: {exc})") from None


def check_size(label: str, w: int, h: int, limit: int) -> None:
    """ImageError for an image over the pixel limit or too thin for SAM (header size only)."""
    if w * h > limit:
        gb = w * h * BYTES_PER_PIXEL_MEASURED / 1e9
        raise ImageError(label, f"image is {w}x{h} = {w * h:,} pixels, over the limit of {limit:,}; it would need "
                                f"about {gb:.1f} GB of memory (set {MAX_PIXELS_ENV} to raise the limit)")
    if min(w, h) > 0 and max(w, h) > MAX_ASPECT * min(w, h):
        raise ImageError(label, f"image is {w}x{h}: sides more than {MAX_ASPECT}:1 apart are too thin for SAM "
                                "(the short side would fall under one 16-px patch at 1024 px); crop it into pieces")


def load_image(path: str | os.PathLike[str], max_pixels: int | None = None) -> LoadedImage:
    """Read a local file and decode it; missing/unreadable files raise ImageError too."""
    p = Path(path)
    label = str(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageError(label, "no such file") from None
    except IsADirectoryError:
        raise ImageError(label, "is a directory, not an image file") from None
    except PermissionError:
        raise ImageError(label, "permission denied") from None
    except OSError as exc:
        raise ImageError(label, f"cannot read file ({exc.strerror or exc})") from None
    return decode_image(data, p.name, max_pixels=max_pixels, uri=label)


def _to_rgb_uint8(img) -> np.ndarray:  # img: PIL.Image.Image
    """Any PIL mode → H×W×3 uint8 C-contiguous (rules in the module docstring)."""
    from PIL import Image

    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = _scale_to_uint8(np.asarray(img))
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("RGB", "L") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """H×W integer/float → H×W uint8: 16-bit full range, else the array's own min..max."""
    v = values.astype(np.float64)
    if values.dtype.kind in "ui" and (v.size == 0 or (v.min() >= 0 and v.max() <= 65535)):
        lo, hi = 0.0, 65535.0
    else:
        finite = v[np.isfinite(v)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if hi <= lo:
            hi = lo + 1.0
    scaled = np.clip((np.nan_to_num(v, nan=lo) - lo) * (255.0 / (hi - lo)), 0, 255)
    return np.rint(scaled).astype(np.uint8)


def find_images(paths: list[str]) -> list[str]:
    """Expand CLI arguments into image paths, in argument order, without duplicates
    (`iter_found_images` of each)."""
    return list(dict.fromkeys(p for arg in paths for p in iter_found_images(arg)))


def iter_found_images(arg: str) -> Iterator[str]:
    """One CLI argument's image paths, one at a time:

    - a directory → its image files (`is_image_name`), sorted by name, not recursive;
    - a glob (contains * ? [) → its matching image files, sorted;
    - anything else → kept as given, whatever its suffix, so a missing or bad file
      is reported by `load_image` as that file's own one-line error.

    A folder of a million files is never listed whole in memory: its names are sorted in bounded
    runs on disk (samseg.edges.spill.sorted_strings); a glob's matches too, though Python's glob
    reads the names of each folder it searches into a list first."""
    p = Path(arg)
    if p.is_dir():
        from samseg.edges.spill import sorted_strings

        with os.scandir(p) as entries:  # DirEntry.is_file: no stat per file where the OS gives its type
            names = sorted_strings(e.name for e in entries if is_image_name(e.name) and _is_file(e))
            yield from (str(p / name) for name in names)
    elif _GLOB_CHARS & set(arg) and not p.exists():
        from samseg.edges.spill import sorted_strings

        matches = sorted_strings(m for m in glob.iglob(arg) if is_image_name(m) and Path(m).is_file())
        first = next(matches, None)
        yield from [arg] if first is None else itertools.chain([first], matches)  # no match → kept: "no such file"
    else:
        yield arg


def _is_file(entry: os.DirEntry) -> bool:
    """entry.is_file(), False where pathlib's is_file says False: a link to nowhere or a link loop
    named like an image is not one (a folder the user cannot read still raises)."""
    try:
        return entry.is_file()
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP):
            return False
        raise


def is_image_name(name: str) -> bool:
    """A file or S3 key name that a folder or prefix lists as an image: an image suffix
    (IMAGE_SUFFIXES, any case), not hidden."""
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and Path(base).suffix.lower() in IMAGE_SUFFIXES
