"""The UI under a burst of first previews: N parallel POST /api/runs/<id>/preview of runs the UI
has not opened yet, through the real app (FastAPI's TestClient, its thread pool) over a SQLite
MLflow store, each run a 3-MP image with 192 smooth synthetic masks.

    PYTHONPATH=. .venv/bin/python -m benchmarks.preview_burst [--runs 5] [--parallel 10]

Reports the latency p50/p95 of the burst on one run, then of a burst spread over `--runs` runs
(more than the preview LRU holds), and this process's resident memory before, after and at the
bursts' peak (VmRSS / VmHWM from /proc/self/status, the peak reset after the setup). Writes benchmarks/results/preview_burst.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.run import REPO
from benchmarks.synthetic import clustered_embeddings, smooth_masks, smooth_rgb


def _mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def log_runs(tmp: Path, n: int, hw: tuple[int, int], n_masks: int) -> list[str]:
    """n image runs (outputs written by the production writer, logged by the production tracker)."""
    from PIL import Image

    from samseg.core.cluster import cluster_embeddings
    from samseg.core.compose import compose_labels
    from samseg.core.config import get_preset
    from samseg.edges.image_dir import write_image_dir
    from samseg.edges.images import load_image
    from samseg.edges.mlflow.tracking import log_image_run

    cfg = get_preset("default")
    cfg = cfg.with_features("sam") if hasattr(cfg, "with_features") else cfg  # (also runs on versions before backbones)
    ids = []
    for i in range(n):
        path = tmp / f"scene{i}.png"
        Image.fromarray(smooth_rgb(hw, seed=i)).save(path)
        image = load_image(path)
        masks, emb = smooth_masks(hw, n_masks, seed=i), clustered_embeddings(n_masks, seed=i)
        clusters = cluster_embeddings(emb, cfg.cluster)
        summary = {"samseg_version": "bench", "config": cfg.flat(), "embedding_dim": int(emb.shape[1]),
                   "image": {"file_name": image.name, "uri": image.uri, "sha256": image.sha256, "hw": list(image.hw)},
                   "model": {"type": "vit_b", "checkpoint_sha256": "c" * 64, "checkpoint_path": None, "device": "cpu"},
                   "n_masks": len(masks), "n_clusters": clusters.n_clusters, "n_noise": clusters.n_noise}
        out = tmp / "out" / f"scene{i}"
        write_image_dir(out, image, masks, emb, clusters, compose_labels(masks, clusters), summary)
        ids.append(log_image_run(out, summary, experiment="preview-burst"))
    return ids


def burst(client, run_ids: list[str], parallel: int) -> list[float]:
    def one(run_id: str) -> float:
        t0 = time.perf_counter()
        r = client.post(f"/api/runs/{run_id}/preview", json={"eps": 0.1, "min_samples": 3})
        assert r.status_code == 200, (r.status_code, r.text[:200])
        return time.perf_counter() - t0

    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(one, [run_ids[i % len(run_ids)] for i in range(parallel)]))


def stats(seconds: list[float]) -> dict:
    t = np.array(seconds)
    return {"requests": len(t), "p50_s": float(np.percentile(t, 50)), "p95_s": float(np.percentile(t, 95))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--parallel", type=int, default=10)
    p.add_argument("--masks", type=int, default=192)
    p.add_argument("--hw", default="1500x2000", help="H x W of each run's image (default 3 MP)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "preview_burst.json")
    a = p.parse_args(argv)
    hw = tuple(int(v) for v in a.hw.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="samseg-burst-") as tmp_s:
        tmp = Path(tmp_s)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        ids = log_runs(tmp, a.runs, hw, a.masks)
        from fastapi.testclient import TestClient

        from samseg.apps.ui import UiSettings, create_app

        app = create_app(UiSettings(experiment="preview-burst", cache_dir=tmp / "ui-cache"))
        with TestClient(app) as client:
            client.get("/api/runs")  # the app and its store warm; no run opened yet
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here: the bursts' peak, not the setup's
            before = _mib("VmRSS")
            one_run = stats(burst(client, ids[:1], a.parallel))
            after_one = _mib("VmRSS")
            spread = stats(burst(client, ids[1:], a.parallel))
            report = {"image_hw": list(hw), "masks": a.masks, "runs": a.runs, "parallel": a.parallel,
                      "burst_one_run": one_run, "burst_over_runs": spread,
                      "rss_mib": {"before": before, "after_one_run": after_one, "after_all": _mib("VmRSS"),
                                  "peak": _mib("VmHWM")},
                      "sessions_held": len(app.state.previews._sessions)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
