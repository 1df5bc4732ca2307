"""Push samseg's classes into a running Label Studio as pre-annotations (`samseg export --to URL`).

One task per image, its classes as a **prediction** in Label Studio's own brush RLE
(samseg.edges.annotations.brush_results, label_studio_sdk.converter.brush), so annotators start
from them. Every call goes through label_studio_sdk's client except the file upload, which the
SDK has no method for: it is the SDK's own HTTP client posting multipart to the import endpoint.
A prediction's body (a few MB of RLE) is also sent through that client as ready JSON: the SDK's
typed methods walk every RLE byte in Python to encode it and again to parse the echo (0.25 s an
image of 20 classes, more than the server takes), and the encoder processes already wrote the JSON.

- The token comes from LABEL_STUDIO_API_KEY only (never a flag, never logged); a URL with a user
  name, password or query is refused (`check_url`), so no error line can print a credential.
- The project is found by id (ASCII digits) or by exact title (several with that title: refused
  on the CLI, the lowest id from the UI), else created with samseg's labeling config (one
  BrushLabels label per category of the file exports — a class's name, `<image>:<name>` for
  per-image classes —, samseg's class colours). An existing project whose config lacks samseg's
  BrushLabels is refused; the labels it lacks are added to it. One push at a time per server on a machine.
- Images: a local image is uploaded through Label Studio's import API (the server stores it and
  serves it at /data/upload/...); an s3:// image is referenced as its URI, and the project gets an
  S3 source storage for its bucket (presigned URLs, never synced) unless it has one: the server
  reads the bucket with its own credentials, never samseg's (docs/exports.md).
- Tasks are matched by the image's sha256 (task data `samseg_sha256`), and an uploaded image's
  name carries its sha256 prefix, so a task whose import answer was lost is found too: pushing
  again never creates a second task. Predictions are matched by model_version (the run id and
  the clustering settings): the same run pushed again replaces its prediction, a recluster adds
  one beside it. An image is read, and uploaded or referenced, only when its bytes hash to the
  sha256 its run recorded.
- Any failure is one LabelStudioError line; one in the middle says how many tasks went in and
  that pushing again completes the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from samseg.core.errors import SamsegError
from samseg.edges.annotations import FROM_NAME, TO_NAME, Categories, ImageResult, brush_results_of, categories, labeling_config

TOKEN_ENV = "LABEL_STUDIO_API_KEY"
SHA_KEY = "samseg_sha256"  # task data: the image's sha256, how a second push finds its task
UPLOAD_TAG = ".samseg-"  # an uploaded image's name: <stem>.samseg-<sha256[:16]>.<suffix>
TIMEOUT_S = 30.0
MAX_ENCODERS = 4  # brush-encoder processes at most (the server needs cores too)


class LabelStudioError(SamsegError, RuntimeError):
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
    from samseg.edges.run_schema import eps_used

    c = r.summary.get("config") or {}
    eps = eps_used(r.summary)  # the eps used, also under --eps auto
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

    check_url(url)
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise LabelStudioError(f"set {TOKEN_ENV} to your Label Studio access token (Account & Settings)")
    if not token.isascii() or not token.isprintable():
        raise LabelStudioError(f"{TOKEN_ENV} holds characters no access token has (a line break, a non-ASCII "
                               "character): copy the token again from Account & Settings")
    transport = {"httpx_client": httpx_client} if httpx_client is not None else {"timeout": TIMEOUT_S}
    client = LabelStudio(base_url=url.rstrip("/"), api_key=token, **transport)
    _call(url, "connect", lambda: client.users.whoami())
    return client


def check_url(url: str) -> str:
    """`url` when it can be Label Studio's base URL; LabelStudioError (one line, the URL shown
    without what it must not carry) for another scheme, no host, a user name or password, or a
    query: credentials go in LABEL_STUDIO_API_KEY, never in a URL that error lines print."""
    from urllib.parse import urlsplit

    # the URL itself is never printed: a password holding '/', '?' or '#' defeats any scrubbing
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 — raises ValueError for a bad port
    except ValueError:
        raise LabelStudioError(f"the Label Studio URL is not a URL (http(s)://host[:port]; the access token goes in {TOKEN_ENV}, "
                               "never in the URL)") from None
    shown = f"{parts.scheme}://{parts.hostname or ''}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LabelStudioError(f"the Label Studio URL is not http(s)://host[:port] (the access token goes in {TOKEN_ENV}, "
                               "never in the URL)")
    if parts.username is not None or parts.password is not None:
        raise LabelStudioError(f"the Label Studio URL {shown}… carries a user name or password: give it without them; "
                               f"the access token goes in {TOKEN_ENV}")
    if parts.query or parts.fragment:
        raise LabelStudioError(f"the Label Studio URL {shown}… carries a query or fragment (?…/#…): give the server's "
                               f"base URL; the access token goes in {TOKEN_ENV}")
    return url


def server_said(body: Any) -> str:
    """What Label Studio answered, on one line: its JSON error's text (whole up to
    SAID_MAX characters, then how much more), or — for an HTML page — that this URL is not
    Label Studio's API (a path prefix, a proxy's login page)."""
    said = _said(body)
    return said if len(said) <= SAID_MAX else f"{said[:SAID_MAX]}… ({len(said) - SAID_MAX} more characters)"


SAID_MAX = 2000  # a server's error text is whole up to this; a multi-megabyte body is not one line


def _said(body: Any) -> str:
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        text = body.strip()
        if text[:1] == "<":
            return "an HTML page, not Label Studio's API: check the URL (the server's base URL, no path)"
        try:
            body = json.loads(text)
        except ValueError:
            return " ".join(text.split())
    if isinstance(body, dict):
        said = [str(body[k]) for k in ("detail", "validation_errors", "non_field_errors") if body.get(k)]
        body = "; ".join(said) if said else json.dumps(body)
    return " ".join(str(body).split())


def _call(url: str, what: str, fn: Any) -> Any:
    """fn() with the SDK's and the network's exceptions as one LabelStudioError line."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    try:
        return fn()
    except ApiError as exc:
        body = server_said(exc.body)
        if exc.status_code == 401:
            raise LabelStudioError(f"Label Studio at {url} refused the token in {TOKEN_ENV} "
                                   f"(HTTP 401) while trying to {what}") from None
        raise LabelStudioError(f"Label Studio at {url} answered HTTP {exc.status_code} to {what}: {body}") from None
    except httpx.HTTPError as exc:
        raise LabelStudioError(f"Label Studio at {url} is not reachable ({type(exc).__name__}: {exc}) "
                               f"while trying to {what}") from None


