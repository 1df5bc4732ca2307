"""Opt-in reduced precision for SAM's image encoder and mask decoder.

fp32 (the default) is bit-for-bit segment_anything. "bf16" runs the module under
`torch.autocast(dtype=torch.bfloat16)`: matmuls and convolutions in bfloat16, softmax /
layer norms in fp32 (autocast's own op lists), outputs cast back to float32 so every
caller (encode.py's `.numpy()`, the AMG's thresholds) sees float32 as before.

bf16 only pays on CPUs with native bf16 dot products (AVX-512 BF16 / AMX) or on GPUs; on
an AVX2-only CPU oneDNN emulates it and it can be slower than fp32 — measure with
`benchmarks/run.py --precision bf16` before turning it on. Masks change slightly;
the benchmark reports their agreement with fp32 (mean IoU of matched masks).
"""

from __future__ import annotations

from typing import Any

PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


class PrecisionError(ValueError):
    """Unknown precision name."""


def native_bf16_cpu() -> bool:
    """True when this CPU has bf16 dot-product instructions (AVX-512 BF16 or AMX-BF16).
    Without them oneDNN falls back to slow reference kernels (measured ~0.4 GFLOP/s vs
    tens-to-hundreds of GFLOP/s fp32 on an AVX2 EPYC), so bf16 must stay off there."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return "avx512_bf16" in flags.split() or "amx_bf16" in flags.split()


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    return precision


class _AutocastForward:
    """Replacement `forward` bound on a module instance: original forward under autocast,
    floating outputs cast back to float32 (tensors and tuples of tensors)."""

    def __init__(self, module: Any, dtype: Any) -> None:
        self.module = module
        self.dtype = dtype

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch

        device_type = next(self.module.parameters()).device.type
        with torch.autocast(device_type=device_type, dtype=self.dtype):
            out = type(self.module).forward(self.module, *args, **kwargs)
        return _to_float32(out)


def _to_float32(out: Any) -> Any:
    import torch

    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, tuple):
        return tuple(_to_float32(o) for o in out)
    return out


def set_precision(sam: Any, precision: str, parts: tuple[str, ...] = ("image_encoder", "mask_decoder")) -> Any:
    """In place: run `sam.<part>` for each part in `precision` ("fp32" or "bf16"). Returns sam.

    "fp32" removes any earlier patch (segment_anything's own forward again). Parameters and
    state_dict are never touched, so checkpoint hashes and cache keys are unaffected —
    callers that cache outputs must put the precision into their cache key themselves.
    """
    import torch

    check_precision(precision)
    if precision == "bf16" and next(sam.parameters()).device.type == "cpu" and not native_bf16_cpu():
        import logging

        logging.getLogger(__name__).warning("bf16 requested but this CPU has no native bf16 (AVX-512 BF16/AMX): expect it to be much slower than fp32")
    for part in parts:
        module = getattr(sam, part)
        module.__dict__.pop("forward", None)
        if precision == "bf16":
            module.__dict__["forward"] = _AutocastForward(module, torch.bfloat16)
    return sam


def get_precision(sam: Any, part: str = "image_encoder") -> str:
    """"bf16" if `set_precision(sam, "bf16")` patched `sam.<part>`, else "fp32"."""
    return "bf16" if isinstance(getattr(sam, part).__dict__.get("forward"), _AutocastForward) else "fp32"
