"""Content-addressed cache of the expensive stages' outputs (encode, amg, pool).

A key is the sha256 of everything that determines a stage's output: the image bytes'
sha256, the checkpoint's sha256, the model type, and the config of every stage up to and
including this one (`samseg.engine.stages.stage_key`, from the stage table; `content_key`
hashes it). `cluster` is NOT cached: it is the cheap stage users re-tune, and its config
never enters a key, so changing eps re-uses every cached stage.

Entry layout (root may be a local dir or ``s3://bucket/prefix``)::

    <root>/<stage>/<key[:2]>/<key>/<payload files>   e.g. features.npy + geometry.json
    <root>/<stage>/<key[:2]>/<key>/manifest.json     written LAST

The manifest records each payload file's sha256 and size plus the array shape/dtype and
the samseg version. A load checks all of it; a missing manifest is a plain miss, and a
truncated/corrupt/mismatched entry logs a warning and is a miss too — the caller
recomputes and the save overwrites it. Loads never raise for a bad entry.

Concurrency: every file is replaced atomically (temp file + os.replace) and the manifest
goes last, so a reader sees no entry, a complete one, or — mid-overwrite — a manifest
whose hashes do not match the payload → a miss, never a wrong array. Local writers of one
key are serialized by a lock file, so racing writers always leave a whole entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from samseg import __version__

from samseg.edges import storage
from samseg.core.tiling import MergedMasks
from samseg.core.types import EncodedImage, ImageGeometry, MaskSet

log = logging.getLogger(__name__)

_STAGE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,40}$")  # a stage name is one safe path component
MANIFEST = "manifest.json"
# Bumped when an entry's layout changes, so old entries stop matching instead of misloading.
CACHE_FORMAT = 1


def content_key(doc: dict[str, Any], precision: str = "fp32") -> str:
    """Hex sha256 of canonical JSON of a stage's key document (built by samseg.engine.stages
    from the stage table: stage, image, checkpoint, model type, the sections it depends on)."""
    doc = {"format": CACHE_FORMAT, **doc}
    if precision != "fp32":  # the RESOLVED precision; fp32 keys stay what they always were
        doc["precision"] = precision
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def default_cache_root() -> str:
    """$SAMSEG_CACHE (a dir or s3:// prefix), else <samseg_home()>/cache."""
    env = os.environ.get("SAMSEG_CACHE")
    if env:
        return env
    from samseg.sam.files import samseg_home

    return str(samseg_home() / "cache")


# Less free space than this at the cache root counts as a full disk (one vit_h encode entry is 4 MiB).
MIN_FREE_BYTES = 64 << 20


def unusable_reason(root: str) -> str | None:
    """Why the cache `root` cannot be written (a file, read-only, a full disk, a missing or
    unreachable S3 bucket), or None.

    Checked once before any compute, so a bad --cache / SAMSEG_HOME costs one warning
    line, not an encoder pass per image that then fails to save."""
    if storage.is_s3_uri(root):
        try:
            storage.check_bucket(root)
        except storage.StorageError as exc:
            return str(exc)
        return None
    import shutil
    import tempfile

    path = os.path.expanduser(root)
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
        free = shutil.disk_usage(path).free
    except FileExistsError:
        return f"{root} is not a directory"
    except OSError as exc:
        return f"{root}: {exc.strerror or exc}"
    if free < MIN_FREE_BYTES:  # an empty probe file still fits on a full disk; an entry does not
        return f"{root}: only {free // 2**20} MiB free (No space left on device)"
    return None


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _npy_load(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


class _BadEntry(Exception):
    """Internal: an entry exists but cannot be trusted."""


class StageCache:
    """Cache of the stages' outputs: encode (EncodedImage), amg (MaskSet), pool (N×C float32),
    tiles (MergedMasks). `save(stage, key, codec, value)` writes an entry with the codec the
    stage table names (samseg.engine.stages); `load(stage, key, codec)` returns its value, or
    None on a miss or a bad entry.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = str(root) if root is not None else default_cache_root()
        self._write_failed = False

    def __repr__(self) -> str:
        return f"StageCache({self.root!r})"

    def entry_uri(self, stage: str, key: str) -> str:
        if not _STAGE_NAME.match(stage):
            raise ValueError(f"stage name {stage!r} is not a cache stage name")
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"cache key must be 64 lower-case hex chars, got {key!r}")
        return storage.join_uri(self.root, stage, key[:2], key)

    # ------------------------------------------------------------ generic entry I/O

    def save(self, stage: str, key: str, codec: str, value: Any) -> None:
        """Write `value` as `stage`'s entry under `key`, encoded by CODECS[codec]. A cache that
        cannot be written (the disk filled up, the S3 endpoint went away) never fails the
        image that computed the value: one warning, and the run goes on without that entry."""
        files, meta = CODECS[codec].encode(value)
        entry = self.entry_uri(stage, key)
        try:
            with _writer_lock(entry):
                self._write_entry(entry, stage, key, files, meta)
        except (storage.StorageError, OSError) as exc:
            # once per cache (one line, not one per stage and image); the rest at debug level
            level = logging.DEBUG if self._write_failed else logging.WARNING
            self._write_failed = True
            log.log(level, "cache: cannot write %s (%s); going on without caching", entry, " ".join(str(exc).split()))

    def load(self, stage: str, key: str, codec: str) -> Any:
        """The entry of `stage` under `key` decoded by CODECS[codec], or None (miss / bad entry)."""
        loaded = self._load(stage, key)
        if loaded is None:
            return None
        try:
            return CODECS[codec].decode(*loaded)
        except (_BadEntry, ValueError, KeyError, TypeError, IndexError, OSError) as exc:
            log.warning("cache: bad entry %s (%s); recomputing", self.entry_uri(stage, key), exc)
            return None

    def _write_entry(self, entry: str, stage: str, key: str, files: dict[str, bytes], meta: dict[str, Any]) -> None:
        for name, data in files.items():
            storage.write_bytes(storage.join_uri(entry, name), data)
        manifest = {
            "stage": stage,
            "key": key,
            "format": CACHE_FORMAT,
            "samseg_version": __version__,
            "created_unix": time.time(),
            "files": {n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in files.items()},
            **meta,
        }
        storage.write_bytes(storage.join_uri(entry, MANIFEST), json.dumps(manifest, sort_keys=True).encode("utf-8"))

    def _load(self, stage: str, key: str) -> tuple[dict[str, bytes], dict[str, Any]] | None:
        """Verified payload bytes + manifest, or None (miss). Bad entries → warning + None."""
        entry = self.entry_uri(stage, key)
        try:
            raw = storage.read_bytes(storage.join_uri(entry, MANIFEST))
        except storage.StorageNotFound:
            return None
        except storage.StorageError as exc:
            log.warning("cache: cannot read %s (%s); recomputing", entry, exc)
            return None
        try:
            manifest = json.loads(raw)
            if manifest.get("stage") != stage or manifest.get("key") != key or manifest.get("format") != CACHE_FORMAT:
                raise _BadEntry("manifest does not describe this entry")
            files = {name: self._verified(entry, name, info) for name, info in manifest["files"].items()}
        except (_BadEntry, storage.StorageError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("cache: bad entry %s (%s); recomputing", entry, exc)
            return None
        if not storage.is_s3_uri(entry):  # a hit is a use: the size bound removes entries used longest ago first
            with contextlib.suppress(OSError):
                os.utime(storage.join_uri(entry, MANIFEST))
        return files, manifest

    @staticmethod
    def _verified(entry: str, name: str, info: dict[str, Any]) -> bytes:
        data = storage.read_bytes(storage.join_uri(entry, name))
        if len(data) != int(info["size"]):
            raise _BadEntry(f"{name}: {len(data)} bytes, manifest says {info['size']}")
        if hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise _BadEntry(f"{name}: sha256 mismatch")
        return data


# ---------------------------------------------------------------- codecs
# A codec turns a stage's value into an entry's files (+ manifest fields) and back; the stage
# table (samseg.engine.stages) names one per cached stage. Decoders raise on anything wrong.
Files = dict[str, bytes]


@dataclass(frozen=True)
class Codec:
    encode: Callable[[Any], tuple[Files, dict[str, Any]]]
    decode: Callable[[Files, dict[str, Any]], Any]


def _encode_encoded(enc: EncodedImage) -> tuple[Files, dict[str, Any]]:
    """features.npy (C×Hf×Wf float32) + geometry.json."""
    feats = np.asarray(enc.features, dtype=np.float32)
    files = {"features.npy": _npy_bytes(feats),
             "geometry.json": json.dumps(enc.geometry.to_dict(), sort_keys=True).encode("utf-8")}
    return files, {"shape": list(feats.shape), "dtype": str(feats.dtype)}


def _decode_encoded(files: Files, manifest: dict[str, Any]) -> EncodedImage:
    feats = _check_array(_npy_load(files["features.npy"]), manifest)
    return EncodedImage(features=feats, geometry=ImageGeometry.from_dict(json.loads(files["geometry.json"])))


def _encode_masks(masks: MaskSet) -> tuple[Files, dict[str, Any]]:
    """masks.json = {image_hw, records (MaskSet.to_records)}."""
    return {"masks.json": _masks_json(masks)}, {"shape": [len(masks)], "dtype": "coco_rle"}


def _decode_masks(files: Files, manifest: dict[str, Any]) -> MaskSet:
    masks = _masks_from_json(files["masks.json"])
    if [len(masks)] != list(manifest["shape"]):
        raise _BadEntry(f"{len(masks)} masks, manifest says {manifest['shape']}")
    return masks


def _encode_embeddings(emb: np.ndarray) -> tuple[Files, dict[str, Any]]:
    """embeddings.npy (N×C float32, AMG row order)."""
    arr = np.asarray(emb, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"embeddings must be N×C, got shape {arr.shape}")
    return {"embeddings.npy": _npy_bytes(arr)}, {"shape": list(arr.shape), "dtype": str(arr.dtype)}


def _decode_embeddings(files: Files, manifest: dict[str, Any]) -> np.ndarray:
    return _check_array(_npy_load(files["embeddings.npy"]), manifest)


def _encode_tiled(merged: MergedMasks) -> tuple[Files, dict[str, Any]]:
    """masks.json + embeddings.npy (N×C) + parts.json (the tile pieces of each mask)."""
    emb = np.asarray(merged.embeddings, dtype=np.float32)
    files = {"masks.json": _masks_json(merged.masks), "embeddings.npy": _npy_bytes(emb),
             "parts.json": json.dumps({"n_tiles": merged.n_tiles, "parts": merged.parts}).encode("utf-8")}
    return files, {"shape": list(emb.shape), "dtype": str(emb.dtype)}


def _decode_tiled(files: Files, manifest: dict[str, Any]) -> MergedMasks:
    masks = _masks_from_json(files["masks.json"])
    emb = _check_array(_npy_load(files["embeddings.npy"]), manifest)
    parts = json.loads(files["parts.json"])
    if len(masks) != len(emb) or len(parts["parts"]) != len(masks):
        raise _BadEntry(f"{len(masks)} masks, {len(emb)} embeddings, {len(parts['parts'])} part lists")
    groups = [[(int(t), int(i)) for t, i in g] for g in parts["parts"]]
    return MergedMasks(masks=masks, embeddings=emb, parts=groups, n_tiles=int(parts["n_tiles"]))


def _encode_rows(rows: dict[int, np.ndarray]) -> tuple[Files, dict[str, Any]]:
    """rows.npy (N int64, mask rows) + vectors.npy (N×D float32): a vector per mask row, for some rows."""
    keys = sorted(int(k) for k in rows)
    vectors = np.stack([np.asarray(rows[k], np.float32) for k in keys]) if keys else np.zeros((0, 0), np.float32)
    return ({"rows.npy": _npy_bytes(np.asarray(keys, np.int64)), "vectors.npy": _npy_bytes(vectors)},
            {"shape": list(vectors.shape), "dtype": str(vectors.dtype)})


def _decode_rows(files: Files, manifest: dict[str, Any]) -> dict[int, np.ndarray]:
    keys = _npy_load(files["rows.npy"])
    vectors = _check_array(_npy_load(files["vectors.npy"]), manifest)
    if keys.ndim != 1 or len(keys) != len(vectors):
        raise _BadEntry(f"{len(keys)} rows for {len(vectors)} vectors")
    return {int(k): v for k, v in zip(keys, vectors)}


def _masks_json(masks: MaskSet) -> bytes:
    """An entry's masks.json: {image_hw, records (MaskSet.to_records)}."""
    doc = {"image_hw": list(masks.image_hw), "records": masks.to_records()}
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def _masks_from_json(data: bytes) -> MaskSet:
    doc = json.loads(data)
    return MaskSet.from_records(tuple(doc["image_hw"]), doc["records"])


CODECS: dict[str, Codec] = {
    "encoded": Codec(_encode_encoded, _decode_encoded),
    "masks": Codec(_encode_masks, _decode_masks),
    "embeddings": Codec(_encode_embeddings, _decode_embeddings),
    "tiled": Codec(_encode_tiled, _decode_tiled),
    "rows": Codec(_encode_rows, _decode_rows),
}


@contextlib.contextmanager
def _writer_lock(entry: str) -> Iterator[None]:
    """Serialize writers of one local entry (flock on a sibling lock file).

    Each file is replaced atomically anyway; the lock stops two writers from
    interleaving payload and manifest (A's manifest over B's payload), which would leave
    an entry that reads as a miss until recomputed. S3 has no locks: there such a race
    costs one recompute, never a wrong array (the manifest hashes catch it).
    """
    if storage.is_s3_uri(entry):
        yield
        return
    with storage.exclusive(Path(entry).parent / f".{Path(entry).name}.lock"):
        yield


def _check_array(arr: np.ndarray, manifest: dict[str, Any]) -> np.ndarray:
    if list(arr.shape) != list(manifest["shape"]) or str(arr.dtype) != manifest["dtype"]:
        raise _BadEntry(f"array {arr.shape} {arr.dtype}, manifest says {manifest['shape']} {manifest['dtype']}")
    return arr
