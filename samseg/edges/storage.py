"""The storage edge: local paths and ``s3://bucket/key`` URIs behind one small API.

S3 goes through boto3 directly. The endpoint comes from ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` (boto3 reads them natively; we also pass it explicitly so MinIO/moto
endpoints work with older botocore and get path-style addressing). Every S3 call has
bounded retries and short timeouts, then fails with ONE ``StorageError`` line naming the
URI — a batch must not hang on an unreachable endpoint.

Keys are validated before use (`validate_key`): no ``..``/``.`` segments (plain or
percent-encoded), no absolute paths, no backslashes, no empty segments, no control
characters — so a key built with `join_key` can never escape its prefix.

Output dirs on S3 (`upload_dir`) are published with a ``_SUCCESS`` marker written LAST;
it lists the dir's files. S3 has no rename, so a reader trusts only a dir whose marker exists
(`is_complete`) and only the files it lists (`download_prefix(require_success=True)`). A
republish replaces the dir whole: files an earlier publish wrote and the new one does not are
deleted after the new marker is written, and nothing any marker of samseg's never listed is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

from samseg.core.errors import UnavailableError
from urllib.parse import unquote

SUCCESS_MARKER = "_SUCCESS"
# Written first by `upload_dir`: every file samseg may have written under the prefix (the last
# marker's list + this upload's), so a publish cut off mid-way is still cleaned by the next one.
PENDING_MARKER = "_SAMSEG_PENDING"

# mkstemp creates 0600 files; what samseg writes gets the mode a plain open() would
# (0666 less the umask), so a shared cache or output dir stays readable by the group.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK

# 2 retries (3 calls in all) with botocore's "standard" backoff: a refused endpoint fails in
# ~5 s, one that accepts and never answers in ~17 s (3 × the 5 s read timeout, which is a gap
# between bytes, not a transfer's length); overridable (SAMSEG_S3_RETRIES,
# SAMSEG_S3_CONNECT_TIMEOUT, SAMSEG_S3_READ_TIMEOUT) for slow or flaky links. botocore's
# retries["max_attempts"] counts retries AFTER the first call.
_DEFAULT_RETRIES = 2
_DEFAULT_CONNECT_TIMEOUT_S = 3.0
_DEFAULT_READ_TIMEOUT_S = 5.0


class StorageError(UnavailableError):
    """A storage operation failed; the message is one line naming the URI."""


class StorageRefused(StorageError):
    """An object of the user's is where samseg would write (one line; nothing was written); that
    image fails (exit 1), the others go on, as a local folder of the user's does."""

    retryable = False


class StorageNotFound(StorageError):
    """The object or file does not exist."""

    retryable = False


# ---------------------------------------------------------------- URIs and keys


