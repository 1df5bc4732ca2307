"""The MLflow edge: one run per image, a parent run per batch, comparisons, recluster inputs.
(A batch split in shards logs one run per shard instead: samseg.edges.mlflow.shard_runs.)

All writes go through `MlflowClient` with explicit run ids (not the fluent "active run"
stack), so children can be logged from any thread or process — a Prefect worker logs an
image run nested under a batch run another process started.

Run layout (see `log_image_run`):
- params: every `cfg.flat()` value (`model_type`, `amg.points_per_side`, `cluster.eps`, …)
- metrics: n_masks, n_clusters, n_noise, noise_fraction, silhouette (when known),
  `seconds.<stage>`, `seconds.load` (the wait for models and libraries), `seconds.total`, cache_hits
- tags: samseg.kind (image|batch|recluster), samseg.image_sha256, samseg.image_uri,
  samseg.checkpoint_sha256, samseg.prefect_flow_run_id, samseg.parent_run_id (the run a
  recluster started from), samseg.cache.<stage> (hit|computed), mlflow.parentRunId (batch)
- artifacts: labels.png, overlay.png, classes/, masks.json, masks.parquet, summary.json,
  embeddings.npy (so a recluster on another machine can run from the run alone)

Every param/tag value goes through `scrub_secrets` first. mlflow is imported lazily, and the
functions a short command calls run in samseg's MLflow process when the command started one
(`@in_mlflow_process`, samseg.edges.mlflow.process): they take and return plain values.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from samseg.core.secrets import scrub_secrets
from samseg.core.errors import one_line
from samseg.edges.run_schema import (EXPERIMENT_DEFAULT, KIND_BATCH, KIND_IMAGE, KIND_RECLUSTER, KIND_SHARD, KINDS, SHARDED, SUMMARY_TAGS, TAG_CACHE_PREFIX,
                                     TAG_CLASS_NAMES, TAG_KIND, TAG_MLFLOW_PARENT, TAG_PARENT_RUN)
from samseg.edges.mlflow import client as mlflow_client
from samseg.edges.mlflow.client import RunRefError, TrackingError
from samseg.edges.mlflow.conventions import log_lineage
from samseg.edges.mlflow.process import in_mlflow_process
from samseg.edges.owned_files import BATCH_SUMMARY_JSON
from samseg.edges.layout import EMBEDDINGS_NPY, LABELS_PNG, MASKS_JSON, MASKS_PARQUET, OVERLAY_PNG, SUMMARY_JSON

log = logging.getLogger(__name__)

ARTIFACT_FILES: tuple[str, ...] = (LABELS_PNG, OVERLAY_PNG, MASKS_JSON, MASKS_PARQUET, SUMMARY_JSON, EMBEDDINGS_NPY)
ARTIFACT_DIRS: tuple[str, ...] = ("classes",)
# What `fetch_run_inputs` needs to recluster without the original machine's cache.
RECLUSTER_INPUTS: tuple[str, ...] = (SUMMARY_JSON, MASKS_JSON, EMBEDDINGS_NPY)
RUN_STATUSES: tuple[str, ...] = ("FINISHED", "FAILED", "KILLED")

def _at(summary: dict[str, Any], *path: str) -> Any:
    """The value at `path` in a samseg.engine.summary.RunSummary dict (summary["model"]["type"]), or None."""
    value: Any = summary
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def run_params(summary: dict[str, Any]) -> dict[str, str]:
    """model_type + every flattened config value, as MLflow param strings."""
    params = {str(k): _param_str(v) for k, v in (summary.get("config") or {}).items()}
    model_type = _at(summary, "model", "type")
    if model_type is not None:
        params.setdefault("model_type", str(model_type))
    resolved = _at(summary, "model", "precision")
    if resolved is not None:  # "auto" in the config says what was asked; this, what ran
        params["precision_resolved"] = str(resolved)
    chosen = _at(summary, "eps_auto", "eps")
    if chosen is not None:  # --eps auto: cluster.eps_auto=True says what was asked, this what ran
        params["cluster.eps_chosen"] = _param_str(chosen)
        params["cluster.eps_rule"] = str(_at(summary, "eps_auto", "rule"))
    return params


def _param_str(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def run_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """Counts, noise fraction, silhouette, per-stage seconds and cache hits of one image."""
    out: dict[str, float] = {}
    for key in ("n_masks", "n_clusters", "n_noise", "silhouette"):
        if summary.get(key) is not None:
            out[key] = float(summary[key])
    if summary.get("noise_fraction") is not None:
        out["noise_fraction"] = float(summary["noise_fraction"])
    elif "n_noise" in out and "n_masks" in out:
        out["noise_fraction"] = out["n_noise"] / out["n_masks"] if out["n_masks"] else 0.0
    for stage, seconds in (summary.get("seconds") or {}).items():
        if seconds is not None:
            out[f"seconds.{stage}"] = float(seconds)
    cache = summary.get("cache") or {}
    if cache:
        out["cache_hits"] = float(sum(1 for v in cache.values() if v == "hit"))
    return out


def run_tags(
    summary: dict[str, Any], kind: str, parent_run_id: str | None, nested_under: str | None, extra_tags: dict[str, Any] | None
) -> dict[str, str]:
    """An image run's tags: its kind and lineage, the summary's own (run_schema.SUMMARY_TAGS), cache statuses."""
    tags: dict[str, Any] = {TAG_KIND: kind, TAG_PARENT_RUN: parent_run_id, TAG_MLFLOW_PARENT: nested_under}
    tags.update({tag: _at(summary, *path) or None for tag, path in SUMMARY_TAGS.items()})  # an empty tag is no tag
    for stage, state in (summary.get("cache") or {}).items():
        tags[f"{TAG_CACHE_PREFIX}{stage}"] = state
    tags.update(extra_tags or {})
    return {k: scrub_secrets(str(v)) for k, v in tags.items() if v is not None}


# ---------------------------------------------------------------- MLflow calls


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment of a local SQLite store keeps its artifacts: mlruns/ beside the database
    (MLflow's default is ./mlruns of whichever directory created the experiment, so a store named
    by an absolute path would scatter its artifacts over working dirs). None: the store's default."""
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    if parsed.scheme != "sqlite" or not parsed.path or parsed.path in ("/", "/:memory:"):
        return None
    db = Path(parsed.path[1:])  # sqlite:///rel.db -> rel.db; sqlite:////abs.db -> /abs.db
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", experiment).strip("-.")[:40] or "experiment"
    digest = hashlib.sha256(experiment.encode("utf-8")).hexdigest()[:8]  # two names, one slug: two folders
    return (db.resolve().parent / "mlruns" / f"{slug}-{digest}").as_uri()


