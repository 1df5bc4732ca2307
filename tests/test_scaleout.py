"""Scale-out on loopback: a real Prefect server, TWO `prefect worker` processes (`--limit 1`,
as docs/orchestration.md says) on the `samseg-local` pool, deployments from
deployments/prefect.yaml, moto S3, and `samseg segment DIR --out s3://… --fan-out deployment
--shard-size 3 --classes dataset` on 8 images: 3 shard runs. One shard run's process is killed
with SIGKILL while it holds its shard; the batch runs that shard again for the images it had
not written. Every image is written by exactly one shard run, every image's ids come from one
classes.json, and each image is logged once under the batch run. A second batch on the same
pool has more images than --fit-images: its classes are fitted on a spread sample (one shard
run), then each shard run assigns its own images to them. Every process is killed in teardown.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from prefect_fixtures import REPO_ROOT, PrefectServer, stop_process

pytestmark = pytest.mark.integration

POOL = "samseg-local"


def _prefect(args: list[str], env: dict[str, str], timeout_s: float = 300) -> str:
    proc = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout_s)
    assert proc.returncode == 0, f"prefect {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture
def workers(prefect_api: PrefectServer, mlflow_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import os

    env = {**prefect_api.env, **{k: v for k, v in os.environ.items() if k.startswith(("AWS_", "MLFLOW_"))},
           "SAMSEG_PROJECT_DIR": str(REPO_ROOT), "SAMSEG_CACHE": str(tmp_path / "cache"),
           "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_LOGGING_LEVEL": "INFO"}
    _prefect(["work-pool", "create", POOL, "--type", "process", "--overwrite"], env)
    _prefect(["--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"], env)
    procs = []
    try:
        for i in (1, 2):
            log = (tmp_path / f"worker{i}.log").open("wb")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--name", f"w{i}", "--limit", "1"],
                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        yield env
    finally:
        for p in procs:
            stop_process(p, timeout_s=3)  # a worker's graceful stop is not what this tests


def test_shards_survive_a_killed_shard_run(prefect_api, workers, s3_bucket, small_photos, tmp_path) -> None:
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter, FlowRunFilterId

    from samseg.core.dataset import ClassTable
    from samseg.edges.storage import read_bytes

    src, out = tmp_path / "in", f"s3://{s3_bucket}/out"
    src.mkdir()
    for k in (1, 2):
        for photo in sorted(small_photos.glob("*.jpg")):
            (src / f"{photo.stem}{k}.jpg").write_bytes(photo.read_bytes())
    names = sorted(p.stem for p in src.iterdir())
    experiment = f"scaleout-{uuid.uuid4().hex[:8]}"
    cli = subprocess.Popen(
        [sys.executable, "-m", "samseg.apps.cli", "segment", str(src), "--out", str(out), "--model", "tiny-random",
         "--preset", "smoke", "--points-per-side", "4", "--device", "cpu", "--cache", str(tmp_path / "cache"),
         "--experiment", experiment, "--fan-out", "deployment", "--shard-size", "3", "--classes", "dataset", "--quiet"],
        cwd=tmp_path, env=workers, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        killed = _kill_first_running_shard(tmp_path, src)
        stdout, stderr = cli.communicate(timeout=540)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, f"{stdout[-2000:]}\n{stderr[-3000:]}\n{_worker_logs(tmp_path)}"

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["segment"])))
        # this batch's shard runs (the server is shared: another test's batch may fan out to these workers too)
        runs = [r for r in runs if all(str(u).startswith(str(src)) for u in r.parameters.get("images", []))
                and r.parameters.get("images")]
        steps = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in runs])))
    assert steps == []  # a shard's steps run in its process: no task run per step of each image on the server
    by_id = {str(r.id): r for r in runs}
    assert by_id[killed].state.name == "Crashed", by_id[killed].state
    summaries = {n: json.loads(read_bytes(f"{out}/{n}/summary.json")) for n in names}
    written_by = {n: s["prefect_flow_run_id"] for n, s in summaries.items()}
    done_before_kill = {n for n, rid in written_by.items() if rid == killed}
    killed_images = {Path(u).stem for u in by_id[killed].parameters["images"]}
    reruns = [{Path(u).stem for u in r.parameters["images"]} for r in runs
              if str(r.id) != killed and {Path(u).stem for u in r.parameters["images"]} <= killed_images]
    # the killed shard's second run holds exactly the images its first run had not written
    assert reruns == ([killed_images - done_before_kill] if killed_images - done_before_kill else [])
    assert all(by_id[rid].state.is_completed() or rid == killed for rid in written_by.values())
    assert len(runs) == 3 + len(reruns) and all(r.state.is_completed() for r in runs if str(r.id) != killed)

    report = json.loads(read_bytes(f"{out}/batch_summary.json"))
    assert (report["fan_out"], report["succeeded"], report["failed"]) == ("deployment", 8, 0)
    assert report["retried"] == len(killed_images - done_before_kill)
    ml = MlflowClient()
    exp = ml.get_experiment_by_name(experiment)
    children = ml.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{report['mlflow_run_id']}'")
    # dataset classes: one classes.json for the 8 images of the 3 shards, the image runs logged once after it
    table = ClassTable.from_json(read_bytes(f"{out}/classes.json"))
    assert report["classes"]["mode"] == "dataset" and report["classes"]["n_classes"] == table.n_classes
    assert all(s["classes"] == "dataset" and set(s["classes_present"]) <= set(range(table.n_classes))
               for s in summaries.values())
    assert sorted(r.info.run_name for r in children) == sorted(f"{n}.jpg" for n in names)
    _fit_on_a_sample_then_assign_in_shards(workers, tmp_path, small_photos, f"s3://{s3_bucket}/out2", experiment)


def _fit_on_a_sample_then_assign_in_shards(env: dict[str, str], tmp_path: Path, photos: Path, out: str,
                                           experiment: str) -> None:
    """--classes dataset --fit-images 2 on 4 images: one shard run computes the spread sample, the
    batch fits the classes on its masks alone (classes.fitted.json), then each shard run assigns
    its own images to them and writes and logs each once with the dataset's ids; the batch only
    adds up the counts into classes.json."""
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    from samseg.core.dataset import ClassTable, assign_to_classes
    from samseg.edges.image_dir import read_image_dir
    from samseg.edges.storage import download_prefix, read_bytes

    from samseg.engine.dataset import table_sha256

    src = tmp_path / "in2"
    src.mkdir()
    for photo in sorted(photos.glob("*.jpg")):  # the same photos: their stages come from the cache
        (src / f"{photo.stem}3.jpg").write_bytes(photo.read_bytes())
    files = sorted(p.name for p in src.iterdir())
    proc = subprocess.run(
        [sys.executable, "-m", "samseg.apps.cli", "segment", str(src), "--out", out, "--model", "tiny-random",
         "--preset", "smoke", "--points-per-side", "4", "--device", "cpu", "--cache", str(tmp_path / "cache"),
         "--experiment", experiment, "--fan-out", "deployment", "--shard-size", "2", "--classes", "dataset",
         "--fit-images", "2", "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}\n{_worker_logs(tmp_path)}"
    report = json.loads(read_bytes(f"{out}/batch_summary.json"))
    assert (report["succeeded"], report["classes"]["mode"]) == (4, "dataset")  # the batch's own classes
    fitted = ClassTable.from_json(read_bytes(f"{out}/classes.fitted.json"))
    assert fitted.image_names == [files[1], files[3]]  # the spread sample's masks alone
    back = ClassTable.from_json(read_bytes(f"{out}/classes.json"))
    assert (back.prototypes == fitted.prototypes).all() and back.image_names == files
    with get_client(sync_client=True) as client:
        shards = {str(r.id): r for r in client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["segment"])))
                  if r.parameters.get("images") and str(r.parameters["images"][0]).startswith(str(src))}
    [sample] = [r for r in shards.values() if not r.parameters.get("classes_from")]
    assert [Path(u).name for u in sample.parameters["images"]] == [files[1], files[3]]
    assigning = {i: r for i, r in shards.items() if r.parameters.get("classes_from")}
    assert len(assigning) == 2 and all(r.parameters["classes_from"] == f"{out}/classes.fitted.json"
                                       and r.parameters["classes_sha256"] == table_sha256(fitted)
                                       for r in assigning.values())
    ml, total = MlflowClient(), 0
    children = ml.search_runs([ml.get_experiment_by_name(experiment).experiment_id],
                              f"tags.mlflow.parentRunId = '{report['mlflow_run_id']}'")
    assert sorted(r.info.run_name for r in children) == files  # one run per image: the sample's first pass is not logged
    for entry in report["images"]:
        local = tmp_path / "check" / entry["name"]
        download_prefix(entry["out_dir"], local, require_success=True)
        _, emb, stored = read_image_dir(local)
        assert (stored == assign_to_classes(emb, fitted).labels).all()  # the fitted classes' ids, the sample's too
        summary = json.loads((local / "summary.json").read_text())
        assert summary["classes"] == "assigned" and summary["classes_sha256"] == table_sha256(fitted)
        assert summary["classes_from"] == f"{out}/classes.fitted.json"
        # written and logged by the shard run that assigned it
        shard = assigning[summary["prefect_flow_run_id"]]
        assert entry["name"] in shard.parameters["names"]
        assert ml.get_run(entry["mlflow_run_id"]).data.tags["samseg.prefect_flow_run_id"] == str(shard.id)
        for c, counts in enumerate(back.image_counts):
            assert counts.get(f"{entry['name']}.jpg", 0) == int((stored == c).sum())
        total += len(stored)
    assert int(back.sizes.sum()) + back.n_noise == total


def _kill_first_running_shard(tmp_path: Path, src: Path) -> str:
    """SIGKILL the process of the first shard run seen RUNNING (a worker's child); its id."""
    import os
    import signal

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    deadline = time.monotonic() + 300
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            for run in client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["segment"]))):
                mine = all(str(u).startswith(str(src)) for u in run.parameters.get("images", []))
                if mine and run.state is not None and run.state.is_running() and run.infrastructure_pid:
                    os.kill(int(str(run.infrastructure_pid).rsplit(":", 1)[-1]), signal.SIGKILL)
                    return str(run.id)
            time.sleep(0.2)
    raise AssertionError(f"no shard run started:\n{_worker_logs(tmp_path)}")


def _worker_logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(tmp_path.glob("worker*.log")))
