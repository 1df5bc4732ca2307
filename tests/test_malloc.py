"""samseg.sam.malloc: glibc's mmap/trim thresholds fixed once per process, or left alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from samseg.sam import malloc

# What a decoder chunk does: several 12 MB temporaries live at once, then all freed. glibc's
# default is bistable here: some processes settle at 0 faults a round, others trim the freed
# heap top every round and fault all 12,288 pages in again (measured: both, from one shell).
# Tuned, every process settles within 4 rounds.
PROBE = """
import resource, sys
import torch
from samseg.sam.malloc import tune_malloc
applied = tune_malloc() if sys.argv[1] == "tune" else False
faults = []
for _ in range(16):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    live = [torch.ones(3 << 20) for _ in range(4)]
    del live
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, sum(faults[6:]))
"""


def _probe(mode: str, env: dict[str, str]) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_tuned_malloc_reuses_freed_chunk_temporaries_instead_of_faulting_them_in():
    for _ in range(3):  # three processes: the default's trim-every-round state comes up often
        applied, faults = _probe("tune", {})
        assert applied
        # 10 steady-state rounds of 4 × 12 MB: nothing faulted in again (a trimming heap: 122,560)
        assert faults < 1_000, faults


def test_env_switch_keeps_glibc_defaults():
    applied, _ = _probe("tune", {malloc.ENV: "0"})
    assert not applied


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
