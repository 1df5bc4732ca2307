"""samseg.core.sweep + `--eps auto` + `samseg sweep`: the knee on data whose right eps is known."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samseg.core.cluster import cluster_embeddings
from samseg.core.config import ClusterConfig
from samseg.core.sweep import eps_grid, eps_sweep, k_distances, suggest_eps
from mlflow_store import sqlite_uri


def _groups(seed: int, spread: float, n_groups: int = 5, per_group: int = 30, n_outliers: int = 12):
    """Tight groups (cosine distance within ~spread²) far apart, plus scattered outliers."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_groups, 48))
    x = [c + spread * rng.normal(size=(per_group, 48)) for c in centres] + [rng.normal(size=(n_outliers, 48))]
    truth = np.concatenate([np.full(per_group, g) for g in range(n_groups)] + [np.full(n_outliers, -1)])
    return np.concatenate(x).astype(np.float32), truth


@pytest.mark.parametrize("seed, spread", [(0, 0.02), (1, 0.05), (2, 0.1)])
def test_knee_eps_recovers_the_known_groups(seed: int, spread: float) -> None:
    x, truth = _groups(seed, spread)
    cfg = ClusterConfig(min_samples=5)
    s = suggest_eps(x, cfg)
    assert s.eps is not None and s.k == 5
    kd = k_distances(x, 5)
    grouped = kd[: len(truth[truth >= 0])]
    assert grouped.max() <= s.eps * 1.5 and s.eps < 0.2  # at the end of the flat part, far below the outliers'
    labels = cluster_embeddings(x, dataclasses.replace(cfg, eps=s.eps)).labels
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(truth[truth >= 0], labels[truth >= 0]) == 1.0  # every group one class
    assert (labels[truth < 0] == -1).all()  # outliers stay noise


def test_too_few_masks_or_a_straight_curve_give_no_suggestion() -> None:
    cfg = ClusterConfig(min_samples=8)
    few = suggest_eps(np.eye(5, 16, dtype=np.float32) + 0.1, cfg)
    assert few.eps is None and "fewer than min_samples" in few.reason
    assert len(k_distances(np.ones((3, 4)), 8)) == 0


def test_sweep_rows_and_grid_parsing() -> None:
    x, _ = _groups(0, 0.02)
    rows = eps_sweep(x, ClusterConfig(min_samples=5), eps_grid("0.01:0.05:0.02"))
    assert [r["eps"] for r in rows] == [0.01, 0.03, 0.05]
    assert all(0 <= r["noise_fraction"] <= 1 and r["n_clusters"] >= 0 for r in rows)
    assert len(eps_grid(None)) == 60
    for bad in ("0.1", "a:b:c", "0.3:0.1:0.01", "0:0.1:0.01", "0.1:0.2:0", "1e-9:1:1e-9"):
        with pytest.raises(ValueError, match="eps range"):
            eps_grid(bad)


def test_cluster_stage_with_eps_auto_records_the_choice_or_the_fallback() -> None:
    from samseg.engine.stages import StageInputs, stage

    x, _ = _groups(0, 0.02)
    cfg = get_cfg(eps_auto=True)
    ctx = StageInputs(image=None, cfg=cfg, model=lambda: None)  # the cluster stage needs neither
    res = stage("cluster").compute(ctx, x)
    assert res.choice["rule"] == "knee" and res.choice["eps"] == suggest_eps(x, cfg.cluster).eps
    assert res.n_clusters == 5
    few = stage("cluster").compute(ctx, x[:3])
    assert few.choice["rule"] == "fallback" and few.choice["eps"] == cfg.cluster.eps and "--eps auto" in few.choice["warning"]


def get_cfg(**cluster):
    from samseg.core.config import get_preset

    return get_preset("smoke").replace(cluster={"min_samples": 5, **cluster})


# ---------------------------------------------------------------- through the CLI and MLflow


