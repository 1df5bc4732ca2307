"""Dataset-level classes: one set of ids for every image of a batch.

New classes (`--classes dataset`) are fitted on the finished batch: its masks are clustered
together, every image dir is rewritten with the shared ids, then each image's MLflow run is
logged (after relabelling, so the runs carry the dataset ids). Classes given beforehand
(`--classes-from`) are assigned where each image is computed — in the batch's own process or
in the shard run that holds it — so the image is written and logged once, with the dataset's
ids, and the batch only adds up the counts (`record_assigned`): no mask is read back. A batch
fanned out in shards with more images than ShardPlan.fit_images joins the two (`fit_then_assign`):
its new classes are fitted on a spread sample of its images, then every image is assigned to them
in its own shard, so the batch's process reads a bounded sample, never the whole dataset.

The work on the image dirs is samseg.edges.dataset_outputs; this module sequences it for
the CLI's local orchestrator and the segment-batch and segment-shard flows alike.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Iterator, Optional

from samseg.core.config import ClusterConfig
from samseg.core.cosine_dbscan import Gram
from samseg.edges.run_schema import KIND_IMAGE, KIND_RECLUSTER, TAG_KIND, TAG_OUT_DIR
from samseg.engine.runner import Execute, inline
from samseg.engine.stages import WRITE
from samseg.core.errors import one_line
from samseg.edges.dataset_outputs import CLASSES_SHA256  # summary.json and the batch report: the table an image was assigned to
from samseg.edges.layout import SUMMARY_JSON


@dataclass(frozen=True)
class GivenClasses:
    """Classes given beforehand (--classes-from), as every image of one batch gets them: `ref`
    pinned (a registered model's alias resolved to its version, a path made absolute), so a shard
    on another worker loads the same table, and `sha256` of that table, which the shard checks and
    each image records (an alias moved, a classes.json rewritten mid-batch: refused, not mixed)."""

    ref: str
    table: Any
    sha256: str

    @classmethod
    def load(cls, ref: str, sha256: Optional[str] = None) -> "GivenClasses":
        """The table at `ref`; with `sha256`, DatasetOutputsError unless it is still that table."""
        from samseg.edges.dataset_outputs import DatasetOutputsError, load_class_table, pin_classes_ref

        pinned = pin_classes_ref(ref)
        table = load_class_table(pinned)
        got = table_sha256(table)
        if sha256 is not None and got != sha256:
            raise DatasetOutputsError(f"{ref}: the classes changed since the batch started (sha256 {got[:12]}…, "
                                      f"the batch's {sha256[:12]}…); rerun the batch")
        return cls(pinned, table, got)


def table_sha256(table: Any) -> str:
    import hashlib

    return hashlib.sha256(table.to_json().encode("utf-8")).hexdigest()


def check_dataset_request(out: str, classes_from: Optional[str], model: Any = None) -> Optional[GivenClasses]:
    """The classes of `classes_from` (None when not given), checked before any image is
    segmented: one that does not load (unknown run, bad classes.json) or was built from another
    backbone's embeddings than `model`'s (a samseg.sam.source.ModelIdentity) is an error now,
    not after the whole batch. Raises DatasetOutputsError / TrackingError / ClassTableError."""
    from samseg.edges.dataset_outputs import check_same_model

    if not classes_from:
        return None
    given = GivenClasses.load(classes_from)
    if model is not None:
        check_same_model(given.table, [{"model": {"type": model.model_type, "checkpoint_sha256": model.checkpoint_sha256},
                                        "features": model.features_record()}])
    return given


SHEET_IMAGES = 64  # the images an assigned batch's contact sheet picks its examples from


def assign_classes(run: Any, table: Any) -> None:
    """Give an ImageRun's masks `table`'s class ids in place (nearest covering prototype, no
    clustering): its clusters, label map and names become the dataset's."""
    import dataclasses

    from samseg.core.compose import compose_labels
    from samseg.core.dataset import assign_to_classes
    from samseg.edges.dataset_outputs import dataset_ids

    _, res = dataset_ids({}, assign_to_classes(run.embeddings, table), table, "assigned")
    run.values["cluster"] = dataclasses.replace(res, choice=run.clusters.choice)
    run.values["compose"] = compose_labels(run.masks, res)


def assigned_summary(summary: Any, run: Any, given: GivenClasses) -> Any:
    """The RunSummary of an image assigned to `given` (assign_classes): the dataset's counts, the
    classes present, their names and the table's sha256."""
    from samseg.edges.dataset_outputs import dataset_ids
    from samseg.engine.summary import RunSummary

    d = dataset_ids(summary.to_dict(), run.clusters, given.table, "assigned")[0]
    return RunSummary.from_dict({**d, CLASSES_SHA256: given.sha256})


def assigned_entry(summary: dict[str, Any]) -> dict[str, Any]:
    """What the batch report keeps of an assigned image for classes.json: its masks per class id
    and the table they are ids of ({} for an image that was not assigned)."""
    if summary.get("classes") != "assigned":
        return {}
    return {"cluster_sizes": summary.get("cluster_sizes"), CLASSES_SHA256: summary.get(CLASSES_SHA256)}


def record_assigned(out: str, results: Iterable[dict[str, Any]], given: GivenClasses, batch_run_id: Optional[str],
                    execute: Execute = inline, register: Optional[str] = None, mode: str = "assigned") -> dict[str, Any]:
    """classes.json and the contact sheet of a batch whose images were assigned to `given` as
    they were computed, from their report entries (counts per class: read once, as they stream from
    a sharded batch's spill) and a few image dirs for the sheet's examples; logged on the batch run
    (and registered as model `register`, for classes the batch fitted itself). {"error": one line}
    when it fails, or when an image was assigned to another table (or to none) than the batch's.
    mode: "assigned" (classes given beforehand) or "dataset" (the batch's own, fitted on its
    sample: fit_then_assign)."""
    from pathlib import PurePosixPath

    from samseg.edges.dataset_outputs import log_dataset_classes, write_assigned_classes

    images: list[dict[str, Any]] = []  # what classes.json keeps of each completed image, no more
    other, n_other = [], 0  # images assigned to another table: counted, the first few named
    for r in results:
        if r["status"] != "completed":
            continue
        if r.get(CLASSES_SHA256) != given.sha256:
            other, n_other = (other + [r["name"]])[:4], n_other + 1
        images.append({"name": r["name"], "file_name": PurePosixPath(str(r["image"])).name,
                       "n_masks": r.get("n_masks"), "cluster_sizes": r.get("cluster_sizes")})
    if not images:
        return {"error": f"{out}: no completed image to give dataset-level classes to"}
    if n_other:
        return {"error": f"{out}: {n_other} images ({', '.join(other[:3])}{'…' if n_other > 3 else ''}) were not "
                         f"assigned to the batch's classes {given.sha256[:12]}…; rerun the batch"}
    try:
        with local_image_dirs(out, [i["name"] for i in images[:SHEET_IMAGES]]) as (dirs, _):
            rep = execute("dataset-classes", lambda: write_assigned_classes(out, given.table, images, dirs, mode))
        if batch_run_id:
            execute("track", lambda: log_dataset_classes(batch_run_id, rep))
        info = {k: rep[k] for k in ("mode", "n_classes", "metrics", "classes_json", "contact_sheet")}
        if register and batch_run_id:
            info["registered"] = register_table(batch_run_id, register, rep["classes_json"], execute)
    except Exception as exc:  # an image dir that moved, MLflow or S3 down, ...
        return {"error": one_line(exc)}
    return info


def register_table(batch_run_id: str, name: str, classes_json: str, execute: Execute = inline) -> Any:
    """The batch's classes.json as a new version of MLflow model `name` (edges.mlflow.class_registry)."""
    from samseg.edges.mlflow.class_registry import register_classes
    from samseg.edges.storage import local_path

    with local_path(classes_json) as path:
        return execute("register-classes", lambda: register_classes(batch_run_id, name, path))


def spread(n: int, k: int) -> list[int]:
    """k indices of range(n) spread evenly over it (all of them when k >= n): a sample that sees
    every part of a listing, not only its first folder."""
    if k >= n:
        return list(range(n))
    return sorted({(2 * i + 1) * n // (2 * k) for i in range(k)})


def fit_then_assign(uris: Collection[str], job: Any, job_for: Callable[[bool, Optional[GivenClasses]], Any], classes: Any,
                    run_images: Callable[..., Iterable[dict[str, Any]]], execute: Execute = inline,
                    gram: Optional[Gram] = None, resumed: bool = False,
                    ) -> tuple[Optional[GivenClasses], Iterable[dict[str, Any]], Optional[str]]:
    """New dataset classes for a batch fanned out in shards, without reading the dataset back:

    1. a spread sample of classes.fit_images images computed in shards (their own ids, not logged);
    2. the classes fitted on the sample's masks (at most classes.max_cluster clustered at once)
       and named, written to OUT/classes.fitted.json;
    3. every image computed in shards (the sample's stages come from the stage cache), assigned
       to those classes where its masks are, written and logged once.

    A resumed batch (its MLflow run killed, the command run again) keeps the classes it fitted
    before, when OUT holds them: images it logged then are not logged again, so a new fit could
    leave their runs on other ids than OUT's.
    uris: a list, or a batch's Listing (read twice, never held: the sample is picked as it streams).
    job_for(logged, classes): the job each image runs as (samseg.engine.batch.image_job). Returns
    (the fitted classes, as every shard loaded them; the images' report entries, as run_images
    gives them; None), or when the fit fails (no sample image segmented, the fit, S3): (None; the
    sample's entries; the error's one line)."""
    from samseg.edges.dataset_outputs import DatasetOutputsError, fit_classes, write_fitted_classes
    from samseg.edges.outdirs import named_inputs
    from samseg.edges.owned_files import FITTED_CLASSES_JSON
    from samseg.edges.storage import exists, join_uri
    from samseg.engine import progress
    from samseg.engine.naming import dataset_namer

    fitted = join_uri(job.out, FITTED_CLASSES_JSON)
    sample: list[dict[str, Any]] = []
    try:
        if not (resumed and exists(fitted)):  # (a resumed batch's fit is kept: see above)
            pick = set(spread(len(uris), int(classes.fit_images)))
            # named as the full run names them (its shards: named_inputs too), read up to the last one picked
            picked = [pair for i, pair in enumerate(itertools.islice(named_inputs(uris), max(pick, default=-1) + 1)) if i in pick]
            with progress.reporting(None):  # the progress bars count each image once: when it is assigned
                sample = list(run_images([u for u, _ in picked], job_for(False, None), [n for _, n in picked]))
            done = [r["name"] for r in sample if r["status"] == "completed"]
            if not done:
                raise DatasetOutputsError(f"{job.out}: no image of the {len(pick)} the classes are fitted on was "
                                          f"segmented ({sample[0]['error'] if sample else 'no images'})")
            namer = dataset_namer(job.cfg.names, job.runtime.device, job.runtime.seed)
            with local_image_dirs(job.out, done) as (dirs, _):
                table = execute("dataset-classes", lambda: fit_classes(dirs, job.cfg.cluster, classes.max_cluster,
                                                                       namer=namer, gram=gram)[-1])
            execute(WRITE, lambda: write_fitted_classes(job.out, table))
        given = GivenClasses.load(fitted)
    except Exception as exc:  # the batch reports it; OUT stays marked incomplete and a rerun completes it
        return None, sample, one_line(exc)
    return given, run_images(uris, job_for(True, given), None), None  # None: the same unique names as the sample's


def classify_dirs(out: str, dirs: list[str], cluster_cfg: ClusterConfig, batch_run_id: Optional[str],
                  max_cluster: Optional[int], seed: int = 0,
                  namer: Optional[Callable[..., dict[str, Any]]] = None, gram: Optional[Gram] = None,
                  ) -> dict[str, Any]:
    """Cluster the batch's image dirs together (named by `namer` when given,
    samseg.engine.naming.dataset_namer); log classes.json, contact sheet and metrics on the batch run."""
    from samseg.edges.dataset_outputs import apply_dataset_classes, log_dataset_classes

    report = apply_dataset_classes(out, dirs, cluster_cfg, max_cluster=max_cluster, seed=seed, namer=namer, gram=gram)
    if batch_run_id:
        log_dataset_classes(batch_run_id, report)
    return report


def relabel_and_track(out: str, results: list[dict[str, Any]], cluster_cfg: ClusterConfig, batch_run_id: Optional[str],
                      max_cluster: Optional[int], track: bool, experiment: str,
                      register_classes: Optional[str] = None, execute: Execute = inline,
                      namer: Optional[Callable[..., dict[str, Any]]] = None, gram: Optional[Gram] = None,
                      record_dirs: bool = True) -> dict[str, Any]:
    """New dataset ids for the completed images of a batch, then their MLflow child runs
    (record_dirs=False: OUT is a temporary folder, so the runs name no dir of it).

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
            rep = execute("dataset-classes", lambda: classify_dirs(out, dirs, cluster_cfg, batch_run_id, max_cluster,
                                                                   namer=namer, gram=gram))
            execute(WRITE, publish)  # an S3 OUT: the relabelled dirs go back (I/O retries in a flow)
            info = {k: rep[k] for k in ("mode", "n_classes", "metrics", "classes_json", "contact_sheet")}
            if register_classes and batch_run_id:
                info["registered"] = register_table(batch_run_id, register_classes, rep["classes_json"], execute)
        except Exception as exc:  # a bad classes.json, an image that moved, MLflow or S3 down, ...
            info = {"error": one_line(exc)}
        for r, d in zip(done, dirs):
            summary = json.loads((Path(d) / SUMMARY_JSON).read_text(encoding="utf-8"))
            r.update(n_clusters=summary.get("n_clusters"), n_noise=summary.get("n_noise"))  # now the dataset ids'
            if track:
                where = join_uri(out, r["name"]) if record_dirs else None
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


def _log(d: str, where: Optional[str], summary: dict[str, Any], experiment: str, batch_run_id: Optional[str], name: str) -> str:
    from samseg.edges.mlflow.tracking import log_image_run

    run_name = (summary.get("image") or {}).get("file_name") or name
    # a recluster's image (samseg.engine.recluster.recluster_batch) keeps its kind and the run it re-tunes
    return log_image_run(Path(d), summary, experiment=experiment, nested_under=batch_run_id, run_name=run_name,
                         parent_run_id=summary.get("parent_run_id"),
                         extra_tags={TAG_KIND: summary.get("kind") or (KIND_RECLUSTER if summary.get("recluster") else KIND_IMAGE),
                                     TAG_OUT_DIR: where})
