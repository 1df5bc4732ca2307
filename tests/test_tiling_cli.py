"""`samseg segment --tile` and GeoTIFF inputs through the CLI (tiny-random SAM: plumbing only,
its masks mean nothing), plus the geo edge on a known label map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio  # a dependency (pyproject.toml): GeoTIFF in and out
from PIL import Image

from cli_run import run_cli

TINY = ["--model", "tiny-random", "--preset", "smoke", "--points-per-side", "4", "--device", "cpu", "--no-track", "-q"]


def _rgb(hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[: hw[0], : hw[1]]
    rng = np.random.default_rng(seed)
    base = np.stack([(yy * 255 // hw[0]), (xx * 255 // hw[1]), ((yy + xx) % 255)], -1)
    return np.clip(base + rng.integers(0, 20, (*hw, 3)), 0, 255).astype(np.uint8)


def test_tiled_segment_writes_full_resolution_outputs_and_reruns_from_one_entry(tmp_path: Path) -> None:
    Image.fromarray(_rgb((280, 400))).save(tmp_path / "wide.png")
    args = ["segment", str(tmp_path / "wide.png"), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "c"), *TINY]
    rc, out, err = run_cli([*args, "--tile", "256", "--tile-overlap", "64"])
    assert rc == 0, err
    d = tmp_path / "out" / "wide"
    summary = json.loads((d / "summary.json").read_text())
    assert summary["tiling"]["n_tiles"] == 4 and summary["tiling"]["tile_size"] == 256
    assert summary["config"]["tile.size"] == 256 and summary["config"]["tile.overlap"] == 64
    assert summary["cache"]["tiles"] == "computed" and summary["cache"]["encode"] == "skipped"
    assert np.asarray(Image.open(d / "labels.png")).shape == (280, 400)
    assert len(json.loads((d / "masks.json").read_text())["annotations"]) == summary["n_masks"]

    rc, out, err = run_cli([*args, "--tile", "256", "--tile-overlap", "64", "--eps", "0.3"])
    assert rc == 0, err
    again = json.loads((d / "summary.json").read_text())
    assert again["cache"]["tiles"] == again["cache"]["amg"] == again["cache"]["pool"] == "hit"
    assert again["n_masks"] == summary["n_masks"]

    rc, out, err = run_cli([*args, "--tile", "auto"])  # 400 px is under 2 × 1024: not tiled
    assert rc == 0, err
    assert "tiling" not in json.loads((d / "summary.json").read_text())


@pytest.mark.parametrize("flags, message", [
    (["--tile", "32"], "--tile must be 0 (no tiling) or >= 64"),
    (["--tile", "lots"], "'lots' is not a tile size in pixels or auto"),
    (["--tile-overlap", "10"], "need tiling on: --tile SIZE or --tile auto"),
    (["--tile", "256", "--tile-overlap", "200"], "at most half"),
    (["--tile", "256", "--save-features"], "leave out --tile or --save-features"),
])
def test_bad_tile_flags_are_one_line_each(tmp_path: Path, flags: list[str], message: str) -> None:
    Image.fromarray(_rgb((40, 40))).save(tmp_path / "a.png")
    rc, out, err = run_cli(["segment", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), *TINY, *flags])
    assert rc == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "o" / "a").exists()


def _geotiff(path: Path, rgb: np.ndarray, crs: str, transform) -> None:
    with rasterio.open(path, "w", driver="GTiff", height=rgb.shape[0], width=rgb.shape[1], count=3, dtype="uint8",
                       crs=crs, transform=transform) as dst:
        dst.write(rgb.transpose(2, 0, 1))


def test_geotiff_in_gives_labels_geotiff_with_its_crs_and_class_polygons(tmp_path: Path) -> None:
    from rasterio.transform import from_origin

    transform = from_origin(500_000, 5_000_000, 0.5, 0.5)  # UTM 33N, 50-cm pixels
    _geotiff(tmp_path / "field.tif", _rgb((120, 160)), "EPSG:32633", transform)
    rc, out, err = run_cli(["segment", str(tmp_path / "field.tif"), "--out", str(tmp_path / "o"), *TINY])
    assert rc == 0, err
    d = tmp_path / "o" / "field"
    with rasterio.open(d / "labels.tif") as ds:
        assert ds.crs.to_epsg() == 32633 and ds.transform == transform and ds.dtypes == ("uint16",)
        np.testing.assert_array_equal(ds.read(1), np.asarray(Image.open(d / "labels.png")))
    doc = json.loads((d / "classes.geojson").read_text())
    summary = json.loads((d / "summary.json").read_text())
    assert doc["type"] == "FeatureCollection" and "crs" not in doc  # WGS 84, as RFC 7946 wants
    assert sorted(f["properties"]["class"] for f in doc["features"]) == list(range(summary["n_clusters"]))
    lon, lat = np.asarray(doc["features"][0]["geometry"]["coordinates"][0][0]) if doc["features"][0]["geometry"]["type"] == "Polygon" \
        else np.asarray(doc["features"][0]["geometry"]["coordinates"][0][0][0])
    assert 14.9 < lon < 15.1 and 45.1 < lat < 45.2  # 500 km E / 5000 km N in zone 33N


def test_a_tiff_without_a_crs_takes_the_plain_image_path(tmp_path: Path) -> None:
    Image.fromarray(_rgb((40, 50))).save(tmp_path / "plain.tif")
    rc, out, err = run_cli(["segment", str(tmp_path / "plain.tif"), "--out", str(tmp_path / "o"), *TINY])
    assert rc == 0, err
    assert (tmp_path / "o" / "plain" / "labels.png").exists() and not (tmp_path / "o" / "plain" / "labels.tif").exists()


def test_class_polygons_cover_exactly_the_class_pixels() -> None:
    from rasterio.transform import from_origin
    from shapely.geometry import shape

    from samseg.edges.geo import GeoRef, class_polygons

    labels = np.zeros((50, 80), np.uint16)
    labels[10:20, 30:50] = 1
    labels[30:40, 5:15] = 1
    labels[30:45, 60:70] = 2
    geo = GeoRef(crs_wkt=rasterio.crs.CRS.from_epsg(4326).to_wkt(), transform=tuple(from_origin(10.0, 50.0, 0.001, 0.001))[:6])
    doc = class_polygons(labels, geo)
    by_class = {f["properties"]["class"]: f for f in doc["features"]}
    assert set(by_class) == {0, 1}
    assert by_class[0]["properties"]["n_pixels"] == 300 and by_class[0]["geometry"]["type"] == "MultiPolygon"
    assert shape(by_class[0]["geometry"]).area == pytest.approx(300 * 1e-6)
    assert shape(by_class[1]["geometry"]).bounds == pytest.approx((10.06, 49.955, 10.07, 49.97))


def test_tiles_run_as_prefect_tasks_and_write_what_the_local_engine_writes(prefect_api, tmp_path: Path, monkeypatch) -> None:
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from cli_run import run_cli

    Image.fromarray(_rgb((280, 400), seed=3)).save(tmp_path / "wide.png")
    monkeypatch.setenv("SAMSEG_HOME", str(tmp_path / "home"))
    outs = {}
    for orchestrator in ("local", "prefect"):  # in-process: the orchestrators differ, not the process
        argv = ["segment", str(tmp_path / "wide.png"), "--out", str(tmp_path / orchestrator), "--cache",
                str(tmp_path / f"c-{orchestrator}"), "--orchestrator", orchestrator, "--tile", "256", "--tile-overlap", "64", *TINY]
        rc, _, err = run_cli(argv)
        assert rc == 0, err
        outs[orchestrator] = tmp_path / orchestrator / "wide"
    for name in ("labels.png", "masks.json", "embeddings.npy"):
        assert (outs["local"] / name).read_bytes() == (outs["prefect"] / name).read_bytes(), name
    flow_run_id = json.loads((outs["prefect"] / "summary.json").read_text())["prefect_flow_run_id"]
    flt = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    deadline = time.monotonic() + 60  # task runs reach the server as events, a little later
    while True:
        with get_client(sync_client=True) as client:
            names = [t.name.rsplit("-", 1)[0] for t in client.read_task_runs(flow_run_filter=flt)]
        if names.count("amg") >= 4 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert names.count("encode") == names.count("amg") == names.count("pool") == 4  # one of each per tile


def test_truncated_geotiff_is_one_line_naming_the_file(tmp_path: Path) -> None:
    from rasterio.transform import from_origin

    _geotiff(tmp_path / "whole.tif", _rgb((120, 160)), "EPSG:32633", from_origin(500_000, 5_000_000, 0.5, 0.5))
    (tmp_path / "cut.tif").write_bytes((tmp_path / "whole.tif").read_bytes()[:30_000])
    rc, out, err = run_cli(["segment", str(tmp_path / "cut.tif"), "--out", str(tmp_path / "o"), *TINY])
    assert rc == 1 and "cut.tif: " in err and "Traceback" not in err, err
    assert len([line for line in err.splitlines() if "cut.tif" in line]) == 1


def test_geotiff_bomb_is_refused_from_its_header_before_pixels_are_read(tmp_path: Path) -> None:
    from rasterio.transform import from_origin

    from samseg.edges.images import ImageError, load_image

    with rasterio.open(tmp_path / "bomb.tif", "w", driver="GTiff", height=20_000, width=20_000, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500_000, 5_000_000, 1, 1), tiled=True, sparse_ok=True) as dst:
        dst.write(np.ones((3, 16, 16), np.uint8), window=((0, 16), (0, 16)))  # 400 MP claimed, a few KB on disk
    assert (tmp_path / "bomb.tif").stat().st_size < 5_000_000
    with pytest.raises(ImageError, match="20000x20000 = 400,000,000 pixels, over the limit"):
        load_image(tmp_path / "bomb.tif")
