"""A faster SAM mask decoder for many point prompts on ONE image (the AMG case).

segment_anything's `MaskDecoder.predict_masks` copies the 256×64×64 image embedding once
per prompt (`repeat_interleave`) and then runs every image-side projection per prompt:
≈3.6 GFLOP and several 4 MB-per-prompt temporaries for each point of the AMG grid. This
module computes the same function with less work, exactly in fp32 up to summation order:

1. Layer 0 sees the SAME keys for every prompt (image embedding + the shared no-mask
   embedding), so its image-side projections (token→image K and V, image→token Q) are
   computed once per batch instead of once per prompt.
2. With only T≈7 tokens per prompt, the image-side projections of later layers are folded
   into the token side: q·(X·Wkᵀ+bk)ᵀ = (q·Wk)·Xᵀ + const (the constant cancels in the
   softmax), softmax·(K·Wvᵀ+bv) = (softmax·K)·Wvᵀ + bv, and out_proj(P·V) = P·(V·Wo_hᵀ).
   Each 4096×256→128 projection becomes a 4096×256×(heads·T) product: ≈2.3× fewer FLOPs
   and no 4096×128 per-prompt intermediates.
3. The output upscaling (two 2×2-stride-2 transposed convs, LayerNorm2d, GELU) is a
   per-pixel MLP; it runs as two plain matmuls on the token layout, with no NCHW copies.
4. Prompts are processed in chunks (`chunk_size`) so the per-prompt 4096×256 tensors of
   a chunk stay a few tens of MB (cache- and RSS-friendly) whatever points_per_batch is.
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

Wiring: `accelerate_decoder(sam)` patches `sam.mask_decoder.predict_masks` in place; the
parameters, the state_dict keys and the forward signature are unchanged, so
SamPredictor / SamAutomaticMaskGenerator use it transparently.
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
from typing import Any

from samseg.sam.fast_decoder_masks import _layer_norm, _masks_from_tokens

# Prompts per chunk × bytes per value. fp32: 4 prompts × (keys, keys+pe, norm temporaries,
# 4 MB each) + the 8 MB/prompt upscaled tensor ≈ 100 MB of reused buffers: large enough for
# efficient matmuls, small enough that the AMG's points_per_batch no longer drives the
# decoder's memory. Measured on vit_b, 64 prompts: fp32 (2-core AVX2 and AMX Xeon) 4 was
# as fast as 1-2 and faster than 8-16 (the working set spills); bf16 (AMX Xeon) 8 beat 4
# by 7-10% and 16-32 (1: 22, 2: 17, 4: 14, 8: 13, 16: 15 ms per prompt): the same bytes.
CHUNK_BYTES = 16


def default_chunk_size(element_size: int) -> int:
    """Prompts per chunk for values of `element_size` bytes: 4 in fp32, 8 in bf16/fp16."""
    return max(1, CHUNK_BYTES // element_size)


class _FastPredictMasks:
    """Callable installed as `decoder.predict_masks` (same signature as the original)."""

    def __init__(self, decoder: Any, chunk_size: int | None) -> None:
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.decoder = decoder
        self.chunk_size = chunk_size

    def __call__(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings):
        return fast_predict_masks(
            self.decoder, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, self.chunk_size
        )


def accelerate_decoder(sam: Any, chunk_size: int | None = None) -> Any:
    """Install the fast path on `sam.mask_decoder` in place and return `sam`. Idempotent.
    chunk_size None: `default_chunk_size` of the dtype the decoder runs in at each call.

    Outputs equal segment_anything's within fp32 rounding (see tests/test_fast_decoder.py).
    """
    decoder = sam.mask_decoder
    decoder.__dict__["predict_masks"] = _FastPredictMasks(decoder, chunk_size)
    return sam


def restore_decoder(sam: Any) -> Any:
    """Undo `accelerate_decoder` (back to segment_anything's predict_masks)."""
    sam.mask_decoder.__dict__.pop("predict_masks", None)
    return sam


def is_accelerated(sam: Any) -> bool:
    return isinstance(sam.mask_decoder.__dict__.get("predict_masks"), _FastPredictMasks)


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


@dataclasses.dataclass
class _MaskFilter:
    """What `decode_masks_above` asks of the fast path inside one decoder call."""

    min_iou: float
    iou_slice: slice  # the IoU columns MaskDecoder.forward returns (its mask_slice)
    rows: Any = None  # set by the fast path: the prompts whose masks it computed

    def need(self, iou):
        """B prompts' bool: some returned mask's IoU > min_iou (B×(1+num_multimask) iou,
        compared in float32, the dtype of the IoU the AMG filters)."""
        return (iou[:, self.iou_slice].float() > self.min_iou).any(1)


# Per thread/task (a ContextVar, not a module global): two AMGs in two threads never see
# each other's filter, and the call still goes through nn.Module.__call__ (hooks, the
# precision casts of samseg.sam.precision).
_MASK_FILTER: contextvars.ContextVar[_MaskFilter | None] = contextvars.ContextVar("samseg_mask_filter", default=None)


def fast_predict_masks(decoder, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                       chunk_size: int | None = None):
    """Same contract as `MaskDecoder.predict_masks`: masks B×(1+num_multimask)×4h×4w
    float logits and iou_pred B×(1+num_multimask), for B prompts on one 1×C×h×w image.
    Inside `decode_masks_above`: masks only for the prompts it keeps (see there)."""
    shared = _shared_dense(dense_prompt_embeddings) if image_embeddings.shape[0] == 1 else None
    if shared is None or not _supported(decoder):
        return type(decoder).predict_masks(
            decoder, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
    filt = _MASK_FILTER.get()
    masks, iou, rows = _predict(decoder, image_embeddings, image_pe, sparse_prompt_embeddings, shared,
                                chunk_size, None if filt is None else filt.need)
    if filt is not None:
        filt.rows = rows
    return masks, iou


def decode_masks_above(decoder, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                       multimask_output: bool, min_iou: float | None):
    """`decoder(...)` (MaskDecoder.forward) for the AMG, which keeps only masks whose
    predicted IoU is > min_iou: returns masks K×M×4h×4w for the K prompts `rows` (ascending)
    that have such a mask, and iou N×M for all N prompts. The IoU head reads the
    transformer's tokens, not the masks, so the fast path's upscaling — a third of the
    decoder — runs only for those K prompts. min_iou None, segment_anything's decoder, or
    prompts the fast path does not cover: every prompt (rows = 0..N-1)."""
    import torch

    filt = None if min_iou is None else _MaskFilter(min_iou, slice(1, None) if multimask_output else slice(0, 1))
    token = _MASK_FILTER.set(filt)
    try:
        masks, iou = decoder(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                             multimask_output)
    finally:
        _MASK_FILTER.reset(token)
    rows = filt.rows if filt is not None else None  # None: the fast path did not run
    return masks, iou, torch.arange(len(iou), device=iou.device) if rows is None else rows


def _predict(decoder, image_embeddings, image_pe, sparse, shared_dense, chunk_size: int | None, need):
    """The chunked fast path: masks K×(1+num_multimask)×4h×4w for the K prompts `rows`
    where need(iou B×(1+num_multimask)) is True (every prompt when need is None), iou
    N×(1+num_multimask) of all N prompts."""
    import torch

    n = sparse.shape[0]
    chunk = chunk_size or default_chunk_size(image_embeddings.element_size())
    out_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((out_tokens.unsqueeze(0).expand(n, -1, -1), sparse), dim=1)
    c, h, w = image_embeddings.shape[1:]
    keys0 = (image_embeddings[0] + shared_dense).flatten(1).t().contiguous()  # L×C, L = h·w
    pe = image_pe[0].flatten(1).t().contiguous()  # L×C
    layer0 = _Layer0Shared(decoder.transformer.layers[0], keys0, pe)
    masks = keys0.new_empty((n, decoder.num_mask_tokens, 4 * h, 4 * w))  # rows past K: never touched
    ious, rows, k, ws = [], [], 0, _Workspace()
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        hs, keys = _transformer_chunk(decoder, tokens[start:stop], keys0, pe, layer0, ws)
        ious.append(decoder.iou_prediction_head(hs[:, 0, :]))
        idx = torch.arange(start, stop, device=keys0.device)
        if need is not None:
            keep = need(ious[-1])
            idx = idx[keep]
            if not len(idx):
                continue
            if len(idx) < stop - start:
                hs, keys = hs[keep], keys[keep]
        _masks_from_tokens(decoder, hs, keys, masks[k : k + len(idx)], ws)
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


def _heads(x, num_heads: int):
    """B×N×D → B×H×N×(D/H), as segment_anything's Attention._separate_heads."""
    b, n, d = x.shape
    return x.reshape(b, n, num_heads, d // num_heads).transpose(1, 2)


def _recombine(x):
    """B×H×N×d → B×N×(H·d)."""
    b, hh, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, hh * d)


class _Layer0Shared:
    """Image-side work of transformer layer 0, identical for every prompt: computed once.

    k_tok2img, v_tok2img, q_img2tok: H×L×d each (L = 4096 image tokens, d = head dim).
    """

    def __init__(self, layer: Any, keys0, pe) -> None:
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        x = (keys0 + pe).unsqueeze(0)
        self.k_tok2img = _heads(t2i.k_proj(x), t2i.num_heads)[0]
        self.v_tok2img = _heads(t2i.v_proj(keys0.unsqueeze(0)), t2i.num_heads)[0]
        self.q_img2tok_t = _heads(i2t.q_proj(x), i2t.num_heads)[0].transpose(1, 2).contiguous()  # H×d×L


def _queries_block(layer: Any, queries, query_pe, attn_out_fn):
    """Self-attention, token→image attention (via `attn_out_fn(q)`), MLP — the query side."""
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + layer.self_attn(q=q, k=q, v=queries)
    queries = layer.norm1(queries)
    queries = layer.norm2(queries + attn_out_fn(queries + query_pe))
    return layer.norm3(queries + layer.mlp(queries))


def _tok2img_shared(attn: Any, q_in, k_heads, v_heads):
    """Token→image attention against keys shared by all prompts (H×L×d): B×T×C.

    Heads are the bmm batch and prompts × tokens the rows, so the shared keys and values
    are never broadcast-copied per prompt."""
    import torch

    q = _heads(attn.q_proj(q_in), attn.num_heads)  # B×H×T×d
    b, nh, t, d = q.shape
    q = (q / math.sqrt(d)).transpose(0, 1).reshape(nh, b * t, d)  # H×BT×d
    probs = torch.softmax(torch.bmm(q, k_heads.transpose(1, 2)), dim=-1)  # H×BT×L
    out = torch.bmm(probs, v_heads).view(nh, b, t, d).permute(1, 2, 0, 3).reshape(b, t, nh * d)
    return attn.out_proj(out)


def _tok2img_folded(attn: Any, q_in, x, keys):
    """Token→image attention with per-prompt keys, projections folded into the tokens.

    q_in: B×T×C (queries + pe), x: B×L×C (keys + pe), keys: B×L×C. Returns B×T×C.
    Scores: (q_h·Wk_h)·xᵀ; q_h·bk_h is constant along the softmax axis, so it is dropped.
    Values: (P·keys)·Wv_hᵀ + bv, because every softmax row sums to 1.
    """
    import torch

    nh, b, t = attn.num_heads, q_in.shape[0], q_in.shape[1]
    q = _heads(attn.q_proj(q_in), nh)  # B×H×T×d
    d = q.shape[-1]
    wk = attn.k_proj.weight.view(nh, d, -1)  # H×d×C
    qk = torch.einsum("bhtd,hdc->bhtc", q / math.sqrt(d), wk).reshape(b, nh * t, -1)  # B×HT×C, scaled
    probs = torch.softmax(torch.bmm(qk, x.transpose(1, 2)), dim=-1)  # B×HT×L
    pk = torch.bmm(probs, keys).view(b, nh, t, -1)  # B×H×T×C
    wv = attn.v_proj.weight.view(nh, d, -1)
    v = torch.einsum("bhtc,hdc->bhtd", pk, wv) + attn.v_proj.bias.view(nh, 1, d)
    return attn.out_proj(_recombine(v))


def _img2tok_residual(attn: Any, keys, probs_t, queries, out):
    """keys + image→token attention output, B×L×C (the input of norm4), written into `out`
    (out = keys: in place, no copy of keys first; 1 ms of 4.6 per 8 prompts in bf16).

    probs_t: B×(H·T)×L, the transposed probabilities (softmax over T per head, see
    `_img2tok_probs_t`); values from `queries` B×T×C.
    out_proj(P·V) = P·(V_h·Wo_hᵀ) + bo, so no B×L×D tensor is formed; bo is spread as
    bo/H over each head's rows (each head's probabilities sum to 1), so the residual add,
    the bias and the product are one baddbmm pass over B×L×C.
    """
    import torch

    nh = attn.num_heads
    v = _heads(attn.v_proj(queries), nh)  # B×H×T×d
    b, _, t, d = v.shape
    wo = attn.out_proj.weight.view(-1, nh, d)  # C×H×d
    m = torch.einsum("bhtd,chd->bhtc", v, wo) + attn.out_proj.bias / nh  # B×H×T×C
    if out is keys:
        return keys.baddbmm_(probs_t.transpose(1, 2), m.reshape(b, nh * t, -1))
    return torch.baddbmm(keys.expand(b, -1, -1), probs_t.transpose(1, 2), m.reshape(b, nh * t, -1), out=out)


def _softmax_over_tokens(scores_t, num_heads: int):
    """B×(H·T)×L scores → probabilities normalised over T within each head, same layout.

    The image→token softmax runs over only T≈7 tokens for each of 4096 pixels: as rows of
    7 (B×L×H×T) PyTorch's CPU kernel is far slower than over the middle axis of
    B×H×T×L, where it vectorises along L.
    """
    import torch

    b, ht, l = scores_t.shape
    return torch.softmax(scores_t.view(b, num_heads, ht // num_heads, l), dim=2).view(b, ht, l)


def _img2tok_probs_folded(attn: Any, x, k_in):
    """Image→token softmax with per-prompt image queries x: B×L×C, token keys k_in: B×T×C.
    Scores x·(Wq_hᵀ·k_h) + bq_h·k_h; returns the probabilities transposed, B×(H·T)×L."""
    import torch

    nh = attn.num_heads
    k = _heads(attn.k_proj(k_in), nh)  # B×H×T×d
    b, _, t, d = k.shape
    wq = attn.q_proj.weight.view(nh, d, -1)  # H×d×C
    k = k / math.sqrt(d)
    g = torch.einsum("bhtd,hdc->bhtc", k, wq).reshape(b, nh * t, -1)  # B×HT×C
    bias = torch.einsum("bhtd,hd->bht", k, attn.q_proj.bias.view(nh, d)).reshape(b, nh * t, 1)
    return _softmax_over_tokens(torch.baddbmm(bias, g, x.transpose(1, 2)), nh)  # B×HT×L


def _transformer_chunk(decoder: Any, tokens, keys0, pe, layer0: _Layer0Shared, ws: _Workspace):
    """The two-way transformer for a chunk of B prompts (tokens B×T×C): returns the output
    tokens hs B×T×C and the updated image tokens keys B×L×C."""
    import torch

    tr = decoder.transformer
    query_pe = tokens
    first = tr.layers[0]
    i2t = first.cross_attn_image_to_token
    queries = _queries_block(
        first, tokens, query_pe,
        lambda q: _tok2img_shared(first.cross_attn_token_to_image, q, layer0.k_tok2img, layer0.v_tok2img),
    )
    k = _heads(i2t.k_proj(queries + query_pe), i2t.num_heads) / math.sqrt(layer0.q_img2tok_t.shape[1])  # B×H×T×d
    b, nh, t, _ = k.shape
    l, c = keys0.shape
    scores_t = ws.get("scores0", (b, nh, t, l), keys0)
    for i in range(b):  # one bmm per prompt against the shared H×d×L queries: no broadcast copy
        torch.bmm(k[i], layer0.q_img2tok_t, out=scores_t[i])
    probs_t = _softmax_over_tokens(scores_t.view(b, nh * t, l), nh)
    residual = _img2tok_residual(i2t, keys0, probs_t, queries, ws.get("residual", (b, l, c), keys0))
    keys = _layer_norm(first.norm4, residual)  # per prompt from here on
    for layer in tr.layers[1:]:
        x = torch.add(keys, pe, out=ws.get("keys_pe", (b, l, c), keys0))
        queries = _queries_block(
            layer, queries, query_pe, lambda q: _tok2img_folded(layer.cross_attn_token_to_image, q, x, keys)
        )
        probs_t = _img2tok_probs_folded(layer.cross_attn_image_to_token, x, queries + query_pe)
        # keys is this chunk's own LayerNorm output and x is already formed: add in place
        keys = _layer_norm(layer.norm4, _img2tok_residual(layer.cross_attn_image_to_token, keys, probs_t, queries, keys))
    x = torch.add(keys, pe, out=ws.get("keys_pe", (b, l, c), keys0))
    hs = tr.norm_final_attn(queries + _tok2img_folded(tr.final_attn_token_to_image, queries + query_pe, x, keys))
    return hs, keys
