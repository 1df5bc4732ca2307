"""samseg.sam.kernels.decoder computes segment_anything's MaskDecoder output (fp32 tolerance)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from samseg.sam.kernels.decoder import decode_masks_above, fast_predict_masks

# (transformer_dim, depth, mlp_dim, heads, iou_head_hidden_dim): tiny-random's decoder and
# the real SAM decoder (identical for vit_b/l/h: dim 256, depth 2, mlp 2048, 8 heads).
TINY = (32, 2, 64, 2, 32)
REAL = (256, 2, 2048, 8, 256)


def _decoder_and_prompts(dims, seed: int = 0):
    dim, depth, mlp, heads, iou_hidden = dims
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        transformer = TwoWayTransformer(depth=depth, embedding_dim=dim, mlp_dim=mlp, num_heads=heads)
        dec = MaskDecoder(transformer_dim=dim, transformer=transformer, iou_head_hidden_dim=iou_hidden).eval()
        pe = PromptEncoder(embed_dim=dim, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16)
        image = torch.randn(1, dim, 64, 64)
    return dec, pe.eval(), image


def _point_prompts(pe, n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(n, 1, 2, generator=g) * 1024
    labels = torch.ones(n, 1, dtype=torch.int)
    return pe(points=(points, labels), boxes=None, masks=None)


def _assert_close(ref, got, atol: float) -> None:
    assert got.shape == ref.shape
    err = (got - ref).abs().max().item()
    assert err <= atol * max(1.0, ref.abs().max().item()), f"max abs error {err}"


@pytest.mark.parametrize("dims", [TINY, REAL], ids=["tiny-dims", "vit-dims-256"])
@torch.inference_mode()
def test_fast_predict_masks_matches_segment_anything(dims):
    dec, pe, image = _decoder_and_prompts(dims)
    sparse, dense = _point_prompts(pe, n=5)
    ref_masks, ref_iou = dec.predict_masks(image, pe.get_dense_pe(), sparse, dense)
    # chunk_size=2 leaves a ragged last chunk (5 = 2+2+1).
    masks, iou = fast_predict_masks(dec, image, pe.get_dense_pe(), sparse, dense, chunk_size=2)
    assert masks.shape == (5, dec.num_mask_tokens, 256, 256)
    _assert_close(ref_masks, masks, atol=1e-5)
    _assert_close(ref_iou, iou, atol=1e-5)
    assert torch.equal(ref_masks > 0, masks > 0) or ((ref_masks > 0) != (masks > 0)).float().mean() < 1e-5


@torch.inference_mode()
def test_box_prompts_change_token_count_and_still_match():
    dec, pe, image = _decoder_and_prompts(TINY)
    boxes = torch.tensor([[10.0, 20.0, 300.0, 400.0], [500.0, 100.0, 900.0, 1000.0]])
    sparse, dense = pe(points=None, boxes=boxes, masks=None)
    ref = dec.predict_masks(image, pe.get_dense_pe(), sparse, dense)
    got = fast_predict_masks(dec, image, pe.get_dense_pe(), sparse, dense)
    _assert_close(ref[0], got[0], atol=1e-5)
    _assert_close(ref[1], got[1], atol=1e-5)


@torch.inference_mode()
def test_per_prompt_mask_inputs_fall_back_to_the_original():
    dec, pe, image = _decoder_and_prompts(TINY)
    points = torch.tensor([[[100.0, 200.0]], [[700.0, 50.0]]])
    labels = torch.ones(2, 1, dtype=torch.int)
    mask_in = torch.randn(2, 1, 256, 256)
    sparse, dense = pe(points=(points, labels), boxes=None, masks=mask_in)
    ref = dec.predict_masks(image, pe.get_dense_pe(), sparse, dense)
    got = fast_predict_masks(dec, image, pe.get_dense_pe(), sparse, dense)
    assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])


def _tiny_sam(seed: int = 0) -> Sam:
    dim = 32
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = ImageEncoderViT(img_size=1024, patch_size=16, embed_dim=16, depth=1, num_heads=2, out_chans=dim,
                                  window_size=14, global_attn_indexes=())
        dec, pe, _ = _decoder_and_prompts(TINY, seed)
        sam = Sam(image_encoder=encoder, prompt_encoder=pe, mask_decoder=dec)
    return sam.eval()


@torch.no_grad()
def test_fast_kernels_match_sam_predictor_and_touch_no_module():
    from segment_anything import SamPredictor

    from samseg.sam.kernels import decode
    from samseg.sam.model import LoadedModel

    sam = _tiny_sam()
    keys_before = list(sam.state_dict())
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(120, 200, 3), dtype=np.uint8)
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    coords = torch.as_tensor(predictor.transform.apply_coords(np.array([[[30.0, 40.0]], [[150.0, 90.0]], [[10.0, 110.0]]]), image.shape[:2]), dtype=torch.float)
    labels = torch.ones(3, 1, dtype=torch.int)
    before, _, _ = predictor.predict_torch(coords, labels, multimask_output=True, return_logits=True)
    fast = LoadedModel(sam=sam, model_type="tiny", checkpoint_path=None, checkpoint_sha256="", device="cpu", kernels="fast")
    sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    pe = sam.prompt_encoder.get_dense_pe()
    for multimask in (True, False):
        _, ref_iou, ref_low = predictor.predict_torch(coords, labels, multimask_output=multimask, return_logits=True)
        low, iou, rows = decode(fast, predictor.features, pe, sparse, dense, multimask)
        assert low.shape == (3, 3 if multimask else 1, 256, 256) and torch.equal(rows, torch.arange(3))
        _assert_close(ref_low, low, atol=1e-5)
        _assert_close(ref_iou, iou, atol=1e-5)
        chunked, _, _ = decode_masks_above(sam.mask_decoder, predictor.features, pe, sparse, dense, multimask, None,
                                           chunk_size=2)
        _assert_close(ref_low, chunked, atol=1e-5)
    assert list(sam.state_dict()) == keys_before
    assert not any("forward" in m.__dict__ or "predict_masks" in m.__dict__ for m in sam.modules())
    after, _, _ = predictor.predict_torch(coords, labels, multimask_output=True, return_logits=True)
    assert torch.equal(after, before) and after.shape == (3, 3, 120, 200)  # segment_anything's path untouched


def test_bad_chunk_size_is_rejected():
    sam = _tiny_sam()
    image = torch.zeros(1, sam.prompt_encoder.embed_dim, 64, 64)
    sparse, dense = sam.prompt_encoder(points=(torch.zeros(1, 1, 2), torch.ones(1, 1, dtype=torch.int)), boxes=None,
                                       masks=None)
    with pytest.raises(ValueError, match="chunk_size"):
        decode_masks_above(sam.mask_decoder, image, sam.prompt_encoder.get_dense_pe(), sparse, dense, True, None,
                           chunk_size=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.uint8])
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "odd-offset-fallback"])
def test_interleave_4x4_puts_each_value_at_its_transposed_conv_pixel(dtype, offset):
    """The run copies (values packed into wide elements) and the plain fallback (a view
    whose offset forbids packing) both place src[n, i, j, ki, kj, ki2, kj2] at
    out[n, 4i + 2ki + ki2, 4j + 2kj + kj2]."""
    from samseg.sam.kernels.decoder_masks import _interleave_4x4

    n, h, w = 3, 5, 7
    src = (torch.rand(n * h * w * 16 + offset, generator=torch.Generator().manual_seed(0)) * 100).to(dtype)[offset:]
    src = src.view(n, h, w, 16)
    out, tmp = torch.empty(n, 4 * h, 4 * w, dtype=dtype), torch.empty(n * h * w * 16, dtype=dtype)
    _interleave_4x4(src, out, tmp)
    ref = torch.empty_like(out)
    for i, j, ki, kj, ki2, kj2 in itertools.product(range(h), range(w), *[range(2)] * 4):
        ref[:, 4 * i + 2 * ki + ki2, 4 * j + 2 * kj + kj2] = src[:, i, j, 8 * ki + 4 * kj + 2 * ki2 + kj2]
    assert torch.equal(out, ref)


@torch.inference_mode()
def test_deeper_transformer_keeps_every_layers_rows_factored_and_matches():
    # depth 3: rows of three attentions pass through up to three LayerNorms (SAM has 2)
    dec, pe, image = _decoder_and_prompts((32, 3, 64, 2, 32))
    sparse, dense = _point_prompts(pe, n=3)
    ref_masks, ref_iou = dec.predict_masks(image, pe.get_dense_pe(), sparse, dense)
    masks, iou = fast_predict_masks(dec, image, pe.get_dense_pe(), sparse, dense, chunk_size=2)
    _assert_close(ref_masks, masks, atol=1e-5)
    _assert_close(ref_iou, iou, atol=1e-5)


@torch.inference_mode()
def test_factored_layer_norm_of_offset_tokens_equals_the_dense_one():
    # a mean of 1e3 on every token: variance from raw second moments would lose every digit
    from samseg.sam.kernels.decoder_factored import _SharedA, layer_norm, start_keys

    g = torch.Generator().manual_seed(0)
    l, c, nh, t, b = 64, 32, 2, 3, 2
    shared = _SharedA(torch.randn(l, c, generator=g, dtype=torch.float64) + 1e3)
    attn = torch.nn.MultiheadAttention(c, nh).double()  # only for an out_proj-like weight
    lin = type("Attn", (), {})()
    lin.num_heads = nh
    lin.v_proj = torch.nn.Linear(c, c).double()
    lin.out_proj = attn.out_proj
    probs = torch.softmax(torch.randn(b, nh, t, l, generator=g, dtype=torch.float64), dim=2).view(b, nh * t, l)
    keys = start_keys(shared, b).add_attention(0, probs, lin, torch.randn(b, t, c, generator=g, dtype=torch.float64))
    norm = torch.nn.LayerNorm(c).double()
    torch.nn.init.normal_(norm.weight, generator=g)
    torch.nn.init.normal_(norm.bias, generator=g)
    got = layer_norm(keys, norm, _SharedA(shared.Ac * norm.weight), nh)
    ref = norm(_dense(keys))
    assert torch.allclose(_dense(got), ref, atol=1e-9)
    assert torch.allclose(_dense(got.select(torch.tensor([False, True]))), ref[1:], atol=1e-9)
    w = torch.randn(c, 5, generator=g, dtype=torch.float64)
    out = torch.empty(b, l, 5, dtype=torch.float64)
    assert torch.allclose(got.linear("w", w, torch.ones(5, dtype=torch.float64), out), ref @ w + 1, atol=1e-9)


def _dense(keys):
    """X = a ⊙ A + Zᵀ·V of factored keys, written out from its fields (B×L×C)."""
    x = torch.bmm(keys.Z.transpose(1, 2), keys.V)
    return x + keys.shared.A if keys.a is None else x + keys.a.unsqueeze(-1) * keys.shared.A


def test_image_cache_reuses_one_image_and_misses_on_any_change(monkeypatch):
    from samseg.sam.kernels import decoder as fast_decoder

    dec, pe, image = _decoder_and_prompts(TINY)  # weights made outside inference mode, as load_model does
    with torch.inference_mode():
        _check_cache_reuse(monkeypatch, fast_decoder, dec, pe, image)


def _check_cache_reuse(monkeypatch, fast_decoder, dec, pe, image):
    sparse, dense = _point_prompts(pe, n=4)
    built = []
    original = fast_decoder.image_state
    monkeypatch.setattr(fast_decoder, "image_state", lambda *a: built.append(1) or original(*a))
    cache = fast_decoder._ImageCache()

    def call(img):
        return fast_predict_masks(dec, img, pe.get_dense_pe(), sparse, dense, cache=cache)

    first = call(image)
    again = call(image.clone())  # equal content, another tensor: the AMG's next batch
    assert len(built) == 1 and torch.equal(first[0], again[0])
    other = image + 1
    _assert_close(dec.predict_masks(other, pe.get_dense_pe(), sparse, dense)[0], call(other)[0], atol=1e-5)
    assert len(built) == 2


def test_image_changed_in_place_between_calls_is_not_served_from_cache():
    from samseg.sam.kernels import decoder as fast_decoder

    dec, pe, image = _decoder_and_prompts(TINY)
    with torch.inference_mode():
        sparse, dense = _point_prompts(pe, n=3)
        cache = fast_decoder._ImageCache()
        fast_predict_masks(dec, image, pe.get_dense_pe(), sparse, dense, cache=cache)
        assert cache._last is not None  # the first call filled it
        image.mul_(-1)  # the caller reuses its buffer for the next image
        ref = dec.predict_masks(image, pe.get_dense_pe(), sparse, dense)[0]
        got = fast_predict_masks(dec, image, pe.get_dense_pe(), sparse, dense, cache=cache)[0]
    _assert_close(ref, got, atol=1e-5)


def test_weights_loaded_in_place_between_calls_are_not_served_from_cache():
    from samseg.sam.kernels import decoder as fast_decoder

    dec, pe, image = _decoder_and_prompts(TINY)
    other, _, _ = _decoder_and_prompts(TINY, seed=3)
    sparse, dense = _point_prompts(pe, n=3)
    cache = fast_decoder._ImageCache()
    with torch.inference_mode():
        fast_predict_masks(dec, image, pe.get_dense_pe(), sparse, dense, cache=cache)
    assert cache._last is not None
    dec.load_state_dict(other.state_dict())  # copies into the same storage: only the versions move
    with torch.inference_mode():
        ref = dec.predict_masks(image, pe.get_dense_pe(), sparse, dense)[0]
        _assert_close(ref, fast_predict_masks(dec, image, pe.get_dense_pe(), sparse, dense, cache=cache)[0], atol=1e-5)


@pytest.mark.parametrize("dims", [TINY, REAL], ids=["tiny-dims", "vit-dims-256"])
@torch.inference_mode()
def test_zero_padding_rows_of_the_factored_keys_change_nothing(monkeypatch, dims):
    # bf16 pads Z and V with zero rows for its GEMMs; forced here in fp32 (16 rows, so
    # every stage has padding) the outputs must still be segment_anything's
    from samseg.sam.kernels import decoder_factored as fast_decoder_factored

    monkeypatch.setitem(fast_decoder_factored.ROW_MULTIPLE, 4, 16)
    dec, pe, image = _decoder_and_prompts(dims)
    sparse, dense = _point_prompts(pe, n=3)
    ref_masks, ref_iou = dec.predict_masks(image, pe.get_dense_pe(), sparse, dense)
    masks, iou = fast_predict_masks(dec, image, pe.get_dense_pe(), sparse, dense, chunk_size=2)
    _assert_close(ref_masks, masks, atol=1e-5)
    _assert_close(ref_iou, iou, atol=1e-5)
    i2t = dec.transformer.layers[0].cross_attn_image_to_token
    shared = fast_decoder_factored.image_state(dec, image, pe.get_dense_pe(), dense[0]).shared[0]
    probs = torch.rand(2, i2t.num_heads, 4096)  # 2 prompts, 1 token each
    keys = fast_decoder_factored.start_keys(shared, 2).add_attention(0, probs, i2t, torch.randn(2, 1, dims[0]))
    assert keys.k == 1 + i2t.num_heads and keys.Z.shape[1] == 16 == keys.V.shape[1]  # the ones row + 1 token
    assert not keys.Z[:, keys.k :].any() and not keys.V[:, keys.k :].any()
    assert torch.equal(keys.Z[:, keys.one], torch.ones(2, 4096))


@torch.inference_mode()
def test_bf16_decoder_with_its_padded_gemms_agrees_with_fp32_segment_anything():
    # the bf16 path pads Z and V (8 rows) and sums the LayerNorm's variance by a GEMM;
    # garbage in a padding row gives NaN or wrong signs here (measured: 1.1% mean relative
    # error, 99.7% of mask pixels on the same side of 0, IoU within 0.002)
    dec, pe, image = _decoder_and_prompts(REAL)
    sparse, dense = _point_prompts(pe, n=20)
    ref_masks, ref_iou = dec.predict_masks(image, pe.get_dense_pe(), sparse, dense)
    b16 = [x.to(torch.bfloat16) for x in (image, pe.get_dense_pe(), sparse, dense)]
    masks, iou = (x.float() for x in fast_predict_masks(dec.to(torch.bfloat16), *b16))
    assert (masks - ref_masks).abs().mean() < 0.03 * ref_masks.abs().mean()
    assert ((masks > 0) == (ref_masks > 0)).float().mean() > 0.99
    assert (iou - ref_iou).abs().max() < 0.02
