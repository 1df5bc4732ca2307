"""Annotation exports: samseg image dirs → the files labelling tools and trainers import.

Formats (one `export_*` each; `write_export` picks by name):
- coco: one `annotations.json` for every image (COCO instances: one annotation per non-noise
  mask, RLE segmentation). Categories (`categories`): with dataset-level classes one per class
  (`class_<c>`, id c + 1); with per-image classes one per (image, class) (`<image>:class_<c>`),
  since class 0 of one photo and class 0 of another are different things.
- cvat: CVAT's "COCO 1.0" layout, `annotations/instances_default.json`.
- labelstudio: `tasks.json` (one task per image, its classes as brush pre-annotations in
  Label Studio's own RLE, made by label_studio_sdk.converter.brush) and `labeling_config.xml`
  whose BrushLabels `name`/`toName` match the results' `from_name`/`to_name`; or pushed into a
  running Label Studio (samseg.edges.labelstudio).
- yolo-seg: `labels/<image stem>.txt`, one line per polygon: `class x1 y1 x2 y2 ...` normalised to
  [0, 1]; the outer contour of each connected component of each non-noise mask (OpenCV,
  CHAIN_APPROX_SIMPLE). Holes are not represented (YOLO polygons have none: a ring becomes
  its outer boundary) and components under 3 points or 4 px² are dropped. `data.yaml` names
  the categories; its `images/` folder is filled by `--copy-images` (without it, a comment says so).
- index-png: `<stem>.png`, 8-bit palette PNG of the class map (0 = no class, c + 1 = class c;
  the palette is samseg's class colours) and `classes.txt`; at most 255 classes.

Image names (`export_names`): the inputs' file names when they are unique in the export, else
every image is named after its image dir (unique in its OUT) with its own suffix, so two inputs
called `IMG_0001.jpg` never share a name, a copied file or a URL. `--copy-images` (cvat,
labelstudio, yolo-seg) copies each input into `images/<name>`, only when its bytes hash to the
sha256 its run recorded. Label Studio's `data.image` is `<image_root>/<name>` when --image-root
is given (a URL prefix or a folder), else the recorded image URI (an absolute path or s3:// URI).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np

from samseg.edges.run_schema import DATASET_MODES

from samseg.core.errors import EXIT_USAGE, SamsegError
from samseg.edges.layout import MASKS_JSON

FORMATS = ("coco", "cvat", "labelstudio", "yolo-seg", "index-png")
FROM_NAME, TO_NAME = "tag", "image"  # Label Studio control / object tag names
_MIN_POLY_AREA = 4.0


Files = dict[str, bytes]  # relative path in the export dir -> its bytes


class ExportError(SamsegError):
    """An input that cannot be exported; one line naming it."""


class NotAnOutput(ExportError):
    """The path given holds no samseg output at all: a usage error, as no images found is."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class ImageResult:
    """One samseg image dir, read back: masks (MaskSet), labels (N,) (-1 = noise),
    label_map H×W uint16 (0 = none, c + 1 = class c), summary dict, the dir."""

    out_dir: Path
    masks: Any
    labels: np.ndarray
    label_map: np.ndarray
    summary: dict[str, Any]

    @property
    def file_name(self) -> str:
        return str(self.summary["image"]["file_name"])

    @property
    def uri(self) -> str:
        """The input image's path or s3:// URI the run recorded ("" if none)."""
        return str((self.summary.get("image") or {}).get("uri") or "")

    @property
    def sha256(self) -> str | None:
        """The input image's sha256 the run recorded (None: it records none)."""
        sha = (self.summary.get("image") or {}).get("sha256")
        return sha if isinstance(sha, str) and sha else None

    @property
    def stem(self) -> str:
        return self.out_dir.name

    @property
    def hw(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.label_map.shape)  # type: ignore[return-value]


def read_image_dirs(dirs: list[Path]) -> list[ImageResult]:
    from samseg.edges.image_dir import LABELS_PNG, OutputsError, read_label_png, read_image_dir, read_summary

    results = []
    for d in dirs:
        try:
            masks, _emb, labels = read_image_dir(d)
            results.append(ImageResult(d, masks, labels, read_label_png(d / LABELS_PNG), read_summary(d)))
        except (OutputsError, OSError, KeyError) as exc:
            raise ExportError(f"{d}: not a readable samseg image dir ({exc})") from None
    return results


