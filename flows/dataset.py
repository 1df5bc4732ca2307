"""Prefect task for dataset-level classes (issue 6); the work is samseg.dataset_outputs.

segment-batch calls `dataset_classes_task` once every image dir of the batch exists.
"""

from __future__ import annotations

from typing import Any, Optional

from prefect import task

from samseg.dataset_outputs import apply_dataset_classes, load_class_table, log_dataset_classes


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