def experiment_id(client: Any, name: str) -> str:
    """Id of experiment `name`, created on first use (a concurrent creator is tolerated)."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(client.tracking_uri, name))
    except MlflowException:
        exp = client.get_experiment_by_name(name)  # another worker created it first
        if exp is None:
            raise
        return exp.experiment_id


def _log_values(client: Any, run_id: str, params: dict[str, Any], metrics: dict[str, float]) -> None:
    from mlflow.entities import Metric, Param

    now_ms = int(time.time() * 1000)
    client.log_batch(
        run_id,
        params=[Param(k, scrub_secrets(_param_str(v))) for k, v in params.items()],
        metrics=[Metric(k, float(v), now_ms, 0) for k, v in metrics.items()],
    )


def _log_outputs(client: Any, run_id: str, out_dir: Path) -> None:
    """Upload the image dir's artifacts; summary.json goes up scrubbed of secrets."""
    missing = [n for n in ARTIFACT_FILES if not (out_dir / n).is_file()]
    if missing:
        log.warning("mlflow: %s has no %s; logging the rest", out_dir, ", ".join(missing))
    for name in ARTIFACT_FILES:
        path = out_dir / name
        if not path.is_file():
            continue
        if name == SUMMARY_JSON:
            with tempfile.TemporaryDirectory(prefix="samseg-mlflow-") as tmp:
                clean = Path(tmp) / name
                clean.write_text(scrub_secrets(path.read_text(encoding="utf-8")), encoding="utf-8")
                client.log_artifact(run_id, str(clean))
        else:
            client.log_artifact(run_id, str(path))
    for name in ARTIFACT_DIRS:
        if (out_dir / name).is_dir():
            client.log_artifacts(run_id, str(out_dir / name), artifact_path=name)


