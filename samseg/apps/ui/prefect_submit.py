"""Optional: run the UI's reruns through the Prefect `recluster` deployment.

Used when a Prefect server is configured (PREFECT_API_URL) and the deployment exists, so
a rerun shows up in the Prefect UI and runs on a worker like every other flow run. The
new MLflow run is found by the tag samseg.edges.mlflow.tracking sets inside a flow
(`samseg.prefect_flow_run_id`). Pooling changes always run in the UI process: the
recluster flow only re-clusters.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

from samseg.core.config import ClusterConfig
from samseg.apps.ui.service import RunDataError, RunStore
from samseg.edges.run_schema import TAG_PREFECT_FLOW_RUN

# "<flow name>/<deployment name>" as in deployments/prefect.yaml (flow `recluster`).
from samseg.edges.run_schema import RECLUSTER_DEPLOYMENT as DEFAULT_DEPLOYMENT  # noqa: E402

SUBMIT_MODES = ("auto", "local", "prefect")
_WAIT_S = 900  # a recluster is seconds of work; minutes means no worker is polling


def prefect_configured() -> bool:
    return bool(os.environ.get("PREFECT_API_URL"))


def deployment_exists(name: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(name)
    except ObjectNotFound:
        return False
    return True


def use_prefect(mode: str, pool_changed: bool, deployment: str) -> bool:
    """Whether this rerun goes through Prefect. 'prefect' without a server is an error."""
    if mode == "local" or pool_changed:
        return False
    if mode == "prefect":
        if not prefect_configured():
            raise RunDataError("--submit prefect needs PREFECT_API_URL (a Prefect server)")
        return True
    return prefect_configured() and deployment_exists(deployment)


def rerun_via_prefect(
    store: RunStore, run_id: str, cluster_cfg: ClusterConfig, out: str, progress: Callable[[str], None],
    deployment: str = DEFAULT_DEPLOYMENT,
) -> dict[str, Any]:
    """Trigger the deployment, wait for the flow run, return the new run like actions.rerun."""
    from prefect.deployments import run_deployment

    run = store.get_run(run_id)
    experiment = store.client.get_experiment(run.info.experiment_id).name
    params = {"cluster": dataclasses.asdict(cluster_cfg), "out": out, "run_id": run_id, "experiment": experiment}
    progress(f"waiting for Prefect deployment {deployment}")
    flow_run = run_deployment(name=deployment, parameters=params, timeout=_WAIT_S, poll_interval=1, as_subflow=False)
    state = flow_run.state
    if state is None or not state.is_completed():
        what = state.name if state is not None else "no state"
        raise RunDataError(f"Prefect flow run {flow_run.name} ({flow_run.id}) ended {what}: {getattr(state, 'message', '') or ''}".strip())
    found = store.client.search_runs(
        [run.info.experiment_id], f"tags.`{TAG_PREFECT_FLOW_RUN}` = '{flow_run.id}'", max_results=1
    )
    if not found:
        raise RunDataError(f"Prefect flow run {flow_run.id} finished but logged no MLflow run in {experiment!r}")
    new = found[0]
    m = new.data.metrics
    new_id = new.info.run_id
    return {
        "run_id": new_id,
        "parent_run_id": run_id,
        "n_clusters": int(m.get("n_clusters", 0)),
        "n_noise": int(m.get("n_noise", 0)),
        "overlay_url": f"/runs/{new_id}/files/overlay.png",
        "run_url": f"/runs/{new_id}",
        "prefect_url": store.prefect_url(str(flow_run.id)),
        "via": "prefect",
    }
