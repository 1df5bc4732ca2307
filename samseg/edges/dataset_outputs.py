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
from pathlib import Path
from typing import Any, Callable, Optional

from samseg.core.errors import SamsegError
from samseg.core.backbones import SAM

from samseg.edges.owned_files import CLASSES_JSON, CONTACT_SHEET_PNG, BatchIncomplete, check_complete, write_files
from samseg.edges.run_schema import TAG_CLASSES, TAG_CLASSES_FROM



class DatasetOutputsError(SamsegError, RuntimeError):
    """A batch whose outputs cannot be given dataset-level classes (one line)."""


def apply_dataset_classes(
    out: str | Path,
    image_dirs: list[str | Path],
    cluster_cfg: Any,
    table: Any = None,
    max_cluster: Optional[int] = None,
    seed: int = 0,
    namer: Optional[Callable[[list[dict[str, Any]], list[Any], list[Any], Any], dict[str, Any]]] = None,
) -> dict[str, Any]:
    """Rewrite every (local) image dir with dataset-level ids and write classes.json and the
    contact sheet into OUT (a folder or s3:// prefix); returns {"classes_json", "contact_sheet",
    "metrics", "n_classes", "images"}. table: a ClassTable to assign to (no clustering) or
    None to cluster the batch with `cluster_cfg` (samseg.core.config.ClusterConfig). namer:
    (summaries, [(masks, embeddings, _)], [ClusterResult], table) -> the table's `naming`, for
    new classes (assigned classes keep the names of the table they come from)."""
    from samseg.core.dataset import assign_to_classes, classify_batch
    from samseg.edges.image_dir import read_image_dir, read_summary
    from samseg.edges.storage import join_uri

    dirs = [Path(d) for d in image_dirs]
    if not dirs:
        raise DatasetOutputsError(f"{out}: no image outputs to give classes to")
    loaded = [read_image_dir(d) for d in dirs]  # (MaskSet, N×C embeddings, old labels)
    summaries = [read_summary(d) for d in dirs]
    names = _image_names(dirs, summaries)
    embs = [emb for _, emb, _ in loaded]
    mode = "dataset" if table is None else "assigned"
    made_by = _embedding_model(summaries)
    if table is None:
        results, table = classify_batch(embs, names, cluster_cfg, max_cluster=max_cluster, seed=seed)
        table = dataclasses.replace(table, sample={**table.sample, **made_by})  # what the registry records
        if namer is not None:
            table = dataclasses.replace(table, naming=namer(summaries, loaded, results, table))
    else:
        _check_same_model(table, made_by)
        results = [assign_to_classes(e, table) for e in embs]
        table = _assigned_table(table, embs, results, names)
    for d, (masks, emb, _), summary, res in zip(dirs, loaded, summaries, results):
        _rewrite_dir(d, masks, emb, summary, res, table, mode)
    sheet = _contact_sheet_png(results, loaded, summaries, table)
    write_files(str(out), {CLASSES_JSON: table.to_json().encode("utf-8"), CONTACT_SHEET_PNG: sheet})
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
        source = table.sample.get("run_id", "classes.json")
        theirs = table.sample.get("features") or table.sample.get("model_type") or SAM
        ours = made_by.get("features") or made_by.get("model_type") or SAM
        raise DatasetOutputsError(
            f"classes from {source} were built from {theirs} embeddings (weights {str(want)[:12]}…), but these images were "
            f"embedded by {ours} ({str(got)[:12]}…); refusing to mix them: segment them with --features {theirs}")


def _image_names(dirs: list[Path], summaries: list[dict[str, Any]]) -> list[str]:
    """Image file names when unique in the batch, else the (unique) output dir names."""
    names = [str(s.get("image", {}).get("file_name") or d.name) for d, s in zip(dirs, summaries)]
    return names if len(set(names)) == len(names) else [d.name for d in dirs]


def _assigned_table(source: Any, embs: list[Any], results: list[Any], names: list[str]) -> Any:
    """The source classes (same ids, prototypes, radii) with this batch's counts."""
    import dataclasses

    import numpy as np

    from samseg.core.dataset import build_classes

    counts = build_classes(embs, results, names)
    sample = {**source.sample, "assigned_from": source.sample.get("run_id", "local classes.json"),
              "n_masks": int(sum(len(r.labels) for r in results))}
    image_counts = [counts.image_counts[c] if c < counts.n_classes else {} for c in range(source.n_classes)]
    sizes = [int(counts.sizes[c]) if c < counts.n_classes else 0 for c in range(source.n_classes)]
    return dataclasses.replace(source, sizes=np.asarray(sizes, np.int64), image_counts=image_counts,
                               image_names=list(names), n_noise=counts.n_noise, sample=sample)


def _rewrite_dir(d: Path, masks: Any, emb: Any, summary: dict[str, Any], res: Any, table: Any, mode: str) -> None:
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
    present = sorted({int(c) for c in res.labels[res.labels >= 0]})  # the dataset's classes this image has
    for per_image in ("class_names", "naming"):  # named under the image's own ids: not the dataset's classes
        summary.pop(per_image, None)
    summary = {**summary, "n_clusters": len(present), "n_noise": res.n_noise, "cluster_sizes": res.sizes(),
               "classes_present": present, "classes": mode, "dataset_n_classes": table.n_classes}
    named = {c: n for c, n in table.class_names.items() if c in present}
    if table.naming:  # the dataset's names of the classes this image has (legend, masks.json, exports)
        res = dataclasses.replace(res, names=table.class_names)  # masks.json lists every dataset class
        summary["class_names"] = {str(c): n for c, n in named.items()}
        summary["naming"] = {**{k: v for k, v in table.naming.items() if k != "classes"},
                             "classes": [r for r in table.naming.get("classes", []) if int(r["id"]) in present]}
    if mode == "assigned":
        summary["classes_from"] = table.sample.get("assigned_from")
    write_image_dir(d, image, masks, emb, res, compose_labels(masks, res), summary, features)


def _contact_sheet_png(results: list[Any], loaded: list[Any], summaries: list[dict[str, Any]], table: Any) -> bytes:
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
    Image.fromarray(contact_sheet(picks, load, table.sizes)).save(png, format="PNG")
    return png.getvalue()


# ---------------------------------------------------------------- MLflow


def load_class_table(ref: str) -> Any:
    """ClassTable from `ref`: a classes.json path / s3:// URI (ends with .json or is an
    existing file), else an MLflow run id whose artifact classes.json is used."""
    from samseg.core.dataset import ClassTable
    from samseg.edges.storage import read_bytes

    if str(ref).startswith("models:/"):  # a registered classes model (samseg.edges.mlflow.class_registry)
        from samseg.edges.mlflow.class_registry import load_registered_classes

        return load_registered_classes(str(ref))
    if str(ref).endswith(".json") or Path(ref).is_file():
        try:  # the classes.json of a batch that did not finish may not match that OUT's images
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
    from samseg.edges.mlflow.client import TrackingError, tracking_uri

    with tempfile.TemporaryDirectory(prefix="samseg-classes-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=CLASSES_JSON, dst_path=tmp,
                                                       tracking_uri=tracking_uri())
            text = Path(path).read_text(encoding="utf-8")
        except (MlflowException, OSError) as exc:
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