def test_segment_eps_auto_then_sweep_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cli_run import run_cli
    from mlflow import MlflowClient

    uri = sqlite_uri(tmp_path / 'mlflow.db')
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # the local orchestrator
    MlflowClient(uri).create_experiment("sweep", artifact_location=(tmp_path / "art").as_uri())
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    common = ["--model", "tiny-random", "--preset", "smoke", "--points-per-side", "4", "--device", "cpu", "-q",
              "--experiment", "sweep", "--cache", str(tmp_path / "c")]
    rc, stdout, stderr = run_cli(["segment", str(tmp_path / "p.png"), "--out", str(tmp_path / "o"), "--eps", "auto", *common])
    assert rc == 0, stderr
    summary = json.loads((tmp_path / "o" / "p" / "summary.json").read_text())
    choice = summary["eps_auto"]
    assert summary["config"]["cluster.eps_auto"] is True and choice["requested"] == "auto"
    assert choice["rule"] in ("knee", "fallback") and choice["eps"] > 0
    run_id = stdout.split("MLflow run: ")[1].split()[0]
    params = MlflowClient(uri).get_run(run_id).data.params
    assert params["cluster.eps_auto"] == "True" and float(params["cluster.eps_chosen"]) == choice["eps"]

    rc, stdout, stderr = run_cli(["sweep", run_id, "--eps-range", "0.05:0.5:0.05", "--csv", str(tmp_path / "new" / "s.csv")])
    assert rc == 0, stderr  # --csv's folder is made, as eval's is
    assert "classes" in stdout and ("knee of the k-distance curve" in stdout or "no suggested eps" in stdout)
    import pandas as pd

    assert len(pd.read_csv(tmp_path / "new" / "s.csv")) == 10
    assert run_cli(["sweep", run_id, "--eps-range", "x"])[0] == 2
    rc, _, stderr = run_cli(["sweep", run_id, "--eps-range", "0.5:2.5:0.5"])  # past what cosine takes: a usage error
    assert rc == 2 and "goes past 2" in stderr and "unexpected" not in stderr
    rc, _, stderr = run_cli(["sweep", "0" * 32])  # no such run in this store: a usage error, one line
    assert rc == 2 and stderr.startswith("error: ") and len(stderr.strip().splitlines()) == 1


def test_a_degenerate_knee_is_no_suggestion_and_says_why() -> None:
    """Embeddings that are copies of each other bend the curve at float rounding (1e-16): the
    UI once suggested eps = 1.11e-16. Below MIN_SUGGESTED_EPS there is no suggestion, with the reason."""
    import numpy as np

    from samseg.core.config import ClusterConfig
    from samseg.core.sweep import suggest_eps

    rng = np.random.default_rng(0)
    base = rng.normal(size=(1, 16))
    copies = np.repeat(base, 30, axis=0) + rng.normal(scale=1e-8, size=(30, 16))  # float32 rounding apart
    emb = np.concatenate([copies, rng.normal(size=(3, 16))]).astype(np.float32)
    s = suggest_eps(emb, ClusterConfig(min_samples=3))
    assert s.eps is None and "(nearly) zero distance" in s.reason, s


