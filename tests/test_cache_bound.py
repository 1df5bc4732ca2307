"""The stage cache's size bound: least recently used entries go first, a hit counts as a use,
nothing but samseg's entries is ever removed, `samseg cache info|prune` and the end of a run."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cli_run import run_cli
from samseg.edges.cache import StageCache
from samseg.edges.cache_bound import parse_size, prune, scan


def _key(i: int) -> str:
    return f"{i:064x}"


def _fill(root: Path, n: int, size: int = 40_000) -> StageCache:
    cache = StageCache(root)
    for i in range(n):
        cache.save("pool", _key(i), "embeddings", np.full((size // 4 // 8, 8), i, np.float32))
        entry = Path(cache.entry_uri("pool", _key(i)))
        os.utime(entry / "manifest.json", (1_000 + i, 1_000 + i))  # written in order, one second apart
    return cache


def test_prune_removes_the_least_recently_used_and_a_hit_is_a_use(tmp_path: Path) -> None:
    cache = _fill(tmp_path / "c", 5)
    size = {e.path.name: e.size for e in scan(str(tmp_path / "c")).entries}  # a manifest's length varies by a byte or two
    assert cache.load("pool", _key(0), "embeddings") is not None  # entry 0 used now: the newest
    removed, freed = prune(str(tmp_path / "c"), size[_key(0)] + size[_key(3)] + size[_key(4)])
    assert removed == 2 and freed == size[_key(1)] + size[_key(2)]
    left = {e.path.name for e in scan(str(tmp_path / "c")).entries}
    assert left == {_key(0), _key(3), _key(4)}  # 1 and 2 were used longest ago
    assert cache.load("pool", _key(1), "embeddings") is None  # a removed entry is a miss, not an error


def test_attack_a_users_folder_that_looks_like_an_entry_is_never_removed(tmp_path: Path) -> None:
    _fill(tmp_path / "c", 2)
    fake = tmp_path / "c" / "pool" / "ab" / ("ab" + "0" * 62)
    fake.mkdir(parents=True)
    (fake / "manifest.json").write_text('{"stage": "thesis", "key": "mine"}')
    (fake / "chapter1.tex").write_bytes(b"x" * 100_000)
    os.utime(fake / "manifest.json", (1, 1))  # the oldest of all
    prune(str(tmp_path / "c"), 0)
    assert (fake / "chapter1.tex").is_file()
    assert [e.path for e in scan(str(tmp_path / "c")).entries] == [fake]  # samseg's own entries are gone


@pytest.mark.parametrize("text, size", [("20G", 20 * 2**30), ("500M", 500 * 2**20), ("1.5GB", int(1.5 * 2**30)),
                                        ("0", 0), ("123B", 123)])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_attack_a_size_without_a_unit_does_not_empty_the_cache(tmp_path: Path) -> None:
    """`samseg cache prune --max 20` meant 20G: refused (exit 2), not a 20-byte bound that removes every entry."""
    with pytest.raises(ValueError, match="needs a unit: 20G, 20M or 20B"):
        parse_size("20")
    rc, _, err = run_cli(["cache", "prune", "--cache", str(tmp_path / "c"), "--max", "20"])
    assert rc == 2 and "cache size '20' needs a unit" in err.splitlines()[-1]


def test_cache_info_and_prune_commands(tmp_path: Path) -> None:
    _fill(tmp_path / "c", 4)
    rc, out, err = run_cli(["cache", "info", "--cache", str(tmp_path / "c")])
    assert rc == 0 and "4 entries" in out and "pool" in out and "of a 20.0 GiB bound" in out, err
    rc, out, err = run_cli(["cache", "prune", "--cache", str(tmp_path / "c"), "--max", "50K"])
    assert rc == 0 and "removed 3 entries" in out, out + err
    rc, _, err = run_cli(["cache", "prune", "--cache", str(tmp_path / "c"), "--max", "lots"])
    assert rc == 2 and "not a size like 20G" in err


def test_a_run_leaves_the_cache_within_its_bound(tmp_path: Path) -> None:
    from PIL import Image

    _fill(tmp_path / "c", 4)  # old entries of other images
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    rc, _, err = run_cli(["segment", str(tmp_path / "p.png"), "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c"),
                          "--cache-max", "100K", "--model", "tiny-random", "--points-per-side", "4", "--device", "cpu",
                          "--no-track", "-q", "--orchestrator", "local"])
    assert rc == 0, err
    assert scan(str(tmp_path / "c")).total <= 100 * 1024
    assert not any(e.path.name == _key(0) for e in scan(str(tmp_path / "c")).entries)  # the oldest went first


def test_a_bound_in_bytes_from_the_environment_still_counts_and_a_bad_one_names_the_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from samseg.edges.cache_bound import max_bytes

    monkeypatch.setenv("SAMSEG_CACHE_MAX", str(20 * 2**30))
    assert max_bytes() == 20 * 2**30  # bytes, as it was set before units were required
    monkeypatch.setenv("SAMSEG_CACHE_MAX", "20")
    with pytest.raises(ValueError, match=r"\$SAMSEG_CACHE_MAX: cache size '20' needs a unit"):
        max_bytes()
