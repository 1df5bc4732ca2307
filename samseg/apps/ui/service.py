"""Data access for the web UI: MLflow runs, their artifacts, and the run's input image.

Runs are read through MLflow's client; a run's artifacts are downloaded once into a
local folder (`<cache_dir>/runs/<run_id>/`, runs are immutable once logged) and every
file the UI serves comes from there. The input photo is read from the run's image URI
(local path or s3://) and checked against the sha256 the run recorded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from samseg.apps.ui.files import RunDataError, RunFiles
from samseg.apps.ui.guards import valid_run_id
from samseg.apps.ui.tracking_gate import TrackingGate
from samseg.core.backbones import SAM
from samseg.core.secrets import scrub_secrets
from samseg.edges.run_schema import TAG_CLASSES, TAG_CLASSES_FROM, TAG_EXEMPLAR, TAG_IMAGE_URI, TAG_KIND, TAG_MLFLOW_PARENT, TAG_PARENT_RUN, TAG_PREFECT_FLOW_RUN, TAG_SOURCE
from samseg.edges.run_schema import DATASET_MODES, KIND_SHARD, RECLUSTER_DEPLOYMENT, derived_how
from samseg.edges.layout import SUMMARY_JSON
from samseg.edges.owned_files import CLASSES_JSON

# Run kinds that have an image's outputs (a batch parent run has none).
IMAGE_KINDS = ("image", "recluster")
# Batch parent runs whose images share one set of class ids (tag samseg.classes, see
# samseg.edges.dataset_outputs): the UI shows them as "dataset runs".
_MAX_LIST = 500


class RunNotFound(LookupError):
    """Unknown run id (or not a samseg image run); the message is shown with a 404."""


class StoreUnavailable(RuntimeError):
    """The MLflow store did not answer (locked SQLite file, server down): a 503, not a 404."""


def _store_error(exc: Exception, where: str) -> Exception:
    """An MlflowException → RunNotFound for an unknown run, else StoreUnavailable (one line)."""
    code = str(getattr(exc, "error_code", ""))
    if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
        return RunNotFound("run not found in this UI's MLflow store")  # no server path in an error page
    text = str(exc).lower()
    reason = "the database is locked by another process" if "locked" in text else "it did not answer"
    return StoreUnavailable(f"the MLflow store {where} is unavailable ({reason}); try again in a moment")


@dataclass(frozen=True)
class UiSettings:
    """Everything the app needs; built by `samseg ui` from flags and environment.

    tracking_uri None → samseg.edges.mlflow.client.tracking_uri() (MLFLOW_TRACKING_URI or MLflow's
    default). cache_dir None → `<samseg_home()>/ui`. stage_cache None → StageCache's
    default root ($SAMSEG_CACHE or <samseg_home()>/cache). token None → no auth.
    """

    tracking_uri: str | None = None
    experiment: str = "samseg"
    cache_dir: Path | None = None
    stage_cache: str | None = None
    token: str | None = None
    mlflow_ui_url: str | None = None
    prefect_ui_url: str | None = None
    # Reruns: "auto" = through the Prefect deployment when PREFECT_API_URL is set and the
    # deployment exists, else in the UI process; "local"; "prefect" (required).
    submit: str = "auto"
    prefect_deployment: str = RECLUSTER_DEPLOYMENT
    prefect_out: str | None = None  # where the flow writes outputs; None → <cache_dir>/recluster-out
    # Host headers accepted (None = any). `samseg ui` on loopback sets the loopback names so
    # a web page cannot reach the UI through DNS rebinding (evil.example → 127.0.0.1).
    allowed_hosts: tuple[str, ...] | None = None
    # Local folders input photos may be served from (None = anywhere, sha256 still checked).
    image_roots: tuple[Path, ...] | None = None
    # "Send to Label Studio" on the run pages (samseg.edges.labelstudio; token: $LABEL_STUDIO_API_KEY).
    label_studio: str | None = None
    label_studio_project: str = "samseg"


def _resolve_tracking_uri(uri: str | None) -> str:
    if uri:
        return uri
    from samseg.edges.mlflow.client import tracking_uri

    return tracking_uri()


def _default_cache_dir() -> Path:
    from samseg.sam.files import samseg_home

    return samseg_home() / "ui"


def _prefect_ui_base(explicit: str | None) -> str | None:
    """PREFECT_UI_URL, else PREFECT_API_URL without its trailing /api (Prefect's layout)."""
    base = explicit or os.environ.get("PREFECT_UI_URL")
    if not base and os.environ.get("PREFECT_API_URL"):
        base = os.environ["PREFECT_API_URL"].rstrip("/").removesuffix("/api")
    return base.rstrip("/") if base else None


class RunStore(RunFiles):
    """Read access to one MLflow tracking server's samseg runs (and, through RunFiles, their files)."""

    def __init__(self, settings: UiSettings):
        from samseg.edges.mlflow.client import Guarded, client

        self.settings = settings
        self.tracking_uri = _resolve_tracking_uri(settings.tracking_uri)
        # samseg's HTTP timeouts (a dead server is a 503 in seconds), and a gate: a stalled server
        # holds a few request threads, never the whole pool (apps/ui/tracking_gate.py)
        where = scrub_secrets(self.tracking_uri)
        self.gate = TrackingGate(lambda why: StoreUnavailable(f"the MLflow store {where} is unavailable ({why})"))
        self.client = Guarded(client(self.tracking_uri), self.gate.slot)
        self.cache_dir = Path(settings.cache_dir or _default_cache_dir())
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._prefect_base = _prefect_ui_base(settings.prefect_ui_url)

    # ------------------------------------------------------------------ runs
    def experiment_id(self, name: str | None = None) -> str | None:
        exp = self.client.get_experiment_by_name(name or self.settings.experiment)
        return exp.experiment_id if exp is not None else None

    def list_runs(self, experiment: str | None = None, image: str | None = None) -> list[dict[str, Any]]:
        """Image runs and dataset runs of the experiment, newest first; `image` filters
        image runs by file-name substring (and then leaves dataset runs out)."""
        from mlflow.exceptions import MlflowException

        try:
            exp_id = self.experiment_id(experiment)
            if exp_id is None:
                return []
            runs = self.client.search_runs([exp_id], order_by=["attributes.start_time DESC"], max_results=_MAX_LIST)
        except MlflowException as exc:
            raise _store_error(exc, scrub_secrets(self.tracking_uri)) from None
        datasets = {r.info.run_id: r for r in runs if self.is_dataset_run(r)}
        rows = [self.dataset_row(r) if r.info.run_id in datasets else self.batch_row(r) if self.is_batch_run(r)
                else self.row(r, datasets) for r in runs if self._is_image_run(r) or self.is_batch_run(r)]
        if image:
            needle = image.lower()
            rows = [r for r in rows if needle in (r["image"] or "").lower()]
        return rows

    @staticmethod
    def _is_image_run(run: Any) -> bool:
        kind = run.data.tags.get(TAG_KIND, "image")
        return kind in IMAGE_KINDS

    @staticmethod
    def is_batch_run(run: Any) -> bool:
        """A batch parent run (with or without dataset-level classes)."""
        return run.data.tags.get(TAG_KIND) == "batch"

    def get_batch_run(self, run_id: str) -> Any:
        """A batch run of per-image classes (its page lists its images); RunNotFound otherwise."""
        run = self.batch_or_none(run_id)
        if run is None:
            raise RunNotFound(f"run {run_id} not found in this UI's MLflow store")
        return run

    def batch_or_none(self, run_id: str) -> Any:
        """Batch run `run_id` (of per-image or dataset classes), or None for any other run; RunNotFound
        for no run."""
        run = self._fetch(run_id)
        return run if self.is_batch_run(run) else None

    def shard_batch(self, run_id: str) -> str | None:
        """The batch run id of shard run `run_id` (samseg.edges.mlflow.shard_runs), or None when it is not a shard run."""
        run = self._fetch(run_id)
        parent = run.data.tags.get(TAG_MLFLOW_PARENT)
        return parent if run.data.tags.get(TAG_KIND) == KIND_SHARD and parent and valid_run_id(parent) else None

    def resolve(self, ref: str) -> str:
        """The full id of a run id prefix (as the CLI takes it, and as the runs list shows 8
        characters) in this store; RunNotFound in one line for none or several."""
        from samseg.edges.mlflow.client import TrackingError
        from samseg.edges.mlflow.tracking import resolve_run_id

        try:
            return resolve_run_id(ref, self.client, "in this UI's MLflow store")
        except TrackingError as exc:
            raise RunNotFound(str(exc)) from None

    def _fetch(self, run_id: str) -> Any:
        """The MLflow run `run_id`, not deleted (RunNotFound otherwise; StoreUnavailable when the store is down)."""
        from mlflow.exceptions import MlflowException

        if not valid_run_id(run_id):
            raise RunNotFound(f"run {run_id!r} not found: not a run id")
        try:
            run = self.client.get_run(run_id)
        except MlflowException as exc:
            err = _store_error(exc, scrub_secrets(self.tracking_uri))
            if isinstance(err, RunNotFound):
                raise RunNotFound(f"run {run_id} not found in this UI's MLflow store") from None
            raise err from None
        if run.info.lifecycle_stage == "deleted":  # deleted in MLflow: gone for the UI too (no serving, rerun, push)
            raise RunNotFound(f"run {run_id} not found in this UI's MLflow store")
        return run

    @staticmethod
    def is_dataset_run(run: Any) -> bool:
        """A batch parent run that carries dataset-level classes (classes.json)."""
        tags = run.data.tags
        return tags.get(TAG_KIND) == "batch" and tags.get(TAG_CLASSES) in DATASET_MODES

    def get_any_run(self, run_id: str) -> Any:
        """An image run or a dataset run (RunNotFound for anything else)."""
        run = self._fetch(run_id)
        if not (self._is_image_run(run) or self.is_dataset_run(run)):
            raise RunNotFound(f"run {run_id} is a {run.data.tags.get(TAG_KIND)} run without dataset classes, "
                              "not an image or dataset run")
        return run

    def get_run(self, run_id: str) -> Any:
        """An image run (RunNotFound for a dataset run or anything else)."""
        run = self.get_any_run(run_id)
        if not self._is_image_run(run):
            raise RunNotFound(f"run {run_id} is a dataset (batch) run, not an image run")
        return run

    def dataset_of(self, run: Any, known: dict[str, Any] | None = None) -> Any | None:
        """The dataset run an image run was labelled by (its batch parent), or None."""
        from mlflow.exceptions import MlflowException

        parent = run.data.tags.get(TAG_MLFLOW_PARENT)
        if not parent:
            return None
        if known is not None:
            return known.get(parent)
        try:
            prun = self.client.get_run(parent)
        except MlflowException:
            return None
        return prun if self.is_dataset_run(prun) else None

    def _row_base(self, run: Any) -> dict[str, Any]:
        """The runs-table keys image and dataset runs share."""
        p, m, t = run.data.params, run.data.metrics, run.data.tags
        return {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "model": p.get("model_type"),
            # what ran (auto resolved), else what was asked; runs from before precision existed ran fp32
            "precision": p.get("precision_resolved") or p.get("precision") or "fp32",
            # the backbone the embeddings were pooled from; runs from before backbones pooled SAM's
            "features": p.get("features.name") or SAM,
            "algorithm": p.get("cluster.algorithm"),
            "eps": p.get("cluster.eps"),
            "min_samples": p.get("cluster.min_samples"),
            "n_masks": _int(m.get("n_masks")),
            "n_noise": _int(m.get("n_noise")),
            "time": _iso(run.info.start_time),
            "mlflow_url": self.mlflow_url(run),
            "prefect_url": self.prefect_url(t.get(TAG_PREFECT_FLOW_RUN)),
        }

    def row(self, run: Any, datasets: dict[str, Any] | None = None) -> dict[str, Any]:
        """One line of the runs table (also the header of the run page). `datasets`: the
        dataset runs already at hand by id (None → look the batch parent up)."""
        if self.is_dataset_run(run):
            return self.dataset_row(run)
        m, t = run.data.metrics, run.data.tags
        rid = run.info.run_id
        uri = t.get(TAG_IMAGE_URI, "")
        ds = self.dataset_of(run, datasets)
        return {
            **self._row_base(run),
            "is_dataset": False,
            "dataset_run_id": ds.info.run_id if ds is not None else None,
            "dataset_mode": ds.data.tags.get(TAG_CLASSES) if ds is not None else None,
            "kind": "exemplar" if t.get(TAG_EXEMPLAR) == "true" else t.get(TAG_KIND, "image"),
            "image": uri.rsplit("/", 1)[-1] if uri else None,
            "image_uri": uri or None,
            "n_clusters": _int(m.get("n_clusters")),
            "parent_run_id": t.get(TAG_PARENT_RUN),
            "thumb_url": f"/runs/{rid}/files/thumb.png",
            "overlay_url": f"/runs/{rid}/files/overlay.png",
        }

    def dataset_row(self, run: Any) -> dict[str, Any]:
        """Runs-table line of a dataset run (same keys as `row` where they apply)."""
        p, m, t = run.data.params, run.data.metrics, run.data.tags
        rid = run.info.run_id
        return {
            **self._row_base(run),
            "is_dataset": True,
            "kind": t.get(TAG_CLASSES),
            "classes_from": t.get(TAG_CLASSES_FROM),
            "image": None,
            "source": t.get(TAG_SOURCE),
            "n_images": _int(p.get("n_images")),
            "n_classes": _int(m.get("n_classes")),
            "n_clusters": _int(m.get("n_classes")),
            "mean_class_coverage": m.get("mean_class_coverage"),
            "status": run.info.status,
            "parent_run_id": t.get(TAG_PARENT_RUN),  # the dataset run it was edited or reclustered from
            "derived": derived_how(t),
            "thumb_url": f"/runs/{rid}/files/thumb.png",
            "overlay_url": f"/runs/{rid}/files/contact_sheet.png",
            "contact_sheet_url": f"/runs/{rid}/files/contact_sheet.png",
        }

    def batch_row(self, run: Any) -> dict[str, Any]:
        """Runs-table line of a batch run of per-image classes: how many images, where from, its status."""
        p, t = run.data.params, run.data.tags
        return {
            **self._row_base(run),
            "is_dataset": False,
            "is_batch": True,
            "kind": "batch",
            "image": None,
            "source": t.get(TAG_SOURCE),
            "n_images": _int(p.get("n_images")),
            "n_clusters": None,
            "status": run.info.status,
            "parent_run_id": t.get(TAG_PARENT_RUN),
            "derived": derived_how(t),
        }

    def mlflow_url(self, run: Any) -> str | None:
        base = self.settings.mlflow_ui_url
        if not base and self.tracking_uri.startswith(("http://", "https://")):
            base = self.tracking_uri
        if not base:
            return None
        return f"{_link_base(base)}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"

    def prefect_url(self, flow_run_id: str | None) -> str | None:
        if not flow_run_id or not self._prefect_base:
            return None
        return f"{self._prefect_base}/runs/flow-run/{flow_run_id}"

    # ------------------------------------------------------------- artifacts
    def run_dir(self, run_id: str) -> Path:
        """Local copy of the run's artifacts (downloaded on first use); image or dataset run."""
        run = self.get_any_run(run_id)
        marker = CLASSES_JSON if self.is_dataset_run(run) else SUMMARY_JSON
        dest = self.cache_dir / "runs" / run.info.run_id
        if (dest / marker).is_file():
            return dest
        with self._lock_for(run_id):
            if not (dest / marker).is_file():
                self._download(run_id, dest, marker)
        return dest

    def _lock_for(self, run_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(run_id, threading.Lock())

    def _download(self, run_id: str, dest: Path, marker: str = SUMMARY_JSON) -> None:
        import mlflow.artifacts

        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{run_id}-", dir=dest.parent))
        try:
            with self.gate.slot():
                mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(tmp), tracking_uri=self.tracking_uri)
            root = _outputs_root(tmp, marker)
            if root is None:
                raise RunDataError(f"run {run_id}: no {marker} among its artifacts")
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(root, dest)  # atomic: readers never see a half-downloaded run
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def summary(self, run_id: str) -> dict[str, Any]:
        return json.loads((self.run_dir(run_id) / SUMMARY_JSON).read_text())

    def outputs(self, run_id: str) -> tuple[Any, Any, Any]:
        """(MaskSet, N×C float32 embeddings, (N,) int64 labels) of the run."""
        from samseg.edges.image_dir import OutputsError, read_image_dir

        try:
            return read_image_dir(self.run_dir(run_id))
        except OutputsError as exc:
            raise RunDataError(f"run {run_id}: {exc}") from exc


def _outputs_root(tmp: Path, marker: str = SUMMARY_JSON) -> Path | None:
    """The downloaded folder that holds `marker` (the artifact root or one level down)."""
    if (tmp / marker).is_file():
        return tmp
    found = sorted(p.parent for p in tmp.glob(f"*/{marker}"))
    return found[0] if len(found) == 1 else None


def _int(v: Any) -> int | None:
    return None if v is None else int(v)


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _link_base(url: str) -> str:
    """scheme://host[:port]/path of `url` without user:password@ or query: safe to put in a page."""
    from urllib.parse import urlsplit, urlunsplit

    u = urlsplit(url)
    host = (u.hostname or "") + (f":{u.port}" if u.port else "")
    return urlunsplit((u.scheme, host, u.path.rstrip("/"), "", ""))
