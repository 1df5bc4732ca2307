"""Marginal cost per image of a batch, local vs Prefect: the same `samseg segment DIR` on a
small and a large batch of 1-MP photo crops, per orchestrator, as whole processes.

  marginal wall          = (wall(large) − wall(small)) / (large − small)
  marginal outside stages = ((wall − stage timers)(large) − (wall − stage timers)(small)) / (large − small)

tiny-random, 8 points/side, box NMS on (a few masks per image), untracked, fresh cache each run.

  PYTHONPATH=. python -m benchmarks.marginal [--small 2 --large 12 --repeats 2]
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

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO.parent / "shared" / "images"


def crops(d: Path, n: int) -> Path:
    """n 1200×834 crops of bears.jpg / corgi.jpg (1 MP each) in d."""
    from PIL import Image

    d.mkdir(parents=True)
    srcs = [Image.open(PHOTOS / name).convert("RGB") for name in ("bears.jpg", "corgi.jpg")]
    for i in range(n):
        srcs[i % 2].crop((i * 40, 0, i * 40 + 1200, 834)).save(d / f"img{i:02d}.jpg", quality=92)
    return d


def one(src: Path, work: Path, orchestrator: str) -> tuple[float, float]:
    """(wall s, sum of the images' stage timers s) of one `samseg segment` process."""
    out = work / f"out-{orchestrator}-{src.name}"
    argv = [sys.executable, "-m", "samseg.apps.cli", "segment", str(src), "--out", str(out), "--cache",
            str(work / f"cache-{time.monotonic_ns()}"), "--model", "tiny-random", "--device", "cpu",
            "--points-per-side", "8", "--orchestrator", orchestrator, "--no-track", "-q"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"samseg failed: {proc.stderr.strip()[-1500:]}")
    inside = sum(json.loads(p.read_text())["seconds"]["total"] for p in out.glob("*/summary.json"))
    return wall, inside


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", type=int, default=2)
    p.add_argument("--large", type=int, default=12)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="samseg-bench-marginal-") as d:
        small, large = crops(Path(d) / f"n{a.small}", a.small), crops(Path(d) / f"n{a.large}", a.large)
        for r in range(a.repeats):
            for orchestrator in ("local", "prefect"):
                (ws, is_), (wl, il) = one(small, Path(d), orchestrator), one(large, Path(d), orchestrator)
                k = a.large - a.small
                rows.append({"orchestrator": orchestrator, "repeat": r, "wall_small_s": round(ws, 2), "wall_large_s": round(wl, 2),
                             "marginal_wall_s": round((wl - ws) / k, 3),
                             "marginal_outside_stages_s": round(((wl - il) - (ws - is_)) / k, 3)})
                print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
