"""Orchestration overhead of a batch fanned out to workers: per image (shard size 1, one
deployment run per image) against shards (one run per `--shard-size` images), side by side.

    python -m benchmarks.shards [--per-image 16] [--images 256] [--shard-size 256] [--workers 1]

A real Prefect server on loopback, the deployments of deployments/prefect.yaml on a process
pool, `--workers` `prefect worker start --limit 1` processes, then the CLI a user runs:
`samseg segment DIR --fan-out deployment --shard-size S --model tiny-random --preset smoke
--no-track`, each configuration with a fresh stage cache. Overhead per image = (the command's
wall time − the sum of its images' compute, summary.json `seconds.total` less `seconds.load`) / images:
process starts, imports, model loads, Prefect calls and the command's own start. One worker, so the
images' compute is not overlapped and the difference is all orchestration.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from samseg.engine.runner import LOAD

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "tests" / "data" / "photos"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(cmd: list[str], env: dict[str, str], log: Path, cwd: Path = REPO) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


def _prefect(args: list[str], env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO, env=env, check=True, capture_output=True)


def _images(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    photos = sorted(PHOTOS.glob("*.jpg"))
    for i in range(n):
        shutil.copyfile(photos[i % len(photos)], folder / f"p{i:05d}.jpg")
    return folder


def _batch(env: dict[str, str], src: Path, out: Path, cache: Path, shard_size: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "samseg.apps.cli", "segment", str(src), "--out", str(out), "--model", "tiny-random",
           "--preset", "smoke", "--device", "cpu", "--cache", str(cache), "--no-track", "--quiet",
           "--fan-out", "deployment", "--shard-size", str(shard_size)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"batch failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    report = json.loads((out / "batch_summary.json").read_text())
    seconds = [json.loads((Path(r["out_dir"]) / "summary.json").read_text())["seconds"] for r in report["images"]]
    compute = sum(s["total"] - s.get(LOAD, 0.0) for s in seconds)  # a process's model load is orchestration's
    n = len(report["images"])
    return {"images": n, "shard_size": shard_size, "wall_s": round(wall, 2), "compute_s": round(compute, 2),
            "overhead_ms_per_image": round(1000 * (wall - compute) / n, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-image", type=int, default=16, help="images of the per-image run (shard size 1)")
    p.add_argument("--images", type=int, default=256, help="images of the sharded run")
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs of the server and workers, outputs)")
    args = p.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="samseg-shards-"))
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    base = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(REPO)}
    server_env = {**base, "PREFECT_HOME": str(tmp / "server"), "PREFECT_SERVER_UI_ENABLED": "false",
                  "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp / 'prefect.db'}"}
    server_env.pop("PREFECT_API_URL", None)
    env = {**base, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp / "client"), "SAMSEG_PROJECT_DIR": str(REPO),
           "PREFECT_WORKER_QUERY_SECONDS": "2", "SAMSEG_HOME": str(tmp / "home")}
    procs = [_spawn([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
                     "--no-scheduler", "--no-ui", "--analytics-off"], server_env, tmp / "server.log")]
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                urllib.request.urlopen(f"{api}/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"Prefect server did not start: {tmp / 'server.log'}")
                time.sleep(1)
        _prefect(["work-pool", "create", "samseg-local", "--type", "process", "--overwrite"], env)
        _prefect(["--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"], env)
        for i in range(args.workers):
            procs.append(_spawn([sys.executable, "-m", "prefect", "worker", "start", "--pool", "samseg-local",
                                 "--name", f"w{i}", "--limit", "1"], env, tmp / f"worker{i}.log", cwd=tmp))
        rows = [_batch(env, _images(tmp / "in-per-image", args.per_image), tmp / "out-per-image", tmp / "cache-1", 1),
                _batch(env, _images(tmp / "in-sharded", args.images), tmp / "out-sharded", tmp / "cache-2",
                       args.shard_size)]
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for row in rows:
        print(f"shard size {row['shard_size']:>4}: {row['images']:>4} images, wall {row['wall_s']:7.1f} s, "
              f"compute {row['compute_s']:6.1f} s, overhead {row['overhead_ms_per_image']:8.1f} ms/image")
    ratio = rows[0]["overhead_ms_per_image"] / max(rows[1]["overhead_ms_per_image"], 1e-9)
    print(f"per-image overhead, shard size 1 / shard size {args.shard_size}: {ratio:.0f}x")
    if args.json:
        args.json.write_text(json.dumps({"workers": args.workers, "runs": rows}, indent=2))
    if args.keep:
        print(f"kept: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
