"""Geospatial edge: GeoTIFF in → labels as a GeoTIFF (same CRS and transform) and class
polygons as GeoJSON, through rasterio and shapely.

A .tif/.tiff whose header has a CRS is read with rasterio (bands 1-3 as RGB, one band as
gray; non-8-bit bands scaled as samseg.edges.images scales them), and the image keeps its
`GeoRef`. Every other image, and every TIFF when rasterio is missing, takes the Pillow path
and gets no geo outputs. The polygons are RFC 7946 GeoJSON (WGS 84 longitude/latitude);
a CRS that cannot be transformed to WGS 84 is kept as is and named in a `crs` member.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from samseg.edges.layout import CLASSES_GEOJSON, LABELS_TIF

GEO_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class GeoRef:
    """Where a raster sits on the Earth: its CRS (WKT) and affine pixel → CRS transform
    (a, b, c, d, e, f as in rasterio's Affine: x = a·col + b·row + c, y = d·col + e·row + f)."""

    crs_wkt: str
    transform: tuple[float, float, float, float, float, float]


def available() -> bool:
    try:
        import rasterio  # noqa: F401
        import shapely  # noqa: F401
    except ImportError:
        return False
    return True


def read_georeferenced(data: bytes, check_size: Callable[[int, int], None],
                       to_uint8: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, GeoRef] | None:
    """(H×W×3 uint8, GeoRef) for a GeoTIFF with a CRS; None for any other file (the Pillow path).

    check_size(w, h) runs on the header before pixels are read; to_uint8 scales one band.
    """
    if not available():
        return None
    import warnings

    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
    from rasterio.io import MemoryFile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a plain TIFF: the Pillow path below
            with MemoryFile(data) as mem, mem.open() as ds:
                if ds.crs is None:
                    return None
                check_size(ds.width, ds.height)
                bands = [1, 2, 3] if ds.count >= 3 else [1]
                planes = [b if b.dtype == np.uint8 else to_uint8(b) for b in ds.read(bands)]
                geo = GeoRef(crs_wkt=ds.crs.to_wkt(), transform=tuple(float(v) for v in ds.transform[:6]))
    except RasterioIOError:
        return None  # not something GDAL reads as a raster: Pillow says what it is
    rgb = np.stack(planes * 3 if len(planes) == 1 else planes, axis=-1)
    return np.ascontiguousarray(rgb, dtype=np.uint8), geo


def write_label_geotiff(path: Path, label_map_hw: np.ndarray, geo: GeoRef) -> None:
    """H×W uint16 labels (0 = no class) as a one-band GeoTIFF with the input's CRS and transform."""
    import rasterio
    from affine import Affine

    h, w = label_map_hw.shape
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=1, dtype="uint16", nodata=0,
                       crs=rasterio.crs.CRS.from_wkt(geo.crs_wkt), transform=Affine(*geo.transform),
                       compress="deflate", tiled=True) as dst:
        dst.write(np.asarray(label_map_hw, np.uint16), 1)


def class_polygons(label_map_hw: np.ndarray, geo: GeoRef) -> dict[str, Any]:
    """GeoJSON FeatureCollection, one (Multi)Polygon feature per class present in the map."""
    from affine import Affine
    from rasterio.features import shapes
    from shapely.geometry import mapping, shape
    from shapely.ops import unary_union

    labels = np.asarray(label_map_hw, np.uint16)
    pieces: dict[int, list[Any]] = {}
    for geom, value in shapes(labels, mask=labels > 0, transform=Affine(*geo.transform), connectivity=4):
        pieces.setdefault(int(value), []).append(shape(geom))
    counts = np.bincount(labels.reshape(-1), minlength=max(pieces, default=0) + 1)
    features = [{"type": "Feature",
                 "properties": {"class": v - 1, "category_id": v, "n_pixels": int(counts[v])},
                 "geometry": mapping(unary_union(parts))} for v, parts in sorted(pieces.items())]
    return _to_wgs84({"type": "FeatureCollection", "features": features}, geo)


def _to_wgs84(collection: dict[str, Any], geo: GeoRef) -> dict[str, Any]:
    from rasterio.crs import CRS
    from rasterio.errors import CRSError
    from rasterio.warp import transform_geom

    src = CRS.from_wkt(geo.crs_wkt)
    try:
        moved = [transform_geom(src, "EPSG:4326", f["geometry"]) for f in collection["features"]]
    except (CRSError, ValueError, RuntimeError):
        return {**collection, "crs": {"type": "name", "properties": {"name": src.to_string() or geo.crs_wkt}}}
    for f, geometry in zip(collection["features"], moved):
        f["geometry"] = geometry
    return collection


def write_geo_outputs(out_dir: Path, label_map_hw: np.ndarray, geo: GeoRef) -> None:
    """labels.tif and classes.geojson into `out_dir`."""
    write_label_geotiff(Path(out_dir) / LABELS_TIF, label_map_hw, geo)
    doc = class_polygons(label_map_hw, geo)
    (Path(out_dir) / CLASSES_GEOJSON).write_text(json.dumps(doc, separators=(",", ":")), encoding="utf-8")
