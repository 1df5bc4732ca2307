"""What the UI shows of dataset runs: batch parent runs whose images share one set of
class ids (samseg.core.dataset.ClassTable in classes.json, logged by
samseg.edges.dataset_outputs.log_dataset_classes), and the note on their child image runs.
"""

from __future__ import annotations

from typing import Any

from samseg.apps.ui.service import IMAGE_KINDS, RunDataError, RunStore
from samseg.edges.run_schema import DATASET_MODES, KIND_SHARD, SHARDED, TAG_KIND, TAG_MLFLOW_PARENT
from samseg.edges.owned_files import CLASSES_JSON

_MAX_CHILDREN = 500  # one page; a batch larger than that is browsed in MLflow


def children(store: RunStore, run: Any, record: dict[str, Any]) -> list[Any]:
    """The image runs batch run `run` recorded (its `record`, batch_record: an empty one for a
    batch without one), in its order, and recluster runs nested under it (tag
    mlflow.parentRunId), oldest first."""
    from samseg.edges.mlflow.tracking import images_in

    rid = run.info.run_id  # checked by RunStore.get_any_run: [A-Za-z0-9_-] only, safe in a filter
    found = store.client.search_runs([run.info.experiment_id], f"tags.`{TAG_MLFLOW_PARENT}` = '{rid}'",
                                     order_by=["attributes.start_time ASC"], max_results=_MAX_CHILDREN)
    recorded = images_in(record)  # no record (running, killed, an older samseg's batch): no image run to vouch for
    images = {r.info.run_id: r for r in found if r.data.tags.get(TAG_KIND, "image") == "image"}
    return [images[i] for i in recorded if i in images] + [r for r in found if r.data.tags.get(TAG_KIND) == "recluster"]


def record_of(store: RunStore, run: Any) -> dict[str, Any]:
    """Batch run `run`'s record (samseg.edges.mlflow.tracking.batch_record), read once per page; {} when it has none."""
    from samseg.edges.mlflow.client import TrackingError
    from samseg.edges.mlflow.tracking import batch_record

    try:
        return batch_record(store.client, run)
    except TrackingError:
        return {}


def class_table(store: RunStore, run_id: str) -> Any:
    """samseg.core.dataset.ClassTable of a dataset run's classes.json (RunDataError if unusable)."""
    from samseg.core.dataset import ClassTable, ClassTableError

    path = store.run_dir(run_id) / CLASSES_JSON
    try:
        return ClassTable.from_json(path.read_bytes(), source=f"run {run_id} classes.json")
    except ClassTableError as exc:
        raise RunDataError(str(exc)) from exc


def dataset_detail(store: RunStore, run: Any) -> dict[str, Any]:
    """Everything the dataset run page shows (also GET /api/runs/{id} of a dataset run)."""
    from samseg.core.contact_sheet import MAX_ROWS
    from samseg.core.render import class_color

    rid = run.info.run_id
    table = class_table(store, rid)
    cov = table.image_coverage()
    row = store.dataset_row(run)
    names = table.class_names
    scores = {int(r["id"]): r["score"] for r in table.naming.get("classes", []) if r.get("name") and r.get("score") is not None}
    classes = [
        {"id": c, "color": "#%02x%02x%02x" % class_color(c), "size": int(table.sizes[c]), "name": names.get(c),
         "score": scores.get(c),
         "images": list(table.image_counts[c]), "image_counts": dict(table.image_counts[c]),
         "n_images": len(table.image_counts[c]), "image_coverage": round(float(cov[c]), 4),
         "radius": round(float(table.radii[c]), 4),
         "thumb": sheet_window(row["contact_sheet_url"], c) if c < MAX_ROWS else None}
        for c in range(table.n_classes)
    ]
    known = {rid: run}
    record = record_of(store, run)
    shards = shard_section(store, run, record)
    kids = [] if shards else [store.row(r, known) for r in children(store, run, record)]  # a sharded batch: no image runs
    source = row["classes_from"]
    return {
        "run": row,
        "classes": classes,
        "dataset_edit": True,  # the curation panel edits the batch's classes (templates/_curation.html)
        "edit_rows": [{**c, "n_masks": c["size"]} for c in classes if c["size"]],  # a class this batch lacks: nothing to edit
        "n_classes": table.n_classes,
        "n_noise": int(table.n_noise),
        "n_images": len(table.image_names),
        "image_names": list(table.image_names),
        "cluster": dict(table.cluster),
        "children": kids,
        **shards,
        # classes_from is a run id or a classes.json path/URI: only a run id gets a link.
        "classes_from": source,
        "classes_from_url": f"/runs/{source}" if source and _looks_like_run(store, source) else None,
        "classes_json_url": f"/runs/{rid}/files/classes.json",
        "contact_sheet_url": row["contact_sheet_url"],
    }


