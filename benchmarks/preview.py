"""UI live preview: p50/p95 of one redraw (the engine's cluster stage + the preview canvas +
PNG) for a 2-MP image with 500 smooth synthetic masks, and the one-off canvas build.

    PYTHONPATH=. .venv/bin/python -m benchmarks.preview [--masks 500] [--repeats 40]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from benchmarks.synthetic import clustered_embeddings, smooth_masks, smooth_rgb


def run(hw: tuple[int, int], n_masks: int, repeats: int) -> dict:
    from samseg.core.config import get_preset
    from samseg.edges.images import LoadedImage
    from samseg.engine.preview import PreviewSession
    from samseg.sam.source import ModelIdentity

    masks = smooth_masks(hw, n_masks)
    image = LoadedImage(smooth_rgb(hw), "b" * 64, "synthetic.png", "/synthetic.png")
    cfg = get_preset("default").with_features("sam")
    session = PreviewSession(image, masks, clustered_embeddings(n_masks), cfg, ModelIdentity("vit_b", "c" * 64, None, "cpu"))
    t0 = time.perf_counter()
    session.canvas()
    build_s = time.perf_counter() - t0
    times, counts = [], []
    for i in range(repeats):
        eps = float(np.geomspace(0.01, 0.5, repeats)[i])
        t0 = time.perf_counter()
        png, clusters = session.png(cfg.cluster.__class__(**{**cfg.cluster.__dict__, "eps": eps}))
        times.append(time.perf_counter() - t0)
        counts.append(clusters.n_clusters)
    t = np.array(times)
    return {"image_hw": list(hw), "n_masks": n_masks, "canvas_build_s": build_s, "repeats": repeats,
            "p50_ms": 1e3 * float(np.percentile(t, 50)), "p95_ms": 1e3 * float(np.percentile(t, 95)),
            "max_ms": 1e3 * float(t.max()), "png_kb": len(png) / 1024, "clusters_seen": sorted(set(counts))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--masks", type=int, default=500)
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--hw", default="1155x1732", help="H x W of the synthetic image (default 2 MP)")
    a = p.parse_args()
    h, w = (int(v) for v in a.hw.lower().split("x"))
    print(json.dumps(run((h, w), a.masks, a.repeats), indent=1))


if __name__ == "__main__":
    main()
