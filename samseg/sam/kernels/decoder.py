"""A faster SAM mask decoder for many point prompts on ONE image (the AMG case).

segment_anything's `MaskDecoder.predict_masks` copies the 256×64×64 image embedding once
per prompt (`repeat_interleave`) and then runs every image-side projection per prompt:
≈3.6 GFLOP and several 4 MB-per-prompt temporaries for each point of the AMG grid. This
module computes the same function with less work, exactly in fp32 up to summation order:

1. Layer 0 sees the SAME keys for every prompt (image embedding + the shared no-mask
   embedding), so its image-side projections (token→image K and V, image→token Q) are
   computed once per batch instead of once per prompt.
2. From layer 0's output on, a prompt's image tokens are the shared ones plus attention
   outputs over T≈7 tokens, so they are kept factored, X = a⊙A + Zᵀ·V (a row of ones in
   Z carries the biases), and never formed as a 4096×256 tensor per prompt
   (samseg.sam.kernels.decoder_factored): every
   projection of the shared part is computed once per image, LayerNorms work on Gram
   products, and per prompt only heads·T-wide work is left.
3. The output upscaling (two 2×2-stride-2 transposed convs, LayerNorm2d, GELU) is a
   per-pixel MLP; it runs as two plain matmuls on the token layout, with no NCHW copies,
   the first one straight from the factored keys.
4. Prompts are processed in chunks (`chunk_size`) so the per-chunk temporaries stay a few
   tens of MB (cache- and RSS-friendly) whatever points_per_batch is.
5. The chunk's big temporaries are written into buffers reused across chunks (`_Workspace`)
   and the masks straight into the output tensor: a fresh 16-33 MB tensor is a fresh mmap
   whose page faults cost more than the op that fills it (measured on the 2-core dev CPU:
   GELU into a new 33 MB tensor 16 ms, in place 3.8 ms). LayerNorms are the exception:
   their out= variant copies a temporary over, which costs more (`_layer_norm`).
6. The masks leave the upscaling in its pixel order (i, j, ki, kj, ki2, kj2) and reach
   the B×M×4h×4w layout by two copies of whole runs (`_interleave_4x4`), not one 8-d
   permute whose innermost run is 2 values (10× slower).
7. For the AMG, `decode_masks_above` upscales only the prompts that have a mask whose
   predicted IoU passes the AMG's filter (the IoU head reads the transformer's tokens,
   not the masks). The upscaling is a third of the decoder; every mask the filter keeps
   is the same.

Anything this path does not cover (several images at once, per-prompt dense/mask
prompts, a non-standard transformer) falls back to segment_anything's own code.

Wiring: none. `decode_masks_above` is called explicitly (samseg.sam.kernels, when the
kernels are "fast"); segment_anything's modules are never modified and stay the reference
path. Each decoder's image cache lives beside it (a weak-keyed table), not on it.
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import Any

from samseg.sam.kernels.decoder_factored import ImageState, image_state, transformer_chunk
from samseg.sam.kernels.decoder_masks import masks_from_tokens

# Prompts per chunk × bytes per value. Per prompt the factored transformer holds k×4096
# coefficients (k ≤ 115, padded to 120 in bf16) and a few 56×4096 scores; the upscaling of a kept prompt 8 MB.
# Measured on vit_b, 64 prompts, 3 alternating process triples (AMX Xeon, 2 threads), ms
# per prompt without / with the upscaling: fp32 4 prompts 8.3–9.5 / 15.2–16.9, 8 prompts
# 7.5–9.3 / 15.2–17.6; bf16 8 prompts 5.3–6.8 / 10.8–12.6, 16 prompts 5.5–6.2 / 10.9–12.4.
CHUNK_BYTES = 32


def default_chunk_size(element_size: int) -> int:
    """Prompts per chunk for values of `element_size` bytes: 8 in fp32, 16 in bf16/fp16."""
    return max(1, CHUNK_BYTES // element_size)


class _ImageCache:
    """The last image's ImageState for one decoder. The AMG calls the decoder once per
    points_per_batch prompts on the same image (16 calls at 32 points/side), and the
    shared projections cost about 50 ms per call in fp32, 30 in bf16 (vit_b: a 1-prompt
    call 60 / 37 ms, a 64-prompt call 565 / 405 ms). A hit needs the same decoder weights
    (their storage and version counters) and equal inputs (compared against copies, so
    an in-place change of the caller's tensor is a miss); one entry, swapped atomically,
    so two threads on two images only recompute."""

    def __init__(self) -> None:
        self._last: tuple[Any, tuple[Any, ...], ImageState] | None = None

    def get(self, decoder: Any, inputs: tuple[Any, ...]) -> ImageState:
        import torch

        try:
            weights = tuple((p.data_ptr(), p._version) for p in decoder.parameters())
        except RuntimeError:  # inference-mode weights keep no version counter: never reuse
            return image_state(decoder, *inputs)
        last = self._last
        if last is not None and last[0] == weights and all(
            a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
            for a, b in zip(last[1], inputs, strict=True)
        ):
            return last[2]
        state = image_state(decoder, *inputs)
        self._last = (weights, tuple(x.clone() for x in inputs), state)
        return state


_CACHES: "weakref.WeakKeyDictionary[Any, _ImageCache]" = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def _cache_of(decoder: Any) -> _ImageCache:
    """The decoder's own image cache (kept beside it, never on it; gone with it)."""
    with _CACHES_LOCK:
        cache = _CACHES.get(decoder)
        if cache is None:
            cache = _CACHES[decoder] = _ImageCache()
        return cache


def _supported(decoder: Any) -> bool:
    """The fast path knows segment_anything's TwoWayTransformer + 2×2 upscaling only."""
    from segment_anything.modeling.common import LayerNorm2d
    from segment_anything.modeling.transformer import TwoWayTransformer
    from torch import nn

    up = decoder.output_upscaling
    convs_ok = all(
        isinstance(up[i], nn.ConvTranspose2d) and up[i].kernel_size == (2, 2) and up[i].stride == (2, 2)
        and up[i].padding == (0, 0) and up[i].output_padding == (0, 0) and up[i].groups == 1
        for i in (0, 3)
    )
    return isinstance(decoder.transformer, TwoWayTransformer) and len(up) == 5 and convs_ok and isinstance(up[1], LayerNorm2d)


def _shared_dense(dense):
    """C×h×w when every prompt has the same dense embedding (no mask input), else None."""
    if dense.shape[0] == 1 or dense.stride(0) == 0:
        return dense[0]
    first = dense[:1]
    return dense[0] if bool((dense == first).all()) else None


def fast_predict_masks(decoder, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                       chunk_size: int | None = None, cache: _ImageCache | None = None):
    """Same contract as `MaskDecoder.predict_masks`: masks B×(1+num_multimask)×4h×4w
    float logits and iou_pred B×(1+num_multimask), for B prompts on one 1×C×h×w image.
    cache: reuses the image's shared work from the previous call on the same image."""
    masks, iou, _rows = _masks_and_rows(decoder, image_embeddings, image_pe, sparse_prompt_embeddings,
                                        dense_prompt_embeddings, chunk_size, cache, None)
    return masks, iou


def decode_masks_above(decoder, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                       multimask_output: bool, min_iou: float | None, chunk_size: int | None = None):
    """`MaskDecoder.forward` for the AMG, which keeps only masks whose predicted IoU is
    > min_iou: returns masks K×M×4h×4w for the K prompts `rows` (ascending) that have such a
    mask, and iou N×M for all N prompts. The IoU head reads the transformer's tokens, not the
    masks, so the upscaling — a third of the decoder — runs only for those K prompts.
    min_iou None, or prompts the fast path does not cover: every prompt (rows = 0..N-1)."""
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    mask_slice = slice(1, None) if multimask_output else slice(0, 1)

    def need(iou):  # some returned mask's IoU > min_iou (compared in float32, as the AMG filters)
        return (iou[:, mask_slice].float() > min_iou).any(1)

    masks, iou, rows = _masks_and_rows(decoder, image_embeddings, image_pe, sparse_prompt_embeddings,
                                       dense_prompt_embeddings, chunk_size, _cache_of(decoder),
                                       None if min_iou is None else need)
    return masks[:, mask_slice], iou[:, mask_slice], rows


def _masks_and_rows(decoder, image_embeddings, image_pe, sparse, dense, chunk_size, cache, need):
    """(masks of the prompts `rows`, iou of all prompts, rows); segment_anything's own
    predict_masks (every row) where the fast path does not apply."""
    import torch

    shared = _shared_dense(dense) if image_embeddings.shape[0] == 1 else None
    if shared is None or not _supported(decoder):
        masks, iou = type(decoder).predict_masks(decoder, image_embeddings, image_pe, sparse, dense)
        return masks, iou, torch.arange(len(iou), device=iou.device)
    inputs = (image_embeddings, image_pe, shared)
    image = cache.get(decoder, inputs) if cache is not None else image_state(decoder, *inputs)
    return _predict(decoder, image, image_embeddings.shape[2:], sparse, chunk_size, need)


def _predict(decoder, image: ImageState, hw: tuple[int, int], sparse, chunk_size: int | None, need):
    """The chunked fast path on an h×w embedding grid: masks K×(1+num_multimask)×4h×4w for
    the K prompts `rows` where need(iou B×(1+num_multimask)) is True (every prompt when need
    is None), iou N×(1+num_multimask) of all N prompts."""
    import torch

    n = sparse.shape[0]
    chunk = chunk_size or default_chunk_size(image.keys0.element_size())
    out_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((out_tokens.unsqueeze(0).expand(n, -1, -1), sparse), dim=1)
    h, w = hw
    keys0 = image.keys0
    masks = keys0.new_empty((n, decoder.num_mask_tokens, 4 * h, 4 * w))  # rows past K: never touched
    ious, rows, k, ws = [], [], 0, _Workspace()
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        hs, keys = transformer_chunk(decoder, tokens[start:stop], image, ws)
        ious.append(decoder.iou_prediction_head(hs[:, 0, :]))
        idx = torch.arange(start, stop, device=keys0.device)
        if need is not None:
            keep = need(ious[-1])
            idx = idx[keep]
            if not len(idx):
                continue
            if len(idx) < stop - start:
                hs, keys = hs[keep], keys.select(keep)
        masks_from_tokens(decoder, hs, keys, masks[k : k + len(idx)], ws)
        rows.append(idx)
        k += len(idx)
    rows_k = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long, device=keys0.device)
    return masks[:k], torch.cat(ious), rows_k


class _Workspace:
    """Named scratch buffers reused by every chunk of one predict call: `get(name, shape)`
    is a contiguous view of the first prod(shape) floats of buffer `name` (grown on demand;
    a ragged last chunk uses a prefix). Contents are garbage until written."""

    def __init__(self) -> None:
        self._flat: dict[str, Any] = {}

    def get(self, name: str, shape: tuple[int, ...], like):
        numel = math.prod(shape)
        flat = self._flat.get(name)
        if flat is None or flat.numel() < numel:
            flat = self._flat[name] = like.new_empty(numel)
        return flat[:numel].view(shape)
