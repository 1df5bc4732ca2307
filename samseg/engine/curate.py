"""`samseg classes`: a run's class table, and a person's edits of it written as a new run.

The source is an image dir or an MLflow image run (its masks, embeddings and summary are
downloaded). The edits (samseg.core.curation) relabel the masks; the image is re-read (and
checked against the sha256 the run recorded) to draw the new overlay and cut-outs; the result
is a new image dir whose summary.json records the edit list, the class names and what it was
edited from, and, when tracked, a new MLflow run tagged with the run it edits. Nothing of the
source changes.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any, Optional


from samseg.core.curation import Edit, EditError, apply_edits
from samseg.core.errors import SamsegError
from samseg.edges.dataset_outputs import CLASSES_FROM, CLASSES_SHA256
from samseg.edges.layout import LABELS_PNG
from samseg.edges.run_schema import DATASET_MODES, KIND_RECLUSTER, TAG_KIND, TAG_OUT_DIR
from samseg.engine.publish import Tracking

CLASS_NAMES, EDITS, EDITED_FROM = "class_names", "edits", "edited_from"  # summary.json keys


class CurateError(SamsegError):
    """A source `samseg classes` cannot read as one image's classes (one line: what to give instead)."""


def names_of(summary: dict[str, Any]) -> dict[int, str]:
    return {int(k): str(v) for k, v in (summary.get(CLASS_NAMES) or {}).items()}


def edit_config(summary: dict[str, Any]) -> Any:
    """The ClusterConfig a run's edits split with: the run's, at the eps it used (--eps auto: the chosen one)."""
    from samseg.core.config import PipelineConfig

    cfg = PipelineConfig.from_flat(summary["config"]).cluster
    chosen = (summary.get("eps_auto") or {}).get("eps")  # --eps auto: the eps the run used, not the fallback
    if isinstance(chosen, (int, float)) and chosen > 0:
        cfg = dataclasses.replace(cfg, eps=float(chosen))
    return cfg


def read_source(source: str, workdir: Path) -> tuple[Path, Optional[str]]:
    """(the image dir, its MLflow run id or None): a local dir as it is, an s3:// image dir (the
    files its _SUCCESS lists) or a run's artifacts downloaded."""
    from samseg.edges.storage import download_prefix, is_s3_uri

    if Path(source).is_dir():
        return _image_dir(Path(source)), None
    if is_s3_uri(source):
        download_prefix(source, workdir, require_success=True)
        return workdir, None
    from samseg.edges.mlflow.tracking import RECLUSTER_INPUTS, fetch_run_inputs

    fetch_run_inputs(source, workdir, (*RECLUSTER_INPUTS, LABELS_PNG))
    return workdir, source


def _image_dir(d: Path) -> Path:
    """`d` when it is an image dir; a batch's OUT of per-image classes says which to give instead."""
    from samseg.edges.layout import MASKS_JSON
    from samseg.edges.owned_files import BATCH_SUMMARY_JSON

    if (d / MASKS_JSON).is_file() or not (d / BATCH_SUMMARY_JSON).is_file():
        return d  # an image dir, or not samseg's: read_image_dir names what is missing
    first = next((c for c in sorted(d.iterdir()) if (c / MASKS_JSON).is_file()), d / "IMAGE")
    raise CurateError(f"{d}: a batch of per-image classes (each image has its own ids): give one of its image dirs "
                      f"({first}) or an image run id; a --classes dataset batch's OUT is edited as a whole")


def show(source: str) -> list[dict[str, Any]]:
    """The class table of an image dir or image run (samseg.core.types.ClusterResult.table)."""
    from samseg.core.types import ClusterResult
    from samseg.edges.image_dir import LABELS_PNG, read_image_dir, read_label_png, read_summary

    with tempfile.TemporaryDirectory(prefix="samseg-classes-") as tmp:
        d, _ = read_source(source, Path(tmp))
        _masks, _emb, labels = read_image_dir(d)
        return ClusterResult(labels, names=names_of(read_summary(d))).table(read_label_png(d / LABELS_PNG))


def edit(source: str, edits: list[Edit], out: str, tracking: Tracking,
         tags: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Apply `edits` to the source's classes; write OUT/<name>/ (and log it); returns
    {"out_dir", "mlflow_run_id", "classes": the new table}. A bad edit: ValueError, nothing written."""
    from samseg.core.cluster import silhouette_cosine
    from samseg.core.compose import compose_labels
    from samseg.core.types import ClusterResult
    from samseg.edges.image_dir import read_image_dir, read_summary, write_image_dir
    from samseg.edges.images import decode_image
    from samseg.edges.outdirs import child_dir, safe_dir_name
    from samseg.edges.storage import read_verified

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="samseg-classes-") as tmp:
        d, run_id = read_source(source, Path(tmp))
        masks, emb, labels = read_image_dir(d)
        summary = read_summary(d)
        new_labels, names = apply_edits(labels, emb, edits, edit_config(summary), names_of(summary))  # ValueError: nothing written
        img = summary["image"]
        image = decode_image(read_verified(img["uri"], img.get("sha256")), img["file_name"], uri=img["uri"])
        clusters = ClusterResult(new_labels, names=names)
        label_map = compose_labels(masks, clusters)
        table = clusters.table(label_map)
        # the namer's record names the source's ids: the edited classes' names are the person's (class_names)
        # what describes these classes is measured on them (silhouette) and on this edit (seconds), not copied from the source's
        new = {**{k: v for k, v in summary.items() if k != "naming"}, "n_clusters": clusters.n_clusters,
               "n_noise": clusters.n_noise, "cluster_sizes": clusters.sizes(), CLASS_NAMES: {str(c): n for c, n in names.items()},
               "silhouette": silhouette_cosine(emb, clusters.labels), "seconds": edit_seconds(started),
               EDITS: [*summary.get(EDITS, []), *(e.record() for e in edits)], EDITED_FROM: run_id or (source if source.startswith("s3://") else str(d))}
        if new.pop("classes", None) in DATASET_MODES:  # edited alone, its ids are this image's own now
            new["rerun_of_dataset_ids"] = summary["classes"]
            for key in (CLASSES_FROM, CLASSES_SHA256):  # no longer that table's ids
                new.pop(key, None)
        target = child_dir(Path(out), safe_dir_name(img["uri"]))
        if run_id is None and Path(out).resolve() == d.resolve().parent:  # the source's own OUT: its dir or a sibling's
            raise EditError(f"--out {out} is the source's own output dir; write the edited run elsewhere")
        write_image_dir(target, image, masks, emb, clusters, label_map, new)
    new_run = None
    if tracking.track:
        from samseg.edges.mlflow.tracking import log_image_run

        new_run = log_image_run(target, new, experiment=tracking.experiment, parent_run_id=run_id,
                                run_name=img["file_name"],
                                extra_tags={TAG_KIND: KIND_RECLUSTER, TAG_OUT_DIR: str(target), **(tags or {})})
    return {"out_dir": str(target), "mlflow_run_id": new_run, "classes": table}


def edit_seconds(started: float) -> dict[str, float]:
    """summary.json's `seconds` of an edited image: the edit's own time on it since `started`
    (time.perf_counter), not the computation its source recorded."""
    took = round(time.perf_counter() - started, 6)
    return {"edit": took, "total": took}