def image_dirs(root: Path) -> list[Path]:
    """`root` itself when it is an image dir (has masks.json), else its image subdirs, sorted."""
    if (root / MASKS_JSON).is_file():
        return [root]
    if not root.is_dir():
        raise NotAnOutput(f"{root}: a file, not a samseg output dir (an image dir, or a batch's OUT) nor a run id")
    found = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and (p / MASKS_JSON).is_file())
    if not found:
        raise NotAnOutput(f"{root}: no samseg image dirs (no masks.json here or one level down)")
    return found


def export_names(results: list[ImageResult]) -> list[str]:
    """The image file names an export uses: the inputs' own names when their stems are unique in
    the export (in any case), else every image named after its image dir (unique in its OUT) with
    its own suffix —
    `cam1/IMG_1.jpg` and `cam2/IMG_1.jpg` never share one name, image file or URL."""
    names = [r.file_name for r in results]
    stems = {PurePosixPath(n).stem.casefold() for n in names}  # YOLO pairs by stem; some disks ignore case
    if len(stems) == len(names):
        return names
    return [f"{r.stem}{PurePosixPath(r.file_name).suffix}" for r in results]


def copied_images(results: list[ImageResult], names: list[str], folder: str = "images") -> Files:
    """`folder/<export name>` for each image, its bytes checked against its run's sha256 (--copy-images)."""
    return {f"{folder}/{n}": input_bytes(r, "--copy-images") for r, n in zip(results, names)}


def n_classes(results: list[ImageResult]) -> int:
    return max((int(r.labels.max(initial=-1)) + 1 for r in results), default=0)


def shares_classes(results: list[ImageResult]) -> bool:
    """True when class c means one thing in every image: all of them carry the dataset-level ids
    of one source (one dataset batch, or one classes_from), so one category list is true."""
    sources = set()
    for r in results:
        mode = r.summary.get("classes")
        if mode not in DATASET_MODES:
            return False
        given = r.summary.get("classes_sha256") or r.summary.get("classes_from")  # the table itself, when recorded
        sources.add(str(given or r.out_dir.parent) if mode == "assigned" else str(r.out_dir.parent))
    return len(sources) <= 1


@dataclass(frozen=True)
class Categories:
    """An export's categories: `names` (index k is category k; COCO id k + 1, YOLO class k), and
    for each image its class id -> category index. With per-image classes (a plain batch) class 0
    of one photo and class 0 of another are different things: one category per (image, class),
    named `<image>:class_<c>`. With dataset-level classes, one category per class."""

    names: list[str]
    of_image: list[dict[int, int]]
    shared: bool

    def index(self, image: int, c: int) -> int:
        return self.of_image[image][c]

    def line(self) -> str:
        """What the export's line says of its categories."""
        cats = f"{len(self.names)} {'category' if len(self.names) == 1 else 'categories'}"
        if self.shared:
            return f"{cats}: the dataset classes, shared by every image"
        if len(self.of_image) == 1:
            return f"{cats}: the image's classes"
        return (f"{cats}, one per (image, class): each image's classes are its own "
                "(`--classes dataset` gives classes shared across images)")


def categories(results: list[ImageResult], names: list[str] | None = None) -> Categories:
    """The categories of an export of `results` (named by `names`, default `export_names`)."""
    if shares_classes(results):  # dataset ids: one name per class, whichever image names it
        k = n_classes(results)
        given = {int(c): str(n) for r in results for c, n in (r.summary.get("class_names") or {}).items()}
        return Categories(_distinct([given.get(c) or f"class_{c}" for c in range(k)]),
                          [{c: c for c in range(k)} for _ in results], True)
    names = names if names is not None else export_names(results)
    cats: list[str] = []
    of_image = []
    for r, name in zip(results, names):
        present = sorted(set(int(c) for c in r.labels[r.labels >= 0]) | set(range(int(r.label_map.max(initial=0)))))
        given = {int(k): str(v) for k, v in (r.summary.get("class_names") or {}).items()}  # `samseg classes edit`
        of_image.append({c: len(cats) + k for k, c in enumerate(present)})
        stem = PurePosixPath(name).stem
        cats += [f"{stem}:{n}" for n in _distinct([given.get(c) or f"class_{c}" for c in present], present)]
    return Categories(cats, of_image, False)


def _distinct(names: list[str], ids: list[int] | None = None) -> list[str]:
    """Two classes named alike ("road", "road") stay two categories: "road (3)", "road (7)"
    (their class ids), so no tool merges them by label."""
    ids = list(range(len(names))) if ids is None else ids
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return [f"{n} ({c})" if counts[n] > 1 else n for n, c in zip(names, ids)]


