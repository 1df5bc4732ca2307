"""The stage cache's size bound: least recently used entries go first.

A hit touches its entry's manifest (samseg.edges.cache.StageCache.load), so an entry's manifest
mtime is when it was last written or read. `prune(root, max_bytes)` removes the entries used
longest ago until the cache fits; `samseg segment` and `samseg recluster` prune at their end,
`samseg cache prune` on demand. Only directories that are cache entries (a manifest naming
their own stage and key) are ever removed: a file of the user's under the root is never touched.
S3 caches are bounded by the bucket's lifecycle rules instead (the listing alone would cost more
than the run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

CACHE_MAX_ENV = "SAMSEG_CACHE_MAX"
DEFAULT_MAX_BYTES = 20 * 2**30  # a few hundred images' entries at the default preset
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30, "t": 2**40, "tb": 2**40}
_HEX64 = re.compile(r"[0-9a-f]{64}")


def parse_size(text: str) -> int:
    """'20G', '500M', '1.5GB', '64B' (binary units), '0' (keep nothing) -> bytes; ValueError naming
    it. A number without a unit under 1 MiB (other than 0) is refused: `--max 20` meant 20G, not 20
    bytes (an emptied cache); a unitless count of bytes from 1 MiB on is taken as bytes."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"cache size {text!r} is not a size like 20G, 500M or 1.5GB")
    if not m.group(2) and 0 < float(m.group(1)) < 2**20:  # bytes only from a MiB on: "20" meant 20G
        raise ValueError(f"cache size {text!r} needs a unit: {m.group(1)}G, {m.group(1)}M or {m.group(1)}B (0 keeps nothing)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def max_bytes(flag: Optional[str] = None) -> int:
    """The bound: the flag's, else $SAMSEG_CACHE_MAX, else DEFAULT_MAX_BYTES."""
    raw = flag if flag is not None else os.environ.get(CACHE_MAX_ENV)
    try:
        return parse_size(raw) if raw else DEFAULT_MAX_BYTES
    except ValueError as exc:
        raise ValueError(str(exc) if flag is not None else f"${CACHE_MAX_ENV}: {exc}") from None


@dataclass
class Entry:
    path: Path
    stage: str
    size: int
    used: float  # the manifest's mtime: last written or read


@dataclass
class CacheInfo:
    root: str
    entries: list[Entry] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(e.size for e in self.entries)

    def by_stage(self) -> dict[str, tuple[int, int]]:
        """{stage: (entries, bytes)}."""
        out: dict[str, tuple[int, int]] = {}
        for e in self.entries:
            n, b = out.get(e.stage, (0, 0))
            out[e.stage] = (n + 1, b + e.size)
        return dict(sorted(out.items()))


def scan(root: str) -> CacheInfo:
    """Every entry under a local cache root: root/<stage>/<kk>/<key>/manifest.json."""
    from samseg.edges.cache import MANIFEST

    info = CacheInfo(root)
    base = Path(root)
    if not base.is_dir():
        return info
    for manifest in base.glob(f"*/*/*/{MANIFEST}"):
        entry = manifest.parent
        stage, key = entry.parent.parent.name, entry.name
        if not _HEX64.fullmatch(key) or entry.parent.name != key[:2] or entry.is_symlink():
            continue
        try:  # stat calls only: a run's end must not read every manifest of a large cache
            size = sum(p.stat().st_size for p in entry.iterdir() if p.is_file() and not p.is_symlink())
            info.entries.append(Entry(entry, stage, size, manifest.stat().st_mtime))
        except (OSError, ValueError, AttributeError):
            continue
    return info


def prune(root: str, limit: int) -> tuple[int, int]:
    """Remove the least recently used entries until the cache holds at most `limit` bytes;
    returns (entries removed, bytes freed). A manifest goes first, so a reader in between sees a miss."""
    from samseg.edges.cache import MANIFEST

    info = scan(root)
    total, removed, freed = info.total, 0, 0
    for e in sorted(info.entries, key=lambda e: e.used):
        if total <= limit:
            break
        if not _is_entry(e):
            continue  # a look-alike folder of the user's: never removed
        try:
            (e.path / MANIFEST).unlink()
        except OSError:
            continue
        shutil.rmtree(e.path, ignore_errors=True)
        total, removed, freed = total - e.size, removed + 1, freed + e.size
    return removed, freed


def _is_entry(e: Entry) -> bool:
    """Its manifest names its own stage and key: an entry samseg wrote."""
    from samseg.edges.cache import MANIFEST

    try:
        doc = json.loads((e.path / MANIFEST).read_text(encoding="utf-8"))
        return isinstance(doc, dict) and doc.get("stage") == e.stage and doc.get("key") == e.path.name
    except (OSError, ValueError):
        return False


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
