"""samseg.engine: the stage table, the demand-driven runner, and one engine under every orchestrator.

Unit tests inject known compute (counting calls) so they say exactly which stages ran;
the CLI tests run the real tiny-random SAM (meaningless masks: plumbing only).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samseg.core.config import get_preset
from samseg.core.types import EncodedImage, ImageGeometry, MaskSet
from samseg.edges.cache import StageCache
from samseg.edges.images import decode_image
from samseg.engine import stages
from samseg.engine.runner import ModelRequired, run_image
from samseg.sam.source import ModelIdentity

REPO = Path(__file__).resolve().parents[1]
SMOKE = get_preset("smoke")
MODEL = ModelIdentity("tiny-random", "c" * 64, None, "cpu")


def test_stage_keys_are_the_ones_the_cache_always_had() -> None:
    # Pinned from the pre-engine samseg.cache.stage_key: every existing cache entry stays a hit.
    pinned = {
        ("encode", "fp32"): "acbaef027698656910a546974f271fe03762c95b177d0220e407e175acc7b6f7",
        ("amg", "fp32"): "0ccb36cb2e06d66fee1d247ee147e942d2f9dc4418eb2df8ee60c885557bd560",
        ("pool", "fp32"): "e3eea9f86ec9cb960bea4e75aebfa0370107951661d37c02abbb1200030af970",
        ("pool", "bf16"): "5e58a36d11b2d68aa9405097caf4a30dc05a46cff0f4c7680318f4e848480600",
    }
    for (name, precision), key in pinned.items():
        assert stages.stage_key(name, "a" * 64, "c" * 64, SMOKE, precision) == key
    with pytest.raises(ValueError, match="not cached"):
        stages.stage_key("cluster", "a" * 64, "c" * 64, SMOKE)


def test_the_table_is_the_one_list_of_stages() -> None:
    from samseg.engine import progress

    names = [s.name for s in stages.STAGES]
    assert names == ["encode", "amg", "features", "pool", "cluster", "compose"]
    assert [s.name for s in stages.BACKBONE_STAGES] == names  # the same steps; only `features` differs
    assert progress.STAGES == (*names, "write") == stages.STEPS
    assert stages.CACHED == ("encode", "amg", "pool", "features")
    for table in (stages.STAGES, stages.BACKBONE_STAGES):  # inputs only name earlier rows: compute order
        for row in table:
            assert all(names.index(i) < names.index(row.name) for i in row.inputs)


@pytest.fixture()
def counted(monkeypatch: pytest.MonkeyPatch):
    """encode / amg / pool replaced by known values; `calls` counts each stage's computes."""
    calls = {"encode": 0, "amg": 0, "pool": 0, "model": 0}
    masks = np.zeros((3, 20, 30), bool)
    masks[0, :10, :10], masks[1, :10, 15:25], masks[2, 12:, :] = True, True, True

    def encode(model, rgb):
        calls["encode"] += 1
        return EncodedImage(np.ones((4, 64, 64), np.float32), ImageGeometry.for_image(rgb.shape[:2]))

    def amg(model, rgb, encoded, cfg):
        calls["amg"] += 1
        return MaskSet.from_binary(masks)

    def pool(m, encoded, cfg):
        calls["pool"] += 1
        return np.array([[1, 0, 0, 0], [1, 0.01, 0, 0], [0, 1, 0, 0]], np.float32)

    monkeypatch.setattr("samseg.sam.encode.encode_image", encode)
    monkeypatch.setattr("samseg.sam.amg.generate_masks", amg)
    monkeypatch.setattr("samseg.core.pool.pool_embeddings", pool)

    def load_model():
        calls["model"] += 1
        return object()

    return calls, load_model


def _image():
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(buf, "PNG")
    return decode_image(buf.getvalue(), "x.png", uri="/in/x.png")


def test_warm_rerun_reads_two_entries_loads_no_model_and_computes_only_cluster(counted, tmp_path: Path) -> None:
    calls, load_model = counted
    cache, image = StageCache(tmp_path), _image()
    cold = run_image(image, SMOKE, MODEL, cache, load_model=load_model)
    assert cold.status == dict.fromkeys(["encode", "amg", "features", "pool", "cluster", "compose"], "computed")
    assert calls == {"encode": 1, "amg": 1, "pool": 1, "model": 2}  # the stages that need SAM asked for it

    warm = run_image(image, SMOKE.replace(cluster={"eps": 0.5}), MODEL, cache, load_model=load_model)
    assert warm.status == {"encode": "skipped", "amg": "hit", "features": "skipped", "pool": "hit", "cluster": "computed",
                           "compose": "computed"}
    assert calls == {"encode": 1, "amg": 1, "pool": 1, "model": 2}  # nothing recomputed, no model asked for
    assert "encode" not in warm.values  # its entry was never even read
    np.testing.assert_array_equal(warm.embeddings, cold.embeddings)

    repooled = run_image(image, SMOKE.replace(pool={"min_pixels": 3}), MODEL, cache, load_model=load_model)
    assert repooled.status["encode"] == "hit" and repooled.status["amg"] == "hit" and repooled.status["pool"] == "computed"
    assert calls["model"] == 2  # pooling needs the features, not SAM


