"""The two-way transformer's image side kept in factored form: no B×L×C tensor per prompt.

After layer 0, segment_anything's decoder holds a 4096×256 image-token tensor per prompt,
and every later step (add pe, project, LayerNorm, residual) is a pass over it: memory-bound
work that bf16 does not speed up on CPU (benchmarks/README.md). But a prompt's image tokens
differ from the SHARED image embedding only by attention outputs over T≈7 tokens:

    X = a ⊙ A + Zᵀ·V            (B×L×C, never formed)

A: L×C shared by every prompt (per image); a: B×L per-position scalars (the LayerNorms'
1/σ); Z: B×k×L coefficients (image→token probabilities, heads·T rows per layer, earlier
LayerNorms' 1/σ, and one row of ones whose V row is X's constant part: the biases); V:
B×k×C rows. A residual appends rows to Z and V. A LayerNorm centres every term, gets each
position's variance from Gram products (‖Ac‖², V·Acᵀ, V·Vᵀ) and rescales a and Z. Every product with A is a product with a per-image projection of A,
computed once (`_SharedA`), so per prompt only k- and head-wide work remains. The rows an
attention appends are v_h·Wo_hᵀ (v: the heads' values, d wide), so their V·Acᵀ is a
d-wide product too (`_Group`). For the prompts whose masks are upscaled, the upscaling's
first matmul reads the factors (`_Keys.linear`): X itself is never formed. Same function
up to rounding: tests/test_fast_decoder.py.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


class _SharedA:
    """A shared L×C tensor A of one image and its cached per-head projections."""

    def __init__(self, A) -> None:
        self.A = A
        self.Ac = A - A.mean(-1, keepdim=True)
        self.sq = self.Ac.pow(2).sum(-1)  # L: ‖Ac‖²
        self._cache: dict[Any, Any] = {}

    def _cached(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def proj(self, lin: Any, num_heads: int, pe=None):
        """A·Wᵀ per head, H×d×L; with pe: (A·Wᵀ | pe·Wᵀ), H×d×2L (one product for both)."""
        import torch

        a_t = self._cached(("a", id(lin)), lambda: _per_head_t(self.A, lin.weight, num_heads))
        if pe is None:
            return a_t
        return self._cached(("a+pe", id(lin)), lambda: torch.cat((a_t, _per_head_t(pe, lin.weight, num_heads)), -1))

    def linear(self, key, w_cn):
        """A·w, L×N (w C×N), cached under key."""
        return self._cached(("lin", key), lambda: self.A @ w_cn)

    def cross(self, key, basis_cd, num_heads: int):
        """Ac·basis per head, H×d×L (basis C×(H·d), the rows of a `_Group`), cached under key."""
        return self._cached(("x", key), lambda: _per_head_t(self.Ac, basis_cd.t(), num_heads))


def _per_head_t(x_lc, w_dc, num_heads: int):
    """(x·wᵀ) per head, H×d×L (x L×C, w D×C with D = H·d)."""
    xw = x_lc @ w_dc.t()  # L×D
    return xw.t().reshape(num_heads, -1, xw.shape[0]).contiguous()


@dataclasses.dataclass
class _Group:
    """Rows start..start+H·T of V equal v_h·basis_hᵀ: v H×(B·T)×d, basis C×(H·d)."""

    key: Any
    start: int
    v_hbd: Any
    basis: Any


# bf16/fp16 GEMMs (oneDNN/AMX) over 4096 positions are 2-4× slower at some odd inner
# sizes (vit_b, 16 prompts, bf16, the LayerNorm's G·Z: 114 rows 7.6-8.0 ms, 120 rows 2.5-2.7;
# 57 rows 2.2, 64 rows 1.2), while fp32 GEMMs pay for every zero row (114 rows 4.7 ms, 120
# 4.9-5.1): so the Z and V an attention leaves (what the next LayerNorm's Gram GEMMs read)
# get zero rows up to a multiple of ROW_MULTIPLE[element size]. A LayerNorm's output is not
# padded: the 56-row score GEMMs that read it do not gain (115 rows 1.8 ms, 128 rows 2.9-4.8),
# and in the whole bf16 decoder padding it too was no faster (8 alternating rounds).
ROW_MULTIPLE = {2: 8}


def _padded(n: int, like) -> int:
    m = ROW_MULTIPLE.get(like.element_size(), 1)
    return -(-n // m) * m


def _grown(x, k: int, n: int):
    """A B×pad(n)×W buffer holding x's first k rows, rows n.. zero (k..n are the caller's)."""
    out = x.new_empty((x.shape[0], _padded(n, x), x.shape[2]))
    out[:, :k] = x[:, :k]
    out[:, n:].zero_()
    return out


@dataclasses.dataclass
class _Keys:
    """X = a ⊙ A + Zᵀ·V for B prompts (a None: 1). Z B×n×L and V B×n×C hold k rows, rows
    k..n zero (padding, `_padded`); row `one` of Z is all ones, so V's row `one` is X's
    constant part (the biases) and every GEMM over Z adds it with no broadcast copy."""

    a: Any
    shared: _SharedA
    Z: Any
    V: Any
    k: int
    one: int
    groups: list[_Group]

    @property
    def shape(self):
        """(B, L, C) of X."""
        return (self.Z.shape[0], self.Z.shape[2], self.V.shape[2])

    def linear(self, key, w_cn, bias_n, out):
        """X·w + bias into out B×L×N: per prompt only Zᵀ·(V·w); A·w once per image (key)."""
        import torch

        aw = self.shared.linear(key, w_cn)
        vw = torch.matmul(self.V, w_cn)  # B×n×N
        vw[:, self.one] += bias_n
        torch.bmm(self.Z.transpose(1, 2), vw, out=out)
        return out.add_(aw) if self.a is None else out.addcmul_(self.a.unsqueeze(-1), aw)

    def select(self, keep):
        """The prompts where the B bools `keep` are True."""
        a = None if self.a is None else self.a[keep]
        groups = [_Group(g.key, g.start, _select_hbd(g.v_hbd, keep), g.basis) for g in self.groups]
        return _Keys(a, self.shared, self.Z[keep], self.V[keep], self.k, self.one, groups)

    def add_attention(self, key, probs_t, attn: Any, queries):
        """X + attn's output: probs_t B×(H·T)×L (softmax over T per head), values from queries."""
        import torch

        nh = attn.num_heads
        b, t, _ = queries.shape
        v = attn.v_proj(queries).view(b, t, nh, -1).permute(2, 0, 1, 3)  # H×B×T×d
        d = v.shape[-1]
        basis = attn.out_proj.weight  # C×(H·d)
        rows = torch.einsum("hbtd,chd->bhtc", v, basis.view(-1, nh, d)).reshape(b, nh * t, -1)
        k, n = self.k, self.k + nh * t
        z, vv = _grown(self.Z, k, n), _grown(self.V, k, n)
        z[:, k:n] = probs_t
        vv[:, k:n] = rows
        vv[:, self.one] += attn.out_proj.bias
        group = _Group(key, k, v.reshape(nh, b * t, d), basis)
        return _Keys(self.a, self.shared, z, vv, n, self.one, [*self.groups, group])


