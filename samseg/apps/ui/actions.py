"""What the UI's buttons do: rerun clustering, exemplar queries, save a class, compare.

Every action starts from a logged run's artifacts (masks.json + embeddings.npy) and the
stage cache — never the encoder or the AMG — and logs its result as a new MLflow run
tagged with the parent run id, through samseg.edges.mlflow.tracking like every other samseg run.
"""

from __future__ import annotations

import dataclasses
import tempfile
from typing import Any, Callable, Optional

import numpy as np

from samseg.core.config import ClusterConfig, FeaturesConfig, PipelineConfig, PoolConfig
from samseg.apps.ui.service import RunDataError, RunStore
from samseg.edges.run_schema import KIND_BATCH, KIND_IMAGE, TAG_CHECKPOINT_SHA256, TAG_KIND, TAG_MLFLOW_PARENT

Progress = Callable[[str], None]
MAX_BATCH_RUNS = 50  # exemplar search over a batch: enough for a page, bounded work
MAX_COMPARE = 4


def run_config(store: RunStore, run_id: str, summary: dict[str, Any] | None = None) -> PipelineConfig:
    """The PipelineConfig the run was made with (summary.json's `config`; `summary`: it, already read)."""
    flat = dict((summary if summary is not None else store.summary(run_id)).get("config") or {})
    try:
        return PipelineConfig.from_flat(flat)
    except (TypeError, ValueError) as exc:
        raise RunDataError(f"run {run_id}: summary.json config is not a samseg config ({exc})") from exc


# ------------------------------------------------------------------ rerun
def rerun(store: RunStore, run_id: str, cluster_cfg: ClusterConfig, pool_cfg: PoolConfig, progress: Progress,
          features_cfg: Optional[FeaturesConfig] = None) -> dict[str, Any]:
    """Recluster run `run_id` with new settings (the engine's recluster), re-pooled from another
    feature backbone when `features_cfg` names one; log and return the new run's numbers."""
    progress("loading the run's masks and embeddings")
    cfg = run_config(store, run_id).replace(cluster=cluster_cfg, pool=pool_cfg)
    if features_cfg is not None and features_cfg != cfg.features:
        progress(f"computing {features_cfg.name} features (first time for this image: a backbone pass)")
        cfg = cfg.replace(features=features_cfg)
    run, summary = _recluster(store, run_id, cfg)
    progress("writing outputs and logging to MLflow")
    new_id = _write_and_log(store, run_id, run, summary, "recluster")
    clusters = run.clusters
    from samseg.engine.segment import edits_not_kept

    return {
        "warning": edits_not_kept(summary.to_dict()),
        "run_id": new_id,
        "parent_run_id": run_id,
        "n_clusters": clusters.n_clusters,
        "n_noise": clusters.n_noise,
        "cluster_sizes": clusters.sizes(),
        "overlay_url": f"/runs/{new_id}/files/overlay.png",
        "run_url": f"/runs/{new_id}",
    }


