"""Files samseg writes into a folder it does not own whole, and a batch's state there.

Two folders hold user files beside samseg's: `samseg export --out DIR`, and a batch's OUT,
whose top-level files (batch_summary.json, classes.json, contact_sheet.png) sit beside the
image dirs. The folder's ledger `.samseg-files.json` records, per relative path, the sha256 of
what samseg wrote there. A file is replaced only when it is absent or still holds bytes samseg
wrote; anything else (the user's own annotations.json, a file the user edited since) is
refused in one line naming it, before anything is written (`FilesRefused`). Each write is
atomic (storage.write_bytes); the ledger accepts the old and the new bytes while a write is in
flight, so a kill between the two leaves no file samseg cannot recognise as its own.

The ledger also marks a batch that has not finished: `begin_batch` sets it before any image
dir is touched, `end_batch` clears it once every top-level file agrees with the image dirs.
Readers of a batch OUT call `check_complete` (`BatchIncomplete`, one line) — an interrupted
batch leaves image dirs of one run beside the summary or classes of another.

Works on local folders and s3:// prefixes alike (through samseg.edges.storage).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from samseg.core.errors import RefusedError, SamsegError
from samseg.edges.storage import StorageError, StorageNotFound, join_uri, read_bytes, sha256_of, write_bytes

LEDGER = ".samseg-files.json"
# A batch OUT's top-level files (beside its image dirs).
BATCH_SUMMARY_JSON = "batch_summary.json"
CLASSES_JSON = "classes.json"
CONTACT_SHEET_PNG = "contact_sheet.png"
FITTED_CLASSES_JSON = "classes.fitted.json"  # a sharded dataset batch: the classes fitted on its sample, which every shard assigns to
BATCH_TOP_LEVEL = (BATCH_SUMMARY_JSON, CLASSES_JSON, CONTACT_SHEET_PNG, FITTED_CLASSES_JSON, LEDGER)  # every name a batch uses in OUT itself
_LEGACY_BATCH_FILES = (BATCH_SUMMARY_JSON, CLASSES_JSON, CONTACT_SHEET_PNG)
# A batch OUT written before the ledger existed: samseg's batch report there marks the three as samseg's.
_LEGACY_REPORT_KEYS = {"images", "succeeded", "failed", "fan_out"}


class FilesRefused(RefusedError):
    """A file samseg would replace is not samseg's; str(e) is one line naming it."""


class BatchIncomplete(SamsegError):
    """A batch OUT whose last batch did not finish; str(e) is one line naming it."""


def _sha256(data: bytes | Path) -> str:
    if isinstance(data, Path):  # a file too large to read whole (a sharded batch's batch_summary.json)
        return sha256_of(data)
    return hashlib.sha256(data).hexdigest()


def _read_ledger(folder: str) -> Optional[dict[str, Any]]:
    try:
        doc = json.loads(read_bytes(join_uri(folder, LEDGER)))
    except StorageNotFound:
        return None
    except (StorageError, ValueError):
        return None  # unreadable: nothing is known to be samseg's, so nothing is replaced
    if not isinstance(doc, dict) or doc.get("written_by") != "samseg" or not isinstance(doc.get("files"), dict):
        return None
    return doc