def test_a_model_or_library_load_is_timed_as_load_not_as_the_stage_that_asked_for_it(counted, tmp_path: Path, monkeypatch) -> None:
    """seconds.load holds the wait for the model and the clustering libraries (a process's first
    image pays their imports and weights); encode, amg and cluster are timed without it, and the
    summary's total still includes it."""
    from samseg.engine import runner
    from samseg.engine.summary import summarize

    calls, count_loads = counted
    clock = [0.0]  # a fake clock: each reading moves it 1 ms; a model load moves it 100 s
    monkeypatch.setattr(runner.time, "perf_counter", lambda: clock.__setitem__(0, clock[0] + 0.001) or clock[0])

    def load_model():
        clock[0] += 100.0 if calls["model"] == 0 else 0.0  # the first call loads, later ones find it loaded
        return count_loads()

    def load_libraries():
        clock[0] += 50.0  # scikit-learn's import, still running in the loop's thread

    run = run_image(_image(), SMOKE, MODEL, StageCache(tmp_path), load_model=load_model, load_libraries=load_libraries)
    assert calls["model"] == 2 and 150.0 <= run.seconds[runner.LOAD] < 150.1
    assert all(0 < run.seconds[s] < 1 for s in ("encode", "amg", "pool", "cluster", "compose")), run.seconds
    assert summarize(run).seconds["total"] >= 150.0  # the image's whole time
    warm = run_image(_image(), SMOKE.replace(cluster={"eps": 0.5}), MODEL, StageCache(tmp_path), load_model=load_model)
    assert calls["model"] == 2 and runner.LOAD not in warm.seconds  # nothing to wait for: no model, no libraries given


def test_a_cache_hit_after_a_model_load_is_not_timed_below_zero(counted, tmp_path: Path, monkeypatch) -> None:
    """A new AMG setting with a feature backbone: amg loads SAM and computes, then the backbone's
    features entry is a hit; the hit's seconds are its own, not minus the load before it."""
    from samseg.engine import runner

    calls, count_loads = counted
    clock = [0.0]
    monkeypatch.setattr(runner.time, "perf_counter", lambda: clock.__setitem__(0, clock[0] + 0.001) or clock[0])
    monkeypatch.setattr("samseg.sam.backbones.encode_features", lambda backbone, rgb, long_side: EncodedImage(
        np.ones((8, 2, 3), np.float32), ImageGeometry.for_image(rgb.shape[:2], long_side, 14, square=False)))

    def load_model():  # every run a new process: its load costs 100 s
        clock[0] += 100.0
        return count_loads()

    dino = SMOKE.with_features("tiny-random")
    ident = dataclasses.replace(MODEL, features="tiny-random", features_sha256="d" * 64)
    cache, image = StageCache(tmp_path), _image()
    run_image(image, dino, ident, cache, load_model=load_model, load_backbone=object)
    run = run_image(image, dino.replace(amg={"points_per_side": 5}), ident, cache, load_model=load_model,
                    load_backbone=object)
    assert run.status["amg"] == "computed" and run.status["features"] == "hit"
    assert all(0 < run.seconds[s] < 1 for s in ("amg", "features", "pool")), run.seconds
    assert run.seconds[runner.LOAD] >= 100.0


def test_changing_only_the_backbone_reuses_the_amg_entry_and_computes_features_and_pool(counted, tmp_path: Path,
                                                                                      monkeypatch) -> None:
    """--features changes the embeddings, not the masks: the AMG entry is re-used, SAM is never
    loaded, and the backbone's features + pool are the only computes; a second backbone run is all hits."""
    calls, load_model = counted
    calls["backbone"] = calls["features"] = 0

    def features(backbone, rgb, long_side):
        calls["features"] += 1
        g = ImageGeometry.for_image(rgb.shape[:2], long_side, 14, square=False)
        return EncodedImage(np.ones((8, *g.feature_hw), np.float32), g)

    def load_backbone():
        calls["backbone"] += 1
        return object()

    monkeypatch.setattr("samseg.sam.backbones.encode_features", features)
    cache, image = StageCache(tmp_path), _image()
    run_image(image, SMOKE, MODEL, cache, load_model=load_model, load_backbone=load_backbone)
    assert calls == {"encode": 1, "amg": 1, "pool": 1, "model": 2, "backbone": 0, "features": 0}  # sam: one encoder pass

    dino = SMOKE.with_features("tiny-random")
    ident = dataclasses.replace(MODEL, features="tiny-random", features_sha256="d" * 64)
    run = run_image(image, dino, ident, cache, load_model=load_model, load_backbone=load_backbone)
    assert run.status == {"encode": "skipped", "amg": "hit", "features": "computed", "pool": "computed",
                          "cluster": "computed", "compose": "computed"}
    assert calls == {"encode": 1, "amg": 1, "pool": 2, "model": 2, "backbone": 1, "features": 1}
    assert run.cache_status() == {"encode": "skipped", "amg": "hit", "pool": "computed", "features": "computed"}

    again = run_image(image, dino.replace(cluster={"eps": 0.3}), ident, cache, load_model=load_model, load_backbone=load_backbone)
    assert again.status["amg"] == again.status["pool"] == "hit" and calls["features"] == 1 and calls["pool"] == 2
    other = dataclasses.replace(ident, features_sha256="e" * 64)  # other weights of the same backbone: new features
    run_image(image, dino, other, cache, load_model=load_model, load_backbone=load_backbone)
    assert calls["features"] == 2 and calls["amg"] == 1


