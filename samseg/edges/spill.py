"""A batch's records that outgrow memory, kept on local disk: the sharded parent of a batch of a
million images must not hold a million names or report entries (docs/orchestration.md).

- `DiskSet`: a set of strings in a SQLite file (the names a batch has used, the inputs it has
  seen); memory stays at SQLite's page cache however many strings it holds.
- `SpooledStrings`: a list of strings in a file (a batch's inputs, listed once).
- `SpilledEntries`: a batch's per-image report entries, written as each shard settles and read
  back in input order (shard by shard); in memory only a few offsets per shard and the counts.

Both live in a temporary directory of their own (under TMPDIR: keep it on disk, not tmpfs, for a
batch of millions), removed when the object is collected or the process ends.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import tempfile
import weakref
from collections.abc import MutableSet
from typing import Any, Callable, Iterable, Iterator, Optional

CACHE_KIB = 2048  # SQLite's page cache: the DiskSet's memory, whatever it holds


class DiskSet(MutableSet[str]):
    """A set of str on disk (SQLite, one primary-key table)."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="samseg-set-")
        self._db = sqlite3.connect(os.path.join(self._dir.name, "set.sqlite"), isolation_level=None,
                                   check_same_thread=False)
        # a scratch file: a crash loses nothing worth a journal or an fsync
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        self._db.execute("CREATE TABLE s (k BLOB PRIMARY KEY) WITHOUT ROWID")
        self._db.execute("BEGIN")  # one transaction, never committed: no write per add
        self._n = 0
        weakref.finalize(self, _close, self._db, self._dir)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._db.execute("SELECT 1 FROM s WHERE k = ?", (_blob(key),)).fetchone() is not None

    def add(self, key: str) -> None:
        self._n += self._db.execute("INSERT OR IGNORE INTO s VALUES (?)", (_blob(key),)).rowcount

    def discard(self, key: str) -> None:
        self._n -= self._db.execute("DELETE FROM s WHERE k = ?", (_blob(key),)).rowcount

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[str]:
        return (bytes(k).decode("utf-8", "surrogatepass") for (k,) in self._db.execute("SELECT k FROM s ORDER BY k"))


def _blob(key: str) -> bytes:
    # a file name that is not UTF-8 comes as lone surrogates, which SQLite's TEXT refuses
    return key.encode("utf-8", "surrogatepass")


def _close(db: sqlite3.Connection, folder: tempfile.TemporaryDirectory) -> None:
    db.close()
    folder.cleanup()


class SpooledStrings:
    """Strings appended to a local file (one JSON string a line: any character may be in a name)
    and read back in order, as often as asked; len() their count."""

    def __init__(self, strings: Iterable[str] = ()) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="samseg-list-")
        self._file = open(os.path.join(self._dir.name, "strings.jsonl"), "w+", encoding="utf-8")  # noqa: SIM115 — closed by finalize
        self._n = 0
        weakref.finalize(self, _close_file, self._file, self._dir)
        for s in strings:
            self._file.write(json.dumps(s) + "\n")
            self._n += 1
        self._file.flush()

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[str]:
        with open(self._file.name, encoding="utf-8") as f:  # a reader of its own: two may read at once
            yield from (json.loads(line) for line in f)


def count_entries(entries: Iterable[dict[str, Any]]) -> dict[str, int]:
    """A batch report's counts of its entries: succeeded, failed (any other status), untracked
    (written, not logged to MLflow), retried (in a shard run that ran again)."""
    counts = {"succeeded": 0, "failed": 0, "untracked": 0, "retried": 0}
    for e in entries:
        counts["succeeded" if e["status"] == "completed" else "failed"] += 1
        counts["untracked"] += bool(e.get("tracking_error"))
        counts["retried"] += e.get("attempts", 1) > 1
    return counts


