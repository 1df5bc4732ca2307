"""A faster attention for SAM's ViT image encoder, same outputs within fp32 rounding.

segment_anything's `Attention.forward` materialises, for ALL heads (and all windows) at
once, the (B·heads)×HW×HW score matrix, then a second one of the same size for the
decomposed relative-position bias (`attn.view(...) + rel_h + rel_w` allocates a new
tensor), then a third for the softmax: for a vit_b global layer that is 3 × 12 × 4096² ×
4 B ≈ 2.4 GB of memory traffic per step, far outside any cache, and the peak RSS of the
encoder. This module computes the same function per head (per small group of windows):

1. The bias rel_h[i, kh(j)] + rel_w[i, kw(j)] is written by broadcasting into ONE score
   buffer allocated once per layer and reused for every head (a fresh 64 MB tensor per
   head costs an mmap and 16 k page faults),
2. the scaled scores are accumulated INTO that buffer by one `baddbmm_` (GEMM with β=1),
3. softmax runs in place on the buffer (row-wise kernel) and the value product follows
   while the rows are warm.

Same arithmetic as SAM's (the same GEMM, the same adds, the same softmax), only the
summation order of (q·k) + bias differs — see tests/test_fast_encoder.py.

fp32 never uses `scaled_dot_product_attention`: with the rel-pos bias as attn_mask it
was slower than the baddbmm path above. In bf16/fp16 the bias is folded into extra q/k
channels (q·Rh, q·Rw against one-hot key positions, `_gemm_bias_attention`); global
layers then go through SDPA's fused kernel with v zero-padded to the q/k width
(`_sdpa_padded`: with unequal head dims SDPA falls back to its unfused math, 10× slower).

4. The MLP's GELU runs in place on lin1's output: a fresh 50 MB (4096×3072 float32)
   tensor per block is an mmap whose page faults cost more than the GELU (identical
   outputs; timings in benchmarks/README.md).

5. The patch embedding returns a contiguous token-major tensor, so the residual stream
   is not channel-major for the whole encoder (`patch_embed_token_major`; same values).

Wiring: none. `encoder_forward(encoder, x)` is called explicitly (samseg.sam.kernels, when
the kernels are "fast"); segment_anything's modules are never modified and stay the
reference path.
"""

from __future__ import annotations

from typing import Any

# Scores per group ≤ 4 MiB: a windowed layer's 25 × 12 (window, head) pairs (196² × 4 B ≈
# 150 KB each) go ~27 at a time, a global layer (4096² × 4 B = 64 MB) head by head. Single
# windows measured 5-10× slower on the shared 2-core CPU (one thread barrier per tiny
# GEMM); all 300 at once spills the caches.
_GROUP_BYTES = 4 << 20
# bf16/fp16: fold the rel-pos bias into the score GEMM (`_gemm_bias_attention`); a module
# switch so benchmarks can put both paths side by side in one process.
GEMM_BIAS = True
# ... and global layers (≥ this many tokens) through the fused SDPA kernel (`_sdpa_padded`).
SDPA_GLOBAL = True
_SDPA_MIN_TOKENS = 1024


def encoder_forward(encoder: Any, x_bchw: Any) -> Any:
    """segment_anything's `ImageEncoderViT.forward` (and each `Block.forward`) with the fast
    parts called explicitly: token-major patch embedding, `fast_attention_forward`, the MLP's
    GELU in place. B×3×1024×1024 → B×C×64×64, equal to `encoder(x)` within fp32 rounding.
    A block this path does not know (another attention or MLP class) runs as SAM's module."""
    from segment_anything.modeling.image_encoder import window_partition, window_unpartition

    x = patch_embed_token_major(encoder.patch_embed, x_bchw)
    if encoder.pos_embed is not None:
        x = x + encoder.pos_embed
    for blk in encoder.blocks:
        if not _known_block(blk):
            x = blk(x)
            continue
        shortcut = x
        x = blk.norm1(x)
        if blk.window_size > 0:
            hw = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, blk.window_size)
        x = fast_attention_forward(blk.attn, x)
        if blk.window_size > 0:
            x = window_unpartition(x, blk.window_size, pad_hw, hw)
        x = shortcut + x
        x = x + mlp_gelu_in_place(blk.mlp, blk.norm2(x))
    return encoder.neck(x.permute(0, 3, 1, 2))