def test_backbone_keys_leave_sam_keys_as_they_were_and_omit_sam_from_the_features_entry() -> None:
    sam = stages.stage_key("pool", "a" * 64, "c" * 64, SMOKE)
    assert stages.stage_key("pool", "a" * 64, "c" * 64, SMOKE, features_sha256="f" * 64) == sam  # sam: no backbone in it
    dino = SMOKE.with_features("tiny-random")
    assert stages.stage_key("pool", "a" * 64, "c" * 64, dino, features_sha256="f" * 64) != sam
    assert stages.stage_key("amg", "a" * 64, "c" * 64, dino) == stages.stage_key("amg", "a" * 64, "c" * 64, SMOKE)
    feats = stages.stage_key("features", "a" * 64, "c" * 64, dino, features_sha256="f" * 64)
    assert stages.stage_key("features", "a" * 64, "9" * 64, dino.replace(model_type="vit_b"), features_sha256="f" * 64) == feats
    assert stages.stage_key("features", "a" * 64, "c" * 64, dino, "bf16", features_sha256="f" * 64) != feats
    bigger = dino.replace(features={"input_size": 448})
    assert stages.stage_key("features", "a" * 64, "c" * 64, bigger, features_sha256="f" * 64) != feats
    with pytest.raises(ValueError, match="not cached"):
        stages.stage_key("features", "a" * 64, "c" * 64, SMOKE)  # sam's features are the encode entry


def test_a_stage_that_needs_sam_without_a_model_is_one_clear_error(counted, tmp_path: Path) -> None:
    with pytest.raises(ModelRequired, match="needs the SAM model"):
        run_image(_image(), SMOKE, MODEL, StageCache(tmp_path))


def test_given_values_and_fallbacks_are_recorded_as_such(counted, tmp_path: Path) -> None:
    from samseg.engine.recluster import recluster, recluster_summary

    calls, load_model = counted
    cache, image = StageCache(tmp_path), _image()
    cold = run_image(image, SMOKE, MODEL, cache, load_model=load_model)
    empty = StageCache(tmp_path / "elsewhere")  # another machine: nothing cached
    from_artifacts = recluster(image, SMOKE, MODEL, empty, fallback={"amg": lambda: cold.masks, "pool": lambda: cold.embeddings})
    assert from_artifacts.status["amg"] == from_artifacts.status["pool"] == "run"
    assert recluster_summary(from_artifacts, "r1").extra["recluster"] == {"parent_run_id": "r1", "inputs_from": "run"}
    from_cache = recluster(image, SMOKE, MODEL, cache, fallback={"amg": lambda: None, "pool": lambda: None})
    assert from_cache.status["amg"] == "hit" and recluster_summary(from_cache, None).extra["recluster"]["inputs_from"] == "cache"
    assert calls["model"] == 2  # reclusters never ask for SAM


# ---------------------------------------------------------------- one engine, every orchestrator


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "samseg.apps.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


