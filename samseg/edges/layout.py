"""The files of an image dir, named once (README "Outputs"; samseg.edges.image_dir writes them).

What samseg may write into OUT/<name>/ is known before any compute: these names, one cut-out
per class under classes/, and the GeoTIFF pair. That is what lets samseg refuse, before
computing, an image whose output would replace a file or an S3 object of the user's.
"""

from __future__ import annotations

import re

LABELS_PNG = "labels.png"
OVERLAY_PNG = "overlay.png"
CLASSES_DIR = "classes"
MASKS_JSON = "masks.json"
MASKS_PARQUET = "masks.parquet"
EMBEDDINGS_NPY = "embeddings.npy"
FEATURES_NPY = "features.npy"
SUMMARY_JSON = "summary.json"
CLASS_TABLE = "class_table"  # summary.json's list of the classes as written (samseg.core.types.ClusterResult.table)
LABELS_TIF = "labels.tif"  # GeoTIFF inputs: labels.png with the input's CRS and transform
CLASSES_GEOJSON = "classes.geojson"  # GeoTIFF inputs: one (Multi)Polygon per class, WGS 84

FILES: tuple[str, ...] = (LABELS_PNG, OVERLAY_PNG, MASKS_JSON, MASKS_PARQUET, EMBEDDINGS_NPY, FEATURES_NPY,
                          SUMMARY_JSON, LABELS_TIF, CLASSES_GEOJSON)
SLUG_MAX = 40  # characters of a class name kept in its cut-out's file name
# classes/class_<c>.png, or classes/class_<c>-<slug>.png for a named class
CUTOUT_PATTERN = rf"{CLASSES_DIR}/class_\d{{1,5}}(?:-[a-z0-9-]{{1,{SLUG_MAX}}})?\.png"
_CUTOUT = re.compile(CUTOUT_PATTERN)


def name_slug(name: str | None) -> str:
    """A class name as a file name part: lower-case ASCII letters, digits and single hyphens
    ("Dining table" -> "dining-table"); "" when nothing of it is left."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(name or "").lower()).strip("-")
    return slug[:SLUG_MAX].rstrip("-")


def cutout_name(c: int, name: str | None = None) -> str:
    """classes/class_<c>.png, the RGBA cut-out of class c; a named class's carries its name:
    classes/class_3-road.png."""
    slug = name_slug(name)
    return f"{CLASSES_DIR}/class_{c}{'-' + slug if slug else ''}.png"


def may_write(rel: str) -> bool:
    """True when samseg may write the relative name `rel` into an image dir."""
    return rel in FILES or _CUTOUT.fullmatch(rel) is not None
