"""Scale-out on loopback: a real Prefect server, THREE `prefect worker` processes (`--limit 1`,
as docs/orchestration.md says) on the `samseg-local` pool, deployments from
deployments/prefect.yaml, moto S3, and `samseg segment DIR --out s3://… --fan-out deployment
--shard-size 8 --classes dataset --fit-images 8` on 48 images: the classes are fitted on a
spread sample of 8 (one shard run), then 6 shard runs assign their own images to them. One
assigning shard run's process is killed with SIGKILL while it holds its shard; the batch runs
that shard again for the images it had not written. Every image is written last by exactly one
assigning shard run, every image's ids come from one classes.json, no shard is lost, no shard
step is a Prefect task run, and MLflow holds the batch run and one run per shard with its images'
table (the killed one ended, never left RUNNING), no run per image; an export of the batch run
reads every image from its dir. Every process is killed in teardown.
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
WORKERS, COPIES, SHARD, SAMPLE = 3, 12, 8, 8  # 48 images of the 4 photos in 6 shards; 8 fit the classes


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
        for i in range(1, WORKERS + 1):
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

    from samseg.core.dataset import ClassTable, assign_to_classes
    from samseg.edges.image_dir import read_image_dir
    from samseg.edges.mlflow.run_dirs import download_image_dirs
    from samseg.edges.storage import read_bytes
    from samseg.engine.dataset import spread, table_sha256

    src, out = tmp_path / "in", f"s3://{s3_bucket}/out"
    src.mkdir()
    for k in range(COPIES):
        for photo in sorted(small_photos.glob("*.jpg")):
            (src / f"{photo.stem}{k:02d}.jpg").write_bytes(photo.read_bytes())
    files = sorted(p.name for p in src.iterdir())
    names = [Path(f).stem for f in files]
    experiment = f"scaleout-{uuid.uuid4().hex[:8]}"
    cli = subprocess.Popen(
        [sys.executable, "-m", "samseg.apps.cli", "segment", str(src), "--out", str(out), "--model", "tiny-random",
         "--preset", "smoke", "--points-per-side", "4", "--device", "cpu", "--cache", str(tmp_path / "cache"),
         "--experiment", experiment, "--fan-out", "deployment", "--shard-size", str(SHARD), "--classes", "dataset",
         "--fit-images", str(SAMPLE), "--quiet"],
        cwd=tmp_path, env=workers, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        killed = _kill_first_running_shard(tmp_path, src, experiment)
        stdout, stderr = cli.communicate(timeout=540)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, f"{stdout[-2000:]}\n{stderr[-3000:]}\n{_worker_logs(tmp_path)}"

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["segment"])))
        # this batch's shard runs (the server is shared: another test's batch may fan out to these workers too)
        runs = [r for r in runs if r.parameters.get("images")
                and all(str(u).startswith(str(src)) for u in r.parameters["images"])]
        steps = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in runs])))
    assert steps == []  # a shard's steps run in its process: no task run per step of each image on the server
    by_id = {str(r.id): r for r in runs}
    # the sample: one shard run over images spread evenly over the listing, not logged, fitted alone
    [sample] = [r for r in runs if not r.parameters.get("classes_from")]
    sample_files = [files[i] for i in spread(len(files), SAMPLE)]
    assert [Path(u).name for u in sample.parameters["images"]] == sample_files and sample.state.is_completed()
    fitted = ClassTable.from_json(read_bytes(f"{out}/classes.fitted.json"))
    assert fitted.image_names == sample_files
    assigning = {i: r for i, r in by_id.items() if r.parameters.get("classes_from")}
    assert all(r.parameters["classes_from"] == f"{out}/classes.fitted.json"
               and r.parameters["classes_sha256"] == table_sha256(fitted) for r in assigning.values())

    # the killed shard: CRASHED, and run again for exactly the images it had not written
    assert killed in assigning and by_id[killed].state.name == "Crashed", by_id[killed].state
    summaries = {n: json.loads(read_bytes(f"{out}/{n}/summary.json")) for n in names}
    written_by = {n: s["prefect_flow_run_id"] for n, s in summaries.items()}
    done_before_kill = {n for n, rid in written_by.items() if rid == killed}
    killed_images = {Path(u).stem for u in by_id[killed].parameters["images"]}
    reruns = [{Path(u).stem for u in r.parameters["images"]} for i, r in assigning.items()
              if i != killed and {Path(u).stem for u in r.parameters["images"]} <= killed_images]
    assert reruns == ([killed_images - done_before_kill] if killed_images - done_before_kill else [])
    assert all(rid in assigning and (rid == killed or assigning[rid].state.is_completed()) for rid in written_by.values())
    assert len(assigning) == len(files) // SHARD + len(reruns)
    assert all(r.state.is_completed() for i, r in assigning.items() if i != killed)

    report = json.loads(read_bytes(f"{out}/batch_summary.json"))
    assert (report["fan_out"], report["succeeded"], report["failed"]) == ("deployment", len(files), 0)
    assert report["retried"] == len(killed_images - done_before_kill)
    assert report["classes"]["mode"] == "dataset"
    back = ClassTable.from_json(read_bytes(f"{out}/classes.json"))  # the fitted classes, counted over every image
    assert (back.prototypes == fitted.prototypes).all() and back.image_names == files

    # MLflow: the batch run and one run per assigning shard run (the sample is not logged), none per image
    ml, total = MlflowClient(), 0
    exp_id = ml.get_experiment_by_name(experiment).experiment_id
    children = ml.search_runs([exp_id], f"tags.mlflow.parentRunId = '{report['mlflow_run_id']}'", max_results=1000)
    assert {r.data.tags["samseg.kind"] for r in children} == {"shard"}
    logged = {r.data.tags["samseg.prefect_flow_run_id"]: r for r in children}
    assert set(logged) == set(assigning)
    assert all(r.info.status == "FINISHED" for i, r in logged.items() if i != killed)
    assert all(r.info.run_name == assigning[i].name for i, r in logged.items())  # shard-<index>-try<attempt>
    assert logged[killed].info.status == "KILLED"  # killed while its MLflow run was RUNNING: the batch ended it
    for i, r in logged.items():
        if i != killed:  # each finished shard run's table: the images it wrote, with their counts
            table = ml.load_table(exp_id, "images.json", run_ids=[r.info.run_id])
            assert list(table["name"]) == assigning[i].parameters["names"] and set(table["status"]) == {"completed"}
            assert int(r.data.metrics["images"]) == len(table)
    assert {e["mlflow_shard_run_id"] for e in report["images"]} <= {r.info.run_id for r in logged.values()} | {None}

    # every reader of the batch takes its images from their dirs (edges.mlflow.tracking.batch_images)
    dirs = download_image_dirs(report["mlflow_run_id"], tmp_path / "check")
    assert sorted(d.name for d in dirs) == names and set(dirs.values()) == {e["out_dir"] for e in report["images"]}
    by_name = {e["name"]: e for e in report["images"]}
    for local in dirs:
        _, emb, stored = read_image_dir(local)
        assert (stored == assign_to_classes(emb, fitted).labels).all()  # the fitted classes' ids, the sample's too
        summary = json.loads((local / "summary.json").read_text())
        assert summary["classes"] == "assigned" and summary["classes_sha256"] == table_sha256(fitted)
        shard = summary["prefect_flow_run_id"]  # written by the shard run that assigned it
        assert local.name in assigning[shard].parameters["names"]
        entry = by_name[local.name]
        assert entry["mlflow_shard_run_id"] == (logged[shard].info.run_id if shard != killed else None)
        for c, counts in enumerate(back.image_counts):
            assert counts.get(f"{local.name}.jpg", 0) == int((stored == c).sum())
        total += len(stored)
    assert int(back.sizes.sum()) + back.n_noise == total


def _kill_first_running_shard(tmp_path: Path, src: Path, experiment: str) -> str:
    """SIGKILL the process of the first assigning shard run seen RUNNING (a worker's child) once
    its MLflow shard run is RUNNING too, so the batch has a run to end; its flow run id."""
    import os
    import signal

    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    ml = MlflowClient()
    deadline = time.monotonic() + 300
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            for run in client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["segment"]))):
                mine = run.parameters.get("classes_from") and all(str(u).startswith(str(src)) for u in run.parameters["images"])
                if not (mine and run.state is not None and run.state.is_running() and run.infrastructure_pid):
                    continue
                exp = ml.get_experiment_by_name(experiment)
                if exp is None or not ml.search_runs([exp.experiment_id], f"tags.`samseg.prefect_flow_run_id` = '{run.id}' "
                                                     "and attributes.status = 'RUNNING'"):
                    continue
                os.kill(int(str(run.infrastructure_pid).rsplit(":", 1)[-1]), signal.SIGKILL)
                return str(run.id)
            time.sleep(0.2)
    raise AssertionError(f"no shard run started:\n{_worker_logs(tmp_path)}")


def _worker_logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(tmp_path.glob("worker*.log")))
