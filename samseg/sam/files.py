"""samseg's home directory and the checkpoint hashes it remembers.

A checkpoint's sha256 keys every cache entry; hashing a 2.5 GB vit_h file on every command
would cost seconds, so the hash is remembered per (path, device, inode, size, mtime, ctime) in
$SAMSEG_HOME/checkpoint-sha256.json (seeded weights per seed and library versions).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

_CHUNK = 1 << 20  # 1 MiB read/hash chunks


def samseg_home() -> Path:
    """$SAMSEG_HOME, or ~/.cache/samseg. Checkpoints live in `<home>/checkpoints/`."""
    env = os.environ.get("SAMSEG_HOME")
    return Path(env).expanduser() if env else Path("~/.cache/samseg").expanduser()


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, streamed in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def remembered_sha256(path: Path) -> str:
    """sha256 of a checkpoint file, hashed once per (path, inode, size, mtime, ctime) and remembered in
    $SAMSEG_HOME/checkpoint-sha256.json (a 2.5 GB vit_h costs seconds to hash)."""
    st = path.stat()
    # ctime too: writing a file in place and putting its mtime back (touch -d, os.utime) still
    # moves its ctime, which no user call can set back: a changed file is hashed again.
    key = f"file:{os.path.realpath(path)}:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    sha = remembered(key)
    if sha is None:
        sha = file_sha256(path)
        remember(key, sha)
    return sha


def _memo_path() -> Path:
    return samseg_home() / "checkpoint-sha256.json"


def remembered(key: str) -> str | None:
    """A sha256 remembered under `key` in $SAMSEG_HOME/checkpoint-sha256.json, or None."""
    try:
        memo = json.loads(_memo_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = memo.get(key) if isinstance(memo, dict) else None
    return value if isinstance(value, str) and len(value) == 64 else None


def remember(key: str, sha: str) -> None:
    """Add `key` -> `sha` to the memo (atomic replace); a read-only home only costs a re-hash later."""
    path = _memo_path()
    try:
        memo = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        memo = {}
    memo = memo if isinstance(memo, dict) else {}
    memo[key] = sha
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(memo, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass
