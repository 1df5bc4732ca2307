"""Prefect task for dataset-level classes (issue 6); the work is samseg.edges.dataset_outputs.

segment-batch calls `relabel_and_track` once every image dir of the batch exists: it runs
`dataset_classes_task` over the completed image dirs, then logs one MLflow child run per
image (after relabelling, so the runs carry the dataset ids).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from prefect import task

from samseg.edges.dataset_outputs import (
    DatasetOutputsError,
    apply_dataset_classes,
    load_class_table,
    log_dataset_classes,
)


@task(name="dataset-classes")
def dataset_classes_task(out: str, image_dirs: list[str], cluster_cfg: Any, batch_run_id: Optional[str] = None,
                         classes_from: Optional[str] = None, max_cluster: Optional[int] = None, seed: int = 0) -> dict[str, Any]:
    """Prefect task for segment-batch: cluster the batch (classes_from None) or assign to the
    classes of `classes_from` (an MLflow run id, or a classes.json path / s3:// URI); log
    classes.json, contact_sheet.png, metrics and tags to `batch_run_id` when given."""
    table = load_class_table(classes_from) if classes_from else None
    report = apply_dataset_classes(out, image_dirs, cluster_cfg, table=table, max_cluster=max_cluster, seed=seed)
    if batch_run_id:
        log_dataset_classes(batch_run_id, report)
    return report


@task(name="register-classes", retries=2, retry_delay_seconds=0.5)
def register_classes_task(batch_run_id: str, name: str, classes_json: str) -> dict[str, Any]:
    """The batch's classes as a new version of registered model `name` (samseg.edges.class_registry)."""
    from samseg.edges.class_registry import register_classes

    return register_classes(batch_run_id, name, classes_json)


def check_dataset_request(out: str, classes_from: Optional[str]) -> None:
    """Fail fast (before any image is segmented): dataset classes need a local OUT, and a
    `classes_from` that does not load (unknown run, bad classes.json) is an error now,
    not after the whole batch. Raises DatasetOutputsError / TrackingError / ClassTableError."""
    if str(out).startswith("s3://"):
        raise DatasetOutputsError(f"{out}: dataset-level classes need a local --out for now")
    if classes_from:
        load_class_table(classes_from)


def relabel_and_track(out: str, results: list[dict[str, Any]], cluster_cfg: Any, batch_run_id: Optional[str],
                      classes_from: Optional[str], max_cluster: Optional[int], track: bool,
                      experiment: str, register_classes: Optional[str] = None) -> dict[str, Any]:
    """Dataset ids for the completed images of a batch, then their MLflow child runs.

    results: segment-batch's per-image entries ("status", "name"); completed entries gain
    "mlflow_run_id". Returns the class report for the batch report: mode, n_classes,
    metrics, classes_json, contact_sheet — or {"error": one line} when classing failed
    (the image dirs then keep their per-image ids, and are still logged).
    """
    from flows.segment import _one_line
    from flows.tasks import track_task

    done = [r for r in results if r["status"] == "completed"]
    dirs = [str(Path(out) / r["name"]) for r in done]
    if not dirs:
        info: dict[str, Any] = {"error": f"{out}: no completed image to give dataset-level classes to"}
    else:
        try:
            rep = dataset_classes_task(out, dirs, cluster_cfg, batch_run_id, classes_from, max_cluster)
            info = {k: rep[k] for k in ("mode", "n_classes", "metrics", "classes_json", "contact_sheet")}
            if register_classes and batch_run_id and rep["mode"] == "dataset":
                info["registered"] = register_classes_task(batch_run_id, register_classes, rep["classes_json"])
        except Exception as exc:  # a bad classes.json, an image that moved, MLflow down, ...
            info = {"error": _one_line(exc)}
    for r, d in zip(done, dirs):
        summary = json.loads((Path(d) / "summary.json").read_text(encoding="utf-8"))
        r.update(n_clusters=summary.get("n_clusters"), n_noise=summary.get("n_noise"))  # now the dataset ids'
        if track:
            run_name = summary.get("image", {}).get("file_name") or r["name"]
            r["mlflow_run_id"] = track_task(d, summary, experiment, None, batch_run_id, run_name, "image")
    return info