def find_project(client: Any, url: str, name_or_id: str, labels: list[str], pick_oldest: bool = False) -> tuple[Any, bool]:
    """(project, created): by id, else by exact title, else a new project with samseg's config.
    Several projects with the title: refused (the CLI says which ids), or with pick_oldest (the
    UI, whose user cannot pass an id) the one with the lowest id."""
    if is_project_id(name_or_id):
        project = _call(url, f"get project {name_or_id}", lambda: client.projects.get(id=int(name_or_id)))
    else:
        found = sorted((p for p in _call(url, "list projects", lambda: list(client.projects.list(title=name_or_id)))
                        if p.title == name_or_id), key=lambda p: int(p.id))
        if len(found) > 1 and not pick_oldest:
            ids = ", ".join(str(p.id) for p in found)
            raise LabelStudioError(f"Label Studio at {url}: {len(found)} projects are titled {name_or_id!r} "
                                   f"(ids {ids}); pass --project ID")
        if not found:
            config = labeling_config(labels)
            return _call(url, "create a project", lambda: client.projects.create(title=name_or_id, label_config=config)), True
        project = found[0]
    what = f"Label Studio project {project.id} ({project.title!r})"
    missing = check_config(project.label_config or "", labels, what)
    if missing:  # the classes of images pushed before stay; these are added beside them
        config = with_labels(project.label_config, missing, len(labels) - len(missing))
        project = _call(url, f"add {len(missing)} labels to project {project.id}",
                        lambda: client.projects.update(id=project.id, label_config=config))
    return project, False


def is_project_id(name_or_id: str) -> bool:
    """A project id is ASCII digits ('²' and Arabic-Indic digits are titles, not ids)."""
    return name_or_id.isascii() and name_or_id.isdigit()