def _known_block(blk: Any) -> bool:
    import torch
    from segment_anything.modeling.common import MLPBlock
    from segment_anything.modeling.image_encoder import Attention, Block

    return (type(blk) is Block and type(blk.attn) is Attention and type(blk.mlp) is MLPBlock
            and type(blk.mlp.act) is torch.nn.GELU)


def mlp_gelu_in_place(mlp: Any, x: Any) -> Any:
    """An encoder `MLPBlock`: lin2(gelu_(lin1(x))) — the GELU in place on lin1's output."""
    import torch

    return mlp.lin2(torch.ops.aten.gelu_(mlp.lin1(x), approximate=mlp.act.approximate))


def patch_embed_token_major(patch_embed: Any, x: Any) -> Any:
    """`PatchEmbed`: proj(x) as a contiguous B×H×W×C.

    SAM returns `proj(x).permute(0, 2, 3, 1)`, a view whose memory is still B×C×H×W, and
    elementwise ops keep their first input's layout: the whole residual stream stays
    channel-major, so every LayerNorm copies its input to token-major first and every
    residual add is a transposing pass. One copy here removes them (bf16 vit_b profile:
    those adds and copies 344 → 41 ms per pass; same values)."""
    return patch_embed.proj(x).permute(0, 2, 3, 1).contiguous()


def _rel_pos_bias_parts(attention: Any, q_bld: Any, hw: tuple[int, int]) -> tuple[Any, Any]:
    """rel_h: (B·heads)×H×W×H and rel_w: (B·heads)×H×W×W, exactly SAM's add_decomposed_rel_pos terms."""
    import torch
    from segment_anything.modeling.image_encoder import get_rel_pos

    h, w = hw
    rh = get_rel_pos(h, h, attention.rel_pos_h)  # H×H×d
    rw = get_rel_pos(w, w, attention.rel_pos_w)  # W×W×d
    r_q = q_bld.reshape(q_bld.shape[0], h, w, q_bld.shape[-1])
    return torch.einsum("bhwc,hkc->bhwk", r_q, rh), torch.einsum("bhwc,wkc->bhwk", r_q, rw)


