"""A person's edits of a batch's dataset-level classes, written as a new dataset batch.

The source is a dataset batch (`--classes dataset` or `--classes-from`): its OUT folder (with
classes.json and batch_summary.json) or its MLflow batch run (every image run it recorded is
downloaded). The edits (samseg.core.curation) apply to the masks of the whole batch at once —
the class ids are the dataset's, so "merge 3,7" merges them in every image and "split 5"
re-clusters class 5's masks across all images together. The result is a new batch: every
image dir rewritten with the new ids under OUT, a new classes.json (prototypes and radii of
the edited classes, their names) and contact sheet, batch_summary.json, and, when tracked, a
new MLflow batch run tagged with the run it edits, its image runs nested under it. The source
is never changed.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from samseg.core.curation import Edit, EditError, apply_edits
from samseg.edges.run_schema import DATASET_MODES, KIND_IMAGE, TAG_CLASSES, TAG_KIND, TAG_OUT_DIR, TAG_PARENT_RUN
from samseg.edges.owned_files import CLASSES_JSON
from samseg.engine.curate import EDITED_FROM, EDITS, edit_seconds
from samseg.engine.publish import Tracking


@dataclass
class DatasetSource:
    """A dataset batch read back: its image dirs (local copies of a run's), their output names,
    its class table, its MLflow batch run (None: an untracked folder) and where it was read:
    the folder, or the run."""

    dirs: list[Path]
    names: list[str]
    table: Any
    run_id: Optional[str]
    where: str
    wrote_to: tuple[str, ...] = ()  # the OUTs its images were written to (a run's), never to be replaced by an edit


def is_dataset_source(source: str) -> bool:
    """True for a dataset batch's OUT folder (it holds classes.json) or MLflow batch run
    (tag samseg.classes dataset|assigned); image dirs and image runs are not."""
    from samseg.edges.storage import exists, is_s3_uri, join_uri

    if Path(source).is_dir() or is_s3_uri(source):
        return exists(join_uri(source, CLASSES_JSON))
    from samseg.edges.mlflow.tracking import get_run

    return get_run(source).data.tags.get(TAG_CLASSES) in DATASET_MODES


def read_dataset(source: str, workdir: Path) -> DatasetSource:
    """The batch at `source` (a folder, an s3:// prefix, a run id); what is not local is downloaded into `workdir`.
    ValueError (one line) when it is not a complete dataset batch."""
    from samseg.edges.dataset_outputs import load_class_table
    from samseg.edges.owned_files import BATCH_SUMMARY_JSON
    from samseg.edges.storage import StorageError, download_prefix, is_s3_uri, join_uri, read_bytes

    if Path(source).is_dir() or is_s3_uri(source):
        table = load_class_table(join_uri(source, CLASSES_JSON))  # refuses a batch that did not finish
        try:
            record = json.loads(read_bytes(join_uri(source, BATCH_SUMMARY_JSON)))
            names = [str(r["name"]) for r in record["images"] if r.get("status") == "completed"]
        except (StorageError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{source}: no readable {BATCH_SUMMARY_JSON} listing its images ({exc})") from None
        logged = record.get("mlflow_run_id") if isinstance(record.get("mlflow_run_id"), str) else None
        if not is_s3_uri(source):
            return DatasetSource([_child(Path(source), n) for n in names], names, table, logged, str(Path(source).resolve()))
        for name in names:  # an S3 batch: local copies of its image dirs (only what each _SUCCESS lists)
            download_prefix(join_uri(source, name), _child(workdir, name), require_success=True)
        return DatasetSource([workdir / n for n in names], names, table, logged, source)
    from samseg.edges.dataset_outputs import load_classes_from_run
    from samseg.edges.mlflow import client as mlflow_client
    from samseg.edges.mlflow.tracking import ImageDir, batch_images, fetch_run_inputs, get_run

    run = get_run(source)
    if run.data.tags.get(TAG_CLASSES) not in DATASET_MODES:
        raise ValueError(f"MLflow run {source} is not a dataset batch (no dataset-level classes)")
    table = load_classes_from_run(source)
    dirs, names, wrote_to = [], [], set()
    for image_run, name in batch_images(mlflow_client.client(), run).items():
        name = name or image_run
        fetch_run_inputs(image_run, _child(workdir, name))
        dirs.append(workdir / name)
        names.append(name)
        where = get_run(image_run).data.tags.get(TAG_OUT_DIR) if not isinstance(image_run, ImageDir) else image_run  # a sharded batch's: its dir
        if where:
            wrote_to.add(str(where).rstrip("/").rsplit("/", 1)[0])
    return DatasetSource(dirs, names, table, source, source, tuple(sorted(wrote_to)))


def _child(folder: Path, name: str) -> Path:
    """folder/name for a name a batch's record gave: one plain component, else ValueError (one line)."""
    from samseg.edges.outdirs import OutputDirRefused, child_dir

    try:
        return child_dir(folder, name)
    except OutputDirRefused as exc:
        raise ValueError(f"the batch's record names an image dir {name!r} that is not a plain name ({exc})") from None


def show_dataset(source: str) -> list[dict[str, Any]]:
    """The class table of a dataset batch (its classes.json alone): id, name, masks, and the images each class is in."""
    from samseg.edges.dataset_outputs import load_class_table, load_classes_from_run
    from samseg.edges.storage import is_s3_uri, join_uri

    folder = Path(source).is_dir() or is_s3_uri(source)
    return _rows(load_class_table(join_uri(source, CLASSES_JSON)) if folder else load_classes_from_run(source))


def edit_dataset(source: str, edits: list[Edit], out: str, tracking: Tracking, record_dirs: bool = True,
                 register: Optional[str] = None) -> dict[str, Any]:
    """Apply `edits` to the dataset classes of `source`; write the edited batch to OUT (a local
    folder that is not the source's) and, when tracked, log it; returns {"out", "mlflow_run_id",
    "classes": the new class table, "registered"}. A bad edit: ValueError, nothing written.
    record_dirs=False: OUT is a temporary folder, so the records name the MLflow runs, not OUT (the
    UI's saves). register: the MLflow model name the edited classes become a new version of (then
    `--classes-from models:/NAME/VERSION` assigns them, in shards too)."""
    if register and not tracking.track:
        raise EditError("registering the edited classes needs MLflow tracking (drop --no-track)")
    from samseg.core.config import ClusterConfig
    from samseg.core.dataset import cluster_rows
    from samseg.edges.image_dir import read_image_dir, read_summary

    if str(out).startswith("s3://"):
        raise EditError(f"--out {out}: an edited dataset is written to a local folder (copy it to S3 after)")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="samseg-classes-") as tmp:
        src = read_dataset(source, Path(tmp))
        folders = (*([src.where] if src.where != src.run_id else []), *src.wrote_to)  # a folder source's, a run's OUTs
        for folder in folders:
            if _overlaps(out, folder):
                raise EditError(f"--out {out} is the source batch's own folder ({folder}) or inside it; "
                                 "write the edited batch elsewhere")
        loaded = [read_image_dir(d) for d in src.dirs]  # (MaskSet, N×C embeddings, dataset ids)
        summaries = [read_summary(d) for d in src.dirs]
        cfg = ClusterConfig(**src.table.cluster) if src.table.cluster else ClusterConfig()
        labels = np.concatenate([np.asarray(lab, np.int64) for _, _, lab in loaded]) if loaded else np.zeros(0, np.int64)
        embs = np.concatenate([e for _, e, _ in loaded]) if loaded else np.zeros((0, src.table.embedding_dim), np.float32)
        renames = all(e.op == "rename" for e in edits)  # names alone: every id (and a registered table's rows) stays
        new_labels, names = apply_edits(labels, embs, edits, cfg, src.table.class_names, renumbered=not renames,
                                        cluster=cluster_rows)  # a split of the whole batch: the blocked cosine DBSCAN
        table, results = _edited_table(src, loaded, summaries, new_labels, names, renames)
        report, class_files = _write_batch(out, src, loaded, summaries, results, table, edits, record_dirs,
                                           time.perf_counter() - started)
        run_id = _track(out, src, report, class_files, tracking) if tracking.track else None
        registered = None
        if run_id is not None:  # the record on disk names the runs too
            from samseg.engine.batch import write_batch_summary

            write_batch_summary(out, report)
            if register:
                from samseg.edges.mlflow.class_registry import register_classes

                registered = register_classes(run_id, register, Path(out) / CLASSES_JSON)
    # a merge, split or drop refits the table on this batch's masks: classes it has no mask of are not kept
    lost = [] if renames else [c for c in range(src.table.n_classes) if not (labels == c).any()]
    return {"out": out, "mlflow_run_id": run_id, "classes": _rows(table), "registered": registered, "not_kept": lost}


def _rows(table: Any) -> list[dict[str, Any]]:
    """The CLI's and the UI's rows of a dataset's classes: id, name (None: unnamed), masks, images."""
    return [{"id": c, "name": table.class_names.get(c), "masks": int(table.sizes[c]), "images": len(table.image_counts[c])}
            for c in range(table.n_classes)]


def _edited_table(src: DatasetSource, loaded: list[Any], summaries: list[dict[str, Any]], new_labels: np.ndarray,
                  names: dict[int, str], renames: bool) -> tuple[Any, list[Any]]:
    """(the new ClassTable, each image's ClusterResult) from the batch's edited labels; renames
    alone keep the source's table (ids, prototypes, radii, classes this batch lacks) with the names."""
    from samseg.core.dataset import build_classes
    from samseg.core.types import ClusterResult
    from samseg.edges.dataset_outputs import image_names

    bounds = np.cumsum([0, *(len(e) for _, e, _ in loaded)])
    results = [ClusterResult(labels=new_labels[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    # its own lineage: not the run or registered model the source's classes came from
    sample = {**{k: v for k, v in src.table.sample.items() if k not in ("run_id", "assigned_from")}, EDITED_FROM: src.where}
    if renames:
        table = dataclasses.replace(src.table, sample=sample)
    else:
        table = build_classes([e for _, e, _ in loaded], results, image_names([d.name for d in src.dirs], summaries),
                              sample=sample)
    naming = {k: v for k, v in src.table.naming.items() if k != "classes"}
    naming["classes"] = [{"id": c, "name": n, "edited": True} for c, n in sorted(names.items())]
    table = dataclasses.replace(table, cluster=src.table.cluster, naming=naming if names else {})
    return table, results


def _write_batch(out: str, src: DatasetSource, loaded: list[Any], summaries: list[dict[str, Any]], results: list[Any],
                 table: Any, edits: list[Edit], record_dirs: bool, shared_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every image dir, classes.json, the contact sheet and batch_summary.json into OUT; (the batch
    report, the class files' report of samseg.edges.dataset_outputs.write_classes). shared_s: the
    seconds the edit spent on the whole batch (reading it, the edits), shared among its images."""
    from samseg.core.compose import compose_labels
    from samseg.edges import owned_files
    from samseg.edges.dataset_outputs import DatasetOutputsError, contact_sheet_png, dataset_ids, write_classes
    from samseg.edges.image_dir import write_image_dir
    from samseg.edges.images import decode_image
    from samseg.edges.outdirs import child_dir
    from samseg.edges.storage import read_verified
    from samseg.engine.batch import top_level_files, write_batch_summary

    owned_files.begin_batch(out, top_level_files(True))  # a user's file where classes.json goes: refused now
    entries = []
    share_s = shared_s / max(1, len(src.names))  # each image's share of the batch's read and edits
    for name, (masks, emb, _), summary, res in zip(src.names, loaded, summaries, results):
        started = time.perf_counter()
        new, named = dataset_ids(summary, res, table, "dataset", emb)
        new.update({EDITS: [*summary.get(EDITS, []), *(e.record() for e in edits)], EDITED_FROM: src.where})
        img = summary["image"]
        try:
            image = decode_image(read_verified(img["uri"], img.get("sha256")), img["file_name"], uri=img["uri"])
        except Exception as exc:  # the photo moved or changed since the batch ran
            raise DatasetOutputsError(f"{img['uri']}: cannot re-read the image ({' '.join(str(exc).split())})") from None
        label_map = compose_labels(masks, named)
        new["seconds"] = edit_seconds(started - share_s)  # its re-read and relabel, and its share
        d = write_image_dir(child_dir(Path(out), name), image, masks, emb, named, label_map, new)
        entries.append({"image": img["uri"], "name": name, "status": "completed", "out_dir": str(d) if record_dirs else None,
                        "n_masks": len(masks), "n_clusters": new["n_clusters"], "n_noise": new["n_noise"]})
    class_files = write_classes(out, table, contact_sheet_png(results, loaded, summaries, table), "dataset",
                                table.image_names)
    report = {"source": src.where, "out": out if record_dirs else None, "images": entries, "succeeded": len(entries),
              "failed": 0, "classes": {k: class_files[k] for k in ("mode", "n_classes", "metrics")},
              EDITED_FROM: src.where, EDITS: [e.record() for e in edits]}
    write_batch_summary(out, report)
    owned_files.end_batch(out)
    return report, class_files


def _track(out: str, src: DatasetSource, report: dict[str, Any], class_files: dict[str, Any], tracking: Tracking) -> str:
    """A new batch run for the edited batch, tagged with the run it edits; its image runs nested."""
    from samseg.core.config import PipelineConfig
    from samseg.edges.dataset_outputs import log_dataset_classes
    from samseg.edges.image_dir import read_summary
    from samseg.edges.mlflow.tracking import log_image_run
    from samseg.engine.batch import end_batch, start_batch

    first = read_summary(Path(out) / src.names[0]) if src.names else {}
    cfg = PipelineConfig.from_flat(first["config"]) if first.get("config") else PipelineConfig()
    batch_id, _ = start_batch(True, tracking.experiment, cfg, src.where, out, len(src.names))
    from samseg.edges.mlflow.client import client

    try:
        if src.run_id:  # the UI's and `samseg runs` lineage: this batch edits that one
            client().set_tag(batch_id, TAG_PARENT_RUN, src.run_id)
        for entry in report["images"]:
            d = Path(out) / entry["name"]
            summary = read_summary(d)
            entry["mlflow_run_id"] = log_image_run(d, summary, experiment=tracking.experiment, nested_under=batch_id,
                                                   run_name=summary["image"]["file_name"],
                                                   extra_tags={TAG_KIND: KIND_IMAGE, TAG_OUT_DIR: entry["out_dir"]})
        log_dataset_classes(batch_id, class_files)
    except BaseException:  # MLflow failed part-way: the batch run ends FAILED, never RUNNING (the files are written)
        from samseg.edges.shutdown import bounded

        bounded(lambda: end_batch(batch_id, "FAILED"))
        raise
    report["mlflow_run_id"] = batch_id
    end_batch(batch_id, "FINISHED", quiet=False, record=report)
    return batch_id


def _overlaps(out: str, folder: str) -> bool:
    """True when writing a batch to `out` could replace files of `folder`: the same folder, one
    inside the other (an image dir of it, or a folder holding it)."""
    if str(out).startswith("s3://") or str(folder).startswith("s3://"):
        a, b = str(out).rstrip("/") + "/", str(folder).rstrip("/") + "/"
        return a.startswith(b) or b.startswith(a)
    from samseg.edges.outdirs import is_inside

    return is_inside(Path(out), Path(folder)) or is_inside(Path(folder), Path(out))
