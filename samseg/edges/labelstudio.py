"""Push samseg's classes into a running Label Studio as pre-annotations (`samseg export --to URL`).

One task per image, its classes as a **prediction** in Label Studio's own brush RLE
(samseg.edges.annotations.brush_results, label_studio_sdk.converter.brush), so annotators start
from them. Every call goes through label_studio_sdk's client except the file upload, which the
SDK has no method for: it is the SDK's own HTTP client posting multipart to the import endpoint.
A prediction's body (a few MB of RLE) is also sent through that client as ready JSON: the SDK's
typed methods walk every RLE byte in Python to encode it and again to parse the echo (0.25 s an
image of 20 classes, more than the server takes), and the encoder processes already wrote the JSON.

- The token comes from LABEL_STUDIO_API_KEY only (never a flag, never logged).
- The project is found by id or by exact title (two with that title: refused), else created with
  samseg's labeling config (one BrushLabels label per class, samseg's class colours). An existing
  project whose config lacks samseg's brush labels is refused.
- Images: a local image is uploaded through Label Studio's import API (the server stores it and
  serves it at /data/upload/...); an s3:// image is referenced as its URI, and the project gets an
  S3 source storage for its bucket (presigned URLs, never synced) unless it has one: the server
  reads the bucket with its own credentials, never samseg's (docs/exports.md).
- Tasks are matched by the image's sha256 (task data `samseg_sha256`): pushing again never creates
  a second task. Predictions are matched by model_version (the run id and the clustering
  settings): the same run pushed again replaces its prediction, a recluster adds one beside it.
- Any failure is one LabelStudioError line; one in the middle says how many tasks went in and
  that pushing again completes the rest.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from samseg.edges.annotations import FROM_NAME, TO_NAME, ImageResult, brush_results_of, class_names, labeling_config, n_classes

TOKEN_ENV = "LABEL_STUDIO_API_KEY"
SHA_KEY = "samseg_sha256"  # task data: the image's sha256, how a second push finds its task
TIMEOUT_S = 30.0
MAX_ENCODERS = 4  # brush-encoder processes at most (the server needs cores too)


class LabelStudioError(RuntimeError):
    """A push that cannot be done or did not finish (one line)."""


@dataclass(frozen=True)
class PushResult:
    project_id: int
    project_url: str
    created: int  # new tasks
    matched: int  # tasks found by sha256 from an earlier push
    predictions_added: int
    predictions_replaced: int
    n_images: int = 0

    def line(self) -> str:
        """What the CLI prints and the UI shows."""
        return (f"{self.n_images} images -> {self.project_url} ({self.created} new tasks, {self.matched} already there; "
                f"{self.predictions_added} predictions added, {self.predictions_replaced} replaced)")


def model_version(r: ImageResult, run_id: Optional[str]) -> str:
    """`<run id> <algorithm> eps=<eps> min_samples=<k>`: one per run and clustering setting."""
    c = r.summary.get("config") or {}
    eps = (r.summary.get("eps_auto") or {}).get("eps", c.get("cluster.eps"))  # the eps used, also under --eps auto
    version = f"{run_id or f'samseg:{r.out_dir.name}'} {c.get('cluster.algorithm', 'dbscan')}"
    if isinstance(eps, (int, float)):
        version += f" eps={eps:.4g} min_samples={c.get('cluster.min_samples')}"
    return version


def score(r: ImageResult) -> float:
    """The prediction's score: the mean predicted IoU of the masks that have a class."""
    import numpy as np

    keep = r.labels >= 0
    return float(np.mean(r.masks.predicted_iou[keep])) if keep.any() else 0.0


def connect(url: str, httpx_client: Any = None) -> Any:
    """The SDK client for `url`, its token from LABEL_STUDIO_API_KEY, checked with one call
    (httpx_client: the SDK's transport, e.g. one that times each request: benchmarks)."""
    from label_studio_sdk import LabelStudio

    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise LabelStudioError(f"set {TOKEN_ENV} to your Label Studio access token (Account & Settings)")
    transport = {"httpx_client": httpx_client} if httpx_client is not None else {"timeout": TIMEOUT_S}
    client = LabelStudio(base_url=url.rstrip("/"), api_key=token, **transport)
    _call(url, "connect", lambda: client.users.whoami())
    return client


