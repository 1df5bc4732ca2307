"""The files the web UI serves for a run: its artifacts, a thumbnail, and the input photo.

Every served path is a plain file inside the run's local artifact folder, reached without
following a symbolic link (a link planted in the cache serves nothing). The input photo is
read only from a run that records its sha256, only from the allowed roots
(`samseg ui --image-root`), and every refusal gets one identical answer.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from samseg.apps.ui.guards import UnsafePathError, check_artifact_path
from samseg.edges.owned_files import CLASSES_JSON, CONTACT_SHEET_PNG
from samseg.edges.run_schema import TAG_IMAGE_SHA256, TAG_IMAGE_URI
from samseg.edges.layout import OVERLAY_PNG

DATASET_FILES = (CLASSES_JSON, CONTACT_SHEET_PNG)  # a dataset (batch) run's own files
_THUMB_PX = 320  # long side of list thumbnails: readable, ~30 KB each


class RunDataError(RuntimeError):
    """A run exists but its artifacts or input cannot be used; one line for the page."""


# The input photos the UI serves come only from a run that recorded the file's sha256,
# and — when `samseg ui --image-root` names folders — only from under them; every refusal
# gets this one answer, so the UI tells nothing about which files exist.
INPUT_REFUSED = "the run's input image is not available"


class RunFiles:
    """File access of RunStore (which provides get_run, get_any_run, is_dataset_run,
    run_dir, summary and settings)."""

    def file_path(self, run_id: str, path: str) -> Path:
        """Absolute path of a servable artifact (UnsafePathError / RunNotFound / FileNotFoundError)."""
        path = check_artifact_path(path)
        dataset = self.is_dataset_run(self.get_any_run(run_id))
        if dataset and path not in (*DATASET_FILES, "thumb.png"):
            raise UnsafePathError(f"not an artifact of dataset run {run_id}: {path!r}")
        if not dataset and path in DATASET_FILES:
            raise UnsafePathError(f"{path!r} belongs to dataset runs; run {run_id} is an image run")
        root = self.run_dir(run_id).resolve()
        if path == "thumb.png":
            full = self._thumbnail(root, CONTACT_SHEET_PNG if dataset else OVERLAY_PNG)
        elif path == "input.jpg":
            full = self._input_jpg(run_id, root)
        else:
            full = root / path
        if not _plain_file_under(full, root):  # no symlink anywhere: a planted link serves nothing
            raise FileNotFoundError(f"run {run_id} has no artifact {path}")
        return full

    def _thumbnail(self, root: Path, source: str = OVERLAY_PNG) -> Path:
        from PIL import Image

        thumb = root / ".ui" / "thumb.png"
        if not os.path.lexists(thumb):
            thumb.parent.mkdir(exist_ok=True)
            with Image.open(root / source) as im:
                im.thumbnail((_THUMB_PX, _THUMB_PX))
                _save_atomic(im, thumb, "PNG")
        return thumb

    def _input_jpg(self, run_id: str, root: Path) -> Path:
        """The EXIF-corrected input as JPEG q90: a photo as PNG would be ~10× larger."""
        from PIL import Image

        out = root / ".ui" / "input.jpg"
        self._input_source(run_id)  # the rules hold for the cached copy too (settings may differ)
        if not os.path.lexists(out):
            out.parent.mkdir(exist_ok=True)
            _save_atomic(Image.fromarray(self.load_image(run_id).rgb), out, "JPEG", quality=90)
        return out

    def input_uri(self, run_id: str) -> str:
        """The run's input, when the UI may read it (allowed roots, a recorded sha256); else RunDataError."""
        return self._input_source(run_id)[0]

    def _input_source(self, run_id: str) -> tuple[str, str]:
        """(uri, sha256) of the run's input, or RunDataError(INPUT_REFUSED). A crafted run
        could name any file: only one whose hash the run records, from the allowed roots."""
        run = self.get_run(run_id)
        summary = self.summary(run_id)
        uri = run.data.tags.get(TAG_IMAGE_URI) or _image_field(summary, "uri")
        expected = run.data.tags.get(TAG_IMAGE_SHA256) or _image_field(summary, "sha256")
        if not uri or not expected or not self._allowed_input(uri):
            raise RunDataError(f"run {run_id}: {INPUT_REFUSED}")
        # what a save re-reads is summary.json's image: it must be the one checked here
        if (_image_field(summary, "uri") or uri, _image_field(summary, "sha256") or expected) != (uri, expected):
            raise RunDataError(f"run {run_id}: {INPUT_REFUSED}")
        return uri, expected

    def load_image(self, run_id: str) -> Any:
        """The run's input as a samseg.edges.images.LoadedImage, verified against its sha256."""
        from samseg.edges.images import ImageError, decode_image
        from samseg.edges.storage import StorageError, read_bytes

        uri, expected = self._input_source(run_id)
        try:
            image = decode_image(read_bytes(uri), uri.rsplit("/", 1)[-1], uri=uri)
        except (ImageError, StorageError, OSError):
            raise RunDataError(f"run {run_id}: {INPUT_REFUSED}") from None
        if image.sha256 != expected:
            raise RunDataError(f"run {run_id}: {INPUT_REFUSED}")
        return image

    def _allowed_input(self, uri: str) -> bool:
        roots = self.settings.image_roots
        if uri.startswith("s3://"):
            return True
        if not os.path.isabs(uri):
            return False
        if roots is None:
            return True
        real = os.path.realpath(uri)
        return any(Path(real).is_relative_to(os.path.realpath(r)) for r in roots)


def _plain_file_under(path: Path, root: Path) -> bool:
    """A regular file inside `root` reached without following any symbolic link."""
    try:
        rel = Path(os.path.abspath(path)).relative_to(root)
    except ValueError:
        return False
    p = root
    for part in rel.parts:
        p = p / part
        if p.is_symlink():
            return False
    return p.is_file()


def _save_atomic(im: Any, path: Path, fmt: str, **kw: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    im.save(tmp, format=fmt, **kw)
    os.replace(tmp, path)


def _image_field(summary: dict[str, Any], key: str) -> Any:
    img = summary.get("image")
    if isinstance(img, dict):
        return img.get(key)
    return summary.get(f"image_{key}")
