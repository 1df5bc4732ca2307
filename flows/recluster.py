"""Prefect flow `recluster`: new clustering settings on masks + embeddings computed before.

A thin adapter over samseg.engine.recluster.recluster_job: only cluster, compose and
export run. The masks (amg) and embeddings (pool) come from the stage cache when it has
them, else from the artifacts of the MLflow run we start from (so a recluster works on a
machine that never saw the image); summary.json records which, per stage. The new MLflow
run is tagged `samseg.parent_run_id` = the run it started from.
"""

from __future__ import annotations

from typing import Any, Optional

from prefect import flow

from flows.params import ClusterParams, PipelineParams, RuntimeParams
from flows.tasks import flow_run_id, prefect_execute
from samseg.edges.run_schema import EXPERIMENT_DEFAULT, KIND_RECLUSTER, RECLUSTER_FLOW
from samseg.engine.publish import Tracking
from samseg.engine.recluster import ReclusterError, recluster_job
from samseg.engine.request import SegmentJob

__all__ = ["ReclusterError", "recluster_flow"]


@flow(name=RECLUSTER_FLOW, log_prints=True)
def recluster_flow(
    cluster: ClusterParams,
    out: str,
    run_id: Optional[str] = None,
    image: Optional[str] = None,
    settings: Optional[PipelineParams] = None,
    runtime: RuntimeParams = RuntimeParams(),
    track: bool = True,
    experiment: str = EXPERIMENT_DEFAULT,
) -> dict[str, Any]:
    """Re-cluster one image's cached masks/embeddings with `cluster` into OUT/<stem>/.

    Start from `run_id` (an MLflow image run), or from `image` + `settings` (model, AMG
    and pool config of an earlier `segment`; its cache entries must exist).
    """
    base = (settings or PipelineParams()).to_config()
    job = SegmentJob(base, runtime.to_config())
    tracking = Tracking(track=track, experiment=experiment, kind=KIND_RECLUSTER, parent_run_id=run_id)
    return recluster_job(cluster.to_config(), out, tracking, job.cache_root, run_id=run_id,
                         image_uri=image, base=base, model_request=job.model, execute=prefect_execute,
                         flow_run_id=flow_run_id())