def _call(url: str, what: str, fn: Any) -> Any:
    """fn() with the SDK's and the network's exceptions as one LabelStudioError line."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    try:
        return fn()
    except ApiError as exc:
        body = " ".join(str(exc.body)[:200].split())
        if exc.status_code == 401:
            raise LabelStudioError(f"Label Studio at {url} refused the token in {TOKEN_ENV} "
                                   f"(HTTP 401) while trying to {what}") from None
        raise LabelStudioError(f"Label Studio at {url} answered HTTP {exc.status_code} to {what}: {body}") from None
    except httpx.HTTPError as exc:
        raise LabelStudioError(f"Label Studio at {url} is not reachable ({type(exc).__name__}: {exc}) "
                               f"while trying to {what}") from None


def find_project(client: Any, url: str, name_or_id: str, labels: list[str]) -> tuple[Any, bool]:
    """(project, created): by id, else by exact title, else a new project with samseg's config."""
    if name_or_id.isdigit():
        project = _call(url, f"get project {name_or_id}", lambda: client.projects.get(id=int(name_or_id)))
    else:
        found = [p for p in _call(url, "list projects", lambda: list(client.projects.list(title=name_or_id)))
                 if p.title == name_or_id]
        if len(found) > 1:
            ids = ", ".join(str(p.id) for p in found)
            raise LabelStudioError(f"Label Studio at {url}: {len(found)} projects are titled {name_or_id!r} "
                                   f"(ids {ids}); pass --project ID")
        if not found:
            config = labeling_config(labels)
            return _call(url, "create a project", lambda: client.projects.create(title=name_or_id, label_config=config)), True
        project = found[0]
    check_config(project.label_config or "", labels, f"Label Studio project {project.id} ({project.title!r})")
    return project, False


def check_config(config_xml: str, labels: list[str], what: str) -> None:
    """The project's labeling config must have samseg's BrushLabels (name/toName) and every class label."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(config_xml)
    except ET.ParseError:
        root = None
    brush = None if root is None else next((e for e in root.iter("BrushLabels")
                                             if e.get("name") == FROM_NAME and e.get("toName") == TO_NAME), None)
    if brush is None:
        raise LabelStudioError(f"{what}: its labeling config has no <BrushLabels name=\"{FROM_NAME}\" toName=\"{TO_NAME}\">; "
                               "push to a new project name, or give it samseg's config (`samseg export --format labelstudio`)")
    have = {e.get("value") for e in brush.iter("Label")}
    missing = [n for n in labels if n not in have]
    if missing:
        raise LabelStudioError(f"{what}: its labeling config lacks samseg's labels {', '.join(missing[:5])}"
                               f"{' …' if len(missing) > 5 else ''}; push to a new project name")


def push(url: str, results: list[ImageResult], project: str, run_ids: Optional[dict[Path, str]] = None,
         httpx_client: Any = None) -> PushResult:
    """Push `results` (one task each) into project `project` at `url` (see the module docstring)."""
    client = connect(url, httpx_client)
    labels = class_names(n_classes(results))
    proj, _ = find_project(client, url, project, labels)
    existing = _tasks_by_sha(client, url, proj.id)
    created = matched = added = replaced = 0
    encoder = BrushEncoder(results)
    try:
        for done, r in enumerate(results):
            try:
                sha = str(r.summary["image"]["sha256"])
                task_id = existing.get(sha)
                if task_id is None:
                    task_id = _new_task(client, url, proj.id, r, sha)
                    created += 1
                else:
                    matched += 1
                version = model_version(r, (run_ids or {}).get(r.out_dir))
                a, b = _put_prediction(client, url, task_id, encoder.result_json(done), score(r), version,
                                       new=sha not in existing)
                added, replaced = added + a, replaced + b
            except LabelStudioError as exc:
                raise LabelStudioError(f"{r.file_name}: {exc} — {done} of {len(results)} tasks were pushed; "
                                       "pushing again completes the rest (no task is duplicated)") from None
    finally:
        encoder.close()
    return PushResult(proj.id, f"{url.rstrip('/')}/projects/{proj.id}", created, matched, added, replaced, len(results))


class BrushEncoder:
    """Each image's brush results as JSON, encoded a few images ahead in worker processes.

    The SDK's encoder is pure Python (8-22 ms per 1-MP class mask, by CPU): in a thread it holds
    the GIL the request loop needs, and alone it costs more than the server's import. Processes
    (spawned: the caller may hold threads, e.g. the UI) encode on the cores the server leaves
    free while this process waits on the server; the window bounds the JSON held in memory."""

    def __init__(self, results: list[ImageResult]) -> None:
        import multiprocessing

        self.results = results
        self.workers = max(1, min(MAX_ENCODERS, (os.cpu_count() or 2) - 1, len(results)))
        self.ahead = 2 * self.workers + 1
        self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        self._futures: dict[int, Future] = {}
        self._submit_from(0)  # the first images encode while their uploads go out

    def _submit_from(self, i: int) -> None:
        for j in range(i, min(i + self.ahead, len(self.results))):
            if j not in self._futures:
                r = self.results[j]
                self._futures[j] = self._pool.submit(encoded_json, r.stem, r.label_map)

    def result_json(self, i: int) -> bytes:
        """Image i's brush results (a JSON list), submitting the next ones on the way."""
        self._submit_from(i)
        try:
            return self._futures.pop(i).result()
        except BrokenProcessPool:
            raise LabelStudioError("the brush encoder process died (out of memory?)") from None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)



def encoded_json(stem: str, label_map: Any) -> bytes:
    """brush_results_of as JSON bytes (runs in an encoder process)."""
    return json.dumps(brush_results_of(stem, label_map)).encode()


