"""The dataset fit's block products on a GPU: samseg.core.cosine_dbscan multiplies blocks of unit
rows (a @ b.T, ~N²·C/2 multiply-adds: 200,000 masks × 256 channels take minutes on 2 CPU cores);
on CUDA torch does them, in exact float32 (TF32 is not allowed), and only the blocks travel.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np


def torch_gram(device: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """a @ b.T computed by torch on `device`, returned as float32 numpy (samseg.core.cosine_dbscan.Gram)."""
    import torch

    def gram(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # The threshold a·b >= 1 − eps is compared in float32: TF32's 10-bit mantissa would move
        # masks across it, so the products stay fp32 whatever the process set (put back after).
        matmul = torch.backends.cuda.matmul
        tf32, matmul.allow_tf32 = matmul.allow_tf32, False
        try:
            with torch.inference_mode():
                ta = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)
                tb = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)).to(device)
                return (ta @ tb.T).cpu().numpy()
        finally:
            matmul.allow_tf32 = tf32

    return gram


def gram_for(device: Optional[str]) -> Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """torch's block product when the run's device (None/"auto": the best there is) is CUDA;
    None elsewhere: a CPU run keeps numpy's BLAS, the path docs/dataset-classes.md measures."""
    from samseg.sam.model import select_device

    dev = select_device(device)
    return torch_gram(dev) if dev.startswith("cuda") else None
