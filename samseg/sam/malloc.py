"""glibc malloc settings for the fast decoder's temporaries: no page faults per chunk.

glibc serves an allocation above its mmap threshold with a fresh mmap and gives it back
to the kernel on free, so the next one of that size is faulted in and zeroed again. Its
thresholds adapt to the sizes freed (the mmap threshold up to 32 MiB, the trim threshold
at twice that), so when a decoder chunk frees several 8-16 MB temporaries at once — the
LayerNorms' outputs above all, which have no out= form — the heap top is trimmed and the
next chunk faults them in again (tests/test_malloc.py shows the pattern). `tune_malloc()`
fixes the mmap threshold at 32 MiB (what glibc's own adaptation would reach at most:
every allocation up to that size is carved from the heap and reused after free) and the
trim threshold at 128 MiB (free memory at the top of the heap is kept up to that much).

Measured on the 2-core Xeon dev VM, vit_b fast decoder on 64 prompts after one encoder
pass, median of 12 calls, 4 pairs of processes alternating: fp32 (the default precision)
21.2/21.7/24.3/18.9 → 20.2/17.8/22.7/15.3 ms per prompt, minor page faults per call
145-209k → 1-35k; bf16 neutral within the host's noise (faults 11-20k → 24). Peak RSS of
a tiled 16-MP command 1.08 → 1.11-1.13 GB. A 256 MiB threshold (which would also cover
the encoder) cut an fp32 encoder pass's faults 542k → 7k but raised that peak to 1.28 GB:
not kept. SAMSEG_MALLOC_TUNING=0 keeps glibc's defaults; on other C libraries (macOS,
musl) there is nothing to set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os

log = logging.getLogger(__name__)

# mallopt(3) parameter numbers, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 128 << 20
ENV = "SAMSEG_MALLOC_TUNING"

@functools.cache
def tune_malloc() -> bool:
    """Apply the settings once per process; True when they are in effect."""
    return _apply()


def _apply() -> bool:
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        log.info("%s=0: glibc malloc defaults kept", ENV)
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    if libc is None or not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False  # not glibc: its allocator has no such thresholds
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    log.info("glibc malloc: mmap threshold %d MiB, trim threshold %d MiB (%s)", MMAP_THRESHOLD_BYTES >> 20,
             TRIM_THRESHOLD_BYTES >> 20, "set" if ok else "mallopt refused")
    return ok
