"""Whole commands, side by side in one run, as ratios to the original notebook pipeline as a
process: what a user waits for, interpreter start, imports, model load and export included.

    PYTHONPATH=. .venv/bin/python -m benchmarks.commands [--model vit_b] [--side 1024] [--points 16]

Paths (every one a fresh process except the preview):
  A        the original pipeline (benchmarks/original.py) on the same weights and image
  cold     `samseg segment` on an empty stage cache (fp32; plus `--precision auto` when asked)
  rerun    `samseg segment` again with a new eps, warm cache, --no-track
  tracked  the same, logging to MLflow (a local SQLite store; the first tracked command also
           creates the store's tables: tracked_first_s, apart)
  recluster_tracked / recluster
           `samseg recluster <8-character run id> --eps …`, tracked / --no-track
           (rerun, tracked and the reclusters alternate, --repeats times: medians + each_s)
  preview  the UI's live preview of a new eps on the cold run's outputs (in-process, p50)
Configuration as in issue 12: seeded random weights, IoU/stability filters open, no crops.
Random weights make meaningless masks: the timings, not the segmentations, are the point.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ORIGINAL = """
import sys
from pathlib import Path
import numpy as np
from PIL import Image
from benchmarks.original import run_original
from benchmarks.run import original_sam  # built the notebook's way: segment_anything only
from samseg.core.config import AmgConfig, ClusterConfig
model_type, ckpt, img, points = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sam = original_sam(model_type, Path(ckpt))
rgb = np.asarray(Image.open(img).convert("RGB"))
amg = AmgConfig(points_per_side=points, pred_iou_thresh=0.0, stability_score_thresh=0.0, crop_n_layers=0)
res = run_original(sam, rgb, amg, ClusterConfig())
print(len(res["masks"]), "masks")
"""


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} … failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    return seconds, proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""


def _image(path: Path, side: int) -> Path:
    import numpy as np
    from PIL import Image

    src = REPO.parent / "shared" / "images" / "building.jpg"
    if src.is_file():
        Image.open(src).convert("RGB").resize((side, side), Image.BILINEAR).save(path)
    else:
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)).save(path)
    return path


def _preview_p50(out_dir: Path, repeats: int = 15) -> float:
    import numpy as np

    from samseg.core.config import PipelineConfig
    from samseg.edges.image_dir import read_image_dir, read_summary
    from samseg.edges.images import load_image
    from samseg.engine.preview import PreviewSession
    from samseg.sam.source import ModelIdentity

    masks, emb, _ = read_image_dir(out_dir)
    summary = read_summary(out_dir)
    cfg = PipelineConfig.from_flat(summary["config"])
    session = PreviewSession(load_image(summary["image"]["uri"]), masks, emb, cfg, ModelIdentity.from_summary(summary))
    session.png(cfg.cluster)  # the canvas is built once per run, when the page first previews
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        session.png(cfg.cluster.__class__(**{**cfg.cluster.__dict__, "eps": 0.02 + 0.01 * i}))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _reruns(seg: list[str], t: Path, env: dict[str, str], repeats: int) -> dict[str, Any]:
    """A new eps four ways, alternated `repeats` times so that load on the machine falls on all
    alike: `samseg segment` again untracked (rerun) and tracked, and `samseg recluster` of the
    first tracked run (by its 8-character prefix, as the UI shows it) tracked and untracked.
    Each path's median, and every time."""
    import statistics

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    [first] = client.search_runs([client.get_experiment_by_name("samseg").experiment_id], max_results=1)
    prefix = first.info.run_id[:8]
    cache = ["--cache", str(t / "c")]
    times: dict[str, list[float]] = {"rerun": [], "tracked": [], "recluster_tracked": [], "recluster": []}
    for i in range(repeats):
        eps = f"{0.2 + 0.01 * i:.2f}"
        times["rerun"].append(_timed([*seg, "--out", str(t / "o"), *cache, "--no-track", "--eps", eps], env)[0])
        times["tracked"].append(_timed([*seg, "--out", str(t / "o2"), *cache, "--eps", eps], env)[0])
        recluster = [sys.executable, "-m", "samseg.apps.cli", "recluster", prefix, "--eps", eps, *cache]
        times["recluster_tracked"].append(_timed([*recluster, "--out", str(t / "r")], env)[0])
        times["recluster"].append(_timed([*recluster, "--out", str(t / "r2"), "--no-track"], env)[0])
    return {**{f"{k}_s": statistics.median(v) for k, v in times.items()}, "each_s": times}


def run(model: str, ckpt: Path, side: int, points: int, precision_auto: bool, repeats: int = 3) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="samseg-bench-cmd-") as tmp:
        t = Path(tmp)
        img = _image(t / "bench.png", side)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
        env.update(PYTHONPATH=str(REPO), SAMSEG_HOME=str(t / "home"), MLFLOW_TRACKING_URI=f"sqlite:///{t / 'mlflow.db'}")
        seg = [sys.executable, "-m", "samseg.apps.cli", "segment", str(img), "--model", model, "--checkpoint", str(ckpt),
               "--points-per-side", str(points), "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
               "--crop-n-layers", "0", "--device", "cpu", "-q", "--features", "sam", "--names", "none"]  # like for like with A
        res: dict[str, Any] = {"model": model, "image_side": side, "points_per_side": points}
        res["A_original_s"], res["A_out"] = _timed([sys.executable, "-c", ORIGINAL, model, str(ckpt), str(img), str(points)], env)
        res["cold_s"], res["cold_out"] = _timed([*seg, "--out", str(t / "o"), "--cache", str(t / "c"), "--no-track"], env)
        _, res["rerun_out"] = _timed([*seg, "--out", str(t / "o"), "--cache", str(t / "c"), "--no-track", "--eps", "0.1"], env)
        # the first tracked command also creates the SQLite store's tables; the next ones are the steady state
        res["tracked_first_s"], _ = _timed([*seg, "--out", str(t / "o2"), "--cache", str(t / "c"), "--eps", "0.12"], env)
        res.update(_reruns(seg, t, env, repeats))
        if precision_auto:
            res["cold_auto_s"], res["cold_auto_out"] = _timed([*seg, "--out", str(t / "o3"), "--cache", str(t / "c3"),
                                                               "--no-track", "--precision", "auto"], env)
        res["preview_p50_s"] = _preview_p50(t / "o" / "bench")
    a = res["A_original_s"]
    paths = ("cold", "rerun", "tracked", "recluster_tracked", "recluster", "preview_p50", "cold_auto")
    res["ratios"] = {k: a / res[f"{k}_s"] for k in paths if f"{k}_s" in res}
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_b")
    p.add_argument("--side", type=int, default=1024)
    p.add_argument("--points", type=int, default=16)
    p.add_argument("--precision-auto", action="store_true", help="also time cold with --precision auto (bf16 on AMX CPUs)")
    p.add_argument("--repeats", type=int, default=3, help="rounds of the four warm reruns (default 3)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    a = p.parse_args()
    from benchmarks.run import checkpoint_file

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res = run(a.model, checkpoint_file(a.model, out), a.side, a.points, a.precision_auto, a.repeats)
    path = out / f"commands-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
