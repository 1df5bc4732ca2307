"""Dataset-level classes for a finished batch: one set of ids for every image, then each
image's MLflow run (logged after relabelling, so the runs carry the dataset ids).

The work on the image dirs is samseg.edges.dataset_outputs; this module sequences it for
the CLI's local orchestrator and the segment-batch flow alike.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from samseg.core.config import ClusterConfig
from samseg.edges.run_schema import KIND_IMAGE, TAG_KIND, TAG_OUT_DIR
from samseg.engine.runner import Execute, inline
from samseg.engine.stages import WRITE
from samseg.engine.segment import one_line


def check_dataset_request(out: str, classes_from: Optional[str], model: Any = None) -> None:
    """Fail fast (before any image is segmented): a `classes_from` that does not load (unknown run, bad classes.json) or was built from another
    backbone's embeddings than `model`'s (a samseg.sam.source.ModelIdentity) is an error now,
    not after the whole batch. Raises DatasetOutputsError / TrackingError / ClassTableError."""
    from samseg.edges.dataset_outputs import check_same_model, load_class_table

    if classes_from:
        table = load_class_table(classes_from)
        if model is not None:
            check_same_model(table, [{"model": {"type": model.model_type, "checkpoint_sha256": model.checkpoint_sha256},
                                      "features": model.features_record()}])


def classify_dirs(out: str, dirs: list[str], cluster_cfg: ClusterConfig, batch_run_id: Optional[str],
                  classes_from: Optional[str], max_cluster: Optional[int], seed: int = 0,
                  namer: Optional[Callable[..., dict[str, Any]]] = None) -> dict[str, Any]:
    """Cluster the batch's image dirs together (classes_from None; named by `namer` when given,
    samseg.engine.naming.dataset_namer) or assign them to the classes of `classes_from` (and
    their names); log classes.json, contact sheet and metrics on the batch run."""
    from samseg.edges.dataset_outputs import apply_dataset_classes, load_class_table, log_dataset_classes

    table = load_class_table(classes_from) if classes_from else None
    report = apply_dataset_classes(out, dirs, cluster_cfg, table=table, max_cluster=max_cluster, seed=seed,
                                   namer=namer)
    if batch_run_id:
        log_dataset_classes(batch_run_id, report)
    return report


def relabel_and_track(out: str, results: list[dict[str, Any]], cluster_cfg: ClusterConfig, batch_run_id: Optional[str],
                      classes_from: Optional[str], max_cluster: Optional[int], track: bool, experiment: str,
                      register_classes: Optional[str] = None, execute: Execute = inline,
                      namer: Optional[Callable[..., dict[str, Any]]] = None) -> dict[str, Any]:
    """Dataset ids for the completed images of a batch, then their MLflow child runs.

    results: the batch's per-image entries ("status", "name"); completed entries gain
    "mlflow_run_id". Returns the class report: mode, n_classes, metrics, classes_json,
    contact_sheet (+ registered) — or {"error": one line} when classing failed (the image
    dirs then keep their per-image ids, and are still logged).
    """
    from samseg.edges.storage import join_uri

    done = [r for r in results if r["status"] == "completed"]
    if not done:
        return {"error": f"{out}: no completed image to give dataset-level classes to"}
    with ExitStack() as stack:
        try:
            dirs, publish = stack.enter_context(local_image_dirs(out, [r["name"] for r in done]))
        except Exception as exc:  # an S3 image dir that cannot be read back: its images keep their own ids
            if track:
                for r in done:
                    r["tracking_error"] = "not logged: the batch's image dirs could not be read back from S3"
            return {"error": one_line(exc)}
        try:
            rep = execute("dataset-classes", lambda: classify_dirs(out, dirs, cluster_cfg, batch_run_id, classes_from,
                                                                   max_cluster, namer=namer))
            execute(WRITE, publish)  # an S3 OUT: the relabelled dirs go back (I/O retries in a flow)
            info = {k: rep[k] for k in ("mode", "n_classes", "metrics", "classes_json", "contact_sheet")}
            if register_classes and batch_run_id and rep["mode"] == "dataset":
                from samseg.edges.mlflow.class_registry import register_classes as register
                from samseg.edges.storage import local_path

                with local_path(rep["classes_json"]) as path:
                    info["registered"] = execute("register-classes", lambda: register(batch_run_id, register_classes,
                                                                                      path))
        except Exception as exc:  # a bad classes.json, an image that moved, MLflow or S3 down, ...
            info = {"error": one_line(exc)}
        for r, d in zip(done, dirs):
            summary = json.loads((Path(d) / "summary.json").read_text(encoding="utf-8"))
            r.update(n_clusters=summary.get("n_clusters"), n_noise=summary.get("n_noise"))  # now the dataset ids'
            if track:
                where = join_uri(out, r["name"])
                r["mlflow_run_id"] = execute("track", lambda: _log(d, where, summary, experiment, batch_run_id, r["name"]))
    return info


@contextmanager
def local_image_dirs(out: str, names: list[str]) -> Iterator[tuple[list[str], Callable[[], None]]]:
    """(the image dirs OUT/<name> as local folders, publish): a local OUT's own dirs, rewritten
    in place (publish does nothing); under an s3:// OUT, copies of each published dir (only
    the files its _SUCCESS lists) in a temporary folder, and publish uploads them back under
    the manifest rules of every publish (samseg.edges.storage.upload_dir). Until then the
    batch stays marked incomplete (samseg.edges.owned_files), so a crash here is redone by a rerun."""
    from samseg.edges.storage import SUCCESS_MARKER, download_prefix, is_s3_uri, join_uri, upload_dir

    if not is_s3_uri(out):
        yield [str(Path(out) / n) for n in names], lambda: None
        return
    with tempfile.TemporaryDirectory(prefix="samseg-dataset-") as tmp:
        dirs = []
        for name in names:
            local = Path(tmp) / name
            download_prefix(join_uri(out, name), local, require_success=True)
            (local / SUCCESS_MARKER).unlink()  # the copy is samseg's image dir, its marker listing every file
            dirs.append(str(local))

        def publish() -> None:
            for name, local in zip(names, dirs):
                upload_dir(local, join_uri(out, name))

        yield dirs, publish


def _log(d: str, where: str, summary: dict[str, Any], experiment: str, batch_run_id: Optional[str], name: str) -> str:
    from samseg.edges.mlflow.tracking import log_image_run

    run_name = (summary.get("image") or {}).get("file_name") or name
    return log_image_run(Path(d), summary, experiment=experiment, nested_under=batch_run_id, run_name=run_name,
                         extra_tags={TAG_KIND: KIND_IMAGE, TAG_OUT_DIR: where})
