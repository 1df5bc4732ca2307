"""`samseg` CLI end to end with the tiny-random SAM (meaningless masks: shapes and plumbing only).

`samseg segment` runs through the Prefect flows: tests that segment request `prefect_api`
(the session's one Prefect server) and patch samseg.sam.model / samseg.sam.amg / samseg.core.pool,
where the flows' tasks look those names up at call time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cli_run import run_cli
from samseg.apps import cli
from samseg.apps.cli.config import config_from_args
from samseg.edges.image_dir import read_label_png, write_label_png
from samseg.core.types import MaskSet
from mlflow_store import sqlite_uri

TINY_POINTS = "4"  # 4×4 prompts: keeps the e2e runs cheap on 2 CPU cores


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


@pytest.fixture(scope="module")
def batch(photos: Path, tmp_path_factory: pytest.TempPathFactory, prefect_api):
    """One real run: building.jpg + bears.jpg (non-square) + a text file named .jpg."""
    tmp = tmp_path_factory.mktemp("batch")
    bad = tmp / "broken.jpg"
    bad.write_text("this is not a JPEG\n")
    out = tmp / "out"
    argv = ["segment", str(photos / "building.jpg"), str(bad), str(photos / "bears.jpg"),
            "--model", "tiny-random", "--preset", "smoke", "--points-per-side", TINY_POINTS, "--device", "cpu",
            "--save-features", "--cache", str(tmp / "cache"), "--out", str(out)]
    rc, stdout, stderr = run_cli(argv)
    return {"rc": rc, "stdout": stdout, "stderr": stderr, "out": out, "images": photos}


@pytest.mark.parametrize("name", ["building", "bears"])
def test_batch_outputs_have_right_shapes(batch, name: str) -> None:
    d = batch["out"] / name
    hw = Image.open(batch["images"] / f"{name}.jpg").size[::-1]  # these files carry no EXIF rotation
    labels = read_label_png(d / "labels.png")
    assert labels.dtype == np.uint16 and labels.shape == hw
    coco = json.loads((d / "masks.json").read_text())
    summary = json.loads((d / "summary.json").read_text())
    n = len(coco["annotations"])
    assert n > 0 and summary["n_masks"] == n
    assert (coco["images"][0]["height"], coco["images"][0]["width"]) == hw
    emb = np.load(d / "embeddings.npy")
    assert emb.shape == (n, 32) and emb.dtype == np.float32  # tiny-random has 32 channels
    assert np.load(d / "features.npy").shape == (32, 64, 64)
    assert len(pd.read_parquet(d / "masks.parquet")) == n
    assert np.asarray(Image.open(d / "overlay.png")).shape == (*hw, 3)
    assert len(list((d / "classes").glob("class_*.png"))) == summary["n_clusters"]
    assert int(labels.max()) <= summary["n_clusters"]
    assert summary["model"]["type"] == "tiny-random" and summary["config"]["amg.points_per_side"] == 4
    # the engine times every stage of its table and the wait for what they load (export is timed
    # outside the summary it writes)
    assert set(summary["seconds"]) == {"encode", "amg", "features", "pool", "cluster", "compose", "load", "total"}
    assert summary["cache"] == {"encode": "computed", "amg": "computed", "pool": "computed"}
    # tiny-random pools SAM's own features (nothing to download): the summary says which and on what grid
    assert summary["features"]["name"] == "sam" and summary["features"]["sha256"] == summary["model"]["checkpoint_sha256"]
    assert summary["features"]["patch_size"] == 16 and len(summary["features"]["grid_hw"]) == 2


def test_batch_bad_file_one_line_others_finished(batch) -> None:
    assert batch["rc"] == 1
    errors = error_lines(batch["stderr"])
    assert len(errors) == 1 and "broken.jpg" in errors[0] and "not a recognised image" in errors[0]
    assert "Traceback" not in batch["stderr"]
    assert sorted(p.name for p in batch["out"].iterdir() if p.is_dir()) == ["bears", "building"]  # no dir for the bad one
    report = json.loads((batch["out"] / "batch_summary.json").read_text())
    assert (report["succeeded"], report["failed"]) == (2, 1)
    assert "building.jpg:" in batch["stdout"] and "bears.jpg:" in batch["stdout"]


@pytest.fixture()
def quick(monkeypatch: pytest.MonkeyPatch, tiny_model, tmp_path: Path, prefect_api) -> Path:
    """Reuse the session's tiny model instead of loading one per CLI call; a fresh stage cache."""
    import samseg.sam.source

    monkeypatch.setattr("samseg.sam.model.load_model", lambda *a, **k: tiny_model)
    monkeypatch.setattr(samseg.sam.source, "_LOADED", {})  # the once-per-process model cache
    monkeypatch.setattr(samseg.sam.source, "_FAILED", {})
    monkeypatch.setenv("SAMSEG_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_a_run_without_masks_names_the_filter_that_left_none(tmp_path: Path) -> None:
    """The real AMG on the seeded tiny SAM, its predicted IoUs far under the default 0.88 (no
    quality claim: only that the count and the best score reported are the generator's own)."""
    photo = Path(__file__).parent / "data" / "photos" / "bears.jpg"
    argv = ["segment", str(photo), "--out", str(tmp_path / "out"), "--model", "tiny-random", "--preset", "default",
            "--features", "sam", "--names", "none", "--points-per-side", "8", "--no-track", "--no-cache", "-q",
            "--orchestrator", "local"]
    rc, stdout, stderr = run_cli(argv)
    assert rc == 0, stderr
    summary = json.loads((tmp_path / "out" / "bears" / "summary.json").read_text())
    funnel = summary["amg_funnel"]
    assert summary["n_masks"] == 0 and funnel["candidates"] == 8 * 8 * 3 and funnel["pred_iou"] == 0
    assert f"none of 192 candidate masks passed --pred-iou-thresh 0.88 (the best predicted IoU was " \
           f"{funnel['best_iou']:.3f})" in stdout
    rc, stdout, stderr = run_cli([*argv[:3], str(tmp_path / "out2"), *argv[4:], "--pred-iou-thresh", "0.1"])
    summary = json.loads((tmp_path / "out2" / "bears" / "summary.json").read_text())
    # the seeded model's stability falls short next: that filter is named
    assert summary["n_masks"] == 0 and summary["amg_funnel"]["pred_iou"] > 0
    assert "--stability-score-thresh 0.95" in stdout


def test_uniform_image_without_masks_gives_empty_result(quick: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Injected: the AMG finds nothing on a flat image (a random SAM cannot be relied on to).
    monkeypatch.setattr("samseg.sam.amg.generate_masks", lambda model, rgb, enc, cfg: MaskSet.empty(rgb.shape[:2]))
    Image.new("RGB", (48, 32), (128, 128, 128)).save(quick / "flat.png")
    rc, stdout, stderr = run_cli(["segment", str(quick / "flat.png"), "--preset", "smoke", "--out", str(quick / "out")])
    assert rc == 0, stderr
    assert "0 masks" in stdout and "no mask passed SAM's filters" in stdout and "--pred-iou-thresh" in stdout
    d = quick / "out" / "flat"
    assert np.array_equal(read_label_png(d / "labels.png"), np.zeros((32, 48), np.uint16))
    assert json.loads((d / "masks.json").read_text())["annotations"] == []
    assert np.load(d / "embeddings.npy").shape == (0, 32)
    summary = json.loads((d / "summary.json").read_text())
    assert (summary["n_masks"], summary["n_clusters"], summary["n_noise"], summary["cluster_sizes"]) == (0, 0, 0, [])
    assert not list((d / "classes").iterdir())


def test_unexpected_error_is_one_line_and_batch_continues(quick: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import samseg.core.pool

    real_pool = samseg.core.pool.pool_embeddings

    def flaky_pool(masks, encoded, cfg):
        if masks.image_hw == (40, 40):
            raise RuntimeError("simulated crash")
        return real_pool(masks, encoded, cfg)

    monkeypatch.setattr("samseg.core.pool.pool_embeddings", flaky_pool)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(quick / "a_crash.png")
    Image.fromarray(rng.integers(0, 255, (24, 36, 3), dtype=np.uint8)).save(quick / "b_fine.png")
    rc, stdout, stderr = run_cli(["segment", str(quick), "--preset", "smoke", "--points-per-side", "2", "--out", str(quick / "out")])
    assert rc == 1
    assert error_lines(stderr) == [f"error: {quick / 'a_crash.png'}: unexpected RuntimeError: simulated crash"]
    assert "Traceback" not in stderr
    assert [p.name for p in (quick / "out").iterdir() if p.is_dir()] == ["b_fine"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--eps", "-1"], "--eps must be > 0"),
        (["--eps", "nan"], "--eps must be a finite number > 0"),
        (["--eps", "inf"], "--eps must be a finite number > 0"),
        (["--points-per-side", "0"], "--points-per-side must be >= 1"),
        (["--metric", "hamming"], "--metric"),
        (["--algorithm", "kmeans"], "invalid choice"),
        (["--eps", "lots"], "--eps: 'lots' is not a number or auto"),
        (["--eps", "5"], "--eps must be <= 2 with the cosine metric"),  # cosine distances are at most 2
        (["--eps", "5", "--metric", "euclidean"], "no images found"),  # no such bound in euclidean: the empty folder is next
        (["--no-such-flag"], "unrecognized argument --no-such-flag"),
    ],
)
def test_bad_flag_is_usage_error(tmp_path: Path, flags: list[str], message: str) -> None:
    rc, _, stderr = run_cli(["segment", str(tmp_path), "--out", str(tmp_path / "o"), *flags])
    assert rc == 2 and message in stderr and "Traceback" not in stderr


def test_empty_out_is_a_usage_error_not_the_current_directory(tmp_path: Path) -> None:
    rc, stdout, stderr = run_cli(["segment", str(tmp_path), "--out", ""])
    assert rc == 2 and "--out is empty" in stderr and stdout == ""


def test_no_images_and_missing_command_are_usage_errors(tmp_path: Path) -> None:
    rc, _, stderr = run_cli(["segment", str(tmp_path), "--preset", "smoke", "--out", str(tmp_path / "o")])
    assert rc == 2 and "no images found" in stderr
    # a mistyped path or a glob that matches nothing is the same "nothing to run" (exit 2, not 1) ...
    for missing, fan_out in ((tmp_path / "nosuch.jpg", "local"), (tmp_path / "nos*.jpg", "local"),
                             (tmp_path / "nosuch.jpg", "auto")):  # auto: the command reads its source lazily
        rc, _, stderr = run_cli(["segment", str(missing), "--preset", "smoke", "--out", str(tmp_path / "o"),
                                 "--fan-out", fan_out])
        assert rc == 2 and stderr.strip().endswith(f"error: not found: {missing}"), stderr
    assert not (tmp_path / "o").exists()
    assert run_cli([])[0] == 2
    assert run_cli(["weights"])[0] == 2


def test_flags_override_preset() -> None:
    args = cli.build_parser().parse_args(
        ["segment", "x.jpg", "--out", "o", "--preset", "smoke", "--model", "vit_b", "--points-per-side", "5",
         "--cell-rule", "min_coverage", "--min-samples", "4"])
    cfg = config_from_args(args)
    assert cfg.model_type == "vit_b" and cfg.amg.points_per_side == 5
    assert cfg.amg.pred_iou_thresh == 0.0  # untouched smoke value
    assert cfg.pool.cell_rule == "min_coverage" and cfg.cluster.min_samples == 4 and cfg.cluster.eps == 0.06


def test_output_names_never_collide() -> None:
    from samseg.edges.outdirs import unique_names as output_names

    assert output_names(["a/x.jpg", "b/x.png", "c/y.jpg", "d/x.jpg"]) == ["x", "x-2", "y", "x-3"]
    assert output_names(["s3://b/in/x.jpg", "s3://b/other/x.jpg"]) == ["x", "x-2"]


def test_same_stem_in_two_folders_writes_two_dirs(quick: Path, monkeypatch: pytest.MonkeyPatch, tiny_model) -> None:
    loads: list[str] = []
    monkeypatch.setattr("samseg.sam.model.load_model", lambda model_type, **k: loads.append(model_type) or tiny_model)
    rng = np.random.default_rng(7)
    for sub, hw in (("a", (20, 30)), ("b", (26, 18))):
        (quick / sub).mkdir()
        Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(quick / sub / "x.png")
    rc, stdout, stderr = run_cli(["segment", str(quick / "a"), str(quick / "b"), "--preset", "smoke",
                                  "--points-per-side", "2", "--no-track", "--out", str(quick / "out")])
    assert rc == 0, stderr
    assert read_label_png(quick / "out" / "x" / "labels.png").shape == (20, 30)
    assert read_label_png(quick / "out" / "x-2" / "labels.png").shape == (26, 18)
    assert loads == ["tiny-random"]  # the model is loaded once per process, not per image


def test_weights_download_offline_is_one_line_saying_what_to_copy_where(monkeypatch: pytest.MonkeyPatch) -> None:
    from samseg.sam.files import samseg_home
    from samseg.sam.weights import CheckpointError

    def offline(w, *a, **k):
        raise CheckpointError(f"could not download the {w.name} checkpoint from https://dl.example.org/{'x' * 200}.pth "
                              "(offline); put it there")

    monkeypatch.setattr("samseg.sam.weights.Weight.download", offline)
    rc, _, stderr = run_cli(["weights", "download", "vit_b"])
    assert rc == 1 and len(error_lines(stderr)) == 1
    line = error_lines(stderr)[0]
    assert line.startswith("error: missing weights: vit_b (could not download the vit_b checkpoint from "
                           "dl.example.org (offline)). Run `samseg weights download vit_b`"), line
    assert line.endswith("on a machine that reaches the hosts, then copy sam_vit_b_01ec64.pth into "
                         f"{samseg_home() / 'checkpoints'}/"), line
    assert len(line) < 300  # the URL is not repeated: `samseg weights list` has it
    assert run_cli(["weights", "download", "vit_x"])[0] == 2
    assert "did you mean dinov2-b" in run_cli(["weights", "download", "dinov2b"])[2]


def test_weights_list_is_one_table_of_every_family() -> None:
    """SAM checkpoints, feature backbones and class namers in one list (samseg.sam.registry)."""
    rc, out, _ = run_cli(["weights", "list"])
    rows = {line.split("\t")[0]: line.split("\t") for line in out.splitlines()}
    assert rc == 0 and {"vit_h", "vit_b", "dinov2-b", "dinov3-b", "clip-b16"} <= set(rows)
    assert "tiny-random" not in rows and "sam" not in rows  # nothing to download
    assert rows["clip-b16"][1] in ("present", "missing") and rows["clip-b16"][2].endswith(".safetensors")
    assert "NAME" not in rows  # piped: rows only, for scripts


def test_weights_list_on_a_terminal_names_its_columns() -> None:
    import contextlib
    import io

    from samseg.apps import cli

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    shown = Terminal()
    with contextlib.redirect_stdout(shown):
        assert cli.main(["weights", "list"]) == 0
    lines = shown.getvalue().splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "FILE", "LICENCE"] and "\t" not in shown.getvalue()
    assert len({line.index(" missing") if " missing" in line else line.index(" present") for line in lines[1:]}) == 1  # aligned


def test_weights_download_preset_fetches_every_file_the_preset_needs(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    got: list[str] = []

    def fetched(w, *a, **k):
        got.append(w.name)
        return tmp_path / w.name

    monkeypatch.setattr("samseg.sam.weights.Weight.download", fetched)
    rc, out, _ = run_cli(["weights", "download", "--preset", "default"])
    assert rc == 0 and got == ["vit_h", "dinov2-b", "clip-b16"]  # SAM, the backbone and the namer
    assert out.split() == [str(tmp_path / n) for n in got]
    assert run_cli(["weights", "download"])[0] == 2  # nothing named


def test_eval_prints_tables_and_writes_csv(tmp_path: Path) -> None:
    gt = np.zeros((10, 12), np.uint8)
    gt[:, 6:] = 1
    gt[:3, :3] = 2
    pred = np.zeros((10, 12), np.uint16)
    pred[gt == 1], pred[gt == 2] = 7, 3  # same partition, different ids
    (tmp_path / "gt").mkdir()
    Image.fromarray(gt).save(tmp_path / "gt" / "pic.png")
    (tmp_path / "pred" / "pic").mkdir(parents=True)
    write_label_png(tmp_path / "pred" / "pic" / "labels.png", pred)
    rc, stdout, stderr = run_cli(["eval", str(tmp_path / "pred"), str(tmp_path / "gt"), "--csv", str(tmp_path / "e.csv")])
    assert rc == 0, stderr
    assert "mIoU 1.0000" in stdout and "ARI 1.0000" in stdout
    assert pd.read_csv(tmp_path / "e.csv")["miou"].tolist() == [1.0]
    assert sorted(pd.read_csv(tmp_path / "e.classes.csv")["pred_cluster"]) == [3, 7]
    rc, _, stderr = run_cli(["eval", str(tmp_path / "pred"), str(tmp_path / "nowhere")])
    assert rc == 1 and len(error_lines(stderr)) == 1


def test_help_does_not_import_heavy_libraries() -> None:
    code = ("import sys, samseg.apps.cli as c; c.build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'segment_anything', 'sklearn', 'mlflow', 'prefect', 'pandas') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"
    res = subprocess.run([sys.executable, "-m", "samseg.apps.cli", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "segment" in res.stdout


def test_a_named_command_builds_only_its_own_parser() -> None:
    """`samseg segment` does not import the other commands' modules or every weights family."""
    code = ("import sys, samseg.apps.cli as c; p = c.build_parser('segment'); "
            "p.parse_args(['segment', 'x.jpg', '--out', 'o']); "
            "print(sorted(m for m in (*c.COMMAND_MODULES, 'samseg.sam.registry') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"
    rc, _, stderr = run_cli(["segmnt", "x.jpg"])  # a mistyped command still sees every command
    assert rc == 2 and "did you mean segment?" in stderr and "'classes'" in stderr


def test_usage_doc_preset_table_matches_config() -> None:
    from samseg.core.config import PRESETS

    readme = (Path(__file__).resolve().parents[1] / "docs" / "usage.md").read_text()
    rows = {}
    for line in readme.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 1 + len(PRESETS) and cells[0] in PRESETS["default"].flat():
            rows[cells[0]] = cells[1:]
    assert set(rows) == set(PRESETS["default"].flat())
    for key, cells in rows.items():
        for name, cell in zip(PRESETS, cells):
            value = PRESETS[name].flat()[key]
            assert cell == (f"{value:.4g}" if isinstance(value, float) else str(value)), (key, name)


def test_a_prompt_grid_over_the_limit_is_refused_with_its_size(tmp_path: Path) -> None:
    from samseg.core.config import MAX_PROMPTS

    rc, stdout, stderr = run_cli(["segment", str(tmp_path), "--out", str(tmp_path / "o"), "--points-per-side", "5000"])
    assert rc == 2 and "25,000,000 prompts" in stderr and f"{MAX_PROMPTS:,}" in stderr and stdout == ""
    rc, _, stderr = run_cli(["segment", str(tmp_path), "--out", str(tmp_path / "o"), "--crop-n-layers", "1000000000"])
    assert rc == 2 and "--crop-n-layers must be <= 4" in stderr  # bounded before any grid is counted
    assert not (tmp_path / "o").exists()


def test_an_experiment_name_mlflow_cannot_store_is_refused_before_any_compute(tmp_path: Path) -> None:
    from samseg.edges.run_schema import EXPERIMENT_NAME_MAX

    for name, message in [("e" * 600, f"at most {EXPERIMENT_NAME_MAX} characters"), ("", "must not be empty"),
                          ("a\nb", "control characters")]:
        rc, _, stderr = run_cli(["segment", str(tmp_path), "--out", str(tmp_path / "o"), "--experiment", name])
        assert rc == 2 and message in stderr, (name, stderr)


def test_a_mistyped_flag_says_did_you_mean_in_the_last_line_under_a_short_usage(tmp_path: Path) -> None:
    from cli_run import run_cli

    rc, _, err = run_cli(["segment", str(tmp_path / "x.png"), "--out", str(tmp_path / "o"), "--epss", "0.1"])
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 2, err
    assert lines[-1].startswith("samseg segment: error:") and "--epss" in lines[-1] and "did you mean --eps?" in lines[-1]
    assert lines[0].startswith("usage: samseg segment [options] IMAGE_OR_DIR")


def test_a_mistyped_command_says_did_you_mean() -> None:
    from cli_run import run_cli

    rc, _, err = run_cli(["segmnet", "x.png"])
    assert rc == 2 and "did you mean segment?" in err.strip().splitlines()[-1], err


def test_tiny_random_without_a_preset_uses_the_smoke_settings_and_finds_masks(tmp_path: Path) -> None:
    """The tour with `--model tiny-random` and no --preset: SAM's default filters drop every
    random mask (0 masks, exit 0); tiny-random's own preset opens them unless one is named."""
    from PIL import Image

    from cli_run import run_cli

    Image.fromarray(np.random.default_rng(3).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    common = [str(tmp_path / "p.png"), "--model", "tiny-random", "--device", "cpu", "--no-track", "--orchestrator", "local",
              "--cache", str(tmp_path / "c")]
    rc, out, err = run_cli(["segment", *common, "--out", str(tmp_path / "o")])
    assert rc == 0, err
    summary = json.loads((tmp_path / "o" / "p" / "summary.json").read_text())
    assert summary["config"]["amg.points_per_side"] == 8 and summary["config"]["amg.pred_iou_thresh"] == 0.0
    assert summary["n_masks"] > 0, out
    rc, _, err = run_cli(["segment", *common, "--out", str(tmp_path / "o2"), "--preset", "default", "--points-per-side", "2"])
    assert rc == 0, err  # a named preset is honoured
    assert json.loads((tmp_path / "o2" / "p" / "summary.json").read_text())["config"]["amg.pred_iou_thresh"] == 0.88


def test_every_image_line_of_a_batch_names_its_mlflow_run(tmp_path: Path, monkeypatch) -> None:
    import re

    from mlflow import MlflowClient
    from PIL import Image

    from cli_run import run_cli

    uri = sqlite_uri(tmp_path / 'mlflow.db')
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(src / f"r{i}.png")
    rc, out, err = run_cli(["segment", str(src), "--out", str(tmp_path / "o"), "--model", "tiny-random", "--device", "cpu",
                            "--points-per-side", "4", "--orchestrator", "local", "--cache", str(tmp_path / "c")])
    assert rc == 0, err
    batch = re.search(r"MLflow batch run: (\w+)", out).group(1)
    ids = [re.search(r"MLflow run (\w+)$", line).group(1) for line in out.splitlines() if line.startswith("r")]
    assert len(ids) == 2
    for rid in ids:  # each id leads to that image's run, nested under the batch
        run = MlflowClient(uri).get_run(rid)
        assert run.data.tags["samseg.kind"] == "image" and run.data.tags["mlflow.parentRunId"] == batch


def test_segment_help_shows_what_each_preset_runs_and_examples() -> None:
    import contextlib
    import io

    from samseg.apps.cli import build_parser

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        build_parser().parse_args(["segment", "--help"])
    text = " ".join(buf.getvalue().split())
    assert "cluster.eps (default: auto; notebook: 0.06; smoke: 0.06)" in text  # the default preset runs eps auto
    assert "amg.points_per_side (default: 32; notebook: 51; smoke: 8)" in text
    assert "examples: samseg segment photos/ --out out/run1" in text and "samseg runs list" in text
    assert "$SAMSEG_HOME/cache" in text


def test_fan_out_to_workers_without_a_server_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A temporary Prefect server has no worker to take shards: one line, exit 2, before anything runs."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    photo = Path(__file__).parent / "data" / "photos" / "bears.jpg"
    rc, _, stderr = run_cli(["segment", str(photo), "--out", str(tmp_path / "out"), "--model", "tiny-random",
                             "--fan-out", "deployment", "--no-track"])
    assert rc == 2 and "--fan-out deployment needs PREFECT_API_URL" in stderr.splitlines()[-1]
    assert not (tmp_path / "out").exists()
    rc, _, stderr = run_cli(["segment", str(photo), "--out", str(tmp_path / "out"), "--model", "tiny-random",
                             "--shard-size", "0", "--no-track"])
    assert rc == 2 and "--shard-size" in stderr.splitlines()[-1]
    # --fit-images samples a dataset batch split in shards: alone, or on a batch run here, one line
    for flags in (["--fit-images", "8"], ["--fit-images", "8", "--classes", "dataset"]):
        rc, _, stderr = run_cli(["segment", str(photo), "--out", str(tmp_path / "out"), "--model", "tiny-random",
                                 "--no-track", *flags])
        assert rc == 2 and "--fit-images samples a --classes dataset batch split in shards" in stderr.splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly_with_141() -> None:
    """`samseg weights list | head -1`: the reader went away; no "unexpected BrokenPipeError" line,
    exit 128 + SIGPIPE as a shell pipeline's writer would."""
    proc = subprocess.Popen([sys.executable, "-m", "samseg.apps.cli", "weights", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command writes its first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err


def test_a_stop_says_what_it_left_only_where_that_is_true(capsys: pytest.CaptureFixture) -> None:
    """segment and recluster resume from the stage cache; a stopped `samseg ui` left nothing to resume."""
    from samseg.apps.cli import RESUMES, _interrupted, build_parser

    parser = build_parser()
    for argv, hint in ((["segment", "x.jpg", "--out", "o"], RESUMES), (["recluster", "abcd", "--out", "o"], RESUMES), (["ui"], None)):
        _interrupted(parser.parse_args(argv))
        assert capsys.readouterr().err == "interrupted" + (f" ({hint})" if hint else "") + "\n", argv


def test_a_folder_that_cannot_be_listed_is_one_line_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unreadable input folder (root reads every folder, so the listing is made to refuse)."""
    import samseg.edges.storage as storage

    def refuse(spec):
        raise PermissionError(13, "Permission denied")
        yield  # a generator, as iter_images is: the refusal comes as it is read

    monkeypatch.setattr(storage, "iter_images", refuse)
    rc, _, err = run_cli(["segment", str(tmp_path), "--preset", "smoke", "--out", str(tmp_path / "o")])
    assert rc == 1 and err.strip() == f"error: {tmp_path}: cannot list it (Permission denied)", err


def test_classes_image_with_classes_from_is_a_usage_error_naming_the_flags(tmp_path) -> None:
    """The engine's rule (samseg.engine.batch.dataset_classes_wanted), said with the flags' names, before any image."""
    photos = Path(__file__).parent / "data" / "photos"
    rc, _, err = run_cli(["segment", str(photos), "--out", str(tmp_path / "o"), "--model", "tiny-random", "--no-track",
                          "--classes", "image", "--classes-from", str(tmp_path / "classes.json")])
    assert rc == 2 and "--classes-from gives dataset-level ids; it cannot be combined with --classes image" in err, err
    assert not (tmp_path / "o").exists()
