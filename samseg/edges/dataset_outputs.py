"""Dataset-level classes over a finished batch's output dirs: file + MLflow edge.

Used by the CLI (`samseg segment --classes dataset | --classes-from RUN_ID`) and by the
engine step samseg.engine.dataset.classify_dirs; no Prefect import here.

After segment-batch has written OUT/<stem>/ for every image (per-image ids), this step
reads each dir's masks.json + embeddings.npy, either clusters all masks of the batch
together (`--classes dataset`) or labels them by nearest prototype of an earlier run's
classes.json (`--classes-from RUN_ID`), and rewrites every dir with the shared ids. It
writes OUT/classes.json and OUT/contact_sheet.png and, when tracked, logs both to the
batch parent run with the metrics of `ClassTable.metrics()` and tag samseg.classes.

Under an s3:// OUT the engine (samseg.engine.dataset) hands this step local copies of the
image dirs and publishes them back; the top-level files are written to OUT itself.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Optional

from samseg.core.errors import SamsegError
from samseg.core.backbones import SAM
from samseg.core.cosine_dbscan import Gram

from samseg.edges.owned_files import (CLASSES_JSON, CONTACT_SHEET_PNG, FITTED_CLASSES_JSON, BatchIncomplete, check_complete,
                                      write_files)
from samseg.edges.run_schema import TAG_CLASSES, TAG_CLASSES_FROM



# summary.json keys naming the table an image's ids came from (--classes-from): not true once the
# ids are another table's (a new fit, a person's edit), so those drop them
CLASSES_FROM, CLASSES_SHA256 = "classes_from", "classes_sha256"
FITTED_AT = "fitted_at"  # a classes.fitted.json's own reference, kept in its sample


class DatasetOutputsError(SamsegError, RuntimeError):
    """A batch whose outputs cannot be given dataset-level classes (one line)."""


def apply_dataset_classes(
    out: str | Path,
    image_dirs: list[str | Path],
    cluster_cfg: Any,
    max_cluster: Optional[int] = None,
    seed: int = 0,
    namer: Optional[Callable[[list[dict[str, Any]], list[Any], list[Any], Any], dict[str, Any]]] = None,
    gram: Optional[Gram] = None,
) -> dict[str, Any]:
    """Cluster the masks of every (local) image dir together, rewrite each dir with the
    dataset-level ids and write classes.json and the contact sheet into OUT (a folder or s3://
    prefix); returns {"classes_json", "contact_sheet", "metrics", "n_classes", "images", "mode"}.
    namer: (summaries, [(masks, embeddings, _)], [ClusterResult], table) -> the table's `naming`.
    (Classes given beforehand, --classes-from, are assigned where each image is computed:
    samseg.engine.dataset.assign_classes; `write_assigned_classes` records them.)"""
    dirs = [Path(d) for d in image_dirs]
    if not dirs:
        raise DatasetOutputsError(f"{out}: no image outputs to give classes to")
    loaded, summaries, names, results, table = fit_classes(dirs, cluster_cfg, max_cluster, seed, namer, gram)
    for d, (masks, emb, _), summary, res in zip(dirs, loaded, summaries, results):
        _rewrite_dir(d, masks, emb, summary, res, table)
    return write_classes(out, table, contact_sheet_png(results, loaded, summaries, table), "dataset", names)


def fit_classes(image_dirs: list[str | Path], cluster_cfg: Any, max_cluster: Optional[int] = None, seed: int = 0,
                namer: Optional[Callable[..., dict[str, Any]]] = None, gram: Optional[Gram] = None,
                ) -> tuple[list[Any], list[dict[str, Any]], list[str], list[Any], Any]:
    """The classes of the masks of these (local) image dirs clustered together, named by `namer`:
    (loaded dirs, summaries, image names, each image's ClusterResult, the ClassTable). gram: the
    block product of the cosine DBSCAN (a GPU's: samseg.sam.gram)."""
    from samseg.core.dataset import classify_batch
    from samseg.edges.image_dir import read_image_dir, read_summary

    dirs = [Path(d) for d in image_dirs]
    loaded = [read_image_dir(d) for d in dirs]  # (MaskSet, N×C embeddings, old labels)
    summaries = [read_summary(d) for d in dirs]
    names = image_names([d.name for d in dirs], summaries)
    results, table = classify_batch([emb for _, emb, _ in loaded], names, cluster_cfg, max_cluster=max_cluster, seed=seed,
                                    gram=gram)
    table = dataclasses.replace(table, sample={**table.sample, **_embedding_model(summaries)})  # what the registry records
    if namer is not None:
        table = dataclasses.replace(table, naming=namer(summaries, loaded, results, table))
    return loaded, summaries, names, results, table


def write_fitted_classes(out: str | Path, table: Any) -> str:
    """OUT/classes.fitted.json: the classes a sharded batch fitted on its sample, which every shard
    loads (by this reference and its sha256) to assign its images. Returns the reference."""
    from samseg.edges.storage import join_uri

    ref = pin_classes_ref(join_uri(out, FITTED_CLASSES_JSON))  # the one spelling: shards load it, images record it
    table = dataclasses.replace(table, sample={**table.sample, FITTED_AT: ref})  # what its images record they came from
    write_files(str(out), {FITTED_CLASSES_JSON: table.to_json().encode("utf-8")})
    return ref


def write_assigned_classes(out: str | Path, source: Any, images: list[dict[str, Any]],
                           sheet_dirs: list[str | Path], mode: str = "assigned") -> dict[str, Any]:
    """classes.json and the contact sheet of a batch whose images were assigned to `source`'s
    classes as they were computed (no image dir is rewritten). images: one per completed image,
    {"name" (its dir), "file_name", "n_masks", "cluster_sizes" (masks per dataset class id)};
    sheet_dirs: the local image dirs the contact sheet's examples are picked from (a bounded
    few: the batch's masks are never all read back). Returns as apply_dataset_classes."""
    import numpy as np

    from samseg.core.types import ClusterResult
    from samseg.edges.image_dir import read_image_dir, read_summary

    names = image_names([i["name"] for i in images], [{"image": {"file_name": i.get("file_name")}} for i in images])
    k = source.n_classes
    sizes = np.zeros(k, np.int64)
    image_counts: list[dict[str, int]] = [{} for _ in range(k)]
    n_masks = 0
    for name, image in zip(names, images):
        n_masks += int(image.get("n_masks") or 0)
        for c, count in enumerate(image.get("cluster_sizes") or []):
            if count and c < k:
                sizes[c] += int(count)
                image_counts[c][name] = int(count)
    sample = {**{k: v for k, v in source.sample.items() if k != FITTED_AT}, "assigned_from": assigned_from(source),
              "n_masks": n_masks}
    table = dataclasses.replace(source, sizes=sizes, image_counts=image_counts, image_names=list(names),
                                n_noise=n_masks - int(sizes.sum()), sample=sample)
    dirs = [Path(d) for d in sheet_dirs]
    loaded = [read_image_dir(d) for d in dirs]  # written with the dataset's ids already
    results = [ClusterResult(labels=np.asarray(labels, np.int64)) for _, _, labels in loaded]
    sheet = contact_sheet_png(results, loaded, [read_summary(d) for d in dirs], table)
    return write_classes(out, table, sheet, mode, names)


def write_classes(out: str | Path, table: Any, sheet_png: bytes, mode: str, names: list[str]) -> dict[str, Any]:
    from samseg.edges.storage import join_uri

    write_files(str(out), {CLASSES_JSON: table.to_json().encode("utf-8"), CONTACT_SHEET_PNG: sheet_png})
    return {"classes_json": join_uri(out, CLASSES_JSON), "contact_sheet": join_uri(out, CONTACT_SHEET_PNG),
            "metrics": table.metrics(), "n_classes": table.n_classes, "images": names, "mode": mode}


def _embedding_model(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """What embedded the batch: {"checkpoint_sha256", "model_type", "features", "features_sha256"}
    (the SAM model and the feature backbone, one each), or {} for summaries that do not say.
    Images embedded by different backbones cannot share classes: DatasetOutputsError."""
    shas = {(s.get("model") or {}).get("checkpoint_sha256") for s in summaries}
    types = {(s.get("model") or {}).get("type") for s in summaries}
    backbones = {((s.get("features") or {}).get("name") or SAM, (s.get("features") or {}).get("sha256")) for s in summaries}
    if len(backbones) > 1:
        names = ", ".join(sorted(f"{n} ({str(h)[:12]}…)" for n, h in backbones))
        raise DatasetOutputsError(f"the images were embedded by different feature backbones ({names}); "
                                  "dataset classes need one: segment them all with the same --features")
    made_by: dict[str, Any] = {}
    if len(shas) == 1 and None not in shas:
        made_by = {"checkpoint_sha256": shas.pop(), "model_type": types.pop() if len(types) == 1 else None}
    name, sha = backbones.pop() if backbones else (SAM, None)
    return {**made_by, "features": name, "features_sha256": sha or made_by.get("checkpoint_sha256")}


def check_same_model(table: Any, summaries: list[dict[str, Any]]) -> None:
    """DatasetOutputsError unless images with these summaries' model and backbone can take `table`'s classes."""
    _check_same_model(table, _embedding_model(summaries))


def _check_same_model(table: Any, made_by: dict[str, Any]) -> None:
    """Classes built from one backbone's embeddings mean nothing for another's: the feature
    weights must match (classes from before feature backbones name SAM's checkpoint only)."""
    key = "features_sha256" if table.sample.get("features_sha256") else "checkpoint_sha256"
    want, got = table.sample.get(key), made_by.get(key)
    if want and got and want != got:
        source = table.sample.get("run_id", CLASSES_JSON)
        theirs = table.sample.get("features") or table.sample.get("model_type") or SAM
        ours = made_by.get("features") or made_by.get("model_type") or SAM
        raise DatasetOutputsError(
            f"classes from {source} were built from {theirs} embeddings (weights {str(want)[:12]}…), but these images were "
            f"embedded by {ours} ({str(got)[:12]}…); refusing to mix them: segment them with --features {theirs}")


def image_names(dir_names: list[str], summaries: list[dict[str, Any]]) -> list[str]:
    """Image file names when unique in the batch, else the (unique) output dir names."""
    names = [str((s.get("image") or {}).get("file_name") or d) for d, s in zip(dir_names, summaries)]
    return names if len(set(names)) == len(names) else list(dir_names)


def _rewrite_dir(d: Path, masks: Any, emb: Any, summary: dict[str, Any], res: Any, table: Any) -> None:
    import numpy as np

    from samseg.core.compose import compose_labels
    from samseg.edges.image_dir import FEATURES_NPY, write_image_dir
    from samseg.edges.images import decode_image
    from samseg.edges.storage import read_verified

    uri = summary["image"]["uri"]
    try:
        image = decode_image(read_verified(uri, summary["image"].get("sha256")), summary["image"]["file_name"], uri=uri)
    except Exception as exc:  # the photo moved or changed since the batch ran
        raise DatasetOutputsError(f"{uri}: cannot re-read the image of {d} ({' '.join(str(exc).split())})") from None
    features = np.load(d / FEATURES_NPY) if (d / FEATURES_NPY).is_file() else None
    summary, res = dataset_ids(summary, res, table, "dataset", emb)
    write_image_dir(d, image, masks, emb, res, compose_labels(masks, res), summary, features)


def dataset_ids(summary: dict[str, Any], res: Any, table: Any, mode: str,
                embeddings: Any = None) -> tuple[dict[str, Any], Any]:
    """(summary, clusters) of one image under the dataset's class ids `res` of `table`: its
    counts, the classes present, the dataset's names of those (legend, masks.json, exports);
    mode "dataset" (the batch's own classes) or "assigned" (an earlier table's). embeddings: the
    image's N×C mask embeddings, its silhouette then measured on these ids (not its own ids')."""
    from samseg.core.cluster import silhouette_cosine

    present = sorted({int(c) for c in res.labels[res.labels >= 0]})  # the dataset's classes this image has
    stale = ("class_names", "naming", CLASSES_FROM, CLASSES_SHA256)  # the image's own ids' names, an earlier table's
    summary = {k: v for k, v in summary.items() if k not in stale}
    summary.update(n_clusters=len(present), n_noise=res.n_noise, cluster_sizes=res.sizes(), classes_present=present,
                   classes=mode, dataset_n_classes=table.n_classes)
    if embeddings is not None:
        summary["silhouette"] = silhouette_cosine(embeddings, res.labels)
    named = {c: n for c, n in table.class_names.items() if c in present}
    if table.naming:
        scores = {int(r["id"]): float(r["score"]) for r in table.naming.get("classes", []) if r.get("name") and r.get("score") is not None}
        res = dataclasses.replace(res, names=table.class_names, scores=scores)  # masks.json lists every dataset class
        summary["class_names"] = {str(c): n for c, n in named.items()}
        summary["naming"] = {**{k: v for k, v in table.naming.items() if k != "classes"},
                             "classes": [r for r in table.naming.get("classes", []) if int(r["id"]) in present]}
    if mode == "assigned":
        summary[CLASSES_FROM] = assigned_from(table)
    return summary, res


def assigned_from(table: Any) -> str:
    """Where classes given beforehand came from, as summary.json and classes.json record it: the
    MLflow run, the classes.fitted.json a sharded batch fitted, or a classes.json file."""
    return str(table.sample.get("run_id") or table.sample.get(FITTED_AT) or "local classes.json")


def contact_sheet_png(results: list[Any], loaded: list[Any], summaries: list[dict[str, Any]], table: Any) -> bytes:
    import io

    from PIL import Image

    from samseg.core.contact_sheet import contact_sheet, select_examples
    from samseg.edges.images import decode_image
    from samseg.edges.storage import read_verified

    def load(i: int) -> tuple[Any, Any]:
        image = summaries[i]["image"]
        return decode_image(read_verified(image["uri"], image.get("sha256")), image["file_name"], uri=image["uri"]).rgb, loaded[i][0]

    picks = select_examples(results, [m.areas for m, _, _ in loaded], table.n_classes)
    png = io.BytesIO()
    Image.fromarray(contact_sheet(picks, load, table.sizes, names=table.class_names)).save(png, format="PNG")
    return png.getvalue()


# ---------------------------------------------------------------- MLflow


def pin_classes_ref(ref: str) -> str:
    """`ref` as a reference that names one table wherever it is read: a registered model's alias
    resolved to its version (models:/NAME@prod -> models:/NAME/3), a local path made absolute;
    run ids, versions and s3:// URIs as they are."""
    import os

    ref = str(ref)
    if ref.startswith("models:/") and "@" in ref:
        from samseg.edges.mlflow.class_registry import pinned_version_uri

        return pinned_version_uri(ref)
    if "://" not in ref and not ref.startswith("models:/") and _is_classes_file(ref):
        return os.path.abspath(ref)
    return ref


def _is_classes_file(ref: str) -> bool:
    """A classes.json path or URI (it ends with .json or is a file), not an MLflow run id."""
    return str(ref).endswith(".json") or Path(ref).is_file()


def load_class_table(ref: str) -> Any:
    """ClassTable from `ref`: a classes.json path / s3:// URI (ends with .json or is an
    existing file), else an MLflow run id whose artifact classes.json is used."""
    from samseg.core.dataset import ClassTable
    from samseg.edges.storage import read_bytes

    if str(ref).startswith("models:/"):  # a registered classes model (samseg.edges.mlflow.class_registry)
        from samseg.edges.mlflow.class_registry import load_registered_classes

        return load_registered_classes(str(ref))
    if _is_classes_file(ref):
        try:  # the classes.json of a batch that did not finish may not match that OUT's images (its fitted
            if PurePosixPath(str(ref)).name != FITTED_CLASSES_JSON:  # classes are whole mid-batch: its shards assign to them)
                check_complete(str(ref).rsplit("/", 1)[0] if str(ref).startswith("s3://") else str(Path(ref).parent), str(ref))
        except BatchIncomplete as exc:
            raise DatasetOutputsError(str(exc)) from None
        try:
            data = read_bytes(ref)
        except Exception as exc:
            raise DatasetOutputsError(f"{ref}: cannot read ({' '.join(str(exc).split())})") from None
        return ClassTable.from_json(data, source=str(ref))
    return load_classes_from_run(ref)


def load_classes_from_run(run_id: str) -> Any:
    """ClassTable from the classes.json artifact of an MLflow run (a dataset-level batch run).
    Its `sample["run_id"]` is set to `run_id`. Raises TrackingError / ClassTableError (one line)."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    from samseg.core.dataset import ClassTable
    from samseg.edges.mlflow.client import StoreMissing, TrackingError, missing_store, tracking_uri

    problem = missing_store(tracking_uri())
    if problem:  # a download would create an empty store there first
        raise StoreMissing(problem)
    with tempfile.TemporaryDirectory(prefix="samseg-classes-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=CLASSES_JSON, dst_path=tmp,
                                                       tracking_uri=tracking_uri())
            text = Path(path).read_text(encoding="utf-8")
        except (MlflowException, OSError) as exc:
            from samseg.edges.mlflow.tracking import get_run
            from samseg.edges.run_schema import DATASET_MODES, KIND_BATCH, TAG_CLASSES, TAG_KIND

            tags = get_run(run_id).data.tags  # an unknown run: its own one line
            if tags.get(TAG_CLASSES) not in DATASET_MODES:  # why it has none, and what has one
                what = "a batch of per-image classes" if tags.get(TAG_KIND) == KIND_BATCH else "one image's run"
                raise TrackingError(f"MLflow run {run_id}: no usable {CLASSES_JSON}: it is {what}, not a dataset batch; "
                                    "classes come from a `samseg segment … --classes dataset` batch run, its "
                                    "classes.json, or a registered models:/NAME/VERSION") from None
            raise TrackingError(f"MLflow run {run_id}: no usable {CLASSES_JSON} ({' '.join(str(exc).split())})") from None
    table = ClassTable.from_json(text, source=f"MLflow run {run_id} {CLASSES_JSON}")
    import dataclasses

    return dataclasses.replace(table, sample={**table.sample, "run_id": run_id})


def log_dataset_classes(batch_run_id: str, report: dict[str, Any]) -> None:
    """Log classes.json, contact_sheet.png, the class metrics and tag samseg.classes on the batch run."""
    from samseg.core.secrets import scrub_secrets
    from samseg.edges.mlflow.client import client as mlflow_client

    from samseg.edges.storage import local_path, read_bytes

    client = mlflow_client()
    for uri in (report["classes_json"], report["contact_sheet"]):  # under an s3:// OUT, via a local copy
        with local_path(uri) as path:
            client.log_artifact(batch_run_id, str(path))
    for key, value in report["metrics"].items():
        client.log_metric(batch_run_id, key, float(value))
    client.set_tag(batch_run_id, TAG_CLASSES, scrub_secrets(str(report["mode"])))
    table = json.loads(read_bytes(report["classes_json"]).decode("utf-8"))
    if table.get("sample", {}).get("assigned_from"):
        client.set_tag(batch_run_id, TAG_CLASSES_FROM, scrub_secrets(str(table["sample"]["assigned_from"])))  # may be a URI with credentials