def _select_hbd(v_hbd, keep):
    """H×(B·T)×d → H×(K·T)×d for the K prompts kept."""
    nh, bt, d = v_hbd.shape
    b = len(keep)
    return v_hbd.view(nh, b, bt // b, d)[:, keep].reshape(nh, -1, d)


def start_keys(shared: _SharedA, batch: int):
    """The shared keys themselves for `batch` prompts: only the ones row (V's row 0)."""
    l, c = shared.A.shape
    z = _grown(shared.A.new_ones((batch, 1, l)), 1, 1)
    return _Keys(None, shared, z, shared.A.new_zeros((batch, z.shape[1], c)), 1, 0, [])


def _add_group_cross(gz, group: _Group, shared: _SharedA, a, num_heads: int):
    """gz[:, group rows] += 2·a ⊙ (V_group·Acᵀ), the group's cross term, d wide per head."""
    import torch

    b, _, l = gz.shape
    t = group.v_hbd.shape[1] // b
    cross = torch.bmm(group.v_hbd, shared.cross(group.key, group.basis, num_heads))  # H×BT×L
    cross = cross.view(num_heads, b, t, l).transpose(0, 1)
    rows = gz[:, group.start : group.start + num_heads * t].view(b, num_heads, t, l)
    if a is None:
        rows.add_(cross, alpha=2)
    else:
        rows.addcmul_(cross, a.view(b, 1, 1, l), value=2)


def layer_norm(keys: _Keys, norm: Any, next_shared: _SharedA, num_heads: int) -> _Keys:
    """norm(X), factored again; next_shared must be _SharedA(keys.shared.Ac ⊙ norm.weight)."""
    import torch

    shared, (b, _, l), c, k = keys.shared, keys.Z.shape, keys.V.shape[-1], keys.k
    vc = keys.V - keys.V.mean(-1, keepdim=True)  # B×n×C: centred rows (padding rows stay 0)
    # ‖centred X‖² = a²‖Ac‖² + 2a·Σ_k Z_k (Vc_k·Acᵀ) + Zᵀ·G·Z, G = Vc·Vcᵀ
    gzp = torch.bmm(torch.bmm(vc, vc.transpose(1, 2)), keys.Z)  # B×n×L, padding rows 0
    gz = gzp[:, :k]
    grouped = {j for g in keys.groups for j in range(g.start, g.start + g.v_hbd.shape[1] // b * num_heads)}
    loose = [j for j in range(k) if j not in grouped]  # the ones row, earlier norms' 1/σ rows
    for g in keys.groups:
        _add_group_cross(gz, g, shared, keys.a, num_heads)
    if loose:
        cross = (vc[:, loose].reshape(-1, c) @ shared.Ac.t()).view(b, len(loose), l)
        a2 = 2 if keys.a is None else 2 * keys.a.unsqueeze(1)
        gz.index_add_(1, torch.tensor(loose, device=gz.device), cross * a2)
    # the statistics in fp32: a bf16 sum of 114 terms that partly cancel loses digits. In
    # bf16 the sum over rows is a GEMM with ones (fp32 accumulation, one read) rather than
    # sum(dtype=fp32), which first copies all k×L products to fp32 (120 rows, 16 prompts: 2.8-3.4 → 1.1-1.2 ms)
    f = torch.promote_types(keys.Z.dtype, torch.float32)
    sq = shared.sq.to(f)
    prod = gzp.mul_(keys.Z)
    var = prod.sum(1) if prod.dtype == f else torch.bmm(prod.new_ones((b, 1, prod.shape[1])), prod)[:, 0].to(f)
    var += sq if keys.a is None else keys.a.to(f).square() * sq
    r = torch.rsqrt(var.div_(c).clamp_(min=0).add_(norm.eps)).to(keys.Z.dtype)  # B×L
    z = keys.Z.new_empty((b, k + 1, l))  # not padded: see ROW_MULTIPLE
    torch.mul(keys.Z[:, :k], r.unsqueeze(1), out=z[:, :k])
    z[:, k] = 1
    v = vc.new_empty((b, k + 1, c))
    torch.mul(vc[:, :k], norm.weight, out=v[:, :k])
    v[:, k] = norm.bias
    weight = norm.weight.unsqueeze(-1)
    groups = [_Group(g.key, g.start, g.v_hbd, (g.basis - g.basis.mean(0)) * weight) for g in keys.groups]
    return _Keys(r if keys.a is None else r * keys.a, next_shared, z, v, k + 1, k, groups)


def scores(keys: _Keys, q_heads, w_lin: Any, pe, bias):
    """s[b, (h,t), l] = q[b,h,t] · W_h(X[b,l] + pe[l]) + bias: B×(H·T)×L.
    q_heads B×H×T×d (already scaled), pe L×C or None, bias B×(H·T)×1 or None."""
    import torch

    b, nh, t, d = q_heads.shape
    l = keys.Z.shape[-1]
    qw = torch.einsum("bhtd,hdc->bhtc", q_heads, w_lin.weight.view(nh, d, -1)).reshape(b, nh * t, -1)
    m = torch.bmm(qw, keys.V.transpose(1, 2))  # B×HT×n
    if bias is not None:
        m[:, :, keys.one] += bias[..., 0]  # a constant along l rides on the ones row
    out = torch.bmm(m, keys.Z)
    q_hbd = q_heads.transpose(0, 1).reshape(nh, b * t, d)
    shared = torch.bmm(q_hbd, keys.shared.proj(w_lin, nh, pe)).view(nh, b, t, -1).transpose(0, 1)  # B×H×T×(L|2L)
    view = out.view(b, nh, t, l)
    if keys.a is None:
        view += shared[..., :l]
    else:
        view.addcmul_(shared[..., :l], keys.a.view(b, 1, 1, l))
    if pe is not None:
        view += shared[..., l:]
    return out


def weighted_values(keys: _Keys, probs, v_lin: Any, num_heads: int):
    """Σ_l probs[b,(h,t),l] · (Wv_h X[b,l] + bv_h): B×H×T×d (probs sum to 1 over l)."""
    import torch

    b, ht, l = probs.shape
    t = ht // num_heads
    pa = probs.new_empty((num_heads, b, t, l))
    p4 = probs.view(b, num_heads, t, l).transpose(0, 1)
    if keys.a is None:
        pa.copy_(p4)
    else:
        torch.mul(p4, keys.a.view(1, b, 1, l), out=pa)
    va = keys.shared.proj(v_lin, num_heads).transpose(1, 2)  # H×L×d
    out = torch.bmm(pa.view(num_heads, b * t, l), va).view(num_heads, b, t, -1).transpose(0, 1)  # B×H×T×d
    d = out.shape[-1]
    pv = torch.bmm(torch.bmm(probs, keys.Z.transpose(1, 2)), keys.V)  # B×HT×C, the ones row: Σ probs = 1
    wv = v_lin.weight.view(num_heads, d, -1)
    return out + torch.einsum("bhtc,hdc->bhtd", pv.view(b, num_heads, t, -1), wv) + v_lin.bias.view(num_heads, 1, d)


def heads_scaled(x, num_heads: int):
    """B×T×D → B×H×T×d, divided by √d."""
    return _heads(x, num_heads) / math.sqrt(x.shape[-1] // num_heads)


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


def _softmax_over_tokens(scores_t, num_heads: int):
    """B×(H·T)×L scores → probabilities normalised over T within each head, same layout.

    The image→token softmax runs over only T≈7 tokens for each of 4096 pixels: as rows of
    7 (B×L×H×T) PyTorch's CPU kernel is far slower than over the middle axis of
    B×H×T×L, where it vectorises along L.
    """
    import torch

    b, ht, l = scores_t.shape
    return torch.softmax(scores_t.view(b, num_heads, ht // num_heads, l), dim=2).view(b, ht, l)


def transformer_chunk(decoder: Any, tokens, image: ImageState, ws: Any):
    """The two-way transformer for a chunk of B prompts (tokens B×T×C) on one image:
    the output tokens hs B×T×C and the image tokens as factored `_Keys`; ws: a
    fast_decoder._Workspace."""
    import torch

    layer0, shared, pe = image.layer0, image.shared, image.pe
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
    l = shared[0].A.shape[0]
    scores_t = ws.get("scores0", (b, nh, t, l), shared[0].A)
    for i in range(b):  # one bmm per prompt against the shared H×d×L queries: no broadcast copy
        torch.bmm(k[i], layer0.q_img2tok_t, out=scores_t[i])
    probs_t = _softmax_over_tokens(scores_t.view(b, nh * t, l), nh)
    keys = start_keys(shared[0], b).add_attention(0, probs_t, i2t, queries)
    keys = layer_norm(keys, first.norm4, shared[1], i2t.num_heads)  # per prompt from here on
    for li, layer in enumerate(tr.layers[1:], 1):
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        queries = _queries_block(layer, queries, query_pe, lambda q: _attend(t2i, q, keys, pe))
        kt = heads_scaled(i2t.k_proj(queries + query_pe), i2t.num_heads)
        bias = torch.einsum("bhtd,hd->bht", kt, i2t.q_proj.bias.view(i2t.num_heads, -1)).reshape(b, -1, 1)
        probs_t = _softmax_over_tokens(scores(keys, kt, i2t.q_proj, pe, bias), i2t.num_heads)
        keys = keys.add_attention(li, probs_t, i2t, queries)
        keys = layer_norm(keys, layer.norm4, shared[li + 1], i2t.num_heads)
    hs = tr.norm_final_attn(queries + _attend(tr.final_attn_token_to_image, queries + query_pe, keys, pe))
    return hs, keys


@dataclasses.dataclass
class ImageState:
    """What every prompt on one image shares: keys0 and pe L×C, layer 0's image-side work,
    the `_SharedA` of every stage (keys0, then Ac ⊙ weight after each layer's norm4)."""

    keys0: Any
    pe: Any
    layer0: _Layer0Shared
    shared: list[_SharedA]


def image_state(decoder: Any, image_embeddings, image_pe, shared_dense) -> ImageState:
    """ImageState of a 1×C×h×w image whose prompts share the C×h×w dense embedding."""
    keys0 = (image_embeddings[0] + shared_dense).flatten(1).t().contiguous()  # L×C, L = h·w
    pe = image_pe[0].flatten(1).t().contiguous()
    shared = [_SharedA(keys0)]
    for layer in decoder.transformer.layers:
        shared.append(_SharedA(shared[-1].Ac * layer.norm4.weight))
    return ImageState(keys0, pe, _Layer0Shared(decoder.transformer.layers[0], keys0, pe), shared)


def _attend(attn: Any, q_in, keys: _Keys, pe):
    """Token→image attention of the tokens q_in B×T×C to the factored keys (+ pe): B×T×C."""
    import torch

    q = heads_scaled(attn.q_proj(q_in), attn.num_heads)
    probs = torch.softmax(scores(keys, q, attn.k_proj, pe, None), dim=-1)  # the k bias is constant along L
    return attn.out_proj(_recombine(weighted_values(keys, probs, attn.v_proj, attn.num_heads)))
