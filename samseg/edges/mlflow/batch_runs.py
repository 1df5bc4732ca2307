"""Batch parent runs that survive a killed process: no run RUNNING forever, no duplicates.

A batch run carries the host and pid of the process that owns it and a key of what it
does (experiment, source, out, config). When a batch starts, RUNNING batch runs of this
host whose process is gone are either resumed (same key: the killed batch is being rerun,
so the new one reuses its run and the images already logged under it are not logged again)
or ended as KILLED (another batch). Runs of other hosts are never touched: their pids mean
nothing here.
"""

from __future__ import annotations

import hashlib
import json
import socket
from typing import Any

from samseg.edges.mlflow import client as mlflow_client, tracking
from samseg.edges.mlflow.client import TrackingError
from samseg.edges.mlflow.process import in_mlflow_process
from samseg.edges.shutdown import pid_alive
from samseg.edges.run_schema import KIND_BATCH, KIND_SHARD, TAG_BATCH_KEY, TAG_HOST, TAG_IMAGE_SHA256, TAG_KIND, TAG_MLFLOW_PARENT, TAG_OUT_DIR, TAG_PID



def batch_key(experiment: str, source: Any, out: str, params: dict[str, Any]) -> str:
    """Stable id of what a batch does: the same command again gives the same key."""
    blob = json.dumps({"experiment": experiment, "source": source, "out": out, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def _orphans(client: Any, experiment_id: str, owner_pid: int) -> list[Any]:
    """RUNNING batch runs owned by a process of this host that no longer exists (never `owner_pid`'s)."""
    runs = client.search_runs([experiment_id], f"tags.`{TAG_KIND}` = '{KIND_BATCH}' and attributes.status = 'RUNNING' "
                              f"and tags.`{TAG_HOST}` = '{socket.gethostname()}'", max_results=200)
    return [run for run in runs if _gone(run.data.tags.get(TAG_PID, ""), owner_pid)]


@in_mlflow_process
def open_batch_run(experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, Any],
                   key: str, *, owner_pid: int) -> tuple[str, bool]:
    """(run id, resumed): start a batch run owned by process `owner_pid` of this host (the
    command's, which this call may not run in), or resume the killed one with the same `key`;
    end other orphans as KILLED. Only a resumed run can already hold image runs."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client.client()
    resumed = None
    try:
        experiment_id = tracking.experiment_id(client, experiment)
        for run in _orphans(client, experiment_id, owner_pid):
            _end_running_images(client, experiment_id, run.info.run_id, owner_pid)
            if resumed is None and run.data.tags.get(TAG_BATCH_KEY) == key:
                resumed = run.info.run_id
                client.set_tag(resumed, TAG_PID, str(owner_pid))
            else:
                client.set_terminated(run.info.run_id, "KILLED")
    except MlflowException as exc:
        raise TrackingError(f"MLflow at {mlflow_client.where()}: cannot check earlier batch runs: "
                                     f"{mlflow_client.error_line(exc)}") from None
    if resumed is not None:
        return resumed, True
    own = {TAG_HOST: socket.gethostname(), TAG_PID: str(owner_pid), TAG_BATCH_KEY: key}
    return tracking.start_batch_run(experiment, run_name, params, {**tags, **own}), False


def _end_running_images(client: Any, experiment_id: str, batch_run_id: str, owner_pid: int) -> None:
    """An orphan batch's image runs still RUNNING were cut off while logging (their artifacts
    part-uploaded): FAILED. A resumed batch logs those images again. Its shard runs still
    RUNNING whose process (on this host) is gone: KILLED, as the batch would have ended them; a
    shard of another host is judged by its Prefect flow run (samseg.edges.mlflow.shard_runs)."""
    for run in client.search_runs([experiment_id], f"tags.`{TAG_MLFLOW_PARENT}` = '{batch_run_id}' "
                                  "and attributes.status = 'RUNNING'", max_results=1000):
        if run.data.tags.get(TAG_KIND) != KIND_SHARD:
            client.set_terminated(run.info.run_id, "FAILED")
        elif run.data.tags.get(TAG_HOST) == socket.gethostname() and _gone(run.data.tags.get(TAG_PID, ""), owner_pid):
            client.set_terminated(run.info.run_id, "KILLED")


def _gone(pid: str, owner_pid: int) -> bool:
    """True when `pid` (a tag of a run of this host) names a process that no longer runs (never the owner's)."""
    return pid.isascii() and pid.isdigit() and int(pid) != owner_pid and not pid_alive(int(pid))


@in_mlflow_process
def logged_image_run(batch_run_id: str, image_sha256: str, out_dir: str) -> str | None:
    """The FINISHED image run already nested under `batch_run_id` for this image and output
    dir (a resumed batch), or None."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client.client()
    try:
        parent = client.get_run(batch_run_id)
        runs = client.search_runs([parent.info.experiment_id],
                                  f"tags.`{TAG_MLFLOW_PARENT}` = '{batch_run_id}' and attributes.status = 'FINISHED' "
                                  f"and tags.`{TAG_IMAGE_SHA256}` = '{image_sha256}'", max_results=50)
    except MlflowException:
        return None
    for run in runs:
        if run.data.tags.get(TAG_OUT_DIR) == str(out_dir):
            return run.info.run_id
    return None
