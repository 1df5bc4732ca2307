"""The dataset fit's block products on a GPU: samseg.core.cosine_dbscan multiplies blocks of unit
rows (a @ b.T, ~N²·C/2 multiply-adds: 200,000 masks × 256 channels take minutes on 2 CPU cores);
on CUDA torch does them in float32 with TF32 off. Each block's rows go to the GPU (the border
pass's core matrix once) and its products come back; thresholds and counts stay on the CPU.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from samseg.core.cosine_dbscan import BLOCK_FLOATS, Gram


def torch_gram(device: str) -> Gram:
    """a @ b.T computed by torch on `device`, returned as float32 numpy."""
    import torch

    kept: dict[str, Any] = {}  # the last `b` on the device: the border pass multiplies by one core matrix

    def gram(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with _fp32(torch), torch.inference_mode():
            ta = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)
            if kept.get("b") is not b:
                kept.update(b=b, tb=torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)).to(device))
            return (ta @ kept["tb"].T).cpu().numpy()

    return gram


class _fp32:
    """Float32 products for the block: the threshold a·b >= 1 − eps is compared in float32, and
    TF32's 10-bit mantissa would move masks across it. The process's own setting is put back."""

    def __init__(self, torch: Any) -> None:
        self.matmul = torch.backends.cuda.matmul

    def __enter__(self) -> None:
        self.before = self.matmul.fp32_precision
        self.matmul.fp32_precision = "ieee"

    def __exit__(self, *exc: Any) -> None:
        self.matmul.fp32_precision = self.before


def gram_for(device: Optional[str]) -> Optional[Gram]:
    """The block product for a run on `device`: None (numpy's BLAS, the path docs/dataset-classes.md
    measures) on a CPU; on CUDA, or None/"auto" on a machine with CUDA, torch's. Decided at the
    first full-size block, so a small fit never imports torch; never raises (no CUDA: numpy's)."""
    if device is not None and not str(device).startswith(("cuda", "auto")):
        return None
    chosen: dict[str, Optional[Gram]] = {}

    def gram(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if "g" not in chosen and a.shape[0] * b.shape[0] >= BLOCK_FLOATS:
            chosen["g"] = _cuda(device)
        g = chosen.get("g")
        return g(a, b) if g is not None else a @ b.T

    return gram


def _cuda(device: Optional[str]) -> Optional[Gram]:
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        return torch_gram(device if device and str(device).startswith("cuda") else "cuda")
    except Exception:  # noqa: BLE001 — no usable CUDA: the products stay on the CPU
        return None
