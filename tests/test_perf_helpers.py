"""samseg.sam.precision (opt-in bf16), samseg.sam.amg.budget (masks per post-processing chunk from image size), samseg.sam.amg.post (fast RLE, MaskData.cat without deepcopy)."""

from __future__ import annotations

import pytest
import torch

from samseg.sam.amg.budget import bytes_per_mask, masks_per_chunk
from samseg.sam.precision import PrecisionError, call_in, dtype_of, get_precision, set_precision


def _tiny_module_pair():
    class Holder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.image_encoder = torch.nn.Linear(8, 4)
            self.mask_decoder = torch.nn.Linear(4, 2)

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return Holder().eval()


def test_bf16_is_opt_in_reversible_and_returns_float32():
    sam = _tiny_module_pair()
    x = torch.randn(3, 8)
    ref = sam.image_encoder(x)
    keys = list(sam.state_dict())
    assert get_precision(sam) == "fp32"
    set_precision(sam, "bf16", reversible=True)
    assert get_precision(sam) == "bf16" and get_precision(sam, "mask_decoder") == "bf16"
    assert sam.image_encoder.weight.dtype == torch.bfloat16  # converted, not autocast
    assert not any("forward" in m.__dict__ for m in sam.modules())  # converted, never wrapped
    out = call_in(sam.image_encoder, dtype_of(sam.image_encoder), x)  # the caller applies the precision
    assert out.dtype == torch.float32  # callers keep seeing float32
    assert not torch.equal(out, ref) and torch.allclose(out, ref, atol=5e-2, rtol=5e-2)
    assert list(sam.state_dict()) == keys
    set_precision(sam, "fp32")
    assert get_precision(sam) == "fp32" and torch.equal(sam.image_encoder(x), ref)


def test_unknown_precision_is_rejected_and_lossy_return_refused():
    with pytest.raises(PrecisionError, match="fp8"):
        set_precision(_tiny_module_pair(), "fp8")
    sam = set_precision(_tiny_module_pair(), "bf16")  # not reversible: fp32 weights not kept
    with pytest.raises(PrecisionError, match="load the model again"):
        set_precision(sam, "fp32")


def test_auto_resolves_by_hardware(monkeypatch):
    from samseg.sam import precision

    monkeypatch.setattr(precision, "native_bf16_cpu", lambda: True)
    assert precision.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(precision, "native_bf16_cpu", lambda: False)
    assert precision.resolve_precision("auto", "cpu") == "fp32"
    assert precision.resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(PrecisionError, match="needs a CUDA device"):
        precision.resolve_precision("fp16", "cpu")


def test_masks_per_chunk_shrinks_with_the_image_and_respects_the_budget():
    budget = 64 * 1024**2
    twelve_mp = masks_per_chunk((3000, 4000), budget)
    assert twelve_mp == 1  # one 12-MP mask is ~124 MB of temporaries: never below 1
    small = masks_per_chunk((770, 769), budget)
    assert small > twelve_mp and small * bytes_per_mask((770, 769)) <= budget < (small + 1) * bytes_per_mask((770, 769))
    assert masks_per_chunk((100, 100), 64 * budget) > masks_per_chunk((100, 100), budget)


def test_budget_from_environment(monkeypatch):
    monkeypatch.setenv("SAMSEG_AMG_BATCH_BYTES", str(bytes_per_mask((1000, 1000)) * 5))
    assert masks_per_chunk((1000, 1000)) == 5
    monkeypatch.setenv("SAMSEG_AMG_BATCH_BYTES", "lots")
    with pytest.raises(ValueError, match="SAMSEG_AMG_BATCH_BYTES"):
        masks_per_chunk((1000, 1000))
    monkeypatch.setenv("SAMSEG_AMG_BATCH_BYTES", "0")
    with pytest.raises(ValueError, match="> 0"):
        masks_per_chunk((1000, 1000))


