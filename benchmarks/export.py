"""Export cost of one image dir: a 1-MP image with 200 smooth synthetic masks (as the memory
probe uses), on a real photo resized to 1 MP and on a noisy synthetic one (hard to compress).

    PYTHONPATH=. .venv/bin/python -m benchmarks.export [--photo ../shared/images/building.jpg]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.synthetic import clustered_embeddings, smooth_masks, smooth_rgb


def _photo_rgb(path: str, hw: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((hw[1], hw[0]), Image.BILINEAR))


def time_export(rgb: np.ndarray, n_masks: int, repeats: int) -> dict:
    from samseg.core.cluster import cluster_embeddings
    from samseg.core.compose import compose_labels
    from samseg.core.config import get_preset
    from samseg.edges.image_dir import write_image_dir
    from samseg.edges.images import LoadedImage

    hw = rgb.shape[:2]
    masks = smooth_masks(hw, n_masks)
    emb = clustered_embeddings(n_masks)
    clusters = cluster_embeddings(emb, get_preset("default").cluster)
    label_map = compose_labels(masks, clusters)
    image = LoadedImage(np.ascontiguousarray(rgb), "b" * 64, "bench.png", "/bench.png")
    times = []
    with tempfile.TemporaryDirectory(prefix="samseg-bench-export-") as tmp:
        for _ in range(repeats):
            t0 = time.perf_counter()
            write_image_dir(Path(tmp) / "img", image, masks, emb, clusters, label_map, {"bench": True})
            times.append(time.perf_counter() - t0)
        size = sum(p.stat().st_size for p in (Path(tmp) / "img").rglob("*") if p.is_file())
    return {"hw": list(hw), "n_masks": n_masks, "n_classes": clusters.n_clusters, "median_s": float(np.median(times)),
            "min_s": float(min(times)), "dir_mb": size / 2**20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--photo", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "images" / "building.jpg"))
    p.add_argument("--masks", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    hw = (1000, 1000)
    res = {"synthetic_noisy": time_export(smooth_rgb(hw), a.masks, a.repeats)}
    if Path(a.photo).is_file():
        res["photo"] = {"source": Path(a.photo).name, **time_export(_photo_rgb(a.photo, hw), a.masks, a.repeats)}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
