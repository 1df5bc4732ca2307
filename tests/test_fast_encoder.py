"""samseg.sam.kernels.encoder computes segment_anything's image-encoder Attention (fp32 tolerance)."""

from __future__ import annotations

import pytest
import torch
from segment_anything.modeling.image_encoder import Attention, Block

from samseg.sam.kernels.encoder import encoder_forward, fast_attention_forward, patch_embed_token_major
from samseg.sam.model import build_tiny_random


def _attention(dim: int, heads: int, hw: int, use_rel_pos: bool = True, seed: int = 0) -> Attention:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        attn = Attention(dim, heads, qkv_bias=True, use_rel_pos=use_rel_pos, input_size=(hw, hw)).eval()
        if use_rel_pos:  # SAM zero-initialises rel-pos tables; random ones exercise the bias path
            with torch.no_grad():
                attn.rel_pos_h.normal_(0.0, 0.5)
                attn.rel_pos_w.normal_(0.0, 0.5)
    return attn


def _assert_close(ref: torch.Tensor, got: torch.Tensor, atol: float = 1e-5) -> None:
    assert got.shape == ref.shape
    err = (got - ref).abs().max().item()
    assert err <= atol * max(1.0, ref.abs().max().item()), f"max abs error {err}"


# (dim, heads, windows B, side): tiny-random's windowed layer; vit_b's windowed layer
# (64² grid padded to 70², 25 windows of 14²) with fewer windows to stay CPU-cheap; a
# vit_b-width global layer on a 32² grid (64² = 4096 tokens costs seconds per call here).
CASES = [(32, 2, 3, 14), (768, 12, 2, 14), (768, 12, 1, 32)]


@pytest.mark.parametrize("case", CASES, ids=["tiny-window", "vit_b-window", "vit_b-global-32"])
@torch.inference_mode()
def test_fast_attention_matches_segment_anything(case):
    dim, heads, b, side = case
    attn = _attention(dim, heads, side)
    x = torch.randn(b, side, side, dim, generator=torch.Generator().manual_seed(1))
    ref = Attention.forward(attn, x)
    got = fast_attention_forward(attn, x)
    _assert_close(ref, got)


@torch.inference_mode()
def test_without_rel_pos_and_with_many_windows_in_groups():
    attn = _attention(32, 2, 14, use_rel_pos=False)
    x = torch.randn(40, 14, 14, 32, generator=torch.Generator().manual_seed(2))  # 80 window-heads > one group
    _assert_close(Attention.forward(attn, x), fast_attention_forward(attn, x))


@torch.inference_mode()
def test_vit_b_global_block_shapes_on_meta_device():
    """The real vit_b global block (64² tokens) keeps its shape through the fast path."""
    with torch.device("meta"):
        block = Block(768, 12, use_rel_pos=True, window_size=0, input_size=(64, 64))
        y = fast_attention_forward(block.attn, torch.empty(1, 64, 64, 768))
    assert y.shape == (1, 64, 64, 768)


@torch.inference_mode()
def test_fast_encoder_forward_equals_segment_anythings_and_touches_no_module():
    sam = build_tiny_random(seed=0)
    for m in sam.image_encoder.modules():  # non-zero rel-pos tables so the bias matters
        if isinstance(m, Attention):
            torch.nn.init.normal_(m.rel_pos_h, 0.0, 0.5, generator=torch.Generator().manual_seed(3))
            torch.nn.init.normal_(m.rel_pos_w, 0.0, 0.5, generator=torch.Generator().manual_seed(4))
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(5))
    ref = sam.image_encoder(x)
    keys = list(sam.state_dict())
    _assert_close(ref, encoder_forward(sam.image_encoder, x))
    assert list(sam.state_dict()) == keys
    # SAM's patch embedding is a channel-major view; the fast one is token-major, same values
    tokens = patch_embed_token_major(sam.image_encoder.patch_embed, x)
    assert tokens.is_contiguous() and tokens.shape == (1, 64, 64, sam.image_encoder.patch_embed.proj.out_channels)
    assert not sam.image_encoder.patch_embed(x).is_contiguous() and torch.equal(tokens, sam.image_encoder.patch_embed(x))
    # segment_anything's modules are untouched: the reference path is still bit for bit itself
    assert torch.equal(ref, sam.image_encoder(x))
    assert not any("forward" in m.__dict__ for m in sam.modules())
