"""samseg.sam.malloc: glibc's mmap/trim thresholds fixed once per process, or left alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from samseg.sam import malloc

# What a decoder chunk does: several 12 MB temporaries live at once, then all freed. glibc's
# default serves the first ones by mmap and gives them back on free, and its dynamic threshold
# then makes processes bistable (some trim the freed heap top every round and fault all 12,288
# pages in again). Tuned, they come from the heap and stay there for the next chunk: seen in
# the allocator's own counters (mallinfo2), not in timings or fault counts.
PROBE = """
import ctypes, sys
import torch
from samseg.sam.malloc import tune_malloc

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
applied = tune_malloc() if sys.argv[1] == "tune" else False
before = libc.mallinfo2()
live = [torch.ones(3 << 20) for _ in range(4)]
during = libc.mallinfo2()
del live
after = libc.mallinfo2()
print(applied, during.hblkhd - before.hblkhd, after.fordblks)
"""
CHUNKS_BYTES = 4 * (3 << 20) * 4  # four 12 MiB float32 temporaries


def _probe(mode: str, env: dict[str, str]) -> tuple[bool, int, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_tuned_malloc_keeps_chunk_temporaries_on_the_heap_for_reuse():
    applied, mmapped, kept_free = _probe("tune", {})
    assert applied
    assert mmapped == 0  # none of the 12 MiB temporaries was an mmap (which free would unmap)
    assert kept_free >= CHUNKS_BYTES  # freed, they stay in the arena for the next chunk (no trim)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_glibc_default_maps_the_first_chunk_temporaries_and_gives_them_back():
    applied, mmapped, kept_free = _probe("default", {})  # what the tuned test above would see if tuning broke
    assert not applied
    assert mmapped >= CHUNKS_BYTES and kept_free < CHUNKS_BYTES


def test_env_switch_keeps_glibc_defaults():
    applied, mmapped, _ = _probe("tune", {malloc.ENV: "0"})
    assert not applied and mmapped >= CHUNKS_BYTES


def test_tune_malloc_applies_once(monkeypatch):
    calls = []
    malloc.tune_malloc.cache_clear()
    monkeypatch.setattr(malloc, "_apply", lambda: calls.append(1) or True)
    assert malloc.tune_malloc() and malloc.tune_malloc()
    assert calls == [1]
    malloc.tune_malloc.cache_clear()  # the next caller applies the real settings


def test_load_model_tunes_malloc(monkeypatch):
    from samseg.sam.model import load_model

    calls = []
    monkeypatch.setattr(malloc, "tune_malloc", lambda: calls.append(1) or True)
    load_model("tiny-random", device="cpu")
    assert calls == [1]
