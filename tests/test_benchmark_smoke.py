"""`python -m benchmarks.run --mode quick` end to end (tiny-random: numbers are not a
real model's; this checks the harness measures, compares and reports every path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from pathlib import Path
from mlflow_store import sqlite_uri

REPO = Path(__file__).resolve().parents[1]


def test_quick_benchmark_runs_all_paths_and_writes_json(tmp_path):
    import numpy as np
    from PIL import Image

    images = []  # two small images: the photos' size proves nothing about the harness
    for i in range(2):
        images.append(tmp_path / f"s{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(images[-1])
    cmd = [sys.executable, "-m", "benchmarks.run", "--mode", "quick", "--points-per-side", "4", "--out", str(tmp_path),
           "--mlflow", "bench-smoke", "--images", *map(str, images)]
    store = sqlite_uri(tmp_path / 'mlflow.db')
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| A_original |" in proc.stdout and "| B_cold |" in proc.stdout

    [result_file] = tmp_path.glob("bench-quick-*.json")
    res = json.loads(result_file.read_text())
    assert res["model_type"] == "tiny-random" and res["config"]["amg.points_per_side"] == 4
    assert (tmp_path / "tiny-random_random_seed0.pth").is_file()  # the one file A and B both load

    a, b, c = res["A_original"], res["B_cold"], res["C_rerun"]
    for path in (a, b):
        assert path["seconds"]["total"] > 0 and path["peak_rss_mb"] > 0
        assert path["prompts"] == 16  # 4×4 grid, every prompt decoded once
        assert path["amg_post_s"] == pytest.approx(path["seconds"]["amg"] - path["decoder_s"] - path["amg_encoder_s"], abs=0.02)  # JSON keeps 4 significant digits
    # the AMG's own encoder passes: A encodes the full image again, B reuses encode_image's
    assert a["encoder_passes"] == 2 and b["encoder_passes"] == 1 and b["amg_encoder_s"] == 0
    # A encodes twice (set_image + the generator's own pass); B and C never encode twice.
    assert set(b["seconds"]) >= {"encode", "amg", "pool", "cluster", "compose", "total"}
    # the production engine: a rerun with a new eps reads amg + pool and never touches encode
    assert c["cache"] == {"encode": "skipped", "amg": "hit", "pool": "hit"}
    assert c["seconds"]["total"] < b["seconds"]["total"]

    agreement = a["agreement_B_vs_A"]
    assert agreement["n_ref"] == agreement["n_new"] == b["n_masks"] > 0
    assert agreement["n_matched"] == agreement["n_ref"]
    assert agreement["mean_iou_matched"] >= 0.995  # fp32 fast decoder: same masks as SAM

    assert res["ratios"]["A_over_B"] > 0 and res["ratios"]["A_over_C"] > 0
    d = res["D_batch"]
    assert len(d["images"]) == 2 and d["images_per_minute"] > 0
    assert res["machine"]["cores"] >= 1 and "load_average_end" in res["machine"]

    # --mlflow: one FINISHED run holding the numbers, the config and the JSON itself
    from mlflow import MlflowClient

    run_id = proc.stdout.split("mlflow run: ")[1].split()[0]
    run = MlflowClient(tracking_uri=store).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["samseg.kind"] == "benchmark"
    assert run.data.params["amg.points_per_side"] == "4" and run.data.params["mode"] == "quick"
    assert run.data.metrics["ratios.A_over_B"] == res["ratios"]["A_over_B"]
    assert run.data.metrics["B_cold.seconds.total"] == res["B_cold"]["seconds"]["total"]
    assert run.data.metrics["B_cold.seconds.compose"] == res["B_cold"]["seconds"]["compose"]
    assert [a.path for a in MlflowClient(tracking_uri=store).list_artifacts(run_id)] == [result_file.name]


def test_bf16_benchmark_reports_every_ratio_or_says_why_not(tmp_path, monkeypatch):
    """`python -m benchmarks.bf16` on tiny-random (a smoke run: its numbers mean nothing):
    every timing, both cold AMG runs, the ratios and the agreement — or, on a CPU without
    native bf16, the flags it looked for and no timings."""
    import numpy as np
    from PIL import Image

    from benchmarks import bf16

    monkeypatch.setattr(bf16, "REPO", tmp_path)
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    img = tmp_path / "scene.png"
    Image.fromarray((np.indices((96, 128)).sum(0) % 256).astype(np.uint8)[..., None].repeat(3, 2)).save(img)
    res = bf16.run(str(img), 4, "tiny-random", production_points=4)  # the harness, not the production grid's cost
    if not res["native_bf16_flags"]:
        assert "no native bf16" in res["skipped"] and "bf16" not in res
        return
    assert set(res["speedup"]) == {"encoder", "decoder_per_prompt", "decoder_no_masks_per_prompt", "decoder_gemm",
                                   "decoder_other", "cold_amg", "cold_amg_default_filters"}
    assert all(v > 0 for v in res["speedup"].values())
    for p in ("fp32", "bf16"):
        assert res[p]["encoder_over_floor"] > 0 and res[p]["decoder_ms_per_prompt"] > 0
        pairs = res[p]["encoder_pairs"]
        assert len(pairs) == 3 and res[p]["encoder_s"] == min(x["encoder_s"] for x in pairs)
        assert res[p]["matmul_gflops"] == max(x["matmul_gflops"] for x in pairs) and res[p]["encoder_over_floor_paired"] > 0
        assert 0 < res[p]["decoder_no_masks_ms_per_prompt"]
        split = res[p]["decoder_no_masks_split"]
        assert split["gemm_ms_per_prompt"] > 0 and split["other_ms_per_prompt"] > 0
        assert split["total_ms_per_prompt"] == pytest.approx(split["gemm_ms_per_prompt"] + split["other_ms_per_prompt"])
        assert res[p]["default_filters"]["points_per_side"] == 4 and res[p]["default_filters"]["total_s"] > 0
    assert res["agreement"]["n_fp32"] == res["fp32"]["n_masks"] > 0


def test_gpu_check_runs_end_to_end_on_cpu_with_tiny_random(tmp_path, monkeypatch):
    """The device check is prepared here and run only where a GPU is lent: its whole path
    (load per precision, production timings, keep-all agreement, the JSON) runs on CPU
    with tiny-random, so a GPU run does not spend device time on a bug."""
    import numpy as np
    from PIL import Image

    from benchmarks import gpu_check

    monkeypatch.setattr(gpu_check, "REPO", tmp_path)
    monkeypatch.setattr(gpu_check, "SHARED_IMAGES", tmp_path)
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    Image.fromarray((np.indices((96, 128)).sum(0) % 256).astype(np.uint8)[..., None].repeat(3, 2)).save(tmp_path / "a.png")
    assert gpu_check.main(["--device", "cpu", "--models", "tiny-random", "--images", "a.png", "a.png",
                           "--points-per-side", "4", "--keep-all-points", "4"]) == 0  # the harness, small grids
    report = json.loads((tmp_path / "benchmarks" / "results" / "gpu_check.json").read_text())
    res = report["tiny-random"]
    assert report["device"] == "cpu" and report["images"] == ["a.png", "a.png"]
    for p in ("fp32", "bf16"):
        assert res[p]["images_per_s"] > 0 and res[p]["encode_ms"] > 0 and len(res[p]["masks"]) == 2
        assert "peak_gpu_mb" not in res[p]  # CUDA only
    assert res["agreement"]["n_fp32"] > 0 and set(res["speedup"]) == {"encode_ms", "amg_ms"}


def test_gpu_check_without_cuda_says_so(capsys, monkeypatch):
    import torch

    from benchmarks import gpu_check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().out


def test_preview_burst_benchmark_runs_small_and_reports_every_number(tmp_path):
    """benchmarks/preview_burst.py at a small size (a smoke run; its numbers are for the README only
    at the default size)."""
    out = tmp_path / "burst.json"
    cmd = [sys.executable, "-m", "benchmarks.preview_burst", "--runs", "3", "--parallel", "4", "--masks", "12",
           "--hw", "120x160", "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env={**env, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    for burst in ("burst_one_run", "burst_over_runs"):
        assert res[burst]["requests"] == 4 and 0 < res[burst]["p50_s"] <= res[burst]["p95_s"]
    assert res["sessions_held"] == 3 and res["rss_mib"]["peak"] >= res["rss_mib"]["before"] > 0


def test_listing_benchmark_synthetic_pages_list_through_boto3_as_s3_would(monkeypatch: pytest.MonkeyPatch) -> None:
    """The --synthetic server answers ListObjectsV2 as S3 does (pages of 1000, continuation
    tokens), so the 10^6-key figure is the parent's real listing, every key once and in order."""
    from benchmarks import listing

    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, "restored after the test")  # measure() points them at its server
    rows = listing.measure(2500, synthetic=True)  # three pages, the last one short; a list, then the sharded parent
    assert [(r["mode"], r["keys"]) for r in rows] == [("list", 2500), ("sharded", 2500)]
    assert all(r["peak_mb"] > 0 for r in rows)
