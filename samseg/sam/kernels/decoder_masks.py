"""The fast decoder's output side: the upscaling as a per-pixel MLP, the hypernetwork
product and the mask assembly (see samseg.sam.kernels.decoder, points 3, 5 and 6).

segment_anything's output_upscaling is ConvTranspose2d(2, 2) → LayerNorm2d → GELU →
ConvTranspose2d(2, 2) → GELU on a B×C×h×w tensor. Both transposed convs have stride =
kernel, so each is a per-pixel linear map; on the token layout (B·L rows, L = h·w) they are
two plain matmuls and the masks come out in the convs' pixel order, moved into place by
`_interleave_4x4`.
"""

from __future__ import annotations

from typing import Any


def _layer_norm(norm: Any, x):
    """norm(x), a LayerNorm over the last axis, into a fresh tensor: the out= variant
    computes into a temporary and copies it over, one more pass than a fresh page costs
    (64 vit_b prompts: 14.5 → 13.9 ms per prompt in fp32, 8.7 → 8.3 in bf16)."""
    import torch

    return torch.nn.functional.layer_norm(x, [x.shape[-1]], norm.weight, norm.bias, norm.eps)


def _gelu_(act: Any, x):
    """act(x), in place on the fresh temporary x when act is an nn.GELU: a new 16-32 MB
    output would be a fresh mmap whose page faults cost 4× the GELU itself here."""
    import torch

    if isinstance(act, torch.nn.GELU):
        return torch.ops.aten.gelu_(x, approximate=act.approximate)
    return act(x)


# Widest integer/complex dtype per byte count: a run of values copied as one element.
_UNITS = ((16, "complex128"), (8, "int64"), (4, "int32"), (2, "int16"), (1, "uint8"))


def _runs(x, shape: tuple[int, ...], run: int):
    """Contiguous x viewed as `shape` + runs of `run` values, each run packed into as few
    wide elements as its bytes allow (shape + (k,)); None when x's offset forbids it."""
    import torch

    nbytes = run * x.element_size()
    size, name = next((s, n) for s, n in _UNITS if nbytes % s == 0)
    if not x.is_contiguous() or (x.storage_offset() * x.element_size()) % size:
        return None
    return x.view(getattr(torch, name)).view(*shape, nbytes // size)


def _interleave_4x4(src, out, tmp) -> None:
    """out[n, 4i + 2ki + ki2, 4j + 2kj + kj2] = src[n, i, j, ki, kj, ki2, kj2] (N×h×w×16 →
    N×4h×4w, the two stride-2 transposed convs' pixel order), through `tmp` (src's size).

    One permuted copy of that 8-d view has a 2-value innermost run and crawled (5.8 ms
    per 4 vit_b prompts in fp32). Two copies of whole runs instead: (kj, ki2, kj2) moves
    as one 8-value unit to give (i, ki, j, kj, ki2, kj2), then each kj2 pair moves as one
    element to give the final order — 0.6 ms, bit-identical (the values are only moved)."""
    n, h, w = src.shape[:3]
    s1, t1 = _runs(src, (n, h, w, 2), 8), _runs(tmp, (n, h, 2, w), 8)
    s2, t2 = _runs(tmp, (n, 2 * h, 2 * w, 2), 2), _runs(out, (n, 2 * h, 2, 2 * w), 2)
    if any(v is None for v in (s1, t1, s2, t2)):
        out.view(n, h, 2, 2, w, 2, 2).copy_(src.view(n, h, w, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4, 6))
        return
    t1.copy_(s1.permute(0, 1, 3, 2, 4))
    t2.copy_(s2.permute(0, 1, 3, 2, 4))


def masks_from_tokens(decoder: Any, hs, keys, masks_out, ws: Any) -> None:
    """Upscaling as a per-pixel MLP + hypernetwork product. hs B×T×C, keys the image
    tokens as samseg.sam.kernels.decoder_factored's `_Keys` (.shape (B, L, C), L = h·w, and
    .linear(key, w C×N, bias N, out B×L×N) = keys·w + bias) → mask logits written into
    masks_out B×M×4h×4w (M = num_mask_tokens)."""
    import torch

    ct1, ln, act1, ct2, act2 = decoder.output_upscaling
    b, l, c = keys.shape
    _, nm, h4, w4 = masks_out.shape
    c4, c8 = ct1.out_channels, ct2.out_channels
    # ConvTranspose2d(k=2, s=2) = per input pixel a C → (2·2·C_out) linear map; weight is
    # C_in×C_out×kh×kw, reordered to C_in×(kh·kw·C_out) so C_out is innermost for the LN.
    w1 = ct1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c4)
    y = keys.linear(id(ct1), w1, ct1.bias.repeat(4), ws.get("up1", (b, l, 4 * c4), hs))
    y = _gelu_(act1, _layer_norm(ln, y.view(b * l * 4, c4)))
    w2 = ct2.weight.permute(0, 2, 3, 1).reshape(c4, 4 * c8)
    z = _gelu_(act2, torch.addmm(ct2.bias.repeat(4), y, w2, out=ws.get("up2", (b * l * 4, 4 * c8), hs)))
    hyper = torch.stack([mlp(hs[:, 1 + i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1)
    # B×M×(L·16): per mask, rows (i, j, ki, kj, ki2, kj2) = pixel (4i + 2ki + ki2, 4j + 2kj + kj2)
    m = torch.bmm(hyper, z.view(b, l * 16, c8).transpose(1, 2), out=ws.get("masks", (b, nm, l * 16), hs))
    h, w = h4 // 4, w4 // 4
    _interleave_4x4(m.view(b * nm, h, w, 16), masks_out.view(b * nm, h4, w4), ws.get("masks_tmp", (b * nm, l * 16), hs))