def _kind_of(client: Any, run_id: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).data.tags.get(TAG_KIND)
    except MlflowException:
        return None


CLASS_NAMES_TABLE = "class_names.json"  # the MLflow table of a named run's classes


def _log_class_names(client: Any, run_id: str, summary: dict[str, Any]) -> None:
    """A named run's classes as an MLflow table (the UI's artifact view and `mlflow.load_table`):
    one row per class — id, name (empty: unnamed), best name, its score, runner-up and its score."""
    rows = (summary.get("naming") or {}).get("classes") or []
    if not rows:
        return
    columns = ("id", "name", "best", "score", "runner_up", "runner_up_score")
    client.log_table(run_id, data={k: [("" if r.get(k) is None else r.get(k)) for r in rows] for k in columns},
                     artifact_file=CLASS_NAMES_TABLE)
    from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

    named = " ".join(f"{r['id']}:{r['name']}" for r in rows if r.get("name"))
    client.set_tag(run_id, TAG_CLASS_NAMES, scrub_secrets(named)[:MAX_TAG_VAL_LENGTH] or "-")


@in_mlflow_process
def log_image_run(
    out_dir: Path,
    summary: dict[str, Any],
    *,
    experiment: str = EXPERIMENT_DEFAULT,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    extra_tags: dict[str, Any] | None = None,
    nested_under: str | None = None,
) -> str:
    """Log one image dir (written by samseg.edges.image_dir) as a finished MLflow run; returns its id.

    parent_run_id: the run a recluster started from (tag samseg.parent_run_id, kind
    "recluster"). nested_under: the batch run this image belongs to (mlflow.parentRunId,
    shown nested in the UI). For convenience a `parent_run_id` that names a *batch* run is
    treated as `nested_under`. summary: a samseg.engine.summary.RunSummary dict (with the
    optional orchestration keys cache / prefect_flow_run_id / silhouette.
    """
    from mlflow.exceptions import MlflowException

    out_dir = Path(out_dir)
    try:
        client = mlflow_client.client()
        if parent_run_id and nested_under is None and _kind_of(client, parent_run_id) == KIND_BATCH:
            parent_run_id, nested_under = None, parent_run_id
        kind = str((extra_tags or {}).get(TAG_KIND) or (KIND_RECLUSTER if parent_run_id else KIND_IMAGE))
        if kind not in KINDS:
            raise ValueError(f"{TAG_KIND} must be one of {', '.join(KINDS)}, got {kind!r}")
        tags = run_tags(summary, kind, parent_run_id, nested_under, extra_tags)
        name = run_name or _at(summary, "image", "file_name") or out_dir.name
        run = client.create_run(experiment_id(client, experiment), tags=tags, run_name=scrub_secrets(str(name)))
    except MlflowException as exc:
        raise TrackingError(f"MLflow at {mlflow_client.where()}: cannot start a run in {experiment!r}: {mlflow_client.error_line(exc)}") from None
    run_id = run.info.run_id
    try:
        _log_values(client, run_id, run_params(summary), run_metrics(summary))
        _log_outputs(client, run_id, out_dir)
        log_lineage(client, run_id, summary, out_dir)
        _log_class_names(client, run_id, summary)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):  # a stop: never wait on the server (the sweep ends the run)
            from samseg.edges.shutdown import bounded, grace_s

            # the grace alone: what the stop's deadline leaves is for ending the batch run after it
            bounded(lambda: client.set_terminated(run_id, "KILLED"), grace_s())
            raise
        try:
            client.set_terminated(run_id, "FAILED")
        except MlflowException:
            pass  # keep the original error; the run stays RUNNING in the UI
        if isinstance(exc, MlflowException):
            raise TrackingError(f"MLflow run {run_id} ({out_dir}): {mlflow_client.error_line(exc)}") from None
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