@pytest.mark.parametrize("shape", [(0, 5, 7), (4, 6, 5), (6, 37, 23)])
def test_mask_to_rle_fast_equals_segment_anything(shape):
    from segment_anything.utils.amg import mask_to_rle_pytorch

    from samseg.sam.amg.post import mask_to_rle_fast

    g = torch.Generator().manual_seed(sum(shape))
    masks = torch.rand(shape, generator=g) > 0.5
    if shape[0]:
        masks[0] = True  # a full mask: no change index at all
        masks[1] = False
    assert mask_to_rle_fast(masks) == mask_to_rle_pytorch(masks)


def test_samseg_patches_nothing_in_segment_anything():
    import segment_anything.automatic_mask_generator as sam_amg
    from segment_anything.utils.amg import MaskData, mask_to_rle_pytorch

    from samseg.sam.amg.generator import FastMaskData

    cat_before = MaskData.__dict__["cat"]
    import samseg.sam.amg  # noqa: F401 — importing the fork changes nothing of SAM's
    assert sam_amg.mask_to_rle_pytorch is mask_to_rle_pytorch and MaskData.__dict__["cat"] is cat_before
    assert FastMaskData.cat is not MaskData.cat  # the fork's behaviour lives in its subclass


def _mask_data(seed: int):
    import numpy as np
    from segment_anything.utils.amg import MaskData

    g = torch.Generator().manual_seed(seed)
    return MaskData(
        boxes=torch.rand(3, 4, generator=g),
        points=np.arange(6.0).reshape(3, 2) + seed,
        rles=[{"size": [4, 5], "counts": [seed, i, 20 - seed - i]} for i in range(3)],
    )


def test_cat_without_deepcopy_equals_mask_data_cat():
    import numpy as np

    from samseg.sam.amg.generator import FastMaskData

    def fast(seed: int) -> FastMaskData:
        return FastMaskData(**dict(_mask_data(seed).items()))

    ref, got = _mask_data(0), fast(0)
    for seed in (1, 2):
        ref.cat(_mask_data(seed))
        got.cat(_mask_data(seed))
    assert ref["rles"] == got["rles"] and len(got["rles"]) == 9
    assert torch.equal(ref["boxes"], got["boxes"])
    assert np.array_equal(ref["points"], got["points"])
    fresh = _mask_data(3)
    empty = FastMaskData()
    empty.cat(fresh)
    assert empty["rles"] == fresh["rles"] and empty["rles"] is not fresh["rles"]
    assert torch.equal(empty["boxes"], fresh["boxes"]) and empty["boxes"] is not fresh["boxes"]


@torch.inference_mode()
def test_fast_postprocessing_gives_identical_amg_records_with_crops():
    """Same records as SAM's generator (tiny-random, open filters, one crop layer: batch
    and crop concatenation both go through cat), every field compared exactly."""
    import numpy as np
    from segment_anything import SamAutomaticMaskGenerator

    from samseg.core.config import AmgConfig
    from samseg.sam.amg.generator import ChunkedMaskGenerator
    from samseg.sam.model import LoadedModel, build_tiny_random

    sam = build_tiny_random(seed=0)
    reference = LoadedModel(sam=sam, model_type="tiny-random", checkpoint_path=None, checkpoint_sha256="", device="cpu",
                            kernels="sam")  # both generators run segment_anything's decoder: only the AMG work differs
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    kw = dict(points_per_side=4, points_per_batch=5, pred_iou_thresh=0.0, stability_score_thresh=0.0,
              box_nms_thresh=1.0, crop_n_layers=1, crop_nms_thresh=1.0, output_mode="uncompressed_rle")
    ref = SamAutomaticMaskGenerator(sam, **kw).generate(image)
    fork = ChunkedMaskGenerator(reference, AmgConfig(**{k: v for k, v in kw.items() if k != "output_mode"}))
    fork.output_mode = kw["output_mode"]
    got = fork.generate(image)
    assert len(ref) > 16 and got == ref
