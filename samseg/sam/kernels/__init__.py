"""Which code computes SAM's image encoder and mask decoder, called explicitly.

Two kernel sets, one switch (`LoadedModel.kernels`, `--kernels`, `SAMSEG_KERNELS`):
- "sam": segment_anything's own modules, untouched: the reference path.
- "fast": samseg.sam.kernels.encoder.encoder_forward and samseg.sam.kernels.decoder.decode_masks_above,
  the same functions computed with less work (equal within fp32 rounding; the equivalence
  tests compare them with segment_anything's modules).
The fast kernels were tuned on a 2-core CPU, so they are the default there; on CUDA the
default is segment_anything's modules until a GPU measurement shows the fast ones win.

Precision is applied here, by the code that runs the part: inputs cast to the dtype its
weights were converted to (samseg.sam.precision.set_precision), outputs cast back to float32.
No module of segment_anything is patched or wrapped.

`observe(fn)` calls fn(part, seconds, prompts) after each encoder ("encoder") or decoder
("decoder") call in this process: how samseg.sam.amg counts encoder passes and the
benchmarks time the decoder.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any, Callable, Iterator, Optional

KERNELS: tuple[str, ...] = ("fast", "sam")
KERNELS_ENV = "SAMSEG_KERNELS"

Observer = Callable[[str, float, int], None]
_OBSERVERS: list[Observer] = []
_LOCK = threading.Lock()


def resolve_kernels(requested: Optional[str], device: str) -> str:
    """The kernels a model on `device` runs: `requested`, else $SAMSEG_KERNELS, else "sam" on
    CUDA and "fast" elsewhere. ValueError (one line) for an unknown name."""
    chosen = requested or os.environ.get(KERNELS_ENV) or ("sam" if str(device).startswith("cuda") else "fast")
    if chosen not in KERNELS:
        raise ValueError(f"unknown kernels {chosen!r}; choose one of: {', '.join(KERNELS)}")
    return chosen


@contextlib.contextmanager
def observe(fn: Observer) -> Iterator[None]:
    """Call fn(part, seconds, prompts) after every encoder/decoder call inside the block."""
    with _LOCK:
        _OBSERVERS.append(fn)
    try:
        yield
    finally:
        with _LOCK:
            _OBSERVERS.remove(fn)


def observers() -> int:
    """How many observers are installed (tests check that a block removes its own)."""
    return len(_OBSERVERS)


def _notify(part: str, t0: float, prompts: int = 0) -> None:
    seconds = time.perf_counter() - t0
    for fn in list(_OBSERVERS):
        fn(part, seconds, prompts)


def reference(sam: Any) -> Any:
    """A plain segment_anything Sam as something encode/decode run: its own modules ("sam")."""
    from types import SimpleNamespace

    return SimpleNamespace(sam=sam, kernels="sam")


def encode(model: Any, input_bchw: Any) -> Any:
    """The image encoder on a preprocessed B×3×1024×1024 batch → B×C×64×64 float32 features.
    model: a samseg.sam.model.LoadedModel (its sam, its kernels)."""
    from samseg.sam.precision import call_in, cast_floats, dtype_of

    import torch

    encoder = model.sam.image_encoder
    dtype = dtype_of(encoder)
    t0 = time.perf_counter()
    with torch.no_grad():  # inference: the fast kernels write into out= buffers
        if model.kernels == "fast":
            from samseg.sam.kernels.encoder import encoder_forward

            features = cast_floats(encoder_forward(encoder, cast_floats(input_bchw, dtype)), None)
        else:
            features = call_in(encoder, dtype, input_bchw)
    _notify("encoder", t0)
    return features


def decode(model: Any, image_embeddings: Any, image_pe: Any, sparse: Any, dense: Any,
           multimask_output: bool, min_iou: Optional[float] = None) -> tuple[Any, Any, Any]:
    """The mask decoder for N prompts on one image: (masks K×M×4h×4w float32 of the K prompts
    `rows`, iou N×M float32 of all N, rows). With min_iou, the fast kernels compute masks only
    for prompts that have a mask whose predicted IoU is > min_iou (the AMG's filter); the
    "sam" kernels compute every prompt's (rows = 0..N-1)."""
    import torch

    from samseg.sam.precision import call_in, cast_floats, dtype_of

    decoder = model.sam.mask_decoder
    dtype = dtype_of(decoder)
    t0 = time.perf_counter()
    with torch.no_grad():  # inference: the fast kernels write into out= buffers
        if model.kernels == "fast":
            from samseg.sam.kernels.decoder import decode_masks_above

            args = cast_floats((image_embeddings, image_pe, sparse, dense), dtype)
            masks, iou, rows = cast_floats(decode_masks_above(decoder, *args, multimask_output, min_iou), None)
        else:
            masks, iou = call_in(decoder, dtype, image_embeddings, image_pe, sparse, dense, multimask_output)
            rows = torch.arange(len(iou), device=iou.device)
    _notify("decoder", t0, int(sparse.shape[0]))
    return masks, iou, rows