# ---------------------------------------------------------------- COCO / CVAT
def coco_dataset(results: list[ImageResult]) -> dict[str, Any]:
    """COCO instances dict: images 1..M (named by `export_names`), one annotation per non-noise mask."""
    images, annotations = [], []
    names = export_names(results)
    cats = categories(results, names)
    for img_id, (r, name) in enumerate(zip(results, names), 1):
        h, w = r.hw
        images.append({"id": img_id, "file_name": name, "height": h, "width": w})
        for i in np.flatnonzero(r.labels >= 0):
            rle = r.masks.coco_rle(int(i))
            counts = rle["counts"].decode() if isinstance(rle["counts"], bytes) else rle["counts"]
            x, y, bw, bh = (float(v) for v in r.masks.bbox_xywh[i])
            annotations.append({"id": len(annotations) + 1, "image_id": img_id,
                                "category_id": cats.index(img_id - 1, int(r.labels[i])) + 1,
                                "segmentation": {"size": [h, w], "counts": counts}, "area": float(r.masks.areas[i]),
                                "bbox": [x, y, bw, bh], "iscrowd": 0})
    listed = [{"id": k + 1, "name": name, "supercategory": "samseg"} for k, name in enumerate(cats.names)]
    return {"info": {"description": "samseg classes"}, "licenses": [], "images": images, "annotations": annotations,
            "categories": listed}


def export_coco(results: list[ImageResult], **_: Any) -> Files:
    return {"annotations.json": _json(coco_dataset(results))}


def export_cvat(results: list[ImageResult], copy_images: bool = False, **_: Any) -> Files:
    files = {"annotations/instances_default.json": _json(coco_dataset(results))}
    if copy_images:
        files.update(copied_images(results, export_names(results)))
    return files


def input_bytes(r: ImageResult, needed_for: str) -> bytes:
    """The image `r` was computed from, read from the URI its summary names and checked
    against the sha256 it recorded (a crafted summary can name any file)."""
    from samseg.edges.storage import StorageError, StorageNotFound, read_verified

    uri = r.uri
    try:
        return read_verified(uri, r.sha256)
    except StorageNotFound:
        raise ExportError(f"{uri}: input image not found (needed for {needed_for})") from None
    except StorageError as exc:
        raise ExportError(f"{r.out_dir}: {exc}") from None


# ---------------------------------------------------------------- Label Studio
def labeling_config(names: list[str]) -> str:
    from xml.sax.saxutils import quoteattr

    from samseg.core.render import class_color

    labels = "\n".join(f"    <Label value={quoteattr(n)} background=\"#{'%02x%02x%02x' % class_color(c)}\"/>"
                       for c, n in enumerate(names))
    return (f'<View>\n  <Image name="{TO_NAME}" value="$image" zoom="true"/>\n'
            f'  <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">\n{labels}\n  </BrushLabels>\n</View>\n')


