"""Output directories: safe names, and the rule that samseg replaces only what it wrote.

Naming (`safe_dir_name`): OUT/<name>/ where <name> is the input file's stem made into ONE
safe path component: Unicode letters and digits and `- _ . + @ , = ( ) [ ]` and space are
kept, every other character (separators, control characters, `:` ...) becomes `_`,
leading dots and spaces and trailing dots and spaces are dropped, and the result is cut to
100 characters. When that changed the stem, `-<8 hex of sha256(stem)>` is appended so two
different odd names never meet; an empty result is `image-<hash>`. So `..png` → `image-…`,
`.hidden.jpg` → `hidden-…`, `bears.jpg` → `bears`. A stem that is one of the batch's own names in
OUT (`batch_summary.json`, `classes.json`, `contact_sheet.png`, `_SUCCESS`, …) is tagged the same
way, so an image dir never takes a batch file's place. A batch adds -2, -3, ... to a repeated name.

Ownership (`check_replaceable`): an existing OUT/<name> is replaced only when samseg wrote
it: a real directory (not a link) whose `.samseg-output.json` marker lists every file in it,
each still holding the bytes samseg wrote (the marker records their sha256), or, for
directories written before the marker existed, whose summary.json is samseg's and whose files
all have samseg's output names. A directory that holds any other file, a file changed since
samseg wrote it, or an input of the batch, is refused with one line naming it; samseg never
deletes an input.

Leftovers: a write goes through `.<name>.tmp-<pid>-<hex>` and a replaced dir through
`.<name>.old-<pid>-<hex>`; `remove_stale_temps` removes those whose process is gone (a
`kill -9` mid-export), and only when they carry samseg's marker or are empty.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import unicodedata
from pathlib import Path, PurePosixPath
from collections.abc import MutableSet
from typing import Any, Iterable, Iterator, Optional

from samseg.edges.owned_files import BATCH_TOP_LEVEL
from samseg.edges.storage import PENDING_MARKER, SUCCESS_MARKER
from samseg.edges.layout import SUMMARY_JSON

MARKER = ".samseg-output.json"
_MAX_NAME = 100
_KEEP = set("-_.+@,=()[] ")
# The names an image dir written by samseg holds (legacy dirs, written before MARKER).
_LEGACY_FILES = re.compile(
    r"^(labels\.png|overlay\.png|masks\.json|masks\.parquet|embeddings\.npy|features\.npy|summary\.json"
    r"|classes|classes/class_\d+\.png)$"
)
# The names a batch itself uses in OUT: an input called `batch_summary.json.jpg` gets a tagged
# dir name, never the batch's own file's (casefolded: case-insensitive file systems too).
_BATCH_NAMES = frozenset(n.casefold() for n in (*BATCH_TOP_LEVEL, SUCCESS_MARKER, PENDING_MARKER))
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)-[0-9a-f]{12}$")


class OutputDirRefused(Exception):
    """OUT/<name> exists and is not samseg's to replace; str(e) is one line naming it."""


def safe_dir_name(uri: str) -> str:
    """The output dir name of an input (rules in the module docstring); never '', '.', '..'."""
    stem = PurePosixPath(str(uri).replace("\\", "/")).name
    stem = stem[: -len(PurePosixPath(stem).suffix)] if PurePosixPath(stem).suffix else stem
    name = "".join(ch if (ch.isalnum() or ch in _KEEP) else "_" for ch in unicodedata.normalize("NFC", stem))
    name = name.lstrip(". ").rstrip(". ")[:_MAX_NAME].rstrip(". ")
    if name == stem and name and name.casefold() not in _BATCH_NAMES:
        return name
    tag = hashlib.sha256(stem.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{name}-{tag}" if name else f"image-{tag}"


def unique_names(uris: list[str]) -> list[str]:
    """`safe_dir_name` per input; a repeated name gets -2, -3, ... in input order."""
    return list(iter_unique_names(uris))


def iter_unique_names(uris: Iterable[str], used: Optional[MutableSet[str]] = None) -> Iterator[str]:
    """`unique_names` one input at a time; `used` holds the names given so far (a batch too large
    for a set in memory passes samseg.edges.spill.DiskSet)."""
    used = set() if used is None else used
    for uri in uris:
        base = safe_dir_name(uri)
        name, k = base, 1
        while name in used:
            k += 1
            name = f"{base}-{k}"
        used.add(name)
        yield name


def named_inputs(uris: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(input, its unique output dir name) one at a time, as `unique_names` gives them: a list's
    names seen so far kept in a set, any other iterable's (a batch's Listing: a million inputs)
    on disk (samseg.edges.spill.DiskSet)."""
    import itertools

    from samseg.edges.spill import DiskSet

    listed, named = itertools.tee(uris)  # zip reads both in step: tee holds one input at most
    return zip(listed, iter_unique_names(named, set() if isinstance(uris, list) else DiskSet()))


def child_dir(out: Path, name: str) -> Path:
    """OUT/<name>, refusing any name that is not one plain component inside OUT."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
        raise OutputDirRefused(f"{out}/{name!r}: not a safe output directory name")
    return Path(out) / name


def is_inside(path: Path, folder: Path) -> bool:
    """`path` is `folder` or lies under it, links resolved."""
    try:
        return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))
    except (OSError, ValueError):
        return False