def rerun_batch(store: RunStore, batch: Any, changes: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Every image of batch run `batch` reclustered with `changes` as one new batch run
    (samseg.apps.batch_recluster, what `samseg recluster BATCH` runs); its outputs are the new runs'
    MLflow artifacts. Returns the new batch's id, link and counts."""
    from pydantic import ValidationError

    from samseg.apps import count
    from samseg.apps.batch_recluster import recluster_batch_run
    from samseg.apps.ui.validation import said_of
    from samseg.edges.run_schema import TAG_OUT_DIR, TAG_SOURCE
    from samseg.engine.publish import Tracking
    from samseg.engine.recluster import ReclusterError

    run_id = batch.info.run_id
    images = recorded_images(store, batch, f"recluster it with `samseg recluster {run_id[:8]} --eps …`")
    for image_run in images:
        store.input_uri(image_run)  # every image it re-reads: from the allowed roots (--image-root), as its run recorded it
    if not images:
        raise RunDataError(f"batch run {run_id[:8]} records no images to recluster")
    progress(f"reclustering {count(len(images), 'image')}")
    tracking = Tracking(experiment=store.client.get_experiment(batch.info.experiment_id).name,
                        tags={TAG_SOURCE: "ui", TAG_OUT_DIR: None})  # its dirs are the MLflow runs' artifacts
    with tempfile.TemporaryDirectory(prefix="samseg-ui-") as tmp:
        try:
            report = recluster_batch_run(run_id, images, dict(batch.data.params), changes, tmp, tracking,
                                         store.settings.stage_cache, record_dirs=False)
        except ReclusterError as exc:  # classes assigned from a table: a new eps changes nothing
            raise RunDataError(str(exc)) from None
        except ValidationError as exc:  # the batch's own settings are no longer valid (an older samseg's)
            raise RunDataError(f"batch run {run_id[:8]}: its settings cannot be reclustered ({said_of(exc)})") from None
    new = report.get("mlflow_run_id")
    failed = [e for e in report.get("images", []) if e.get("status") != "completed"]
    from samseg.engine.segment import EDITS_NOT_KEPT

    dropped = sum(bool(e.get("edits_not_kept")) for e in report.get("images", []))  # image runs whose edits are gone
    warning = f"{count(dropped, 'image')}: the class edits of the runs they re-tune {EDITS_NOT_KEPT}" if dropped else None
    return {"run_id": new, "run_url": f"/runs/{new}" if new else None, "images": len(report.get("images", [])),
            "failed": len(failed), "first_error": failed[0].get("error") if failed else None, "warning": warning}


def _recluster(store: RunStore, run_id: str, cfg: PipelineConfig, labels: Any = None, kind: str = "recluster",
               extra: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """(ImageRun, RunSummary) of `cfg` on the run's masks: its embeddings when the pool
    config is unchanged, else the pool cache entry or a re-pool of the cached encoder
    features (never the encoder or the AMG). labels: a fixed ClusterResult (exemplar class)."""
    from samseg.edges.cache import StageCache
    from samseg.edges.run_schema import FROM_PARENT_RUN
    from samseg.engine.recluster import ReclusterError, parent_model, recluster, recluster_summary

    parent = store.summary(run_id)
    masks, embeddings, _ = store.outputs(run_id)
    given: dict[str, tuple[Any, str]] = {"amg": (masks, FROM_PARENT_RUN)}
    was = run_config(store, run_id, parent)
    if cfg.pool == was.pool and cfg.features == was.features:
        given["pool"] = (embeddings, FROM_PARENT_RUN)
    if labels is not None:
        given["cluster"] = (labels, kind)
    model, load_backbone = parent_model(parent), None
    if cfg.features != was.features:
        model, load_backbone = _backbone(model, cfg.features.name)
    cache = StageCache(store.settings.stage_cache)
    try:
        run = recluster(store.load_image(run_id), cfg, model, cache, given=given, load_backbone=load_backbone)
    except ReclusterError as exc:
        raise RunDataError(f"a pooling change needs this image's encoder features in the stage cache ({exc})") from None
    if len(run.embeddings) != len(masks):
        raise RunDataError(f"run {run_id}: {len(run.embeddings)} embeddings for {len(masks)} masks")
    return run, recluster_summary(run, run_id, parent, kind=kind, extra=extra, cache=cache)


def _backbone(model: Any, name: str) -> tuple[Any, Optional[Callable[[], Any]]]:
    """(the parent's identity with backbone `name`, its loader): the UI re-pools with a backbone
    whose weights are here; SAM's own features (`sam`) come from the stage cache only."""
    from samseg.core.backbones import SAM
    from samseg.sam.weights import CheckpointError
    from samseg.sam.source import ModelRequest, ModelSource

    if name == SAM:
        return dataclasses.replace(model, features=SAM, features_sha256="", features_path=None), None
    source = ModelSource(ModelRequest(model.model_type, precision=model.precision, features=name))
    try:
        ident = source.identity()
    except CheckpointError as exc:
        raise RunDataError(str(exc)) from None
    return (dataclasses.replace(model, features=name, features_sha256=ident.features_sha256,
                                features_path=ident.features_path), source.get_backbone)


def _write_and_log(store: RunStore, parent: str, run: Any, summary: Any, kind: str) -> str:
    from samseg.edges.run_schema import KIND_RECLUSTER, TAG_EXEMPLAR, TAG_OUT_DIR, TAG_SOURCE
    from samseg.engine.publish import Tracking, publish

    # samseg.edges.mlflow.tracking knows the kinds image|batch|recluster: an exemplar class is a
    # re-labelling of the parent's masks, so it is a recluster marked samseg.exemplar.
    tags = {TAG_SOURCE: "ui", TAG_OUT_DIR: None, **({TAG_EXEMPLAR: "true"} if kind == "exemplar" else {})}
    # named as every image run is (its file name): the kind and the parent say what it is (runs list, the UI)
    tracking = Tracking(experiment=_experiment_name(store, parent), kind=KIND_RECLUSTER, parent_run_id=parent, tags=tags)
    with tempfile.TemporaryDirectory(prefix="samseg-ui-") as tmp:
        return publish(run, summary, tmp, run.image.stem, tracking)["mlflow_run_id"]


def save_edits(store: RunStore, run_id: str, edits: list[Any], progress: Progress) -> dict[str, Any]:
    """The run's classes edited (samseg.engine.curate.edit), logged as a new run tagged with this one."""
    from samseg.edges.run_schema import TAG_OUT_DIR, TAG_SOURCE
    from samseg.engine.curate import edit
    from samseg.engine.publish import Tracking

    store.input_uri(run_id)  # the image it re-reads: from the allowed roots (--image-root), else RunDataError
    progress("applying the edits")
    with tempfile.TemporaryDirectory(prefix="samseg-ui-") as tmp:
        try:
            res = edit(run_id, edits, tmp, Tracking(experiment=_experiment_name(store, run_id)),
                       tags={TAG_SOURCE: "ui", TAG_OUT_DIR: None})  # its dir is the MLflow run's artifacts
        except ValueError as exc:  # an unknown class id, ...: nothing was written
            raise RunDataError(str(exc)) from None
    new = res["mlflow_run_id"]
    return {"run_id": new, "run_url": f"/runs/{new}", "classes": res["classes"]}


def image_runs_only(store: RunStore, run_id: str, instead: str) -> list[str]:
    """The image runs of run `run_id` (itself, or those its batch recorded); RunDataError for a
    batch that ran in shards: its images are dirs its record names, and the UI reads no path a
    record names (a crafted record could name anyone's files). `instead`: the command that does it."""
    run = store.get_any_run(run_id)
    if run.data.tags.get(TAG_KIND) != KIND_BATCH:
        return [run_id]
    return list(recorded_images(store, run, instead))


def recorded_images(store: RunStore, batch: Any, instead: str) -> dict[str, str]:
    """{image run id: its name in OUT} as batch run `batch` recorded them; RunDataError for a
    batch that ran in shards (image_runs_only says why)."""
    from samseg.edges.mlflow.tracking import ImageDir, batch_images

    refs = batch_images(store.client, batch)
    if any(isinstance(r, ImageDir) for r in refs):
        raise RunDataError(f"batch run {batch.info.run_id} ran in shards (no run per image): {instead}, which reads its "
                           "image dirs")
    return refs


def save_dataset_edits(store: RunStore, run_id: str, edits: list[Any], progress: Progress,
                       register: str | None = None) -> dict[str, Any]:
    """A dataset batch's classes edited across all its images (samseg.engine.curate_dataset),
    logged as a new dataset batch run tagged with this one; `register`: the MLflow model name the
    edited classes become a new version of."""
    from samseg.engine.curate_dataset import edit_dataset
    from samseg.engine.publish import Tracking

    for image_run in image_runs_only(store, run_id, f"edit its classes with `samseg classes edit {run_id[:8]} …`"):
        store.input_uri(image_run)  # every image it re-reads: from the allowed roots (--image-root), as its run recorded it
    progress("applying the edits to every image of the batch")
    with tempfile.TemporaryDirectory(prefix="samseg-ui-") as tmp:
        try:  # the image dirs are the new runs' artifacts: the records name the runs
            res = edit_dataset(run_id, edits, tmp, Tracking(experiment=_experiment_name(store, run_id)),
                               record_dirs=False, register=register)
        except ValueError as exc:  # an unknown class id, ...: nothing was written
            raise RunDataError(str(exc)) from None
    new = res["mlflow_run_id"]
    registered = (res.get("registered") or {}).get("model_uri")
    return {"run_id": new, "run_url": f"/runs/{new}", "classes": res["classes"], "registered": registered}


def _experiment_name(store: RunStore, run_id: str) -> str:
    run = store.get_any_run(run_id)  # an image run, or a dataset batch run
    return store.client.get_experiment(run.info.experiment_id).name


# --------------------------------------------------------- exemplar query
def mask_at(masks: Any, x: float, y: float) -> int | None:
    """Index of the smallest mask covering pixel (x, y) of the original image, or None.

    Smallest, because a click means the most specific thing under the cursor (the same
    reason compose paints small masks on top). Only masks whose bbox holds the point are
    decoded, one at a time: never N×H×W in memory.
    """
    h, w = masks.image_hw
    xi, yi = int(x), int(y)
    if not (0 <= xi < w and 0 <= yi < h):
        return None
    best: int | None = None
    for i in np.argsort(masks.areas, kind="stable"):
        bx, by, bw, bh = masks.bbox_xywh[i]
        if not (bx <= xi <= bx + bw and by <= yi <= by + bh):
            continue
        if masks.decode([int(i)])[0, yi, xi]:
            best = int(i)
            break
    return best


def cosine_distance(query_c: np.ndarray, emb_nc: np.ndarray) -> np.ndarray:
    """(N,) cosine distances, the same metric DBSCAN uses on the embeddings."""
    from sklearn.metrics.pairwise import cosine_distances

    if len(emb_nc) == 0:
        return np.zeros(0, np.float64)
    return cosine_distances(query_c.reshape(1, -1), emb_nc)[0]


def exemplar_query(store: RunStore, run_id: str, x: float, y: float, max_distance: float, scope: str) -> dict[str, Any]:
    """Masks within `max_distance` (cosine) of the embedding of the mask at (x, y)."""
    masks, emb, _ = store.outputs(run_id)
    idx = mask_at(masks, x, y)
    if idx is None:
        return {"mask": None, "message": f"no mask covers pixel ({int(x)}, {int(y)})", "results": []}
    query = emb[idx]
    targets = [run_id] if scope == "image" else batch_runs(store, run_id)
    results = []
    for rid in targets:
        other = emb if rid == run_id else store.outputs(rid)[1]
        if other.shape[1:] != query.shape:
            continue  # another model's embedding space: distances would be meaningless
        d = cosine_distance(query, other)
        sel = [int(i) for i in np.flatnonzero(d <= max_distance)]
        row = store.row(store.get_run(rid), {})  # {}: only the image name is needed, skip the batch look-up
        results.append({
            "run_id": rid,
            "image": row["image"],
            "indices": sel,
            "n": len(sel),
            "highlight_url": f"/runs/{rid}/highlight.png?masks=" + ",".join(map(str, sel)),
        })
    return {"mask": idx, "area": int(masks.areas[idx]), "max_distance": max_distance, "scope": scope, "results": results}


def batch_runs(store: RunStore, run_id: str) -> list[str]:
    """Runs comparable with `run_id`: same batch parent (else same experiment), same weights
    and pooling, kind image. The run itself comes first."""
    run = store.get_run(run_id)
    tags, params = run.data.tags, run.data.params
    filt = [f"tags.`{TAG_KIND}` = '{KIND_IMAGE}'"]
    for tag in (TAG_MLFLOW_PARENT, TAG_CHECKPOINT_SHA256):
        if tags.get(tag):
            filt.append(f"tags.`{tag}` = '{tags[tag]}'")
    runs = store.client.search_runs([run.info.experiment_id], " and ".join(filt), max_results=MAX_BATCH_RUNS)
    same_pool = [
        r.info.run_id for r in runs
        if all(r.data.params.get(k) == params.get(k) for k in params if k.startswith("pool.") or k == "model_type")
    ]
    return [run_id] + [r for r in same_pool if r != run_id]


def highlight_png(store: RunStore, run_id: str, indices: list[int]) -> bytes:
    """PNG of the run's image with the chosen masks painted as one class."""
    import io

    from PIL import Image

    from samseg.core.compose import compose_labels
    from samseg.core.render import render_overlay
    from samseg.core.types import ClusterResult

    masks, _, _ = store.outputs(run_id)
    labels = selection_labels(len(masks), indices)
    label_map = compose_labels(masks, ClusterResult(labels))
    rgb = store.load_image(run_id).rgb
    img = render_overlay(rgb, label_map, [len(set(indices))] if indices else [])
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def selection_labels(n: int, indices: list[int]) -> np.ndarray:
    """(N,) int64: 0 for selected masks, -1 (noise) elsewhere; bad indices raise ValueError."""
    bad = [i for i in indices if not (0 <= int(i) < n)]
    if bad:
        raise ValueError(f"mask index {bad[0]} out of range (run has {n} masks)")
    labels = np.full(n, -1, np.int64)
    labels[np.asarray(indices, np.int64)] = 0
    return labels


def save_class(store: RunStore, selections: list[dict[str, Any]], query: dict[str, Any], progress: Progress) -> list[dict[str, Any]]:
    """Log each run's selection as a one-class run (kind `exemplar`), exported like a cluster."""
    from samseg.core.types import ClusterResult

    out = []
    for k, sel in enumerate(selections, 1):
        rid, indices = sel["run_id"], [int(i) for i in sel["indices"]]
        progress(f"saving class for image {k}/{len(selections)}")
        masks, _, _ = store.outputs(rid)
        labels = ClusterResult(selection_labels(len(masks), indices))
        run, summary = _recluster(store, rid, run_config(store, rid), labels=labels, kind="exemplar",
                                  extra={"exemplar": {**query, "n_selected": len(indices)}})
        new_id = _write_and_log(store, rid, run, summary, "exemplar")
        out.append({"run_id": new_id, "parent_run_id": rid, "n": len(indices), "run_url": f"/runs/{new_id}"})
    return out


# ----------------------------------------------------------------- compare
def compare(store: RunStore, run_ids: list[str]) -> dict[str, Any]:
    """The table `samseg runs compare` prints (samseg.edges.mlflow.compare.compare_runs) + each run's row.

    Dataset runs compare like image runs: their params are the batch's settings and their
    metrics n_classes, n_noise, mean_class_coverage, class_coverage.<c>."""
    from samseg.edges.mlflow.compare import compare_runs

    if not 2 <= len(run_ids) <= MAX_COMPARE:
        raise ValueError(f"pick 2 to {MAX_COMPARE} runs to compare, got {len(run_ids)}")
    rows = [store.row(store.get_any_run(r)) for r in run_ids]  # image or dataset run; RunNotFound → 404
    df = compare_runs(run_ids, None)
    table = df.astype(object).where(df.notna(), None)
    return {
        "runs": rows,
        "columns": [str(c) for c in table.columns],
        "rows": [[_jsonable(v) for v in rec] for rec in table.itertuples(index=False, name=None)],
    }


def _jsonable(v: Any) -> Any:
    """Table cell for display: counts as ints, other floats to 4 significant digits
    (the precision `samseg runs compare` prints)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        if v != v:
            return None
        return int(v) if v.is_integer() else float(f"{v:.4g}")
    if isinstance(v, (str, int, bool)) or v is None:
        return v
    return str(v)


def form_defaults(cfg: PipelineConfig, summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """Current values for the rerun form: the eps the run used (under --eps auto, the one it chose)."""
    used = ((summary or {}).get("eps_auto") or {}).get("eps")
    cluster = {**dataclasses.asdict(cfg.cluster), **({"eps": used} if used is not None else {})}
    return {**cluster, **dataclasses.asdict(cfg.pool), "features": cfg.features.name}