def brush_results(r: ImageResult, labels: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """One Label Studio brush result per class present in the image (its pixels in labels.png),
    labelled `labels[c]` (default class_<c>)."""
    return brush_results_of(r.stem, r.label_map, labels)


def brush_results_of(stem: str, label_map: np.ndarray, labels: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """brush_results from the H×W class-id map alone (what an encoder process is sent)."""
    from label_studio_sdk.converter.brush import mask2rle

    h, w = label_map.shape
    results = []
    for c in range(int(label_map.max(initial=0))):
        mask = (label_map == c + 1).astype(np.uint8) * 255
        if not mask.any():
            continue
        results.append({"id": f"{stem}-class_{c}", "from_name": FROM_NAME, "to_name": TO_NAME, "type": "brushlabels",
                        "original_width": w, "original_height": h, "image_rotation": 0,
                        "value": {"format": "rle", "rle": mask2rle(mask),
                                  "brushlabels": [labels[c] if labels is not None else f"class_{c}"]}})
    return results


def labelstudio_task(r: ImageResult, image_root: str | None, name: str | None = None,
                     labels: dict[int, str] | None = None) -> dict[str, Any]:
    where = f"{image_root.rstrip('/')}/{name or r.file_name}" if image_root else r.uri
    return {"data": {TO_NAME: where}, "predictions": [{"model_version": "samseg", "result": brush_results(r, labels)}]}


def export_labelstudio(results: list[ImageResult], image_root: str | None = None, copy_images: bool = False,
                       **_: Any) -> Files:
    names = export_names(results)
    cats = categories(results, names)
    labels = [{c: cats.names[k] for c, k in of.items()} for of in cats.of_image]
    files = {"tasks.json": _json([labelstudio_task(r, image_root, n, lab) for r, n, lab in zip(results, names, labels)]),
             "labeling_config.xml": labeling_config(cats.names).encode("utf-8")}
    if copy_images:
        files.update(copied_images(results, names))
    return files


# ---------------------------------------------------------------- YOLO / index PNG
def yolo_lines(r: ImageResult, category: dict[int, int] | None = None) -> list[str]:
    """`class x1 y1 ...` lines: outer contours of each non-noise mask's components; the class is
    `category[c]` (default the class id itself)."""
    import cv2

    h, w = r.hw
    lines = []
    for i in np.flatnonzero(r.labels >= 0):
        mask = np.ascontiguousarray(r.masks.decode([int(i)])[0].astype(np.uint8))
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for cnt in contours:
            if len(cnt) < 3 or cv2.contourArea(cnt) < _MIN_POLY_AREA:
                continue
            xy = cnt.reshape(-1, 2).astype(np.float64) / [w, h]
            c = int(r.labels[i])
            lines.append(f"{category[c] if category is not None else c} "
                         + " ".join(f"{v:.6f}" for v in np.clip(xy, 0, 1).ravel()))
    return lines


def export_yolo(results: list[ImageResult], out: Path, copy_images: bool = False, **_: Any) -> Files:
    """labels/<image stem>.txt beside images/<image name> (Ultralytics pairs them by stem); the
    images are there with --copy-images, and data.yaml points at them."""
    import yaml

    files = {}
    images = export_names(results)
    cats = categories(results, images)
    for r, name, of in zip(results, images, cats.of_image):
        lines = yolo_lines(r, of)
        files[f"labels/{PurePosixPath(name).stem}.txt"] = ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8")
    if copy_images:
        files.update(copied_images(results, images))
    names = cats.names
    doc = yaml.safe_dump({"path": str(out.resolve()), "train": "images", "val": "images", "nc": len(names),
                          "names": names}, sort_keys=False)
    if not copy_images:  # the file must not claim a folder that is not there without saying so
        doc = ("# images/ is not written: export with --copy-images to fill it, or put the images there yourself\n"
               "# (their names are the labels/ files' stems)\n" + doc)
    files["data.yaml"] = doc.encode("utf-8")
    return files


def export_index_png(results: list[ImageResult], **_: Any) -> Files:
    """<stem>.png per image: each image's own class map (0 = none, c + 1 = its class c; one file per
    image, so ids need not be shared), samseg's class colours as the palette; classes.txt lists each
    image's classes by the categories' names (`categories`)."""
    import io

    from PIL import Image

    from samseg.core.render import class_color

    k = n_classes(results)
    if k > 255:
        raise ExportError(f"{k} classes in one image do not fit an 8-bit index PNG (at most 255); use the 16-bit labels.png")
    palette = [0, 0, 0] + [v for c in range(k) for v in class_color(c)]
    files = {}
    pngs = [f"{PurePosixPath(n).stem}.png" for n in export_names(results)]  # bears.jpg -> bears.png, as the other formats name it
    for r, name in zip(results, pngs):
        img = Image.fromarray(r.label_map.astype(np.uint8), mode="P")
        img.putpalette(palette + [0] * (768 - len(palette)))
        png = io.BytesIO()
        img.save(png, format="PNG", optimize=False, compress_level=1)
        files[name] = png.getvalue()
    cats = categories(results)
    lines = ["background"] + [f"{name} {c + 1} {cats.names[k]}" for name, of in zip(pngs, cats.of_image)
                              for c, k in sorted(of.items())]
    files["classes.txt"] = ("\n".join(lines) + "\n").encode("utf-8")
    return files


EXPORTERS: dict[str, Callable[..., Files]] = {
    "coco": export_coco, "cvat": export_cvat, "labelstudio": export_labelstudio,
    "yolo-seg": export_yolo, "index-png": export_index_png,
}


def write_export(fmt: str, results: list[ImageResult], out: Path, **options: Any) -> list[Path]:
    """Write `fmt` for `results` into `out` (created); returns the files written. Only files
    samseg wrote there before are replaced (samseg.edges.owned_files): a user's file in the
    way raises FilesRefused before anything is written."""
    from samseg.edges.owned_files import write_files

    if fmt not in EXPORTERS:
        raise ExportError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    files = EXPORTERS[fmt](results, out=out, **options)
    return [Path(p) for p in write_files(str(out), files)]


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode("utf-8")