def fast_attention_forward(attention: Any, x_bhwc: Any) -> Any:
    """segment_anything Attention.forward, computed per group of (window, head) pairs.

    x_bhwc: B×H×W×C float (B = windows of a windowed block, 1 for a global one).
    Returns B×H×W×C, equal to `type(attention).forward(attention, x_bhwc)` within fp32 rounding.
    """
    import torch

    b, h, w, _ = x_bhwc.shape
    heads, tokens = attention.num_heads, h * w
    qkv = attention.qkv(x_bhwc).reshape(b, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, b * heads, tokens, -1).unbind(0)  # each (B·heads)×HW×d
    rel_h = rel_w = None
    if attention.use_rel_pos:
        rel_h, rel_w = _rel_pos_bias_parts(attention, q, (h, w))
    if GEMM_BIAS and rel_h is not None and q.dtype in (torch.bfloat16, torch.float16):
        return _gemm_bias_attention(attention, q, k, v, rel_h, rel_w, (b, h, w))
    q_scaled = q * attention.scale
    k_t = k.transpose(1, 2)
    out = torch.empty_like(q)
    group = max(1, min(b * heads, _GROUP_BYTES // (tokens * tokens * q.element_size())))
    # One score buffer for the whole layer: a fresh 64 MB tensor per head is an mmap + 16 k
    # page faults each time, which measured as much as the GEMMs themselves.
    buf = torch.empty(group, tokens, tokens, dtype=q.dtype, device=q.device)
    for start in range(0, b * heads, group):
        s = slice(start, start + group)
        scores = buf[: len(range(b * heads)[s])]
        if rel_h is None:
            torch.bmm(q_scaled[s], k_t[s], out=scores)
        else:
            # bias[i, (kh, kw)] = rel_h[i, kh] + rel_w[i, kw], written once, then += q·kᵀ in the GEMM
            torch.add(rel_h[s, :, :, :, None], rel_w[s, :, :, None, :], out=scores.view(-1, h, w, h, w))
            scores.baddbmm_(q_scaled[s], k_t[s])
        torch.ops.aten._softmax.out(scores, -1, False, out=scores)  # in place: row-wise kernel
        torch.bmm(scores, v[s], out=out[s])
    y = out.view(b, heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return attention.proj(y)


def _gemm_bias_attention(attention: Any, q: Any, k: Any, v: Any, rel_h: Any, rel_w: Any, bhw: tuple[int, int, int]) -> Any:
    """Reduced precision: the rel-pos bias rides in the score GEMM instead of a separate add.

    scale·q·kᵀ + rel_h[i, kh(j)] + rel_w[i, kw(j)] = [scale·q, rel_h_i, rel_w_i] · [k, onehot(kh), onehot(kw)]ᵀ,
    so one bmm over H+W extra channels writes the biased scores. In bf16 the GEMM is cheap
    (AMX: ~1 TFLOP/s) and the broadcast add it replaces was memory-bound: measured on a vit_b
    global layer 713 → 562 ms, windowed 209 → 138 ms (2 cores, loaded). fp32 keeps the path
    above, identical to SAM's arithmetic.
    """
    import torch

    b, h, w = bhw
    tokens, bh = h * w, q.shape[0]
    q_ext = torch.cat([q * attention.scale, rel_h.reshape(bh, tokens, h), rel_w.reshape(bh, tokens, w)], dim=-1)
    pos = torch.arange(tokens, device=q.device)
    onehot = torch.zeros(tokens, h + w, dtype=q.dtype, device=q.device)
    onehot[pos, pos // w] = 1
    onehot[pos, h + pos % w] = 1
    k_ext = torch.cat([k, onehot.expand(bh, tokens, h + w)], dim=-1)
    if SDPA_GLOBAL and tokens >= _SDPA_MIN_TOKENS:
        return attention.proj(_sdpa_padded(q_ext, k_ext, v, bhw, attention.num_heads))
    k_ext_t = k_ext.transpose(1, 2)
    out = torch.empty_like(q)
    group = max(1, min(bh, _GROUP_BYTES // (tokens * tokens * q.element_size())))
    buf = torch.empty(group, tokens, tokens, dtype=q.dtype, device=q.device)
    for start in range(0, bh, group):
        s = slice(start, start + group)
        scores = buf[: len(range(bh)[s])]
        torch.bmm(q_ext[s], k_ext_t[s], out=scores)
        torch.ops.aten._softmax.out(scores, -1, False, out=scores)
        torch.bmm(scores, v[s], out=out[s])
    y = out.view(b, attention.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return attention.proj(y)


def _sdpa_padded(q_ext: Any, k_ext: Any, v: Any, bhw: tuple[int, int, int], heads: int) -> Any:
    """softmax(q_ext·k_extᵀ)·v by the fused (flash) SDPA kernel, for a global layer.

    The fused kernels want one head dim for q, k and v; q_ext/k_ext carry d + H + W
    channels (the rel-pos bias rides in them), so v is zero-padded to that width and the
    padding's output columns are dropped. The (B·heads)×L×L scores are never written and
    the softmax runs on fp32 tiles (no bf16 rounding of the scores). Measured, one vit_b
    global layer in bf16 (12 heads, 4096 tokens, 2 cores): 127-177 ms against 214-240 ms
    for the per-head bmm-softmax-bmm loop when the scores spread widely (std ≈ 14, where
    the loop's softmax slows down; a trained model's scores could not be measured here),
    equal (≈ 140 ms) for the flat scores of random weights. Windowed layers (196 tokens) stay on the loop:
    18.7 ms there against 21.0 through SDPA (benchmarks/README.md).
    """
    import torch.nn.functional as F

    b, h, w = bhw
    d = v.shape[-1]
    v_pad = F.pad(v, (0, q_ext.shape[-1] - d))
    out = F.scaled_dot_product_attention(q_ext[None], k_ext[None], v_pad[None], scale=1.0)[0]  # (B·heads)×L×D
    return out[..., :d].reshape(b, heads, h, w, d).permute(0, 2, 3, 1, 4).reshape(b, h, w, heads * d)
