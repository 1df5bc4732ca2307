"""What samseg's side of a Label Studio push costs next to the server's: 100 images of 1 MP with
20 classes each pushed into a real `label-studio` on 127.0.0.1 (the tests' server, .venv-ls).

    python -m benchmarks.labelstudio_push [--images 100] [--side 1000] [--classes 20]

samseg's side = the push's wall time minus the time spent waiting for the server's responses
(every HTTP request is timed by the SDK's own transport, an httpx client with event hooks); it
includes the brush-RLE encoding (label_studio_sdk.converter.brush), reported on its own too.
Target (benchmarks/README.md): samseg's side under 10 % of the server's. The server shares this
machine's cores, so its time is what it costs here, on loopback. Writes
benchmarks/results/labelstudio_push.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.run import REPO


def synthetic_results(n: int, side: int, k: int, workdir: Path) -> list[Any]:
    """n ImageResults: a side×side JPEG each, k vertical-band classes (one mask per class)."""
    from PIL import Image

    from samseg.core.types import MaskSet
    from samseg.edges.annotations import ImageResult

    rng = np.random.default_rng(0)
    band = np.minimum(np.arange(side) * k // side, k - 1)
    label_map = np.broadcast_to(band[None, :] + 1, (side, side)).astype(np.uint16)
    masks = MaskSet.from_binary(np.stack([label_map == c + 1 for c in range(k)]))
    results = []
    for i in range(n):
        path = workdir / f"img{i:03d}.jpg"
        Image.fromarray(rng.integers(0, 255, (side // 8, side // 8, 3), dtype=np.uint8)).resize((side, side)).save(path)
        summary = {"image": {"uri": str(path), "file_name": path.name, "sha256": f"{i:064x}", "hw": [side, side]},
                   "config": {"cluster.algorithm": "dbscan", "cluster.eps": 0.06, "cluster.min_samples": 8}}
        results.append(ImageResult(workdir / f"img{i:03d}", masks, np.arange(k), label_map, summary))
    return results


def main(argv: list[str] | None = None) -> int:
    import httpx

    from samseg.edges.annotations import brush_results
    from samseg.edges.labelstudio import push

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--side", type=int, default=1000)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "labelstudio_push.json")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO / "tests"))
    from servers import start_label_studio  # the tests' real server, started the same way

    with tempfile.TemporaryDirectory(prefix="samseg-ls-bench-") as tmp:
        results = synthetic_results(args.images, args.side, args.classes, Path(tmp))
        t0 = time.perf_counter()
        for r in results:
            brush_results(r)
        encode_s = time.perf_counter() - t0
        server = start_label_studio(Path(tmp) / "ls")
        waited = {"s": 0.0, "n": 0}
        started: dict[int, float] = {}

        def on_request(request: httpx.Request) -> None:
            started[id(request)] = time.perf_counter()

        def on_response(response: httpx.Response) -> None:
            response.read()  # the body's arrival is the server's time too
            waited["s"] += time.perf_counter() - started.pop(id(response.request))
            waited["n"] += 1

        try:
            os.environ["LABEL_STUDIO_API_KEY"] = server.token
            client = httpx.Client(timeout=120, event_hooks={"request": [on_request], "response": [on_response]})
            t0 = time.perf_counter()
            res = push(server.url, results, "bench", httpx_client=client)
            wall = time.perf_counter() - t0
        finally:
            server.stop()
    ours = wall - waited["s"]
    report = {"images": args.images, "image_side": args.side, "classes": args.classes, "push_wall_s": wall,
              "server_s": waited["s"], "requests": waited["n"], "samseg_side_s": ours, "brush_encode_s": encode_s,
              "samseg_over_server": ours / waited["s"], "created": res.created}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