@in_mlflow_process
def start_batch_run(experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, Any]) -> str:
    """Start (and leave RUNNING) a batch parent run; image runs pass its id as `nested_under`."""
    from mlflow.exceptions import MlflowException

    try:
        client = mlflow_client.client()
        all_tags = {TAG_KIND: KIND_BATCH, **tags}
        clean = {k: scrub_secrets(str(v)) for k, v in all_tags.items() if v is not None}
        run = client.create_run(experiment_id(client, experiment), tags=clean, run_name=run_name)
        _log_values(client, run.info.run_id, params, {})
    except MlflowException as exc:
        raise TrackingError(f"MLflow at {mlflow_client.where()}: cannot start batch run {run_name!r}: {mlflow_client.error_line(exc)}") from None
    return run.info.run_id


BATCH_METRICS: tuple[str, ...] = ("succeeded", "failed", "retried", "untracked")  # a batch run's totals, from its report


def end_run(run_id: str, status: str = "FINISHED", record: dict[str, Any] | None = None) -> None:
    """Terminate a run started by `start_batch_run` (FINISHED, FAILED or KILLED). record: the
    batch's report, logged first as its batch_summary.json: the list of its image runs that
    every reader of the batch goes by (`batch_image_runs`), and its totals as metrics
    (images + BATCH_METRICS, what `samseg runs compare` shows of batches). The record is written
    here, secrets scrubbed, to a local file that the MLflow process logs: a sharded batch's
    entries stream from disk (samseg.edges.spill) and never cross the pipe."""
    from samseg.edges.spill import write_json

    if status not in RUN_STATUSES:
        raise ValueError(f"run status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
    if record is None:
        return _end_run(run_id, status, None, {}, None)
    totals = {"images": len(record.get("images") or []),
              **{k: record[k] for k in BATCH_METRICS if isinstance(record.get(k), (int, float))}}
    tmp: Optional[str] = None
    path, unwritten = None, None
    try:
        tmp = tempfile.mkdtemp(prefix="samseg-record-")
        path = os.path.join(tmp, BATCH_SUMMARY_JSON)
        write_json(record, path, scrub=scrub_secrets)
    except Exception as exc:  # noqa: BLE001 — TMPDIR full or missing: the run is still ended, and says why its record is not
        path, unwritten = None, one_line(exc)
    try:
        _end_run(run_id, status, path, totals, unwritten)
    except Exception:
        _remove(tmp)
        raise
    # a stop (BaseException) leaves the file: the MLflow process may still be uploading it
    _remove(tmp)


def _remove(folder: Optional[str]) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


@in_mlflow_process
def _end_run(run_id: str, status: str, record_path: Optional[str], totals: dict[str, float],
             unrecorded: Optional[str]) -> None:
    """end_run's MLflow calls: the record file logged, the totals, the run ended."""
    from mlflow.exceptions import MlflowException

    if record_path is not None:  # the run is ended whatever happens to its record (an artifact store may be down)
        try:
            mlflow_client.client().log_artifact(run_id, record_path)
        except Exception as exc:  # noqa: BLE001 — MlflowException, boto3's upload errors, requests'
            unrecorded = mlflow_client.error_line(exc)
    if totals:
        try:
            _log_values(mlflow_client.client(), run_id, {}, totals)
        except MlflowException as exc:  # the record is what readers go by: the totals are for comparing
            log.warning("MLflow batch run %s: totals not logged (%s)", run_id, mlflow_client.error_line(exc))
    try:
        mlflow_client.client().set_terminated(run_id, status)
    except MlflowException as exc:
        raise TrackingError(f"MLflow run {run_id}: cannot end ({mlflow_client.error_line(exc)})") from None
    if unrecorded is not None:
        raise TrackingError(f"MLflow batch run {run_id}: ended {status}, but its {BATCH_SUMMARY_JSON} (the list of its "
                            f"image runs) was not logged ({unrecorded}); export its output dir instead")


# ---------------------------------------------------------------- reading runs


def recent_runs(experiment: str | None, limit: int) -> list[Any]:
    """The `limit` newest runs (of one experiment, or of every active one), newest first."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client.client(reading=True)
    try:
        if experiment is not None:
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                raise TrackingError(f"MLflow at {mlflow_client.where()}: no experiment named {experiment!r}")
            exp_ids = [exp.experiment_id]
        else:
            exp_ids = [e.experiment_id for e in client.search_experiments()]
        if not exp_ids:
            return []
        return list(client.search_runs(exp_ids, "", order_by=["attributes.start_time DESC"], max_results=limit))
    except MlflowException as exc:
        raise TrackingError(f"MLflow at {mlflow_client.where()}: search failed: {mlflow_client.error_line(exc)}") from None


def _not_a_run_id(ref: str) -> str:
    """Why `ref` names no run, for a ref that is not 32 hex digits: a path this command does not read, a path
    that does not exist, or a mistyped id."""
    if os.path.exists(ref):
        return "a file or folder, not an MLflow run id (this command takes run ids: `samseg runs list` shows them)"
    if ref.startswith("s3://"):  # a batch's s3:// OUT: its batch run reads it
        return "an s3:// folder, not an MLflow run id: give the run id of the batch that wrote it (`samseg runs list`)"
    if "/" in ref or os.sep in ref or "." in ref:
        return "no such file or folder, and not an MLflow run id"
    return "not an MLflow run id"


def _get_run(client: Any, run_id: str) -> Any:
    from mlflow.exceptions import MlflowException

    if not is_run_id(run_id):
        raise RunRefError(f"{run_id!r}: {_not_a_run_id(run_id)}")
    try:
        return client.get_run(run_id)
    except MlflowException as exc:  # no such run here (a usage error), or a store that does not answer
        error = RunRefError if exc.error_code == "RESOURCE_DOES_NOT_EXIST" else TrackingError
        raise error(f"MLflow run {run_id}: not found at {mlflow_client.where()} ({mlflow_client.error_line(exc)})") from None


def batch_image_runs(client: Any, batch_run: Any) -> list[str]:
    """The images batch run `batch_run` recorded in its batch_summary.json, in its order: their
    image run ids, or for a batch split in shards (one MLflow run per shard, none per image) their
    image dirs OUT/<name> (as ImageDir; `fetch_run_inputs` and `image_params` read both). Only
    the batch's own record counts: any run can tag itself as a batch's child (mlflow.parentRunId),
    and a run injected that way must not join the batch's exports."""
    return list(batch_images(client, batch_run))


def batch_record(client: Any, batch_run: Any) -> dict[str, Any]:
    """The report batch run `batch_run` logged as its batch_summary.json (TrackingError, one
    line, when it has none: still running, killed, or an older samseg's)."""
    rid = batch_run.info.run_id
    try:
        with tempfile.TemporaryDirectory(prefix="samseg-batch-") as tmp:
            path = client.download_artifacts(rid, BATCH_SUMMARY_JSON, tmp)
            record = json.loads(Path(path).read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 — MlflowException, OSError, bad JSON, an S3 artifact store's ClientError
        state = "still running" if batch_run.info.status == "RUNNING" else f"{batch_run.info.status}"
        raise TrackingError(f"MLflow batch run {rid} has no record of its image runs ({BATCH_SUMMARY_JSON}; "
                            f"the batch is {state}, or was made by an older samseg): use its output dir instead") from None
    return record if isinstance(record, dict) else {}


def is_run_id(ref: str) -> bool:
    """True for what may be an MLflow run id (a path or URI has a '/')."""
    return bool(re.fullmatch(r"[0-9a-zA-Z_\-]{1,64}", ref or ""))


class ImageDir(str):
    """An image dir OUT/<name> that a sharded batch's own record names (batch_images): the one
    kind of ref `fetch_run_inputs` and `image_params` read from a path or URI. A ref a person
    or a request gives is a run id, never a path to read."""


def batch_images(client: Any, batch_run: Any) -> dict[str, str]:
    """{image run id, or a sharded batch's image dir: its name in OUT} as batch run `batch_run`
    recorded them (batch_image_runs)."""
    return images_in(batch_record(client, batch_run))


def images_in(record: dict[str, Any]) -> dict[str, str]:
    """batch_images of a batch's record (its batch_summary.json, read once by the caller)."""
    sharded = record.get("fan_out") == SHARDED
    found: dict[str, str] = {}
    for entry in record.get("images") or []:
        if not isinstance(entry, dict):
            continue
        ref = entry.get("mlflow_run_id")  # an image run (a sharded batch of an older samseg has them too)
        if not (isinstance(ref, str) and is_run_id(ref)):
            ref = entry.get("out_dir") if sharded and entry.get("status") == "completed" else None
            ref = ImageDir(ref) if isinstance(ref, str) and ref else None  # a sharded batch's: no run per image
        if ref is not None and ref not in found:
            found[ref] = str(entry.get("name") or "")
    return found


RUN_ID_CHARS = 32  # an MLflow run id: 32 lower-case hex characters
MIN_PREFIX = 4  # a shorter prefix is refused: it names too many runs to mean one


def resolve_run_id(ref: str, client: Any = None, where: Optional[str] = None) -> str:
    """The full run id of `ref`: a whole id as it is, or a unique prefix of one (as git takes a
    commit's; the UI shows 8 characters), looked up over every experiment of `client`'s store
    (default: MLFLOW_TRACKING_URI's; `where` names it in messages). No run, or more than one, is
    TrackingError in one line. A ref that is not hex is returned as given (a path, a URI)."""
    ref = ref.strip()
    if len(ref) >= RUN_ID_CHARS or not re.fullmatch(r"[0-9a-f]+", ref):
        return ref
    if len(ref) < MIN_PREFIX:
        raise RunRefError(f"{ref!r}: a run id prefix needs at least {MIN_PREFIX} characters")
    return _search_run_id(ref, client, where)  # a path or a URI never waits for MLflow


@in_mlflow_process
def _search_run_id(ref: str, client: Any = None, where: Optional[str] = None) -> str:
    """The one run id that starts with hex prefix `ref` (resolve_run_id)."""
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    client = client or mlflow_client.client(reading=True)
    where = where or f"at {mlflow_client.where()}"
    try:
        exp_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
        found = client.search_runs(exp_ids, f"attributes.run_id LIKE '{ref}%'", max_results=3) if exp_ids else []
    except MlflowException as exc:
        raise TrackingError(f"MLflow {where}: search failed: {mlflow_client.error_line(exc)}") from None
    if not found:
        raise RunRefError(f"no MLflow run id starts with {ref} {where}")
    if len(found) > 1:
        ids = ", ".join(r.info.run_id for r in found[:2])
        raise RunRefError(f"{ref} is ambiguous: it starts {ids}{' and more' if len(found) > 2 else ''}; "
                            "give more characters")
    return found[0].info.run_id


@in_mlflow_process
def images_of_batch(run_id: str) -> dict[str, str] | None:
    """{image run id: OUT/<name>} of batch run `run_id` (its own record), or None when it is not a batch run."""
    client = mlflow_client.client(reading=True)
    run = _get_run(client, run_id)
    if run.data.tags.get(TAG_KIND) != KIND_BATCH:
        return None
    return batch_images(client, run)


def get_run(run_id: str) -> Any:
    """The mlflow `Run` (.info, .data.params/metrics/tags); unknown id → TrackingError."""
    return _get_run(mlflow_client.client(reading=True), run_id)


@in_mlflow_process
def tags_of(run_id: str) -> dict[str, str]:
    """A run's tags; unknown id → TrackingError."""
    return dict(get_run(run_id).data.tags)


@in_mlflow_process
def fetch_run_inputs(run_id: str, dst_dir: str | os.PathLike[str],
                     names: tuple[str, ...] = RECLUSTER_INPUTS) -> dict[str, Any]:
    """Download `names` (default: summary.json, masks.json and embeddings.npy, what a
    recluster needs) of an image run — or of a sharded batch's image dir (batch_image_runs) —
    into `dst_dir`; returns the summary. Unknown run or missing file → TrackingError (one line)."""
    dst = Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    if isinstance(run_id, ImageDir):
        return _fetch_dir_inputs(run_id, dst, names)
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    tags = _get_run(mlflow_client.client(reading=True), run_id).data.tags
    if tags.get(TAG_KIND) == KIND_BATCH:  # not one image's: say what to give
        raise TrackingError(f"MLflow run {run_id} is a batch run, not one image's: give one of its image runs "
                            "(`samseg runs list`), or give the batch to recluster, sweep or export, which take batches")
    if tags.get(TAG_KIND) == KIND_SHARD:
        raise TrackingError(f"MLflow run {run_id} is a shard run of batch {tags.get(TAG_MLFLOW_PARENT)}: give the batch "
                            "to recluster, sweep or export (they read its images' dirs)")
    for name in dict.fromkeys((SUMMARY_JSON, *names)):
        try:
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name, dst_path=str(dst), tracking_uri=mlflow_client.tracking_uri())
        except (MlflowException, OSError) as exc:
            raise TrackingError(f"MLflow run {run_id}: cannot download {name} ({mlflow_client.error_line(exc)})") from None
    try:
        return json.loads((dst / SUMMARY_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrackingError(f"MLflow run {run_id}: summary.json is unreadable ({exc})") from None


def _fetch_dir_inputs(image_dir: str, dst: Path, names: tuple[str, ...]) -> dict[str, Any]:
    """fetch_run_inputs of an image dir OUT/<name> (local or s3://) a sharded batch recorded; an
    S3 dir as its _SUCCESS lists it (a dir being republished is not read half old, half new)."""

    from samseg.edges.storage import download_prefix, is_s3_uri, join_uri, read_bytes

    try:
        if is_s3_uri(image_dir):
            download_prefix(image_dir, dst, require_success=True)
        for name in dict.fromkeys((SUMMARY_JSON, *names)):
            if not (dst / name).is_file():
                (dst / name).write_bytes(read_bytes(join_uri(image_dir, name)))
    except Exception as exc:  # noqa: BLE001 — StorageError, OSError: the dir moved, was removed or is incomplete
        raise TrackingError(f"{image_dir}: cannot read its image dir ({one_line(exc)})") from None
    try:
        return json.loads((dst / SUMMARY_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrackingError(f"{image_dir}: summary.json is unreadable ({exc})") from None


@in_mlflow_process
def image_params(ref: str) -> dict[str, str]:
    """An image's MLflow params: its run's, or for a sharded batch's image dir the params its
    run would have had (run_params of its summary.json)."""
    if not isinstance(ref, ImageDir):
        return dict(get_run(ref).data.params)
    with tempfile.TemporaryDirectory(prefix="samseg-params-") as tmp:
        return run_params(_fetch_dir_inputs(ref, Path(tmp), ()))


def run_embeddings(run_id: str, dst_dir: str | os.PathLike[str]) -> tuple[list[Any], list[dict[str, Any]]]:
    """([N_i×C embeddings], [summary]) of an image run, or of every image run nested under
    a batch run (a dataset run), downloaded into `dst_dir`; TrackingError (one line) when
    the run or an artifact is missing."""
    import numpy as np

    client = mlflow_client.client(reading=True)
    run = _get_run(client, run_id)
    ids = [run_id]
    if run.data.tags.get(TAG_KIND) == KIND_BATCH:
        ids = batch_image_runs(client, run)
        if not ids:
            raise TrackingError(f"MLflow batch run {run_id} has no image runs")
    embs, summaries = [], []
    for k, rid in enumerate(ids):
        d = Path(dst_dir) / f"{k:06d}"  # a sharded batch's refs are URIs
        summaries.append(fetch_run_inputs(rid, d, (SUMMARY_JSON, EMBEDDINGS_NPY)))  # no masks.json: it can be huge
        embs.append(np.load(d / EMBEDDINGS_NPY, allow_pickle=False))
    return embs, summaries