def check_replaceable(out_dir: Path, inputs: Iterable[str] = ()) -> None:
    """Raise OutputDirRefused unless `out_dir` is absent or samseg's own (module docstring)."""
    out_dir = Path(out_dir)
    for uri in inputs:
        if not str(uri).startswith("s3://") and is_inside(Path(uri), out_dir):
            raise OutputDirRefused(f"{out_dir}: holds the input {uri}; choose another --out (samseg never deletes an input)")
    if not os.path.lexists(out_dir):
        return
    if out_dir.is_symlink() or not out_dir.is_dir():
        kind = "a symbolic link" if out_dir.is_symlink() else "a file"
        raise OutputDirRefused(f"{out_dir}: exists and is {kind}, not a directory samseg wrote; move it or choose another --out")
    marker = _marker(out_dir)
    foreign = foreign_entries(out_dir, marker)
    if foreign:
        raise OutputDirRefused(f"{out_dir}: exists and holds files samseg did not write ({_shown(foreign)}); "
                               "move them or choose another --out")
    changed = changed_entries(out_dir, marker)
    if changed:
        raise OutputDirRefused(f"{out_dir}: holds files changed since samseg wrote them ({_shown(changed)}); "
                               "move them or choose another --out")


def _shown(paths: list[str]) -> str:
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def foreign_entries(out_dir: Path, marker: Optional[dict[str, Any]] = None) -> list[str]:
    """Relative paths under `out_dir` that samseg's marker (or legacy layout) does not cover."""
    listed = _marker_files(marker if marker is not None else _marker(out_dir))
    present = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*"))
    if listed is None:  # no marker: a legacy samseg dir has samseg's summary.json and names
        if not _is_samseg_summary(out_dir / SUMMARY_JSON):
            return present or ["(no samseg marker)"]
        return [p for p in present if not _LEGACY_FILES.match(p)]
    allowed = set(listed) | {MARKER} | {str(PurePosixPath(f).parent) for f in listed if "/" in f}
    links = [p for p in present if (out_dir / p).is_symlink()]
    return sorted(set(links) | {p for p in present if p not in allowed})


def changed_entries(out_dir: Path, marker: Optional[dict[str, Any]] = None) -> list[str]:
    """Files samseg's marker lists whose bytes are no longer those it wrote (a person's corrected
    labels.png): a marker written before hashes were recorded has none to compare."""
    marker = marker if marker is not None else _marker(out_dir)
    recorded = (marker or {}).get("sha256") or {}
    listed = set(_marker_files(marker) or ())
    changed = []
    for rel, sha in sorted(recorded.items() if isinstance(recorded, dict) else ()):
        parts = PurePosixPath(str(rel)).parts
        if rel not in listed or not parts or PurePosixPath(str(rel)).is_absolute() or ".." in parts:
            continue  # a hand-made marker's entry outside the dir is not read
        path = out_dir / str(rel)
        try:
            if path.is_file() and not path.is_symlink() and _file_sha256(path) != sha:
                changed.append(str(rel))
        except OSError as exc:  # unreadable: not known to be samseg's bytes, so that image is refused, not the batch
            changed.append(f"{rel} (cannot read it: {exc.strerror or exc})")
    return changed


def _file_sha256(path: Path) -> str:
    from samseg.sam.files import file_sha256

    return file_sha256(path)


