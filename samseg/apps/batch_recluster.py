"""A batch run clustered again with some of its knobs changed: the one request `samseg recluster
BATCH` and the UI's batch page both make, so a batch reclustered from either is the same batch.

The changes are cluster knobs by name (`eps=0.1`, `eps="auto"`, `min_samples=4`), over each
image's own settings (its run's params: under `--eps auto` each image had its own eps) and, for
the new batch run's params and a dataset batch's classes, over the batch's.
"""

from __future__ import annotations

from typing import Any, Mapping


def cluster_params(run_params: Mapping[str, str], changes: Mapping[str, Any]) -> Any:
    """flows.params.ClusterParams = a run's cluster.* params, then `changes` (None = not changed;
    a number for eps turns the run's eps auto off, "auto" turns it on). A bad value:
    pydantic's ValidationError, each error at its knob."""
    from flows.params import ClusterParams

    base = {k.split(".", 1)[1]: v for k, v in run_params.items() if k.startswith("cluster.")}
    base = {k: v for k, v in base.items() if k in ClusterParams.model_fields}  # not eps_chosen / eps_rule
    given = {k: v for k, v in changes.items() if v is not None}
    if "eps" in given:
        given["eps_auto"] = given["eps"] == "auto"
        if given["eps"] == "auto":
            del given["eps"]
    return ClusterParams(**{**base, **given})


def recluster_batch_run(batch_run_id: str, images: dict[str, str], batch_params: Mapping[str, str],
                        changes: Mapping[str, Any], out: str, tracking: Any, cache_root: str,
                        record_dirs: bool = True) -> dict[str, Any]:
    """Every image of the batch (`images`: its record, samseg.edges.mlflow.tracking.images_of_batch)
    reclustered with `changes` into OUT, as one new batch run (samseg.engine.recluster.recluster_batch);
    its report. A bad value is a ValidationError before any image (checked against the batch's own
    settings: a euclidean batch takes an eps a cosine one does not). The new batch run logs the
    batch's settings with the changes over them, so a compare of the two shows what changed.
    record_dirs=False: OUT is a temporary folder (the UI's): the runs name no dir of it."""
    import dataclasses

    from samseg.edges.mlflow.tracking import image_params
    from samseg.edges.run_schema import PARAM_MAX_CLUSTER
    from samseg.engine.recluster import recluster_batch

    batch_cluster = cluster_params(batch_params, changes).to_config()  # a bad value, before any image
    params = {**{k: v for k, v in batch_params.items() if k != "n_images"},
              **{f"cluster.{k}": v for k, v in dataclasses.asdict(batch_cluster).items()}}
    raw = batch_params.get(PARAM_MAX_CLUSTER) or ""
    max_cluster = int(raw) if raw.isdigit() else None  # what its dataset classes were fitted under

    def cluster_for(image_run: str) -> Any:
        return cluster_params(image_params(image_run), changes).to_config()

    return recluster_batch(batch_run_id, images, cluster_for, out, tracking, cache_root, params=params,
                           batch_cluster=batch_cluster, max_cluster=max_cluster, record_dirs=record_dirs)