def test_a_run_without_masks_sweeps_to_no_suggestion_not_a_numpy_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose AMG kept no mask (a strict --pred-iou-thresh) has 0×C embeddings: the sweep
    says there is nothing to suggest, it does not fail reshaping an empty array."""
    import samseg.edges.mlflow.tracking as tracking
    from samseg.core.config import PipelineConfig
    from samseg.engine.sweep import format_sweep, sweep_run

    summary = {"config": PipelineConfig().flat()}
    monkeypatch.setattr(tracking, "run_embeddings", lambda run_id, tmp: ([np.zeros((0, 768), np.float32)], [summary]))
    report = sweep_run("0" * 32)
    assert report["n_masks"] == 0 and report["rows"] == [] and report["suggested_eps"] is None
    assert "no suggested eps: 0 masks" in format_sweep(report)


def test_an_eps_auto_fallback_is_a_warning_line_under_the_image_line(capsys: pytest.CaptureFixture) -> None:
    """--eps auto that found no knee used the configured eps: the console says so, not only summary.json."""
    from samseg.apps.cli.segment import warn_of
    from samseg.engine.segment import image_entry

    summary = {"out_dir": "out/a", "n_masks": 3, "n_clusters": 1, "n_noise": 0,
               "eps_auto": {"rule": "fallback", "eps": 0.06, "warning": "--eps auto: no knee; used eps=0.06"}}
    entry = image_entry("photos/a.jpg", "a", summary)
    assert entry["warning"] == "--eps auto: no knee; used eps=0.06" and entry["eps"] == 0.06
    warn_of(entry)
    assert capsys.readouterr().err == "warning: a.jpg: --eps auto: no knee; used eps=0.06\n"
    warn_of(image_entry("photos/b.jpg", "b", {**summary, "eps_auto": {"rule": "knee", "eps": 0.1}}))
    assert capsys.readouterr().err == ""


def test_a_per_image_batch_is_swept_as_its_recluster_clusters_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of per-image classes is reclustered image by image, so its sweep must count classes
    the same way: two images with the same two groups are 2 + 2 classes, not 2 pooled ones. A
    dataset batch's masks share their classes, so they are swept together."""
    import samseg.edges.mlflow.tracking as tracking
    from samseg.core.config import PipelineConfig
    from samseg.engine.sweep import format_sweep, sweep_run

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(2, 32))
    one_image = np.concatenate([c + rng.normal(scale=1e-3, size=(12, 32)) for c in centres]).astype(np.float32)
    cfg = PipelineConfig().flat() | {"cluster.min_samples": 3}
    embs = [one_image, one_image[::-1].copy()]
    for mode, classes in ((None, 4), ("dataset", 2)):
        summaries = [{"config": cfg, **({"classes": mode} if mode else {})} for _ in embs]
        monkeypatch.setattr(tracking, "run_embeddings", lambda run_id, tmp, s=summaries: (embs, s))
        report = sweep_run("0" * 32, "0.05:0.1:0.05")
        assert [r["n_clusters"] for r in report["rows"]] == [classes, classes], (mode, report["rows"])
        assert report["n_masks"] == 48 and report["rows"][0]["n_noise"] == 0
        text = format_sweep(report)
        assert ("each clustered alone" in text) == (mode is None), text
    monkeypatch.setattr(tracking, "run_embeddings",
                        lambda run_id, tmp: ([one_image, np.zeros((0, 32), np.float32)], [{"config": cfg}] * 2))
    report = sweep_run("0" * 32, "0.05:0.1:0.05")  # an image without masks adds nothing, and breaks nothing
    assert [r["n_clusters"] for r in report["rows"]] == [2, 2] and report["n_masks"] == 24
    text = format_sweep({**report, "knees": [0.1, 0.3], "suggested_eps": 0.2, "n_images": 3})
    assert text.endswith("median eps = 0.2, 0.1–0.3, 2 of 3 images (--eps auto uses each image's own)"), text


def test_a_run_whose_summary_has_no_config_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A summary.json written by something else: the sweep names the run, no KeyError escapes."""
    import samseg.edges.mlflow.tracking as tracking
    from samseg.engine.sweep import SweepError, sweep_run

    monkeypatch.setattr(tracking, "run_embeddings", lambda run_id, tmp: ([np.zeros((3, 8), np.float32)], [{}]))
    with pytest.raises(SweepError, match=f"run {'0' * 32}: its summary.json holds no samseg config"):
        sweep_run("0" * 32)


FLOW_PRINTS = """
from prefect import flow

from samseg.apps.cli.segment import print_entry
from samseg.engine.segment import image_entry

summary = {"out_dir": "out/a", "n_masks": 3, "n_clusters": 1, "n_noise": 0,
           "eps_auto": {"rule": "fallback", "eps": 0.06, "warning": "--eps auto: no knee; used eps=0.06"}}


@flow(log_prints=True)
def batch() -> None:
    print_entry(image_entry("photos/a.jpg", "a", summary))


batch()
"""


def test_an_image_line_and_its_warning_printed_inside_a_flow_run_reach_the_console(prefect_api) -> None:
    """A batch prints each image's lines as it finishes, while its flow runs (--orchestrator prefect):
    Prefect's log_prints would route a plain print() into the run's log, which the CLI silences.
    In a process of its own: Prefect's log handlers keep the streams they were first set up with."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", FLOW_PRINTS], env=prefect_api.env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "a.jpg: 3 masks, 1 class, 0 noise -> out/a" in done.stdout.splitlines()
    assert "warning: a.jpg: --eps auto: no knee; used eps=0.06" in done.stderr.splitlines()  # its own line, not a log record