def push_run(url: str, run_id: str, project: str, workdir: Path) -> PushResult:
    """Push an MLflow image run, or a batch run's image runs, from their artifacts (the UI's button)."""
    from samseg.edges.annotations import read_image_dirs
    from samseg.edges.mlflow.run_dirs import download_image_dirs

    dirs = download_image_dirs(run_id, workdir)
    return push(url, read_image_dirs(dirs), project, {d: d.name for d in dirs})


def _tasks_by_sha(client: Any, url: str, project_id: int) -> dict[str, int]:
    tasks = _call(url, "list the project's tasks", lambda: list(client.tasks.list(project=project_id)))
    return {str(t.data[SHA_KEY]): int(t.id) for t in tasks if isinstance(t.data, dict) and t.data.get(SHA_KEY)}


def _new_task(client: Any, url: str, project_id: int, r: ImageResult, sha: str) -> int:
    """A task for the image: uploaded through the import API (local), or its s3:// URI; then its sha256."""
    uri = str(r.summary["image"]["uri"])
    if uri.startswith("s3://"):
        _ensure_s3_storage(client, url, project_id, uri.split("/")[2])
        made = _call(url, f"create a task for {uri}",
                     lambda: client.tasks.create(project=project_id, data={TO_NAME: uri, SHA_KEY: sha}))
        return int(made.id)
    path = Path(uri)
    if not path.is_file():
        raise LabelStudioError(f"{path}: the input image is not here to upload")
    task_id = _upload(client, url, project_id, path)
    task = _call(url, "read the new task", lambda: client.tasks.get(id=task_id))
    _call(url, "record the image's sha256 on its task",
          lambda: client.tasks.update(id=task_id, data={**dict(task.data), SHA_KEY: sha}))
    return task_id


def _ensure_s3_storage(client: Any, url: str, project_id: int, bucket: str) -> None:
    """The project's S3 source storage for `bucket` (created once: presigned URLs, no sync, no
    keys: the server's own credentials; the endpoint of AWS_ENDPOINT_URL for MinIO-like stores)."""
    storages = _call(url, "list the project's S3 storages", lambda: list(client.import_storage.s3.list(project=project_id)))
    if any(getattr(st, "bucket", None) == bucket for st in storages):
        return
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    extra = {"s3endpoint": endpoint} if endpoint else {}
    _call(url, f"connect bucket {bucket} as the project's source storage", lambda: client.import_storage.s3.create(
        project=project_id, bucket=bucket, presign=True, title=f"samseg: {bucket}", use_blob_urls=True,
        region_name=os.environ.get("AWS_DEFAULT_REGION") or None, **extra))


def _upload(client: Any, url: str, project_id: int, path: Path) -> int:
    """The one call the SDK has no method for: a multipart file import; returns the new task's id."""
    with open(path, "rb") as f:
        resp = _raw(client, url, f"upload {path.name}", f"api/projects/{project_id}/import", "POST",
                    params={"return_task_ids": True}, files={path.name: (path.name, f)},
                    refused=f"refused the image {path.name}")
    ids = resp.json().get("task_ids") or []
    if len(ids) != 1:
        raise LabelStudioError(f"Label Studio at {url} made {len(ids)} tasks of {path.name}, expected 1")
    return int(ids[0])


def _raw(client: Any, url: str, what: str, path: str, method: str, refused: str = "", **request: Any) -> Any:
    """A request through the SDK's own HTTP client (its base URL, auth and timeout), untyped."""
    wrapper = client._client_wrapper
    resp = _call(url, what, lambda: wrapper.httpx_client.request(path, method=method, **request))
    if resp.status_code >= 400:
        body = " ".join(resp.text[:200].split())
        raise LabelStudioError(f"Label Studio at {url} {refused or f'answered to {what}'} (HTTP {resp.status_code}: {body})")
    return resp


def _put_prediction(client: Any, url: str, task_id: int, result_json: bytes, s: float,
                    version: str, new: bool = False) -> tuple[int, int]:
    """(added, replaced): this model_version's prediction on the task, replaced if it is there
    (a task this push created has none: nothing to look up)."""
    same = [] if new else [p for p in _call(url, "list the task's predictions",
                                            lambda: list(client.predictions.list(task=task_id)))
                           if p.model_version == version]
    fields = json.dumps({"task": task_id, "score": s, "model_version": version}).encode()
    body = fields[:-1] + b', "result": ' + result_json + b"}"  # the encoder's JSON spliced in, not re-walked
    json_body = {"content": body, "headers": {"Content-Type": "application/json"}}
    if same:
        _raw(client, url, "update a prediction", f"api/predictions/{same[0].id}/", "PATCH", **json_body)
        for extra in same[1:]:
            _call(url, "remove a duplicate prediction", lambda: client.predictions.delete(id=extra.id))
        return 0, 1
    _raw(client, url, "add a prediction", "api/predictions/", "POST", **json_body)
    return 1, 0