THUMB_PX = 72  # a class's thumbnail in the curation panel, as the run page's cut-outs


def sheet_window(sheet_url: str, c: int) -> str:
    """CSS of a THUMB_PX square showing class c's first cut-out on the contact sheet the page
    loads anyway (samseg.core.contact_sheet.cutout_xywh): no image fetched per class."""
    from samseg.core.contact_sheet import cutout_xywh, sheet_width

    x, y, w, _ = cutout_xywh(c)
    k = THUMB_PX / w
    return (f"background-image: url('{sheet_url}'); background-size: {sheet_width() * k:.1f}px auto; "
            f"background-position: -{x * k:.1f}px -{y * k:.1f}px; width: {THUMB_PX}px; height: {THUMB_PX}px")


def batch_detail(store: RunStore, run: Any) -> dict[str, Any]:
    """The page of a batch run of per-image classes: its header and its image runs, with links
    (a batch split in shards: its shard runs and its images as it recorded them)."""
    record = record_of(store, run)
    shards = shard_section(store, run, record)
    kids = [] if shards else [store.row(r) for r in children(store, run, record)]  # a sharded batch: no image runs
    images = [k for k in kids if k["kind"] in IMAGE_KINDS]  # a recluster batch's image runs are reclusters
    return {"run": store.batch_row(run), "children": kids, "n_images": len(images),
            "n_recorded": store.batch_row(run)["n_images"], **shards}


def shard_section(store: RunStore, run: Any, record: dict[str, Any]) -> dict[str, Any]:
    """What a batch page shows of a batch split in shards (one MLflow run per shard, none per
    image: samseg.edges.mlflow.shard_runs): its shard runs, and its images as its `record` lists
    them (the first _MAX_CHILDREN). {} for any other batch."""
    entries = [e for e in record.get("images") or [] if isinstance(e, dict)]
    if record.get("fan_out") != SHARDED or any(e.get("mlflow_run_id") for e in entries):  # an older samseg's: image runs
        return {}
    rid = run.info.run_id  # checked by RunStore: [A-Za-z0-9_-] only, safe in a filter
    runs = store.client.search_runs([run.info.experiment_id], f"tags.`{TAG_MLFLOW_PARENT}` = '{rid}' and "
                                    f"tags.`{TAG_KIND}` = '{KIND_SHARD}'", order_by=["attributes.start_time ASC"],
                                    max_results=_MAX_CHILDREN)
    shards = [{"run_id": r.info.run_id, "name": r.info.run_name, "status": r.info.status,
               "images": int(r.data.metrics.get("images", 0)), "failed": int(r.data.metrics.get("failed", 0)),
               "mlflow_url": store.mlflow_url(r)} for r in runs]
    keys = ("name", "status", "n_masks", "n_clusters", "n_noise", "out_dir", "error", "mlflow_shard_run_id")
    return {"shards": shards, "shard_images": [{k: e.get(k) for k in keys} for e in entries[:_MAX_CHILDREN]],
            "n_shard_images": len(entries)}


def _looks_like_run(store: RunStore, ref: str) -> bool:
    from samseg.apps.ui.guards import valid_run_id

    if not valid_run_id(ref):
        return False
    try:
        store.get_any_run(ref)
    except LookupError:
        return False
    return True


def dataset_note(store: RunStore, row: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any] | None:
    """What an image run page says about dataset ids: its ids ARE the dataset's (a child of
    a dataset run), or this run is a per-image rerun of such a child; None otherwise."""
    if row.get("dataset_run_id"):
        return {"kind": "member", "batch_run_id": row["dataset_run_id"], "mode": row.get("dataset_mode")}
    if summary.get("classes") in DATASET_MODES:  # logged with dataset ids, batch run not found
        return {"kind": "member", "batch_run_id": None, "mode": summary["classes"]}
    if summary.get("rerun_of_dataset_ids"):
        return {"kind": "rerun", "batch_run_id": None, "mode": summary["rerun_of_dataset_ids"]}
    return None