def test_a_sweep_with_no_range_covers_its_data_the_runs_eps_and_the_knee():
    from samseg.core.sweep import (COVERED_QUANTILE, DEFAULT_GRID, SWEEP_DECADES, SWEEP_HEADROOM, SWEEP_POINTS,
                                   covering_grid, eps_grid)

    kdist = np.linspace(0.02, 0.9, 50)  # distances past the fixed grid's 0.3
    grid = covering_grid(kdist, 0.06, None)
    top = float(np.quantile(kdist, COVERED_QUANTILE)) * SWEEP_HEADROOM
    assert grid[0] <= 0.06 / 2 * 1.01 and grid[-1] == pytest.approx(top, rel=0.01)
    assert len(grid) == SWEEP_POINTS and (np.diff(grid) > 0).all()
    ratios = grid[1:] / grid[:-1]
    assert np.allclose(ratios, ratios.mean(), rtol=0.02)  # even steps on a log scale (3 significant digits)
    assert covering_grid(np.array([0.001, 0.002]), 1.5)[-1] >= 1.5  # an eps shown (the run's) is on the chart
    # the run's eps decades above the data's distances: both on the chart, within SWEEP_DECADES
    apart = covering_grid(np.full(30, 1e-4), 0.06, 2e-4)
    assert apart[0] <= 1e-4 and apart[-1] >= 0.06 and apart[-1] / apart[0] <= 10.0 ** SWEEP_DECADES * 1.01
    tiny = covering_grid(np.array([2e-11, 4e-11]))  # any scale: no value rounded to a copy of another, or to 0
    assert len(set(tiny)) == len(tiny) and tiny[0] > 0
    assert np.array_equal(covering_grid(np.zeros(0)), eps_grid(None)) and eps_grid(None)[-1] == DEFAULT_GRID[1]


def test_attack_one_outlier_does_not_push_the_knee_off_the_sweep():
    from samseg.core.sweep import covering_grid

    kdist = np.array([*np.linspace(0.005, 0.02, 40), 1.0])  # one mask far from every other
    grid = covering_grid(kdist, 0.01, 0.015)
    assert grid[0] < 0.01 and grid[-1] < 0.1


def test_a_cosine_sweep_stops_at_the_largest_cosine_distance():
    """1.25 × a k-distance near 2 would be an eps the cosine config refuses (one error, no chart)."""
    from samseg.core.config import COSINE_MAX, ClusterConfig
    from samseg.engine.sweep import sweep_report

    x = np.array([[1.0, 0.0], [-1.0, 0.0]] * 10, np.float32)  # opposite directions: distance 2
    report = sweep_report(x, ClusterConfig(eps=1.7, min_samples=19))
    assert report["rows"] and report["rows"][-1]["eps"] <= COSINE_MAX


def test_a_sweep_report_with_no_range_reaches_past_most_k_distances():
    from samseg.core.config import ClusterConfig
    from samseg.core.sweep import COVERED_QUANTILE, k_distances
    from samseg.engine.sweep import sweep_report

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8)).astype(np.float32)  # random directions: cosine distances near 1
    cfg = ClusterConfig(eps=0.06, min_samples=3)
    report = sweep_report(x, cfg)
    assert report["rows"][-1]["eps"] >= float(np.quantile(k_distances(x, 3, "cosine"), COVERED_QUANTILE))
    assert report["rows"][-1]["n_noise"] <= 0.05 * len(x)  # past the core radii: at most the outliers are noise
    asked = sweep_report(x, cfg, "0.1:0.3:0.1")  # an asked range is the range
    assert [round(r["eps"], 3) for r in asked["rows"]] == [0.1, 0.2, 0.3]


def test_attack_an_asked_cosine_range_past_2_is_one_line_naming_the_range():
    from samseg.core.config import ClusterConfig
    from samseg.engine.sweep import sweep_report

    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"eps range '0.5:2.5:0.5' goes past 2, the largest cosine distance"):
        sweep_report(x, ClusterConfig(), "0.5:2.5:0.5")
    assert sweep_report(x, ClusterConfig(metric="euclidean"), "0.5:2.5:0.5")["rows"]  # no such bound there


def test_a_per_image_sweep_covers_every_images_knee():
    from samseg.core.config import ClusterConfig
    from samseg.engine.sweep import sweep_per_image

    rng = np.random.default_rng(0)
    tight = np.concatenate([c + 0.01 * rng.normal(size=(20, 16)) for c in rng.normal(size=(2, 16))])
    loose = np.concatenate([c + 0.4 * rng.normal(size=(20, 16)) for c in rng.normal(size=(2, 16))])
    report = sweep_per_image([tight.astype(np.float32), loose.astype(np.float32)], ClusterConfig(eps=0.06, min_samples=3))
    shown = [r["eps"] for r in report["rows"]]
    assert report["knees"] and all(shown[0] <= knee <= shown[-1] for knee in report["knees"]), (report["knees"], shown[::10])