class SpilledEntries:
    """Report entries ({"image", "status", ...}) of shards, on disk. `begin(shard, uris)` gives a
    shard's input order once; `add(shard, entries)` appends what it settled (a retried shard adds
    again); iteration yields every entry in shard order, each shard's in its input order.
    `counts` (count_entries) are kept as entries arrive."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="samseg-entries-")
        self._file = open(os.path.join(self._dir.name, "entries.jsonl"), "w+b")  # noqa: SIM115 — closed by finalize
        self._spans: dict[int, list[tuple[int, int]]] = {}  # shard -> (offset, length) of its lines; the first: its order
        self._n = 0
        self.counts = count_entries(())
        weakref.finalize(self, _close_file, self._file, self._dir)

    def _append(self, shard: int, doc: Any) -> None:
        line = json.dumps(doc, default=str).encode("utf-8") + b"\n"
        self._file.seek(0, os.SEEK_END)
        self._spans.setdefault(shard, []).append((self._file.tell(), len(line)))
        self._file.write(line)

    def begin(self, shard: int, uris: list[str]) -> None:
        if shard not in self._spans:
            self._append(shard, uris)

    def add(self, shard: int, entries: list[dict[str, Any]]) -> None:
        self._append(shard, entries)
        self._n += len(entries)
        for key, n in count_entries(entries).items():
            self.counts[key] += n

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for shard in sorted(self._spans):
            order, *parts = (json.loads(self._read(at, n)) for at, n in self._spans[shard])
            by_uri = {e["image"]: e for part in parts for e in part}
            yield from (by_uri[u] for u in order if u in by_uri)

    def __reduce__(self) -> tuple[Any, tuple[list[dict[str, Any]]]]:
        # pickled (a flow's result persisted by Prefect) as the list it stands for: a temp file cannot travel
        return list, (list(self),)

    def _read(self, at: int, n: int) -> bytes:
        self._file.seek(at)
        return self._file.read(n)


def spill_entries(entries: Iterable[dict[str, Any]], per_part: int = 1024) -> SpilledEntries:
    """`entries` (one per image, in input order) read one part at a time into a SpilledEntries."""
    spilled, it = SpilledEntries(), iter(entries)
    for part in itertools.count():
        chunk = list(itertools.islice(it, per_part))
        if not chunk:
            break
        spilled.begin(part, [e["image"] for e in chunk])
        spilled.add(part, chunk)
    return spilled


SORT_RUN = 100_000  # strings sorted in memory at once (a few MB of file names); more are merged from disk
MERGE_FAN_IN = 64  # runs open at once: more are merged into one first (10^8 names stay far below `ulimit -n`)


def sorted_strings(strings: Iterable[str], run: Optional[int] = None, fan_in: int = MERGE_FAN_IN) -> Iterator[str]:
    """sorted(strings), one at a time, holding at most `run` (default SORT_RUN) of them: more are
    sorted in runs of `run`, each spilled to a local file (one JSON string a line), and the runs
    merged, at most `fan_in` files open at once."""
    import heapq

    run = run or SORT_RUN
    it = iter(strings)
    chunk = sorted(itertools.islice(it, run))
    if len(chunk) < run:  # a folder of fewer: no file
        yield from chunk
        return
    with tempfile.TemporaryDirectory(prefix="samseg-sort-") as tmp:
        runs: list[Any] = []
        names = (os.path.join(tmp, f"{i}.jsonl") for i in itertools.count())

        def spill(sorted_run: Iterable[str]) -> Any:
            f = open(next(names), "w+", encoding="utf-8")  # noqa: SIM115 — closed by the caller
            f.writelines(json.dumps(s) + "\n" for s in sorted_run)
            f.seek(0)
            return f

        def merged(files: list[Any]) -> Iterator[str]:
            return heapq.merge(*((json.loads(line) for line in f) for f in files))

        try:
            while chunk:
                runs.append(spill(chunk))
                if len(runs) == fan_in:  # one run of them all, before another file is opened
                    run_of_all = spill(merged(runs))
                    for f in runs:
                        f.close()
                        os.unlink(f.name)
                    runs = [run_of_all]
                chunk = sorted(itertools.islice(it, run))
            yield from merged(runs)
        finally:
            for f in runs:
                f.close()


def _close_file(file: Any, folder: tempfile.TemporaryDirectory) -> None:
    file.close()
    folder.cleanup()


def json_pieces(doc: dict[str, Any]) -> Iterator[str]:
    """`doc` as indented JSON text in pieces: a SpilledEntries value entry by entry (never whole
    in memory; one line each, moved after the other keys), the rest at once. Without a spilled
    value the text is json.dumps(doc, indent=2, default=str) itself."""
    spilled = {k: v for k, v in doc.items() if isinstance(v, SpilledEntries)}
    head = json.dumps({k: v for k, v in doc.items() if k not in spilled}, indent=2, default=str)
    if not spilled:
        yield head
        return
    yield head[:-2] + "," if head != "{}" else "{"
    for n, (key, entries) in enumerate(spilled.items()):
        yield f"{',' if n else ''}\n  {json.dumps(key)}: ["
        for i, entry in enumerate(entries):
            yield f"{',' if i else ''}\n    {json.dumps(entry, default=str)}"
        yield "\n  ]"
    yield "\n}"


def write_json(doc: dict[str, Any], path: str, scrub: Callable[[str], str] = str) -> None:
    """Write `json_pieces(doc)` to the local file `path`, each piece through `scrub`."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(scrub(piece) for piece in json_pieces(doc))