def check_config(config_xml: str, labels: list[str], what: str) -> list[str]:
    """The project's labeling config must have samseg's BrushLabels (name/toName); returns the
    labels it does not have yet."""
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
    return [n for n in labels if n not in have]


def with_labels(config_xml: str, labels: list[str], first_color: int) -> str:
    """`config_xml` with `labels` added to samseg's BrushLabels (samseg's class colours from
    `first_color` on); everything else of the project's config kept as it is."""
    import xml.etree.ElementTree as ET

    from samseg.core.render import class_color

    root = ET.fromstring(config_xml)
    brush = next(e for e in root.iter("BrushLabels") if e.get("name") == FROM_NAME and e.get("toName") == TO_NAME)
    for k, name in enumerate(labels, first_color):
        ET.SubElement(brush, "Label", value=name, background="#%02x%02x%02x" % class_color(k))
    return ET.tostring(root, encoding="unicode")


def push(url: str, results: list[ImageResult], project: str, run_ids: Optional[dict[Path, str]] = None,
         httpx_client: Any = None, pick_oldest: bool = False) -> PushResult:
    """Push `results` (one task each) into project `project` at `url` (see the module docstring).
    One push at a time per server on this machine (`_one_push_at_a_time`)."""
    client = connect(url, httpx_client)
    with _one_push_at_a_time(url):
        return _push(client, url, results, project, run_ids, pick_oldest)


def _push(client: Any, url: str, results: list[ImageResult], project: str, run_ids: Optional[dict[Path, str]],
          pick_oldest: bool) -> PushResult:
    cats = categories(results)  # the file exports' labels: names, and one per (image, class) unless ids are shared
    proj, _ = find_project(client, url, project, cats.names, pick_oldest)
    # sha256 -> the name its upload would have: how a task whose import answer was lost is found
    uploads = {r.sha256: upload_name(Path(r.uri).name, r.sha256)
               for r in results if r.sha256}
    existing = _tasks_by_sha(client, url, proj.id, uploads)
    created = matched = added = replaced = 0
    encoder = BrushEncoder(results, cats)
    try:
        for done, r in enumerate(results):
            try:
                sha = r.sha256
                if sha is None:
                    raise LabelStudioError(f"{r.out_dir}: the run records no sha256 of its input image")
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

    def __init__(self, results: list[ImageResult], cats: Categories) -> None:
        import multiprocessing

        self.results, self.cats = results, cats
        self.workers = max(1, min(MAX_ENCODERS, (os.cpu_count() or 2) - 1, len(results)))
        self.ahead = 2 * self.workers + 1
        self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        self._futures: dict[int, Future] = {}
        self._submit_from(0)  # the first images encode while their uploads go out

    def _submit_from(self, i: int) -> None:
        for j in range(i, min(i + self.ahead, len(self.results))):
            if j not in self._futures:
                r = self.results[j]
                labels = {c: self.cats.names[k] for c, k in self.cats.of_image[j].items()}
                self._futures[j] = self._pool.submit(encoded_json, r.stem, r.label_map, labels)

    def result_json(self, i: int) -> bytes:
        """Image i's brush results (a JSON list), submitting the next ones on the way."""
        self._submit_from(i)
        try:
            return self._futures.pop(i).result()
        except BrokenProcessPool:
            raise LabelStudioError("the brush encoder process died (out of memory?)") from None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)



def encoded_json(stem: str, label_map: Any, labels: dict[int, str]) -> bytes:
    """brush_results_of as JSON bytes (runs in an encoder process)."""
    return json.dumps(brush_results_of(stem, label_map, labels)).encode()


def push_run(url: str, run_id: str, project: str, workdir: Path) -> PushResult:
    """Push an MLflow image run, or a batch run's image runs, from their artifacts (the UI's button)."""
    from samseg.edges.annotations import read_image_dirs
    from samseg.edges.mlflow.run_dirs import download_image_dirs

    run_ids = download_image_dirs(run_id, workdir)
    return push(url, read_image_dirs(list(run_ids)), project, run_ids, pick_oldest=True)


