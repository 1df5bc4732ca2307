"""Prefect flows against real servers on 127.0.0.1: Prefect, mlflow (artifacts on moto S3), moto.

tiny-random SAM, preset `smoke` with a 4×4 grid, photos downscaled to 192 px: these check
plumbing (cache, retries, tracking, fan-out), never segmentation quality.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from prefect_fixtures import REPO_ROOT, stop_process
from servers import free_port

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------- helpers


def smoke_settings(eps: float | None = None):
    from flows.params import PipelineParams

    p = PipelineParams.from_preset("smoke")
    amg = p.amg.model_copy(update={"points_per_side": 4})
    cluster = p.cluster if eps is None else p.cluster.model_copy(update={"eps": eps})
    return p.model_copy(update={"amg": amg, "cluster": cluster})


def runtime(cache: Path | str):
    from flows.params import RuntimeParams

    return RuntimeParams(device="cpu", cache=str(cache))


def s3_keys(client, bucket: str, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@pytest.fixture
def local_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SAMSEG_CACHE", str(tmp_path / "default-cache"))
    return tmp_path


def cli_parser():
    """samseg's own parser (segment runs through the flows; recluster/runs/serve are hooked in)."""
    from samseg.apps import cli

    return cli.build_parser()


# ---------------------------------------------------------------- params (no server)


def test_params_mirror_configs_and_reject_what_configs_reject() -> None:
    import dataclasses

    from pydantic import ValidationError

    from flows.params import AmgParams, ClusterParams, PipelineParams, PoolParams
    from samseg.core.config import DEFAULT, AmgConfig, ClusterConfig, PoolConfig, get_preset

    for model, cfg in ((AmgParams, AmgConfig), (PoolParams, PoolConfig), (ClusterParams, ClusterConfig)):
        assert set(model.model_fields) == {f.name for f in dataclasses.fields(cfg)}
        assert model().to_config() == getattr(DEFAULT, cfg.SECTION)  # the `default` preset's, as the CLI's
    for name in ("default", "notebook", "smoke"):
        assert PipelineParams.from_preset(name).to_config() == get_preset(name)
    for bad in ({"eps": 0}, {"eps": -1.0}, {"min_samples": 0}, {"metric": "chebyshev"}, {"algorithm": "kmeans"}):
        with pytest.raises(ValidationError):
            ClusterParams(**bad)
    with pytest.raises(ValidationError, match="min_coverage"):
        PoolParams(min_coverage=0)
    with pytest.raises(ValidationError):
        AmgParams(points_per_side=0)


def test_flow_parameter_schema_is_a_validated_form() -> None:
    from prefect.utilities.callables import parameter_schema

    from flows.recluster import recluster_flow
    from flows.segment import segment_batch_flow, segment_image_flow

    schema = parameter_schema(segment_batch_flow).model_dump()
    text = json.dumps(schema)
    assert {"source", "out", "settings", "runtime", "track", "experiment", "fan_out", "classes", "classes_from",
            "max_cluster"} <= set(schema["properties"])
    classes = schema["properties"]["classes"]  # None: each image's own ids, or dataset ids when classes_from is given
    assert {"enum": ["image", "dataset"], "type": "string"} in classes["anyOf"] and classes["default"] is None
    cluster = schema["definitions"]["ClusterParams"]["properties"]
    assert cluster["eps"]["exclusiveMinimum"] == 0 and cluster["min_samples"]["minimum"] == 1
    assert "dbscan" in text
    assert "image" in parameter_schema(segment_image_flow).model_dump()["properties"]
    assert "cluster" in parameter_schema(recluster_flow).model_dump()["required"]


def test_gpu_slots_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.tasks import TASKS
    from samseg.engine.runner import gpu_slots

    monkeypatch.delenv("SAMSEG_GPU_SLOTS", raising=False)
    assert gpu_slots() == 1
    monkeypatch.setenv("SAMSEG_GPU_SLOTS", "0")
    with pytest.raises(ValueError, match="SAMSEG_GPU_SLOTS"):
        gpu_slots()
    assert "gpu" in TASKS["encode"].tags and "gpu" in TASKS["amg"].tags and "gpu" not in TASKS["pool"].tags
    assert TASKS["encode"].retries == 0 and TASKS["amg"].retries == 0  # only I/O steps retry
    assert TASKS["write"].retries == 2 and TASKS["read-image"].retries == 2
    from samseg.engine.stages import STAGES

    assert set(TASKS) >= {s.name for s in STAGES}  # one task per row of the stage table


