"""Scale-out on loopback: a real Prefect server, TWO `prefect worker` processes on the
`samseg-local` pool, deployments from deployments/prefect.yaml, a batch of 4 images fanned
out as one `segment` deployment run per image. Each image must be processed exactly once
and logged to MLflow under the batch run. Every process is killed in teardown.
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
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--name", f"w{i}", "--limit", "2"],
                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        yield env
    finally:
        for p in procs:
            stop_process(p, timeout_s=3)  # a worker's graceful stop is not what this tests


def test_two_workers_take_each_image_exactly_once(prefect_api, workers, small_photos, tmp_path) -> None:
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter
    from prefect.deployments import run_deployment

    from flows.params import PipelineParams, RuntimeParams

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    names = ["alphabet.jpg", "bears.jpg", "building.jpg", "corgi.jpg"]
    for name in names:
        (src / name).write_bytes((small_photos / name).read_bytes())
    smoke = PipelineParams.from_preset("smoke")
    settings = smoke.model_copy(update={"amg": smoke.amg.model_copy(update={"points_per_side": 4})})
    experiment = f"scaleout-{uuid.uuid4().hex[:8]}"
    batch = run_deployment(
        "segment-batch/nightly-batch",
        parameters={"source": str(src), "out": str(out), "settings": settings.model_dump(),
                    "runtime": RuntimeParams(device="cpu", cache=str(tmp_path / "cache")).model_dump(),
                    "experiment": experiment, "fan_out": "deployment"},
        timeout=0,
    )
    deadline = time.monotonic() + 540
    with get_client(sync_client=True) as client:
        while True:
            fr = client.read_flow_run(batch.id)
            if fr.state is not None and fr.state.is_final():
                break
            assert time.monotonic() < deadline, f"batch still {fr.state.name if fr.state else None}:\n{_worker_logs(tmp_path)}"
            time.sleep(2)
        assert fr.state.is_completed(), f"batch {fr.state.name}: {fr.state.message}\n{_worker_logs(tmp_path)}"
        image_runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["segment"])),
                                           flow_run_filter=FlowRunFilter())
    per_image: dict[str, list] = {}
    for run in image_runs:
        per_image.setdefault(Path(run.parameters["image"]).name, []).append(run)
    assert sorted(per_image) == names
    assert all(len(runs) == 1 and runs[0].state.is_completed() for runs in per_image.values()), per_image
    for name in names:
        summary = json.loads((out / Path(name).stem / "summary.json").read_text())
        assert summary["prefect_flow_run_id"] == str(per_image[name][0].id)

    report = json.loads((out / "batch_summary.json").read_text())
    assert report["fan_out"] == "deployment" and report["succeeded"] == 4
    ml = MlflowClient()
    exp = ml.get_experiment_by_name(experiment)
    children = ml.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{report['mlflow_run_id']}'")
    assert sorted(r.info.run_name for r in children) == names
    assert {r.data.tags["samseg.prefect_flow_run_id"] for r in children} == {str(r[0].id) for r in per_image.values()}


def _worker_logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(tmp_path.glob("worker*.log")))
