"""The dataset fit's block products on a GPU: samseg.core.cosine_dbscan multiplies blocks of unit
rows (a @ b.T, ~N²·C/2 multiply-adds: 200,000 masks × 256 channels take minutes on 2 CPU cores);
on CUDA torch does them, in exact float32 (TF32 is not allowed), and only the blocks travel.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np


def torch_gram(device: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """a @ b.T computed by torch on `device`, returned as float32 numpy (samseg.core.cosine_dbscan.Gram)."""
    import torch

    def gram(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            ta = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)
            tb = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)).to(device)
            return (ta @ tb.T).cpu().numpy()

    return gram


def gram_for(device: Optional[str]) -> Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """torch's block product when the run's device (None/"auto": the best there is) is CUDA;
    None (numpy's BLAS) elsewhere: on a CPU, torch's matmul is no faster than numpy's."""
    import torch

    from samseg.sam.model import select_device

    dev = select_device(device)
    if not dev.startswith("cuda"):
        return None
    _exact_fp32(torch)
    return torch_gram(dev)


def _exact_fp32(torch: Any) -> None:
    """The threshold a·b >= 1 − eps is compared in float32: TF32's 10-bit mantissa would move masks
    across it, so the products stay fp32 (torch's default; a user's setting is not trusted here)."""
    torch.backends.cuda.matmul.allow_tf32 = False