def test_shard_steps_retry_io_errors_as_their_tasks_do(monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard's steps are not task runs, but an upload that fails twice on a connection error
    still succeeds on its third try; a bad input or a compute step is never tried again."""
    import flows.tasks as tasks
    from samseg.edges.images import ImageError

    monkeypatch.setattr(tasks, "IO_RETRY_DELAY_S", 0.0)
    calls: list[str] = []

    def flaky(fails: int, exc: Exception):
        def step() -> str:
            calls.append("try")
            if len(calls) <= fails:
                raise exc
            return "done"
        return step

    assert tasks.shard_execute("write", flaky(2, ConnectionError("reset"))) == "done" and len(calls) == 3
    calls.clear()
    with pytest.raises(ConnectionError):  # three tries, as the task's retries=2
        tasks.shard_execute("track", flaky(5, ConnectionError("reset")))
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(ImageError):  # a bad input: once
        tasks.shard_execute("read-image", flaky(5, ImageError("x.jpg", "not an image")))
    assert len(calls) == 1
    calls.clear()
    with pytest.raises(ConnectionError):  # not an I/O step: once
        tasks.shard_execute("amg", flaky(5, ConnectionError("reset")))
    assert len(calls) == 1
    calls.clear()
    from samseg.edges.mlflow.client import RunRefError

    with pytest.raises(RunRefError):  # an MLflow error no retry helps (the taxonomy says so): once
        tasks.shard_execute("track", flaky(5, RunRefError("no MLflow run id starts with abcd")))
    assert len(calls) == 1


# ---------------------------------------------------------------- batch on S3 + MLflow, then re-tune


def test_batch_s3_mlflow_then_rerun_and_recluster(prefect_api, mlflow_env, s3_bucket, moto_s3, small_photos,
                                                  tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    from flows.params import ClusterParams
    from flows.recluster import recluster_flow
    from flows.segment import segment_batch_flow

    client = moto_s3.client()
    names = ["building.jpg", "bears.jpg", "alphabet.jpg"]
    for name in names:
        client.put_object(Bucket=s3_bucket, Key=f"in/{name}", Body=(small_photos / name).read_bytes())
    experiment = f"flows-{uuid.uuid4().hex[:8]}"
    cache, out = f"s3://{s3_bucket}/cache", f"s3://{s3_bucket}/out"
    # fan_out "local": the Prefect server is shared, and test_scaleout deploys `segment` on it ("auto" would use it)
    kwargs = dict(source=f"s3://{s3_bucket}/in/", runtime=runtime(cache), track=True, experiment=experiment, fan_out="local")

    report = segment_batch_flow(out=out, settings=smoke_settings(), **kwargs)
    assert (report["succeeded"], report["failed"], report["fan_out"]) == (3, 0, "local")
    assert all(r["cache"] == {"encode": "computed", "amg": "computed", "pool": "computed"} for r in report["images"])

    # outputs and cache entries are on S3, each image dir published with _SUCCESS last
    keys = s3_keys(client, s3_bucket, "")
    for stem in ("building", "bears", "alphabet"):
        for f in ("_SUCCESS", "labels.png", "overlay.png", "masks.json", "embeddings.npy", "summary.json"):
            assert f"out/{stem}/{f}" in keys
    for stage in ("encode", "amg", "pool"):
        assert sum(k.startswith(f"cache/{stage}/") and k.endswith("manifest.json") for k in keys) == 3
    assert "out/batch_summary.json" in keys

    # MLflow: a batch parent run, one nested child per image with params/metrics/artifacts
    ml = MlflowClient()
    batch = ml.get_run(report["mlflow_run_id"])
    assert batch.data.tags["samseg.kind"] == "batch" and batch.info.status == "FINISHED"
    exp = ml.get_experiment_by_name(experiment)
    children = ml.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{batch.info.run_id}'")
    assert sorted(r.info.run_name for r in children) == sorted(names)
    for run in children:
        assert run.data.params["amg.points_per_side"] == "4" and run.data.params["model_type"] == "tiny-random"
        assert run.data.metrics["n_masks"] > 0 and run.data.metrics["cache_hits"] == 0
        assert run.data.tags["samseg.prefect_flow_run_id"]
        arts = {a.path for a in ml.list_artifacts(run.info.run_id)}
        assert {"labels.png", "summary.json", "masks.json", "embeddings.npy"} <= arts

    # rerun with another eps: encode/amg/pool all come from the cache
    report2 = segment_batch_flow(out=f"s3://{s3_bucket}/out2", settings=smoke_settings(eps=0.5), **kwargs)
    assert report2["succeeded"] == 3
    # a new eps: amg + pool are read from the cache, encode is not even needed
    assert all(r["cache"] == {"encode": "skipped", "amg": "hit", "pool": "hit"} for r in report2["images"])
    summary2 = json.loads(client.get_object(Bucket=s3_bucket, Key="out2/building/summary.json")["Body"].read())
    assert summary2["cache"] == {"encode": "skipped", "amg": "hit", "pool": "hit"}
    assert summary2["config"]["cluster.eps"] == 0.5

    # recluster one image run: only cluster + export, a new run tagged with its parent
    child = next(r for r in children if r.info.run_name == "building.jpg")
    res = recluster_flow(cluster=ClusterParams(eps=1e-6, min_samples=1), out=f"s3://{s3_bucket}/re",
                         run_id=child.info.run_id, runtime=runtime(cache), experiment=experiment)
    new = ml.get_run(res["mlflow_run_id"])
    assert new.data.tags["samseg.parent_run_id"] == child.info.run_id
    assert new.data.tags["samseg.kind"] == "recluster" and new.data.params["cluster.eps"] == "1e-06"
    assert res["recluster"]["inputs_from"] == "cache"
    _assert_labels_differ_iff_clusters_differ(client, s3_bucket, "out/building", "re/building",
                                              ClusterParams(eps=1e-6, min_samples=1).to_config())

    # the same through the CLI handlers: recluster keeps the parent's other cluster params
    parser = cli_parser()
    args = parser.parse_args(["recluster", child.info.run_id, "--eps", "0.25", "--out", f"s3://{s3_bucket}/re2",
                              "--cache", cache, "--experiment", experiment])
    assert args.handler(args) == 0
    newest = ml.search_runs([exp.experiment_id], f"tags.`samseg.parent_run_id` = '{child.info.run_id}'")
    assert sorted(r.data.params["cluster.eps"] for r in newest) == ["0.25", "1e-06"]
    assert {r.data.params["cluster.min_samples"] for r in newest} == {"1", child.data.params["cluster.min_samples"]}
    csv = tmp_path / "compare.csv"
    args = parser.parse_args(["runs", "compare", "--experiment", experiment, "--csv", str(csv)])
    assert args.handler(args) == 0
    import pandas as pd

    table = pd.read_csv(csv)
    assert len(table) == 2 * (1 + 3) + 2  # two batches of 3 images, two reclusters
    assert "cluster.eps" in table.columns and "amg.points_per_side" not in table.columns  # only differing params


def _assert_labels_differ_iff_clusters_differ(client, bucket: str, a: str, b: str, cluster_cfg) -> None:
    """b was re-clustered from a: same masks/embeddings, labels = cluster(embeddings, cfg),
    and the label maps differ exactly when the per-mask clusters do."""
    import io

    from PIL import Image

    from samseg.core.cluster import cluster_embeddings

    def load(prefix: str) -> tuple[list[int], np.ndarray, np.ndarray]:
        def get(name: str) -> bytes:
            return client.get_object(Bucket=bucket, Key=f"{prefix}/{name}")["Body"].read()

        coco = json.loads(get("masks.json"))
        emb = np.load(io.BytesIO(get("embeddings.npy")))
        return [x["cluster"] for x in coco["annotations"]], np.asarray(Image.open(io.BytesIO(get("labels.png")))), emb

    (ca, la, ea), (cb, lb, eb) = load(a), load(b)
    np.testing.assert_array_equal(ea, eb)
    assert cb == cluster_embeddings(eb, cluster_cfg).labels.tolist()
    if ca != cb:
        assert not np.array_equal(la, lb)


# ---------------------------------------------------------------- faults


def test_corrupt_cache_entry_is_recomputed(prefect_api, local_env, small_photos) -> None:
    from flows.segment import segment_image_flow
    from samseg.edges.cache import StageCache

    cache = local_env / "cache"
    args = dict(image=str(small_photos / "building.jpg"), settings=smoke_settings(), runtime=runtime(cache), track=False)
    first = segment_image_flow(out=str(local_env / "a"), **args)
    assert set(first["cache"].values()) == {"computed"}

    feats = next(cache.glob("encode/*/*/features.npy"))
    feats.write_bytes(feats.read_bytes()[: feats.stat().st_size // 2])  # truncated payload
    masks_json = next(cache.glob("amg/*/*/masks.json"))
    masks_json.write_bytes(b"{not json" + masks_json.read_bytes()[9:])  # same size, bad bytes

    second = segment_image_flow(out=str(local_env / "b"), **args)
    assert second["cache"] == {"encode": "computed", "amg": "computed", "pool": "hit"}
    key = feats.parent.name
    assert StageCache(str(cache)).load("encode", key, "encoded") is not None  # rewritten whole
    third = segment_image_flow(out=str(local_env / "c"), **args)
    assert third["cache"] == {"encode": "skipped", "amg": "hit", "pool": "hit"}
    assert third["n_masks"] == first["n_masks"]

    # recluster from image + settings: straight from the cache, no run needed
    from flows.params import ClusterParams
    from flows.recluster import ReclusterError, recluster_flow

    re = recluster_flow(cluster=ClusterParams(eps=0.5, min_samples=1), out=str(local_env / "re"), track=False,
                        image=args["image"], settings=args["settings"], runtime=args["runtime"])
    assert re["recluster"]["inputs_from"] == "cache" and re["n_masks"] == first["n_masks"]
    assert re["config"]["cluster.eps"] == 0.5 and (local_env / "re" / "building" / "labels.png").is_file()
    state = recluster_flow(cluster=ClusterParams(), out=str(local_env / "re2"), track=False, return_state=True,
                           image=str(small_photos / "alphabet.jpg"), settings=args["settings"], runtime=args["runtime"])
    with pytest.raises(ReclusterError, match="alphabet.jpg: no cached masks"):
        state.result()


def test_a_bad_single_image_fails_its_flow_run_with_the_batch_loops_line(prefect_api, local_env) -> None:
    """segment-image is the batch loop over one image: a bad file is the loop's one line, and the
    flow run ends FAILED with it (ImageFailed), as the CLI reports it."""
    from flows.segment import segment_image_flow
    from samseg.engine.segment import ImageFailed

    bad = local_env / "zz-broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really")
    state = segment_image_flow(image=str(bad), out=str(local_env / "out1"), settings=smoke_settings(),
                               runtime=runtime(local_env / "cache"), track=False, return_state=True)
    assert state.is_failed()
    with pytest.raises(ImageFailed) as info:
        state.result()
    assert "zz-broken.jpg" in str(info.value) and "\n" not in str(info.value).strip()
    assert not (local_env / "out1" / "zz-broken").exists()


def test_s3_unreachable_retries_then_one_clear_error(prefect_api, local_env, small_photos, monkeypatch) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.segment import segment_image_flow

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-not-real")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    args = dict(image=str(small_photos / "bears.jpg"), out="s3://nowhere-bucket/run1", settings=smoke_settings(),
                runtime=runtime(local_env / "cache"), track=False, return_state=True)
    # the batch loop looks at OUT/bears before any compute: an unreachable endpoint fails there, in one line
    state = segment_image_flow(**args)
    with pytest.raises(Exception, match="s3://nowhere-bucket/run1/bears: list failed") as info:
        state.result()
    assert "\n" not in str(info.value).strip() and not list((local_env / "cache").glob("encode/*/*"))
    # an endpoint lost between that look and the write: the write task retries, then one clear error
    monkeypatch.setattr("samseg.edges.outdirs.refused_outputs", lambda *a, **k: {})
    state = segment_image_flow(**args)
    assert state.is_failed()
    with pytest.raises(Exception) as info:
        state.result()
    message = str(info.value)
    assert "s3://nowhere-bucket/run1" in message and "\n" not in message.strip()
    flt = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    deadline = time.monotonic() + 60  # task-run states reach the server as events, a little later
    while True:
        with get_client(sync_client=True) as client:
            runs = {t.name.rsplit("-", 1)[0]: t for t in client.read_task_runs(flow_run_filter=flt)}
        write = runs.get("write")
        if (write is not None and write.state is not None and write.state.is_failed()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert runs["write"].state.is_failed()
    assert runs["write"].run_count == 3  # the first try + IO_RETRIES
    assert runs["encode"].run_count == 1
    assert not list(Path("/tmp").glob("samseg-write-*/bears"))  # local staging cleaned up


def test_bad_image_fails_alone(prefect_api, local_env, small_photos) -> None:
    from flows.segment import segment_batch_flow

    src = local_env / "in"
    src.mkdir()
    for name in ("building.jpg", "alphabet.jpg"):
        (src / name).write_bytes((small_photos / name).read_bytes())
    (src / "broken.jpg").write_text("this is not a jpeg")
    out = local_env / "out"
    report = segment_batch_flow(source=str(src), out=str(out), settings=smoke_settings(),
                                runtime=runtime(local_env / "cache"), track=False, fan_out="local")
    assert (report["succeeded"], report["failed"]) == (2, 1)
    bad = next(r for r in report["images"] if r["status"] == "failed")
    assert bad["image"].endswith("broken.jpg") and "broken.jpg" in bad["error"] and "\n" not in bad["error"]
    assert (out / "building" / "labels.png").is_file() and (out / "alphabet" / "labels.png").is_file()
    assert not (out / "broken").exists()
    assert json.loads((out / "batch_summary.json").read_text())["failed"] == 1


def test_killed_batch_rerun_computes_only_unfinished(prefect_api, local_env, small_photos) -> None:
    from flows.segment import segment_batch_flow

    src = local_env / "in"
    src.mkdir()
    names = ["alphabet.jpg", "bears.jpg", "building.jpg", "corgi.jpg"]  # list order = processing order
    for name in names:
        (src / name).write_bytes((small_photos / name).read_bytes())
    out, cache = local_env / "out", local_env / "cache"
    code = (
        "import sys\n"
        "from flows.params import PipelineParams, RuntimeParams\n"
        "from flows.segment import segment_batch_flow\n"
        "settings = PipelineParams.model_validate_json(sys.argv[4])\n"
        "segment_batch_flow(source=sys.argv[1], out=sys.argv[2], settings=settings,"
        " runtime=RuntimeParams(device='cpu', cache=sys.argv[3]), track=False, fan_out='local')\n"
    )
    env = {**prefect_api.env, "SAMSEG_CACHE": str(cache)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(src), str(out), str(cache), smoke_settings().model_dump_json()], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / "bears" / "summary.json").exists():
            assert proc.poll() is None, "batch process exited before the first image finished"
            assert time.monotonic() < deadline, "first image never finished"
            time.sleep(0.05)
        os.killpg(proc.pid, 9)  # the worker dies mid-batch, no cleanup
        proc.wait(timeout=30)
    finally:
        stop_process(proc)
    finished = {p.parent.name for p in out.glob("*/summary.json")}
    assert "bears" in finished and len(finished) < len(names), finished

    report = segment_batch_flow(source=str(src), out=str(out), settings=smoke_settings(), runtime=runtime(cache),
                                track=False, fan_out="local")
    assert report["succeeded"] == len(names)
    for r in report["images"]:
        stem = Path(r["image"]).stem
        if stem in finished:
            assert r["cache"] == {"encode": "skipped", "amg": "hit", "pool": "hit"}, stem
        else:
            assert "computed" in r["cache"].values(), stem


def test_cli_segment_via_flows(prefect_api, local_env, small_photos) -> None:
    """In a fresh process, as a user runs it: one error line for the bad file, no traceback."""
    src = local_env / "in"
    src.mkdir()
    (src / "building.jpg").write_bytes((small_photos / "building.jpg").read_bytes())
    (src / "zz-broken.jpg").write_bytes(b"\xff\xd8 not really")
    out = local_env / "out"
    code = (
        "import sys\n"
        "from test_flows import cli_parser\n"
        "args = cli_parser().parse_args(sys.argv[1:])\n"
        "sys.exit(args.handler(args))\n"
    )
    argv = ["segment", str(src), "--out", str(out), "--preset", "smoke", "--points-per-side", "4", "--device", "cpu",
            "--no-track", "--cache", str(local_env / "cache")]
    env = {**prefect_api.env, "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'tests'}"}
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "zz-broken.jpg" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "building.jpg: " in proc.stdout and f"-> {out / 'building'}" in proc.stdout
    assert (out / "building" / "labels.png").is_file()
    assert json.loads((out / "building" / "summary.json").read_text())["cache"]["encode"] == "computed"


def test_serve_builds_the_three_deployments() -> None:
    from flows.serve import serve_deployments

    deps = serve_deployments(cron="0 2 * * *", source="s3://b/in/", out="s3://b/out/")
    assert [(d.flow_name, d.name) for d in deps] == [
        ("segment-shard", "segment"), ("segment-batch", "nightly-batch"), ("recluster", "recluster")]
    assert deps[1].parameters == {"source": "s3://b/in/", "out": "s3://b/out/"}
    nightly = serve_deployments(source="/data/in", out="/data/out", classes_from="0123abcd")[1]
    assert nightly.parameters == {"source": "/data/in", "out": "/data/out", "classes_from": "0123abcd"}
    assert deps[1].schedules and deps[0].schedules == []
