"""One MLflow run per shard of a batch fanned out to workers, not one per image.

A million images as a million runs make an experiment slow to search and to list. A batch
split in shards (`--fan-out deployment`) logs its parent run and one run per shard run that
logs: kind "shard", nested under the batch run, with the parameters its images share, its
totals as metrics and its images as one table artifact (SHARD_IMAGES_TABLE: a row each —
name, input, status, error, output dir, masks, classes, noise, eps). The images' outputs are
their dirs in OUT: the batch's record (batch_summary.json) names them, and every reader of a
batch takes a sharded batch's images from there (samseg.edges.mlflow.tracking.batch_images).
A shard run whose process was killed before it could end its MLflow run is ended KILLED by
the batch (`end_runs_of_flow_run`), never left RUNNING. When the batch died too, the next batch
ends it: the orphan sweep of a batch start (samseg.edges.mlflow.batch_runs) when it ran on this
host and its pid is gone, and a sharded batch's start (flows.fanout) when its Prefect flow run is
over; a shard run whose process still runs is never ended by anyone but itself.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Optional

from samseg.core.secrets import scrub_secrets
from samseg.edges.mlflow import client as mlflow_client
from samseg.edges.mlflow.client import TrackingError
from samseg.edges.run_schema import (KIND_SHARD, TAG_HOST, TAG_KIND, TAG_MLFLOW_PARENT, TAG_OUT_DIR, TAG_PID, TAG_PREFECT_API,
                                     TAG_PREFECT_FLOW_RUN)

SHARD_IMAGES_TABLE = "images.json"  # the shard run's table of its images (mlflow.load_table)
TABLE_COLUMNS: tuple[str, ...] = ("name", "image", "status", "error", "out_dir", "n_masks", "n_clusters", "n_noise", "eps")


def start_shard_run(experiment: str, batch_run_id: str, run_name: str, params: dict[str, Any],
                    flow_run_id: Optional[str], out: str) -> str:
    """Start (RUNNING) the MLflow run of one shard, nested under batch run `batch_run_id`."""
    from mlflow.exceptions import MlflowException

    from samseg.edges.mlflow.tracking import _log_values, experiment_id

    tags = {TAG_KIND: KIND_SHARD, TAG_MLFLOW_PARENT: batch_run_id, TAG_PREFECT_FLOW_RUN: flow_run_id,
            TAG_OUT_DIR: out, TAG_HOST: socket.gethostname(), TAG_PID: os.getpid(),
            TAG_PREFECT_API: os.environ.get("PREFECT_API_URL")}
    try:
        client = mlflow_client.client()
        run = client.create_run(experiment_id(client, experiment), run_name=run_name,
                                tags={k: scrub_secrets(str(v)) for k, v in tags.items() if v is not None})
        _log_values(client, run.info.run_id, params, {})
    except MlflowException as exc:
        raise TrackingError(f"MLflow at {mlflow_client.where()}: cannot start shard run {run_name!r}: "
                            f"{mlflow_client.error_line(exc)}") from None
    return run.info.run_id


def table_rows(entries: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The shard's report entries as SHARD_IMAGES_TABLE columns (missing values: "")."""
    return {c: ["" if e.get(c) is None else e.get(c) for e in entries] for c in TABLE_COLUMNS}


def end_shard_run(run_id: str, entries: list[dict[str, Any]], status: str = "FINISHED") -> None:
    """Log the shard's images (table + totals) on its run and end it with `status`; the run is
    ended even when its table cannot be logged, and then TrackingError says so."""
    from mlflow.exceptions import MlflowException

    from samseg.edges.mlflow.tracking import _log_values

    client = mlflow_client.client()
    done = [e for e in entries if e.get("status") == "completed"]
    totals = {"images": len(entries), "succeeded": len(done), "failed": len(entries) - len(done),
              "n_masks": sum(int(e.get("n_masks") or 0) for e in done)}
    problem = None
    try:
        if entries:
            client.log_table(run_id, data=table_rows(entries), artifact_file=SHARD_IMAGES_TABLE)
        _log_values(client, run_id, {}, totals)
    except Exception as exc:  # noqa: BLE001 — MlflowException, an artifact store's error: the run still ends
        problem = mlflow_client.error_line(exc)
    try:
        client.set_terminated(run_id, status)
    except MlflowException as exc:
        problem = problem or mlflow_client.error_line(exc)
    if problem is not None:
        raise TrackingError(f"MLflow shard run {run_id}: {problem}")


def end_runs_of_flow_run(batch_run_id: str, flow_run_id: str, status: str = "KILLED") -> None:
    """End the RUNNING shard runs of batch run `batch_run_id` that Prefect flow run `flow_run_id`
    started (its process died before it could); best effort."""
    from mlflow.exceptions import MlflowException

    try:
        client = mlflow_client.client()
        parent = client.get_run(batch_run_id)
        for run in client.search_runs([parent.info.experiment_id],
                                      f"tags.`{TAG_MLFLOW_PARENT}` = '{batch_run_id}' and attributes.status = 'RUNNING' "
                                      f"and tags.`{TAG_PREFECT_FLOW_RUN}` = '{flow_run_id}'", max_results=10):
            client.set_terminated(run.info.run_id, status)
    except MlflowException:
        pass  # the batch run's own end, or the next batch's orphan sweep, ends it


def running_shard_runs(experiment: str) -> dict[str, tuple[str, Optional[str]]]:
    """{MLflow run id: (Prefect flow run id, the Prefect API it lives on)} of the experiment's shard
    runs still RUNNING."""
    from samseg.edges.mlflow.tracking import experiment_id

    client = mlflow_client.client()
    runs = client.search_runs([experiment_id(client, experiment)], f"tags.`{TAG_KIND}` = '{KIND_SHARD}' "
                              "and attributes.status = 'RUNNING'", max_results=1000)
    return {r.info.run_id: (r.data.tags[TAG_PREFECT_FLOW_RUN], r.data.tags.get(TAG_PREFECT_API))
            for r in runs if r.data.tags.get(TAG_PREFECT_FLOW_RUN)}


def end_runs(run_ids: list[str], status: str = "KILLED") -> None:
    """End these shard runs (their processes are known to be gone)."""
    client = mlflow_client.client()
    for run_id in run_ids:
        client.set_terminated(run_id, status)