def _marker(out_dir: Path) -> dict[str, Any] | None:
    """The dir's marker when it is samseg's (written_by samseg, a files list), else None."""
    try:
        data = json.loads((out_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("written_by") != "samseg" or not isinstance(data.get("files"), list):
        return None
    return data


def _marker_files(data: dict[str, Any] | None) -> list[str] | None:
    if data is None:
        return None
    dirs = data.get("dirs") if isinstance(data.get("dirs"), list) else []
    return [str(f) for f in data["files"]] + [str(d) for d in dirs]


def _is_samseg_summary(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "samseg_version" in data


def write_marker(tmp_dir: Path, version: str) -> None:
    """List every file samseg wrote into `tmp_dir` (call last, before the rename)."""
    files = sorted(p.relative_to(tmp_dir).as_posix() for p in tmp_dir.rglob("*") if p.is_file() and p.name != MARKER)
    # directories too: an image with no class writes an empty classes/, which is still samseg's
    dirs = sorted(p.relative_to(tmp_dir).as_posix() for p in tmp_dir.rglob("*") if p.is_dir() and not p.is_symlink())
    # each file's sha256: a file a person changed since (a corrected labels.png) is theirs, never replaced
    doc = {"written_by": "samseg", "version": version, "files": files, "dirs": dirs,
           "sha256": {f: _file_sha256(tmp_dir / f) for f in files}}
    (tmp_dir / MARKER).write_text(json.dumps(doc) + "\n", encoding="utf-8")


def temp_sibling(out_dir: Path, kind: str) -> Path:
    """`.<name>.<kind>-<pid>-<hex>` beside `out_dir` (kind: tmp | old)."""
    return out_dir.parent / f".{out_dir.name}.{kind}-{os.getpid()}-{os.urandom(6).hex()}"


_SWEPT: set[str] = set()  # parent dirs already swept by this process


def remove_stale_temps(out_dir: Path) -> list[Path]:
    """Remove the temp/old dirs that dead processes left beside `out_dir` (any image's, in
    the same OUT); returns what went. Each OUT is swept once per process: a batch of N
    images lists OUT once, not N times, and no process that is alive leaves stale temps."""
    removed: list[Path] = []
    parent = Path(out_dir).parent
    key = os.path.realpath(parent)
    if key in _SWEPT:
        return removed
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    _SWEPT.add(key)
    for p in entries:
        m = _TEMP.match(p.name)
        if not m or _pid_alive(int(m["pid"])) or p.is_symlink() or not p.is_dir():
            continue
        if (p / MARKER).is_file() or not any(p.iterdir()) or _is_samseg_summary(p / SUMMARY_JSON) or _only_samseg_names(p):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _only_samseg_names(d: Path) -> bool:
    return all(_LEGACY_FILES.match(p.relative_to(d).as_posix()) for p in d.rglob("*"))


def _pid_alive(pid: int) -> bool:
    from samseg.edges.shutdown import pid_alive

    return pid == os.getpid() or pid_alive(pid)


def refused_outputs(out: str, uris: list[str], names: list[str], whole_out: bool = True) -> dict[str, str]:
    """uri -> one error line for each image whose OUT/<name> samseg may not replace (a
    directory it did not write, or one holding an input of the batch): checked before any
    compute. Under an s3:// OUT, a prefix OUT/<name>/ holding an object of a name samseg writes
    there (samseg.edges.layout) that no manifest of samseg's lists is refused the same way (one
    listing of OUT for the whole batch; whole_out=False: one listing of each OUT/<name>/, for a
    shard of a batch whose OUT holds many more image dirs than the shard)."""
    if str(out).startswith("s3://"):
        return _refused_s3(str(out), uris, names, whole_out)
    holders = _input_folders(u for u in uris if not str(u).startswith("s3://"))
    refused = {}
    for uri, name in zip(uris, names):
        try:
            out_dir = child_dir(Path(out), name)
            held = holders.get(os.path.realpath(out_dir))
            if held is not None:
                raise OutputDirRefused(f"{out_dir}: holds the input {held}; choose another --out (samseg never deletes an input)")
            check_replaceable(out_dir)
        except OutputDirRefused as exc:
            refused[uri] = f"{uri}: output {exc}"
    return refused


def _refused_s3(out: str, uris: list[str], names: list[str], whole_out: bool = True) -> dict[str, str]:
    from samseg.edges.layout import may_write
    from samseg.edges.storage import StorageNotFound, StorageRefused, join_uri, list_keys, refuse_foreign

    try:
        keys = list_keys(out) if whole_out else [k for n in names for k in list_keys(join_uri(out, n))]
    except StorageNotFound:
        return {}
    folder = out.rstrip("/") + "/"
    by_name: dict[str, list[str]] = {}  # OUT/<name>/… grouped by name: one pass over the listing
    for key in keys:
        by_name.setdefault(key[len(folder):].split("/", 1)[0], []).append(key)
    refused = {}
    for uri, name in zip(uris, names):
        if name not in by_name:
            continue
        try:
            refuse_foreign(join_uri(out, name), may_write, by_name[name])
        except StorageRefused as exc:
            refused[uri] = f"{uri}: output {exc}"
    return refused


def _input_folders(inputs: Iterable[str]) -> dict[str, str]:
    """realpath of every folder above an input → that input: one pass over the inputs, so
    checking N output dirs against M inputs costs N + M look-ups, not N × M realpaths."""
    folders: dict[str, str] = {}
    for uri in inputs:
        for folder in Path(os.path.realpath(uri)).parents:
            folders.setdefault(str(folder), str(uri))
    return folders
