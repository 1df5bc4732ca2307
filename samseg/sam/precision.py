"""Reduced precision for SAM's image encoder and mask decoder: fp32 | bf16 | fp16 | auto.

fp32 (the default) is bit-for-bit segment_anything. bf16/fp16 CONVERT the encoder's and
the decoder's weights to that dtype and run them on inputs cast to it (no autocast: its
per-call weight casts and the fast decoder's reused out= buffers do not mix); their
outputs are cast back to float32, so every threshold (predicted IoU, stability score),
the mask post-processing, pooling and clustering stay in fp32. The prompt encoder stays
fp32 (it is tiny).

`auto` resolves, at run time, to bf16 on a CUDA device with bf16 and on a CPU with native
bf16 dot products (AMX-BF16 or AVX512-BF16 in /proc/cpuinfo), else fp32. Without those
instructions oneDNN emulates bf16 and it is far slower than fp32. fp16 is for CUDA only.
The resolved precision (never `auto`) is what enters the cache keys and the summary.
"""

from __future__ import annotations

import weakref
from typing import Any

from samseg.core.config import PRECISION_REQUESTS as REQUESTS
from samseg.core.config import PRECISIONS

PARTS: tuple[str, ...] = ("image_encoder", "mask_decoder")


class PrecisionError(ValueError):
    """Unknown precision name, or one the device cannot run."""


def cpu_bf16_flags() -> list[str]:
    """The native-bf16 flags this CPU has (amx_bf16, avx512_bf16), from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return []
    return [f for f in ("amx_bf16", "avx512_bf16") if f in flags]


def native_bf16_cpu() -> bool:
    """True when this CPU has bf16 dot-product instructions (AVX-512 BF16 or AMX-BF16)."""
    return bool(cpu_bf16_flags())


def check_precision(precision: str, allow_auto: bool = False) -> str:
    allowed = REQUESTS if allow_auto else PRECISIONS
    if precision not in allowed:
        raise PrecisionError(f"unknown precision {precision!r}; choose one of: {', '.join(allowed)}")
    return precision


def resolve_precision(requested: str, device: str) -> str:
    """`auto` → bf16 where the hardware has it natively, else fp32; others are checked."""
    check_precision(requested, allow_auto=True)
    kind = str(device).split(":")[0]
    if requested == "fp16" and kind != "cuda":
        raise PrecisionError(f"precision fp16 needs a CUDA device (this run is on {device}); use bf16 or fp32")
    if requested != "auto":
        return requested
    if kind == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if kind == "cpu" and native_bf16_cpu() else "fp32"


def torch_dtype(precision: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[check_precision(precision)]


def dtype_of(module: Any) -> Any:
    """The floating dtype `module`'s weights are in (float32 for a module without any)."""
    import torch

    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def call_in(module: Any, dtype: Any, *args: Any, **kwargs: Any) -> Any:
    """module(*args) with floating inputs cast to `dtype` and floating outputs back to float32:
    how the code that runs a converted module applies its precision (through the module's own
    call, so its hooks run)."""
    out = module(*(cast_floats(a, dtype) for a in args), **{k: cast_floats(v, dtype) for k, v in kwargs.items()})
    return cast_floats(out, None)


def cast_floats(x: Any, dtype: Any) -> Any:
    """Floating tensors (also inside tuples/lists) → `dtype` (None = float32)."""
    import torch

    if isinstance(x, torch.Tensor) and x.is_floating_point():
        if any(st == 0 and n > 1 for n, st in zip(x.shape, x.stride())):
            # An expanded (broadcast) tensor — the AMG's shared no-mask embedding is one
            # C×h×w slice expanded over every prompt — is cast as its one slice and expanded
            # again: .to() would materialise it (134 MB per 64 prompts for vit_b) and the
            # fast decoder would lose its "same dense embedding" shortcut.
            base = x[tuple(slice(0, 1) if st == 0 else slice(None) for st in x.stride())]
            return base.to(dtype or torch.float32).expand(x.shape)
        return x.to(dtype or torch.float32)
    if isinstance(x, (tuple, list)):
        return type(x)(cast_floats(v, dtype) for v in x)
    return x


_FP32_STATE: "weakref.WeakKeyDictionary[Any, dict[str, Any]]" = weakref.WeakKeyDictionary()


def set_precision(sam: Any, precision: str, parts: tuple[str, ...] = PARTS, reversible: bool = False) -> Any:
    """In place: convert the weights of `sam.<part>` for each part to `precision`; returns `sam`.
    The code that runs a part casts its inputs and outputs (`call_in`, samseg.sam.kernels).

    Converting weights to bf16/fp16 rounds them, so going back to fp32 needs the original
    weights: `reversible=True` keeps an fp32 copy (the encoder's size again in memory) that
    "fp32" restores bit for bit; without it "fp32" after bf16 raises PrecisionError (load the
    model again). The checkpoint hash is computed at load time, so it names the weights
    file, not the dtype; callers that cache outputs key on the resolved precision."""
    dtype = torch_dtype(precision)
    for part in parts:
        module = getattr(sam, part)
        was = get_precision(sam, part)
        if precision == was:
            continue
        saved = _FP32_STATE.get(module)
        if precision == "fp32":
            if saved is None:
                raise PrecisionError(f"{part} was converted to {was} without keeping its fp32 weights; load the model again")
            module.to(dtype)
            module.load_state_dict(saved)
            del _FP32_STATE[module]
            continue
        if was == "fp32" and reversible:
            _FP32_STATE[module] = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.to(dtype)
    return sam


def get_precision(sam: Any, part: str = "image_encoder") -> str:
    """The precision `sam.<part>`'s weights are in."""
    import torch

    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype_of(getattr(sam, part))]
