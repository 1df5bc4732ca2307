"""samseg.sam.fast_decoder.decode_masks_above: the AMG's decoder call upscales only the
prompts with a mask above the predicted-IoU threshold, and gives the same masks and IoU
as the full MaskDecoder call for them."""

from __future__ import annotations

import pytest
import torch

from samseg.sam import fast_decoder
from samseg.sam.fast_decoder import decode_masks_above, default_chunk_size, restore_decoder
from samseg.sam.model import load_model


def _inputs(sam, n: int = 13, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1, sam.prompt_encoder.embed_dim, 64, 64, generator=g)
    points = torch.rand(n, 1, 2, generator=g) * 1024
    sparse, dense = sam.prompt_encoder(points=(points, torch.ones(n, 1, dtype=torch.int)), boxes=None, masks=None)
    return image, sam.prompt_encoder.get_dense_pe(), sparse, dense


def _upscaled_rows(monkeypatch) -> list[int]:
    """Counts the prompts that go through the upscaling, chunk by chunk."""
    seen: list[int] = []
    original = fast_decoder.masks_from_tokens

    def counting(decoder, hs, keys, masks_out, ws):
        seen.append(hs.shape[0])
        return original(decoder, hs, keys, masks_out, ws)

    monkeypatch.setattr(fast_decoder, "masks_from_tokens", counting)
    return seen


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@torch.inference_mode()
def test_only_prompts_with_a_mask_above_the_threshold_are_upscaled(monkeypatch, precision) -> None:
    sam = load_model("tiny-random", device="cpu", precision=precision).sam
    args = _inputs(sam)
    ref_masks, ref_iou = sam.mask_decoder(*args, True)  # MaskDecoder.forward: float32 out
    best = ref_iou.max(1).values
    min_iou = float(best.median())  # about half of the 13 prompts pass
    expected_rows = torch.nonzero(best > min_iou)[:, 0]
    assert 0 < len(expected_rows) < 13
    seen = _upscaled_rows(monkeypatch)
    masks, iou, rows = decode_masks_above(sam.mask_decoder, *args, multimask_output=True, min_iou=min_iou)
    assert torch.equal(rows, expected_rows)
    assert sum(seen) == len(rows)  # the other prompts never reached the upscaling
    assert masks.dtype == iou.dtype == torch.float32
    assert masks.shape == (len(rows), 3, 256, 256) and iou.shape == (13, 3)
    assert torch.equal(iou, ref_iou)
    torch.testing.assert_close(masks, ref_masks[rows], rtol=0, atol=1e-5 if precision == "fp32" else 0.05)


@torch.inference_mode()
def test_no_threshold_upscales_every_prompt_and_equals_the_full_call(monkeypatch) -> None:
    sam = load_model("tiny-random", device="cpu").sam
    args = _inputs(sam, n=9)
    ref_masks, ref_iou = sam.mask_decoder(*args, True)
    seen = _upscaled_rows(monkeypatch)
    masks, iou, rows = decode_masks_above(sam.mask_decoder, *args, multimask_output=True, min_iou=None)
    assert torch.equal(rows, torch.arange(9)) and sum(seen) == 9
    torch.testing.assert_close(masks, ref_masks, rtol=0, atol=1e-5)
    assert torch.equal(iou, ref_iou)


@torch.inference_mode()
def test_threshold_above_every_iou_upscales_nothing(monkeypatch) -> None:
    sam = load_model("tiny-random", device="cpu").sam
    seen = _upscaled_rows(monkeypatch)
    masks, iou, rows = decode_masks_above(sam.mask_decoder, *_inputs(sam), multimask_output=True, min_iou=1e6)
    assert seen == [] and len(rows) == 0 and masks.shape == (0, 3, 256, 256) and iou.shape == (13, 3)


@torch.inference_mode()
def test_segment_anythings_decoder_falls_back_to_the_full_call() -> None:
    sam = restore_decoder(load_model("tiny-random", device="cpu").sam)
    args = _inputs(sam, n=5)
    ref_masks, ref_iou = sam.mask_decoder(*args, True)
    masks, iou, rows = decode_masks_above(sam.mask_decoder, *args, multimask_output=True, min_iou=0.5)
    assert torch.equal(rows, torch.arange(5)) and torch.equal(masks, ref_masks) and torch.equal(iou, ref_iou)


def test_chunk_size_follows_the_bytes_per_value() -> None:
    assert default_chunk_size(torch.float32.itemsize) == 8
    assert default_chunk_size(torch.bfloat16.itemsize) == default_chunk_size(torch.float16.itemsize) == 16
    assert default_chunk_size(torch.float64.itemsize) == 4


@torch.inference_mode()
def test_the_filter_goes_through_the_module_call_and_ends_with_it() -> None:
    """Forward hooks (the benchmarks' decoder timer) see the filtered call; the next plain
    call of the same decoder gets every prompt's masks again."""
    sam = load_model("tiny-random", device="cpu").sam
    args = _inputs(sam, n=6)
    calls: list[int] = []
    handle = sam.mask_decoder.register_forward_pre_hook(lambda _m, a: calls.append(a[2].shape[0]))
    try:
        _, _, rows = decode_masks_above(sam.mask_decoder, *args, multimask_output=True, min_iou=1e6)
        masks, _ = sam.mask_decoder(*args, True)
    finally:
        handle.remove()
    assert calls == [6, 6] and len(rows) == 0 and masks.shape[0] == 6
    assert fast_decoder._MASK_FILTER.get() is None


def test_a_filter_in_one_thread_is_not_seen_by_another() -> None:
    import threading

    sam = load_model("tiny-random", device="cpu").sam
    args = _inputs(sam, n=5)
    seen: dict[str, object] = {}
    token = fast_decoder._MASK_FILTER.set(fast_decoder._MaskFilter(1e6, slice(1, None)))
    try:
        def plain() -> None:
            with torch.inference_mode():
                seen["masks"] = sam.mask_decoder(*args, True)[0]

        t = threading.Thread(target=plain)
        t.start()
        t.join()
    finally:
        fast_decoder._MASK_FILTER.reset(token)
    assert seen["masks"].shape[0] == 5  # the other thread's filter (drop all) did not apply
