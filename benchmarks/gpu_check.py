"""One short GPU check for a CUDA machine: vit_b and vit_h architectures (seeded random
weights), fp32 and bf16, 32 points/side, a few images. Prints images/s, ms per stage,
peak GPU memory and the bf16/fp32 agreement (benchmarks.bf16.agreement).

    bash benchmarks/gpu_check.sh            # the same, with the install step for a bare machine

Random weights: the masks are meaningless (open filters, no NMS, so every mask is compared);
the numbers are speed and agreement, never segmentation quality.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from typing import Any

from benchmarks.bf16 import agreement, cold_amg
from benchmarks.run import REPO, SHARED_IMAGES, checkpoint_file


def check(model_type: str, precision: str, images: list[Any], cfg: Any) -> dict[str, Any]:
    import torch

    from samseg.sam.model import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(model_type, checkpoint=checkpoint_file(model_type, REPO / "benchmarks" / "results"),
                           device="cuda", precision=precision)
    cold_amg(model, images[0], cfg)  # warm-up: kernels, cuBLAS handles
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    runs, t0 = [], time.perf_counter()
    for image in images:
        runs.append(cold_amg(model, image, cfg))
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return {"images_per_s": len(images) / wall, "encode_ms": 1e3 * sum(r["encode_s"] for r in runs) / len(runs),
            "amg_ms": 1e3 * sum(r["amg_s"] for r in runs) / len(runs),
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20, "runs": runs}


def main() -> int:
    import torch

    from samseg.core.config import get_preset
    from samseg.edges.images import load_image

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine")
        return 2
    images = [load_image(SHARED_IMAGES / n) for n in ("building.jpg", "bears.jpg", "corgi.jpg", "alphabet.jpg")]
    cfg = get_preset("default").replace(amg={"points_per_side": 32, "pred_iou_thresh": 0.0,
                                             "stability_score_thresh": 0.0, "box_nms_thresh": 1.0})
    report: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for model_type in ("vit_b", "vit_h"):
        res = {p: check(model_type, p, images, cfg.replace(model_type=model_type)) for p in ("fp32", "bf16")}
        res["agreement"] = agreement(res["fp32"]["runs"][0], res["bf16"]["runs"][0])
        for p in ("fp32", "bf16"):
            res[p].pop("runs")
        report[model_type] = res
        print(model_type, json.dumps(res, indent=1, default=float), flush=True)
    out = REPO / "benchmarks" / "results" / "gpu_check.json"
    out.write_text(json.dumps(report, indent=2, default=float))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