def _write_ledger(folder: str, doc: dict[str, Any]) -> None:
    write_bytes(join_uri(folder, LEDGER), (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def _new_ledger() -> dict[str, Any]:
    return {"written_by": "samseg", "files": {}}


def _legacy_owned(folder: str) -> set[str]:
    """The top-level batch files of an OUT written before the ledger (samseg's batch report there)."""
    try:
        report = json.loads(read_bytes(join_uri(folder, BATCH_SUMMARY_JSON)))
    except (StorageError, ValueError):
        return set()
    return set(_LEGACY_BATCH_FILES) if isinstance(report, dict) and _LEGACY_REPORT_KEYS <= set(report) else set()


def _current(folder: str, name: str) -> Optional[str]:
    """The sha256 of folder/name, None when absent; a folder or link in the way is refused."""
    target = join_uri(folder, name)
    if not target.startswith("s3://") and (os.path.islink(target) or os.path.isdir(target)):
        raise FilesRefused(f"{target}: exists and is not a file samseg wrote; move it or choose another --out")
    try:
        return sha256_of(target)
    except StorageNotFound:
        return None
    except StorageError as exc:
        raise FilesRefused(f"{target}: cannot check it before replacing it ({exc})") from None


def check_writable(folder: str, names: list[str]) -> dict[str, Any]:
    """Raise FilesRefused unless every `names` under `folder` is absent or samseg's; returns the
    ledger (a new one when the folder has none, with a pre-ledger OUT's own files recorded)."""
    ledger = _read_ledger(folder)
    legacy = _legacy_owned(folder) if ledger is None else set()
    ledger = ledger or _new_ledger()
    foreign = []
    for name in names:
        sha = _current(folder, name)
        if sha is None:
            continue
        if name in legacy:
            ledger["files"][name] = [sha]
        elif sha not in ledger["files"].get(name, []):
            foreign.append(name)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise FilesRefused(f"{folder}: holds files samseg did not write ({shown}); samseg replaces only its own "
                           "files: move them or choose another --out")
    return ledger


def write_files(folder: str, files: Mapping[str, bytes | Path]) -> list[str]:
    """Write `files` (relative name -> bytes, or a local file's) into `folder` atomically, replacing only samseg's
    own earlier files; returns their URIs/paths. FilesRefused (nothing written) otherwise."""
    ledger = check_writable(folder, list(files))
    hashes = {name: _sha256(data) for name, data in files.items()}
    for name, sha in hashes.items():  # old or new bytes: either is samseg's while the write runs
        ledger["files"][name] = sorted(set(ledger["files"].get(name, [])) | {sha})
    _write_ledger(folder, ledger)
    written = []
    for name, data in files.items():
        target = join_uri(folder, name)
        write_bytes(target, data)
        written.append(target)
    for name, sha in hashes.items():
        ledger["files"][name] = [sha]
    _write_ledger(folder, ledger)
    return written


def remove_own(folder: str, names: list[str]) -> None:
    """Delete those of `names` in `folder` that samseg wrote (a stale top-level file of an earlier
    batch); a file of the user's there is FilesRefused, untouched."""
    from samseg.edges.storage import delete

    ledger = check_writable(folder, names)
    gone = [n for n in names if n in ledger["files"]]
    for name in gone:
        if _current(folder, name) is not None:
            delete(join_uri(folder, name))
        ledger["files"].pop(name, None)
    if gone:
        _write_ledger(folder, ledger)


def begin_batch(folder: str, names: list[str]) -> None:
    """Before a batch touches OUT: its top-level `names` must be writable (FilesRefused), and
    OUT is marked incomplete until `end_batch`."""
    ledger = check_writable(folder, names)
    ledger["incomplete"] = {"since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "pid": os.getpid()}
    _write_ledger(folder, ledger)


def end_batch(folder: str) -> None:
    """The batch finished and its top-level files agree with its image dirs: clear the mark."""
    ledger = _read_ledger(folder) or _new_ledger()
    ledger.pop("incomplete", None)
    _write_ledger(folder, ledger)


def incomplete_since(folder: str) -> Optional[str]:
    """When the unfinished batch in `folder` started (UTC), or None when there is none."""
    ledger = _read_ledger(folder)
    mark = (ledger or {}).get("incomplete")
    return str(mark.get("since", "?")) if isinstance(mark, dict) else None


def check_complete(folder: str, what: str = "") -> None:
    """BatchIncomplete (one line) when a batch into `folder` was interrupted or failed part-way."""
    since = incomplete_since(folder)
    if since is not None:
        raise BatchIncomplete(f"{what or folder}: the batch started there at {since} did not finish (interrupted, or its "
                              "dataset classes failed part-way), so its image dirs and top-level files may disagree; "
                              "rerun that batch to complete it")