def is_s3_uri(s: str | os.PathLike[str]) -> bool:
    return isinstance(s, str) and s.startswith("s3://")


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` → ``("bucket", "a/b")``; the key may be empty (bucket root)."""
    if not is_s3_uri(uri):
        raise StorageError(f"{uri}: not an s3:// URI")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise StorageError(f"{uri}: no bucket name")
    return bucket, key


def object_parts(uri: str) -> tuple[str, str]:
    """split_s3_uri with the key validated; an error names the whole URI, bucket included."""
    bucket, key = split_s3_uri(uri)
    validate_key(key, shown=repr(uri))
    return bucket, key


def validate_key(key: str, shown: str | None = None) -> str:
    """Return `key` unchanged if it is a safe relative object key, else raise StorageError
    (naming `shown`, e.g. the whole URI, else the key; repr: a control character stays visible)."""
    shown = shown or repr(key)
    if not key:
        raise StorageError("empty object key")
    if key.startswith("/"):
        raise StorageError(f"{shown}: absolute keys are not allowed")
    if "\\" in key:
        raise StorageError(f"{shown}: backslashes are not allowed in keys")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        raise StorageError(f"{shown}: control characters are not allowed in keys")
    for segment in key.split("/"):
        if segment == "":
            raise StorageError(f"{shown}: empty path segment")
        # Reject encoded traversal too: something downstream may URL-decode the key.
        if unquote(segment) in (".", ".."):
            raise StorageError(f"{shown}: '.' and '..' segments are not allowed")
    return key


def join_key(prefix: str, *parts: str) -> str:
    """``join_key("runs/a", "img", "x.png")`` → ``"runs/a/img/x.png"`` (every part validated).

    `prefix` may be empty (bucket root) or end with "/". Each part may itself contain "/"
    but is validated as a relative key, so the result always lies under `prefix`.
    """
    pieces = [validate_key(p) for p in parts]
    head = prefix.rstrip("/")
    if head:
        validate_key(head)
    key = "/".join([head, *pieces] if head else pieces)
    return validate_key(key)


def join_uri(base: str | os.PathLike[str], *parts: str) -> str:
    """Join validated relative `parts` onto a local dir or an ``s3://`` prefix."""
    if is_s3_uri(base):
        bucket, prefix = split_s3_uri(str(base))
        return f"s3://{bucket}/{join_key(prefix, *parts)}"
    for p in parts:
        validate_key(p)
    return str(Path(base, *parts))


# ---------------------------------------------------------------- boto3 client

_client_lock = threading.Lock()
_clients: dict[tuple[Any, ...], Any] = {}


def _endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _client() -> Any:
    """One cached boto3 S3 client per (endpoint, credentials id, region, retry settings)."""
    endpoint = _endpoint_url()
    retries = int(os.environ.get("SAMSEG_S3_RETRIES", _DEFAULT_RETRIES))
    connect_s = float(os.environ.get("SAMSEG_S3_CONNECT_TIMEOUT", _DEFAULT_CONNECT_TIMEOUT_S))
    read_s = float(os.environ.get("SAMSEG_S3_READ_TIMEOUT", _DEFAULT_READ_TIMEOUT_S))
    cache_key = (endpoint, os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_DEFAULT_REGION"), retries, connect_s, read_s)
    with _client_lock:
        client = _clients.get(cache_key)
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"max_attempts": retries, "mode": "standard"},
                connect_timeout=connect_s,
                read_timeout=read_s,
                # MinIO and moto serve buckets by path, not by virtual host.
                s3={"addressing_style": "path"} if endpoint else {},
            )
            session = boto3.session.Session()  # sessions are not thread-safe; clients are
            client = session.client("s3", endpoint_url=endpoint, config=config)
            _clients[cache_key] = client
    return client


def _s3_error(op: str, uri: str, exc: Exception) -> StorageError:
    """Turn a botocore exception into one line; 404s become StorageNotFound."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound"):
            return StorageNotFound(f"{uri}: not found")
        if code == "NoSuchBucket":
            return StorageNotFound(f"{uri}: bucket does not exist")
        return StorageError(f"{uri}: {op} failed: {code or exc}")
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return StorageError(f"{uri}: {op} failed after retries: {reason}")


def _s3_call(op: str, uri: str, fn: Any, **kwargs: Any) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(**kwargs)
    except (BotoCoreError, ClientError) as exc:
        raise _s3_error(op, uri, exc) from None


# ---------------------------------------------------------------- bytes


def read_bytes(uri_or_path: str | os.PathLike[str]) -> bytes:
    """Whole object/file as bytes. Missing → StorageNotFound; other failures → StorageError."""
    return _read(uri_or_path, lambda f: f.read())


def sha256_of(uri_or_path: str | os.PathLike[str]) -> str:
    """The sha256 (hex) of an object/file, read a MiB at a time (a sharded batch's batch_summary.json
    is never read whole); read_bytes' errors."""
    def digest(f: Any) -> str:
        h = hashlib.sha256()
        while chunk := f.read(1 << 20):
            h.update(chunk)
        return h.hexdigest()

    return _read(uri_or_path, digest)


def _read(uri_or_path: str | os.PathLike[str], use: Callable[[Any], Any]) -> Any:
    """use(a binary reader of the object/file), with read_bytes' errors."""
    if is_s3_uri(uri_or_path):
        bucket, key = object_parts(str(uri_or_path))
        client = _client()
        resp = _s3_call("read", str(uri_or_path), client.get_object, Bucket=bucket, Key=key)
        try:
            return use(resp["Body"])
        except Exception as exc:  # a broken stream mid-body (botocore/urllib3 errors)
            raise StorageError(f"{uri_or_path}: read failed: {exc}") from None
    path = Path(uri_or_path)
    try:
        mode = os.stat(path).st_mode  # before opening: open() on a FIFO waits for a writer forever
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
            raise StorageError(f"{path}: not a regular file ({kind}); nothing read")
        with path.open("rb") as f:
            return use(f)
    except FileNotFoundError:
        raise StorageNotFound(f"{path}: not found") from None
    except OSError as exc:
        raise StorageError(f"{path}: read failed: {exc.strerror or exc}") from None


@contextlib.contextmanager
def exclusive(lock_path: str | os.PathLike[str]) -> Iterator[None]:
    """An exclusive flock on `lock_path` (created with its folder) for the block: held by an open
    file, so it serialises threads and processes alike and a killed holder releases it."""
    import fcntl

    Path(lock_path).parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _file_sha256(path: Path) -> str:
    """sam.files.file_sha256 of a regular file, its failures as read_bytes's (StorageError/StorageNotFound)."""
    from samseg.sam.files import file_sha256

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise StorageError(f"{path}: not a regular file; nothing read")
        return file_sha256(path)
    except FileNotFoundError:
        raise StorageNotFound(f"{path}: not found") from None
    except OSError as exc:
        raise StorageError(f"{path}: read failed: {exc.strerror or exc}") from None


def read_verified(uri_or_path: str | os.PathLike[str], sha256: Any) -> bytes:
    """The bytes of a file a run names as its input, only when they hash to the sha256 the run
    recorded: a crafted run can name any file, and only the one it was computed from is
    copied or uploaded anywhere. No recorded hash, or other bytes: StorageError, nothing kept."""
    if not isinstance(sha256, str) or not sha256:
        raise StorageError(f"{uri_or_path}: the run records no sha256 of its input image; not read")
    other = StorageError(f"{uri_or_path}: not the image the run was computed from (its sha256 differs from "
                         "the one the run recorded); not read")
    # a local file is hashed in chunks first: a crafted run naming a huge file loads none of it
    if not is_s3_uri(uri_or_path) and _file_sha256(Path(uri_or_path)) != sha256.lower():
        raise other
    data = read_bytes(uri_or_path)
    if hashlib.sha256(data).hexdigest() != sha256.lower():  # the bytes kept, again: the file may have changed
        raise other
    return data


def write_bytes(uri_or_path: str | os.PathLike[str], data: bytes | Path) -> None:
    """Write atomically: local = temp file in the same dir + os.replace; S3 = one put_object.
    data: the bytes, or a local file whose bytes are copied (streamed, never read whole)."""
    if is_s3_uri(uri_or_path):
        bucket, key = object_parts(str(uri_or_path))
        with data.open("rb") if isinstance(data, Path) else contextlib.nullcontext(data) as body:
            _s3_call("write", str(uri_or_path), _client().put_object, Bucket=bucket, Key=key, Body=body)
        return
    path = Path(uri_or_path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                if isinstance(data, Path):
                    with data.open("rb") as src:
                        shutil.copyfileobj(src, f)
                else:
                    f.write(data)
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise StorageError(f"{path}: write failed: {exc.strerror or exc}") from None


def exists(uri_or_path: str | os.PathLike[str]) -> bool:
    if is_s3_uri(uri_or_path):
        bucket, key = object_parts(str(uri_or_path))
        try:
            _s3_call("head", str(uri_or_path), _client().head_object, Bucket=bucket, Key=key)
        except StorageNotFound:
            return False
        return True
    return Path(uri_or_path).exists()


def check_bucket(uri: str) -> None:
    """StorageError (one line) unless `uri` names an existing bucket we can reach."""
    bucket, _key = split_s3_uri(uri)
    try:
        _s3_call("check", uri, _client().head_bucket, Bucket=bucket)
    except StorageNotFound:
        raise StorageNotFound(f"{uri}: bucket {bucket!r} does not exist") from None


def delete(uri_or_path: str | os.PathLike[str]) -> None:
    """Remove one object/file; missing is not an error."""
    if is_s3_uri(uri_or_path):
        bucket, key = object_parts(str(uri_or_path))
        _s3_call("delete", str(uri_or_path), _client().delete_object, Bucket=bucket, Key=key)
        return
    Path(uri_or_path).unlink(missing_ok=True)


# ---------------------------------------------------------------- listing


LIST_PAGE = 1000  # keys per ListObjectsV2 request: S3's own most


def iter_keys(prefix_uri: str, *, recursive: bool = True) -> Iterator[str]:
    """Full ``s3://`` URIs of the objects under a prefix (treated as a folder), page by page in
    S3's key order (UTF-8 binary: Python's str order), so a million keys are never in memory at once.

    recursive=False lists only the folder's direct children (S3 ``Delimiter="/"``).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_s3_uri(prefix_uri)
    folder = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    paginator = _client().get_paginator("list_objects_v2")
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": folder}
    if not recursive:
        kwargs["Delimiter"] = "/"
    try:
        for page in paginator.paginate(**kwargs, PaginationConfig={"PageSize": LIST_PAGE}):
            yield from (f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", []))
    except (BotoCoreError, ClientError) as exc:
        raise _s3_error("list", prefix_uri, exc) from None


def list_keys(prefix_uri: str, *, recursive: bool = True) -> list[str]:
    """Sorted `iter_keys`, as one list (a server that pages out of order is still sorted)."""
    return sorted(iter_keys(prefix_uri, recursive=recursive))


def list_images(spec: str | os.PathLike[str]) -> list[str]:
    """Sorted image URIs/paths (by suffix) for a file, a folder, a glob, or ``s3://bucket/prefix``.

    Same rule everywhere (samseg.edges.images.iter_found_images for local specs): a folder or S3
    prefix gives its direct image children, not recursive, hidden names skipped; a single
    image key on S3 is returned as itself. An empty folder/prefix gives [] — the caller
    decides whether that is an error. A local name that does not exist is kept as given
    so `samseg.edges.images.load_image` reports it as that file's own one-line error.
    """
    found = list(iter_images(spec))
    return sorted(found) if is_s3_uri(spec) else found


def iter_images(spec: str | os.PathLike[str]) -> Iterator[str]:
    """`list_images`, an S3 prefix page by page (`iter_keys`, in S3's order, which is sorted), a
    local folder sorted in bounded runs (samseg.edges.images.iter_found_images)."""
    from samseg.edges.images import is_image_name

    if is_s3_uri(spec):
        _bucket, key = split_s3_uri(str(spec))
        if key and is_image_name(key):
            try:
                object_parts(str(spec))
            except StorageError:  # a hostile key fails alone, as that image's own error
                yield str(spec)
                return
        if key and is_image_name(key) and exists(str(spec)):
            yield str(spec)
            return
        yield from (u for u in iter_keys(str(spec), recursive=False) if is_image_name(u))
        return
    from samseg.edges.images import iter_found_images

    yield from iter_found_images(str(spec))


# ---------------------------------------------------------------- whole dirs


def _local_files(local_dir: Path) -> list[Path]:
    """Every regular file under `local_dir` except the markers, sorted for determinism."""
    return sorted(p for p in local_dir.rglob("*") if p.is_file() and p.name not in (SUCCESS_MARKER, PENDING_MARKER))


def listed_files(marker_uri: str) -> list[str]:
    """The relative file names a marker written by `upload_dir` lists ([] when it is missing
    or unreadable); names that are not safe relative keys are dropped."""
    try:
        doc = json.loads(read_bytes(marker_uri))
    except (StorageError, ValueError):
        return []
    names = doc.get("files") if isinstance(doc, dict) else None
    safe = []
    for name in names if isinstance(names, list) else []:
        try:
            safe.append(validate_key(str(name)))
        except StorageError:
            continue
    return safe


def foreign_objects(dest_uri: str, names: Callable[[str], bool], keys: list[str] | None = None) -> list[str]:
    """The relative names under an S3 prefix that samseg would write (`names(rel)` is True) but
    no manifest of samseg's (``_SUCCESS``, ``_SAMSEG_PENDING``) lists: a user's objects, which
    samseg must not overwrite. Other objects of the user's there are left alone, never deleted.
    keys: the prefix's object URIs when already listed. [] for a local dir (outdirs owns those)."""
    if not is_s3_uri(dest_uri):
        return []
    folder = dest_uri.rstrip("/") + "/"
    listed = keys if keys is not None else list_keys(dest_uri)
    wanted = [k[len(folder):] for k in listed if k.startswith(folder) and names(k[len(folder):])]
    if not wanted:
        return []
    ours = set(listed_files(join_uri(dest_uri, SUCCESS_MARKER))) | set(listed_files(join_uri(dest_uri, PENDING_MARKER)))
    return sorted(set(wanted) - ours)


def refuse_foreign(dest_uri: str, names: Callable[[str], bool], keys: list[str] | None = None) -> None:
    """StorageRefused (one line) when a user's object lies where samseg would write (`foreign_objects`)."""
    foreign = foreign_objects(dest_uri, names, keys)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise StorageRefused(f"{dest_uri}: holds {foreign[0]!r}{more}, which samseg did not write; samseg replaces "
                             "only what it wrote: choose another --out or move those objects")


def upload_dir(local_dir: str | os.PathLike[str], dest_uri: str) -> list[str]:
    """Publish a finished local dir at `dest_uri` (S3 prefix or local dir), replacing what an
    earlier publish wrote there; returns the file URIs.

    Order matters because S3 has no rename: (1) ``_SAMSEG_PENDING`` lists every file samseg
    wrote or will write here, (2) the old ``_SUCCESS`` goes, (3) every file is uploaded,
    (4) ``_SUCCESS`` is written listing them, (5) files an earlier publish wrote and this one
    did not are deleted, (6) the pending list goes. An object of a name it writes that no
    manifest lists is a user's: the publish is refused (StorageRefused) and nothing is written. A crash part-way leaves no marker (readers
    ignore the dir) and a pending list the next publish cleans from.
    """
    src = Path(local_dir)
    if not src.is_dir():
        raise StorageNotFound(f"{src}: not a directory")
    files = _local_files(src)
    names = [p.relative_to(src).as_posix() for p in files]
    refuse_foreign(dest_uri, set(names).__contains__)  # a user's object is never overwritten (checked before compute too)
    marker, pending = join_uri(dest_uri, SUCCESS_MARKER), join_uri(dest_uri, PENDING_MARKER)
    earlier = set(listed_files(marker)) | set(listed_files(pending))
    write_bytes(pending, json.dumps({"files": sorted(earlier | set(names))}).encode("utf-8"))
    delete(marker)
    written: list[str] = []
    for path, rel in zip(files, names):
        target = join_uri(dest_uri, rel)
        write_bytes(target, path.read_bytes())
        written.append(target)
    manifest = {"files": names, "written_at": time.time()}
    write_bytes(marker, json.dumps(manifest, sort_keys=True).encode("utf-8"))
    for rel in sorted(earlier - set(names) - {SUCCESS_MARKER, PENDING_MARKER}):
        delete(join_uri(dest_uri, rel))
    delete(pending)
    return written


def is_complete(dir_uri: str | os.PathLike[str]) -> bool:
    """True when a dir published by `upload_dir` has its ``_SUCCESS`` marker."""
    return exists(join_uri(dir_uri, SUCCESS_MARKER))


@contextlib.contextmanager
def local_path(uri_or_path: str | os.PathLike[str]) -> Iterator[Path]:
    """A local file of `uri_or_path` for a library that reads paths (MLflow's log_artifact):
    the path itself, or an s3:// object's copy in a temporary folder (same file name) for the block."""
    if not is_s3_uri(uri_or_path):
        yield Path(uri_or_path)
        return
    with tempfile.TemporaryDirectory(prefix="samseg-s3-") as tmp:
        target = Path(tmp) / PurePosixPath(split_s3_uri(str(uri_or_path))[1]).name
        target.write_bytes(read_bytes(uri_or_path))
        yield target


def download_prefix(src_uri: str, local_dir: str | os.PathLike[str], *, require_success: bool = False) -> list[Path]:
    """Copy every object under an S3 prefix (or local dir) into `local_dir`; returns the files.

    Relative keys are validated, so a hostile key (``a/../../etc``) cannot write outside
    `local_dir`. With `require_success`, a prefix without ``_SUCCESS`` raises StorageError,
    and only the files ``_SUCCESS`` lists are copied (anything else there is not the dir's).
    """
    listed: set[str] | None = None
    if require_success:
        if not is_complete(src_uri):
            raise StorageError(f"{src_uri}: incomplete (no {SUCCESS_MARKER} marker)")
        listed = set(listed_files(join_uri(src_uri, SUCCESS_MARKER)))
    dst = Path(local_dir)
    if is_s3_uri(src_uri):
        bucket, prefix = split_s3_uri(src_uri)
        folder = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        sources = [(u, u[len(f"s3://{bucket}/{folder}") :]) for u in list_keys(src_uri)]
    else:
        root = Path(src_uri)
        if not root.is_dir():
            raise StorageNotFound(f"{root}: not a directory")
        sources = [(str(p), p.relative_to(root).as_posix()) for p in sorted(root.rglob("*")) if p.is_file()]
    if listed is not None:
        sources = [(uri, rel) for uri, rel in sources if rel in listed or rel == SUCCESS_MARKER]
    out: list[Path] = []
    for uri, rel in sources:
        validate_key(rel)
        target = dst / rel
        write_bytes(target, read_bytes(uri))
        out.append(target)
    return out