def test_local_and_prefect_orchestrators_write_the_same_outputs(prefect_api, tmp_path: Path, monkeypatch) -> None:
    from cli_run import run_cli

    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(5)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(src / name)
    tiny = ["--model", "tiny-random", "--preset", "smoke", "--points-per-side", "4", "--device", "cpu", "--no-track", "-q"]
    monkeypatch.setenv("SAMSEG_HOME", str(tmp_path / "home"))
    # in-process: the orchestrators are what differs, not the process
    rc, _, err = run_cli(["segment", str(src), "--out", str(tmp_path / "local"), "--cache", str(tmp_path / "c1"),
                          "--orchestrator", "local", *tiny])
    assert rc == 0, err
    rc, _, err = run_cli(["segment", str(src), "--out", str(tmp_path / "prefect"), "--cache", str(tmp_path / "c2"),
                          "--orchestrator", "prefect", *tiny])
    assert rc == 0, err
    for stem in ("a", "b"):
        for name in ("labels.png", "masks.json", "embeddings.npy", "overlay.png"):
            assert (tmp_path / "local" / stem / name).read_bytes() == (tmp_path / "prefect" / stem / name).read_bytes(), name
        assert json.loads((tmp_path / "local" / stem / "summary.json").read_text())["prefect_flow_run_id"] is None
        assert json.loads((tmp_path / "prefect" / stem / "summary.json").read_text())["prefect_flow_run_id"]

    rc, out, err = run_cli(["segment", str(src), "--out", str(tmp_path / "local"), "--cache", str(tmp_path / "c1"),
                            "--eps", "0.5", "--orchestrator", "local", *tiny])
    assert rc == 0 and out.count("(cache hits: 2/2)") == 2, out + err


def test_local_orchestrator_never_imports_prefect(tmp_path: Path) -> None:
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    code = ("import sys; from samseg.apps.cli import main; rc = main(sys.argv[1:]); "
            "print('prefect' in sys.modules, rc)")
    argv = ["segment", str(tmp_path / "p.png"), "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c"),
            "--model", "tiny-random", "--preset", "smoke", "--points-per-side", "2", "--device", "cpu", "--no-track", "-q"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SAMSEG_HOME": str(tmp_path / "home")}
    res = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "False 0"


def test_fully_cached_image_loads_no_model_and_imports_no_torch(tmp_path: Path) -> None:
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    argv = ["segment", str(tmp_path / "p.png"), "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c"),
            "--model", "tiny-random", "--preset", "smoke", "--points-per-side", "2", "--no-track", "-q"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SAMSEG_HOME": str(tmp_path / "home")}
    code = ("import sys; from samseg.apps.cli import main; rc = main(sys.argv[1:]); "
            "print(sorted(m for m in ('torch', 'segment_anything', 'prefect') if m in sys.modules), rc)")
    cold = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert cold.returncode == 0 and cold.stdout.strip().endswith("['segment_anything', 'torch'] 0"), cold.stdout + cold.stderr
    warm = subprocess.run([sys.executable, "-c", code, *argv, "--eps", "0.5"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert warm.returncode == 0 and warm.stdout.strip().endswith("[] 0"), warm.stdout + warm.stderr  # no torch at all
    assert "(cache hits: 2/2)" in warm.stdout
    summary = json.loads((tmp_path / "o" / "p" / "summary.json").read_text())
    assert summary["model"]["device"] == "auto"  # no stage ran on a device: recorded as asked


def test_a_batch_publishes_each_image_while_the_next_one_computes(tmp_path: Path) -> None:
    import threading

    from samseg.engine.segment import segment_overlapped

    second_started = threading.Event()
    order: list[str] = []

    def start(uri: str, name: str):
        order.append(f"compute {name}")
        if name == "b":
            second_started.set()
        if name == "c":
            raise ValueError("cannot decode")

        def finish() -> dict:
            if name == "a":  # a's export can only end once b computes: the two overlap
                assert second_started.wait(timeout=30), "b did not compute while a was being published"
            if name == "d":
                raise OSError("disk full")
            order.append(f"publish {name}")
            return {"out_dir": str(tmp_path / name), "n_masks": 1}

        return finish

    uris = [str(tmp_path / f"{n}.png") for n in "abcde"]
    results = segment_overlapped(uris, str(tmp_path / "out"), start)
    assert [r["name"] for r in results] == list("abcde")  # input order, whatever finished first
    assert [r["status"] for r in results] == ["completed", "completed", "failed", "failed", "completed"]
    assert "cannot decode" in results[2]["error"] and "disk full" in results[3]["error"]
    assert order.index("compute b") < order.index("publish a")


FIRST_IMAGE_SEES = """
import sys
from samseg.engine import segment

seen = []

def start(uri, name):
    seen.append(segment._ahead is not None)  # the loop started the imports before the first image
    segment.imports_ready()  # what the cluster stage waits for
    seen.append("sklearn.cluster" in sys.modules)
    return lambda: {"out_dir": name}

segment.segment_overlapped(["/nowhere/a.png"], sys.argv[1], start)
print(seen)
"""


def test_the_batch_loop_imports_clustering_beside_the_first_image_and_its_cluster_stage_waits_for_it(tmp_path: Path) -> None:
    """scikit-learn's import (~2.8 s after torch) runs in a thread beside the first image's model
    load; the cluster stage's wait for it is seconds.load (test above), not `cluster`."""
    done = subprocess.run([sys.executable, "-c", FIRST_IMAGE_SEES, str(tmp_path / "out")], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[True, True]"