@contextlib.contextmanager
def _one_push_at_a_time(url: str) -> Iterator[None]:
    """An exclusive lock per server on this machine: two pushes at once (two CLI commands, the
    UI's button pressed twice) would each create the project or the same tasks. Per server, not
    per project: `--project 12` and its title name one project before it is looked up."""
    import hashlib
    from urllib.parse import urlsplit

    from samseg.edges.storage import exclusive
    from samseg.sam.files import samseg_home

    parts = urlsplit(url)
    server = f"{parts.scheme}://{(parts.netloc or '').lower()}{parts.path.rstrip('/')}"
    key = hashlib.sha256(server.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    with exclusive(samseg_home() / "locks" / f"labelstudio-{key}.lock"):
        yield


def upload_name(name: str, sha: str) -> str:
    """The file name an image is uploaded under: it carries the image's sha256 prefix, so a task
    whose import answer was lost (the server died, the request timed out) is found by the next push."""
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}{UPLOAD_TAG}{sha[:16]}.{suffix}" if dot and stem else f"{name}{UPLOAD_TAG}{sha[:16]}"


def _tasks_by_sha(client: Any, url: str, project_id: int, names: dict[str, str]) -> dict[str, int]:
    """{sha256: task id} of the project's tasks: by the sha256 an earlier push recorded in the
    task's data, else by an uploaded image's name `names[sha256]` (Label Studio prefixes it with
    `<8 hex>-`): a task whose import answer was lost gets its sha256 recorded now, so it is never
    imported twice."""
    import re

    tasks = _call(url, "list the project's tasks", lambda: list(client.tasks.list(project=project_id)))
    found = {str(t.data[SHA_KEY]): int(t.id) for t in tasks if isinstance(t.data, dict) and t.data.get(SHA_KEY)}
    by_prefix = {sha[:16]: sha for sha in names if sha not in found}
    for t in tasks:
        data = t.data if isinstance(t.data, dict) else {}
        m = re.search(re.escape(UPLOAD_TAG) + r"([0-9a-f]{16})(?:\.[^/]*)?$", str(data.get(TO_NAME, "")))
        sha = by_prefix.get(m.group(1)) if m and not data.get(SHA_KEY) else None
        # the whole upload name must be this push's (its stem too), not only the sha prefix
        if sha is not None and not str(data.get(TO_NAME, "")).endswith(f"-{names.get(sha, '')}"):
            sha = None
        if sha is not None and sha not in found:
            _call(url, "record the image's sha256 on its task",
                  lambda: client.tasks.update(id=t.id, data={**data, SHA_KEY: sha}))
            found[sha] = int(t.id)
    return found


def _new_task(client: Any, url: str, project_id: int, r: ImageResult, sha: str) -> int:
    """A task for the image: uploaded through the import API (local), or its s3:// URI; then its
    sha256. Either way the image is first read and checked against the sha256 its run recorded:
    a crafted run naming another file (a private one) puts nothing in front of the annotators."""
    from samseg.edges.annotations import ExportError, input_bytes

    uri = r.uri
    try:
        data = input_bytes(r, "the push")
    except ExportError as exc:
        raise LabelStudioError(str(exc)) from None
    if uri.startswith("s3://"):
        _ensure_s3_storage(client, url, project_id, uri.split("/")[2])
        made = _call(url, f"create a task for {uri}",
                     lambda: client.tasks.create(project=project_id, data={TO_NAME: uri, SHA_KEY: sha}))
        return int(made.id)
    task_id = _upload(client, url, project_id, upload_name(Path(uri).name, sha), data)
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


def _upload(client: Any, url: str, project_id: int, name: str, data: bytes) -> int:
    """The one call the SDK has no method for: a multipart file import; returns the new task's id."""
    resp = _raw(client, url, f"upload {name}", f"api/projects/{project_id}/import", "POST",
                params={"return_task_ids": True}, files={name: (name, data)}, refused=f"refused the image {name}")
    ids = resp.json().get("task_ids") or []
    if len(ids) != 1:
        raise LabelStudioError(f"Label Studio at {url} made {len(ids)} tasks of {name}, expected 1")
    return int(ids[0])


def _raw(client: Any, url: str, what: str, path: str, method: str, refused: str = "", **request: Any) -> Any:
    """A request through the SDK's own HTTP client (its base URL, auth and timeout), untyped."""
    wrapper = client._client_wrapper
    resp = _call(url, what, lambda: wrapper.httpx_client.request(path, method=method, **request))
    if resp.status_code >= 400:
        body = server_said(resp.text)
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
