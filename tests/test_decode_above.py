"""samseg.sam.kernels.decoder.decode_masks_above: the AMG's decoder call upscales only the
prompts with a mask above the predicted-IoU threshold, and gives the same masks and IoU
as the full MaskDecoder call for them."""

from __future__ import annotations

import pytest
import torch

from samseg.sam.kernels import decoder as fast_decoder
from samseg.sam.kernels.decoder import decode_masks_above, default_chunk_size
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
    from samseg.sam.kernels import decode

    model = load_model("tiny-random", device="cpu", precision=precision)
    args = _inputs(model.sam)
    ref_masks, ref_iou, _ = decode(model, *args, multimask_output=True)  # the full call: float32 out
    best = ref_iou.max(1).values
    min_iou = float(best.median())  # about half of the 13 prompts pass
    expected_rows = torch.nonzero(best > min_iou)[:, 0]
    assert 0 < len(expected_rows) < 13
    seen = _upscaled_rows(monkeypatch)
    masks, iou, rows = decode(model, *args, multimask_output=True, min_iou=min_iou)
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
    torch.testing.assert_close(masks, ref_masks, rtol=0, atol=1e-5)  # segment_anything's own module
    torch.testing.assert_close(iou, ref_iou, rtol=0, atol=1e-5)


@torch.inference_mode()
def test_threshold_above_every_iou_upscales_nothing(monkeypatch) -> None:
    sam = load_model("tiny-random", device="cpu").sam
    seen = _upscaled_rows(monkeypatch)
    masks, iou, rows = decode_masks_above(sam.mask_decoder, *_inputs(sam), multimask_output=True, min_iou=1e6)
    assert seen == [] and len(rows) == 0 and masks.shape == (0, 3, 256, 256) and iou.shape == (13, 3)


@torch.inference_mode()
def test_segment_anythings_kernels_give_the_full_call() -> None:
    from samseg.sam.kernels import decode

    model = load_model("tiny-random", device="cpu", kernels="sam")
    args = _inputs(model.sam, n=5)
    ref_masks, ref_iou = model.sam.mask_decoder(*args, True)
    masks, iou, rows = decode(model, *args, multimask_output=True, min_iou=0.5)
    assert torch.equal(rows, torch.arange(5)) and torch.equal(masks, ref_masks) and torch.equal(iou, ref_iou)


def test_chunk_size_follows_the_bytes_per_value() -> None:
    assert default_chunk_size(torch.float32.itemsize) == 8
    assert default_chunk_size(torch.bfloat16.itemsize) == default_chunk_size(torch.float16.itemsize) == 16
    assert default_chunk_size(torch.float64.itemsize) == 4


@torch.inference_mode()
def test_the_filter_is_an_argument_and_ends_with_the_call() -> None:
    """The kernels' observers see the filtered call; the next call without a threshold gets
    every prompt's masks again (nothing is left installed on the decoder)."""
    from samseg.sam.kernels import decode, observe

    model = load_model("tiny-random", device="cpu")
    args = _inputs(model.sam, n=6)
    calls: list[tuple[str, int]] = []
    with observe(lambda part, _s, prompts: calls.append((part, prompts))):
        _, _, rows = decode(model, *args, multimask_output=True, min_iou=1e6)
        masks, _, _ = decode(model, *args, multimask_output=True)
    assert calls == [("decoder", 6), ("decoder", 6)] and len(rows) == 0 and masks.shape[0] == 6
    assert not any("predict_masks" in m.__dict__ or "forward" in m.__dict__ for m in model.sam.modules())


def test_a_filter_in_one_thread_is_not_seen_by_another() -> None:
    import threading

    sam = load_model("tiny-random", device="cpu").sam
    args = _inputs(sam, n=5)
    seen: dict[str, object] = {}
    go = threading.Barrier(2)

    def run(name: str, min_iou) -> None:
        go.wait()
        with torch.inference_mode():
            for _ in range(3):
                seen[name] = decode_masks_above(sam.mask_decoder, *args, multimask_output=True, min_iou=min_iou)[0]

    threads = [threading.Thread(target=run, args=("none", 1e6)), threading.Thread(target=run, args=("all", None))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen["none"].shape[0] == 0 and seen["all"].shape[0] == 5  # each call its own threshold
