"""Dataset-level classes for a finished batch: one set of ids for every image, then each
image's MLflow run (logged after relabelling, so the runs carry the dataset ids).

The work on the image dirs is samseg.edges.dataset_outputs; this module sequences it for
the CLI's local orchestrator and the segment-batch flow alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from samseg.core.config import ClusterConfig
from samseg.edges.run_schema import KIND_IMAGE, TAG_KIND, TAG_OUT_DIR
from samseg.engine.runner import Execute, inline
from samseg.engine.segment import one_line


def check_dataset_request(out: str, classes_from: Optional[str], model: Any = None) -> None:
    """Fail fast (before any image is segmented): dataset classes need a local OUT, and a
    `classes_from` that does not load (unknown run, bad classes.json) or was built from another
    backbone's embeddings than `model`'s (a samseg.sam.source.ModelIdentity) is an error now,
    not after the whole batch. Raises DatasetOutputsError / TrackingError / ClassTableError."""
    from samseg.edges.dataset_outputs import check_local_out, check_same_model, load_class_table

    check_local_out(out)
    if classes_from:
        table = load_class_table(classes_from)
        if model is not None:
            check_same_model(table, [{"model": {"type": model.model_type, "checkpoint_sha256": model.checkpoint_sha256},
                                      "features": model.features_record()}])


def classify_dirs(out: str, dirs: list[str], cluster_cfg: ClusterConfig, batch_run_id: Optional[str],
                  classes_from: Optional[str], max_cluster: Optional[int], seed: int = 0) -> dict[str, Any]:
    """Cluster the batch's image dirs together (classes_from None) or assign them to the
    classes of `classes_from`; log classes.json, contact sheet and metrics on the batch run."""
    from samseg.edges.dataset_outputs import apply_dataset_classes, load_class_table, log_dataset_classes

    table = load_class_table(classes_from) if classes_from else None
    report = apply_dataset_classes(out, dirs, cluster_cfg, table=table, max_cluster=max_cluster, seed=seed)
    if batch_run_id:
        log_dataset_classes(batch_run_id, report)
    return report


def relabel_and_track(out: str, results: list[dict[str, Any]], cluster_cfg: ClusterConfig, batch_run_id: Optional[str],
                      classes_from: Optional[str], max_cluster: Optional[int], track: bool, experiment: str,
                      register_classes: Optional[str] = None, execute: Execute = inline) -> dict[str, Any]:
    """Dataset ids for the completed images of a batch, then their MLflow child runs.

    results: the batch's per-image entries ("status", "name"); completed entries gain
    "mlflow_run_id". Returns the class report: mode, n_classes, metrics, classes_json,
    contact_sheet (+ registered) — or {"error": one line} when classing failed (the image
    dirs then keep their per-image ids, and are still logged).
    """
    done = [r for r in results if r["status"] == "completed"]
    dirs = [str(Path(out) / r["name"]) for r in done]
    if not dirs:
        info: dict[str, Any] = {"error": f"{out}: no completed image to give dataset-level classes to"}
    else:
        try:
            rep = execute("dataset-classes", lambda: classify_dirs(out, dirs, cluster_cfg, batch_run_id, classes_from,
                                                                   max_cluster))
            info = {k: rep[k] for k in ("mode", "n_classes", "metrics", "classes_json", "contact_sheet")}
            if register_classes and batch_run_id and rep["mode"] == "dataset":
                from samseg.edges.mlflow.class_registry import register_classes as register

                info["registered"] = execute("register-classes", lambda: register(batch_run_id, register_classes,
                                                                                  rep["classes_json"]))
        except Exception as exc:  # a bad classes.json, an image that moved, MLflow down, ...
            info = {"error": one_line(exc)}
    for r, d in zip(done, dirs):
        summary = json.loads((Path(d) / "summary.json").read_text(encoding="utf-8"))
        r.update(n_clusters=summary.get("n_clusters"), n_noise=summary.get("n_noise"))  # now the dataset ids'
        if track:
            r["mlflow_run_id"] = execute("track", lambda: _log(d, summary, experiment, batch_run_id, r["name"]))
    return info


def _log(d: str, summary: dict[str, Any], experiment: str, batch_run_id: Optional[str], name: str) -> str:
    from samseg.edges.mlflow.tracking import log_image_run

    run_name = (summary.get("image") or {}).get("file_name") or name
    return log_image_run(Path(d), summary, experiment=experiment, nested_under=batch_run_id, run_name=run_name,
                         extra_tags={TAG_KIND: KIND_IMAGE, TAG_OUT_DIR: d})
