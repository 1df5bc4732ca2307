"""Automatic mask generation with SAM's own `SamAutomaticMaskGenerator`, encoding once.

The generator's full-image crop reuses the features from `encode_image` instead of running
the image encoder a second time; crop layers > 0 still encode their own crops. The per-batch
work is samseg.sam.amg_batch's fused, chunked version of SAM's `_process_batch` (chunk size from
samseg.sam.amg_budget), and the RLE encoder and MaskData.cat are swapped for identical, faster
ones (samseg.sam.amg_post). Everything else (point grid, crops, NMS, small-region removal) is
SAM's code, so the masks are identical to a plain `SamAutomaticMaskGenerator(...).generate(image)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from samseg.core.config import AmgConfig
from samseg.sam.encode import check_rgb
from samseg.core.types import EncodedImage, MaskSet

if TYPE_CHECKING:  # pragma: no cover
    from samseg.sam.model import LoadedModel


class EncodedMismatchError(ValueError):
    """The EncodedImage does not belong to this image or this model."""


def _reusing_predictor(sam: Any, encoded: EncodedImage) -> Any:
    """A SamPredictor whose set_image(full image) restores `encoded` instead of encoding.

    AMG's crops are sub-arrays of the image, so a crop with the full image's H×W is the
    full image itself; any smaller crop defers to SamPredictor.set_image (one encoder pass).
    """
    import torch
    from segment_anything import SamPredictor

    class _ReusingPredictor(SamPredictor):
        def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
            if tuple(image.shape[:2]) != encoded.geometry.original_hw:
                return super().set_image(image, image_format)
            self.reset_image()
            self.original_size = tuple(image.shape[:2])
            self.input_size = tuple(encoded.geometry.input_hw)
            self.features = torch.as_tensor(encoded.features, device=self.device)[None]
            self.is_image_set = True

    return _ReusingPredictor(sam)


def _check_encoded(model: "LoadedModel", rgb_hw3: np.ndarray, encoded: EncodedImage) -> None:
    hw = (int(rgb_hw3.shape[0]), int(rgb_hw3.shape[1]))
    if encoded.geometry.original_hw != hw:
        raise EncodedMismatchError(f"encoded features are for a {encoded.geometry.original_hw} image, got a {hw} image")
    channels = int(model.sam.prompt_encoder.embed_dim)
    if encoded.features.shape[0] != channels:
        raise EncodedMismatchError(
            f"encoded features have {encoded.features.shape[0]} channels but {model.model_type} expects {channels}"
        )
    if tuple(encoded.features.shape[1:]) != encoded.geometry.feature_hw:
        raise EncodedMismatchError(f"encoded features grid {encoded.features.shape[1:]} != {encoded.geometry.feature_hw}")


def make_generator(model: "LoadedModel", cfg: AmgConfig, masks_per_chunk: int | None = None) -> Any:
    """A SamAutomaticMaskGenerator with every AmgConfig field and output_mode="coco_rle",
    whose `_process_batch` is samseg.sam.amg_batch.process_batch (same MaskData) upsampling
    `masks_per_chunk` masks at a time (default: samseg.sam.amg_budget.masks_per_chunk of the crop)."""
    from segment_anything import SamAutomaticMaskGenerator

    from samseg.sam.amg_batch import process_batch
    from samseg.sam.amg_budget import masks_per_chunk as budget_chunk

    class _ChunkedGenerator(SamAutomaticMaskGenerator):
        def _process_batch(self, points, im_size, crop_box, orig_size):  # type: ignore[override]
            chunk = masks_per_chunk or budget_chunk(tuple(im_size))
            return process_batch(self, points, tuple(im_size), crop_box, tuple(orig_size), chunk)

        def _process_crop(self, image, crop_box, crop_layer_idx, orig_size):  # type: ignore[override]
            return fix_empty_crop_boxes(super()._process_crop(image, crop_box, crop_layer_idx, orig_size))

    return _ChunkedGenerator(model.sam, output_mode="coco_rle", **dataclasses.asdict(cfg))


def fix_empty_crop_boxes(data: Any) -> Any:
    """SAM builds a crop's `crop_boxes` as torch.tensor([box] * n_masks): for 0 masks that
    is shape (0,), not (0, 4), and with crop layers SAM's `_generate_masks` then fails in
    box_area (IndexError) when NO crop has a mask. Give it the (0, 4) it expects."""
    import torch

    if len(data["rles"]) == 0:
        data["crop_boxes"] = torch.zeros((0, 4), dtype=torch.int64)
    return data


def generate_masks(model: "LoadedModel", rgb_hw3: np.ndarray, encoded: EncodedImage, cfg: AmgConfig) -> MaskSet:
    """All masks of the image, in AMG's output order, as COCO RLE at the original size.

    rgb_hw3: H×W×3 uint8 RGB, the same image `encoded` came from (checked by size and
    channel count). The full-image crop reuses `encoded.features`; 0 masks → empty MaskSet.
    """
    import torch

    from samseg.sam.amg_post import fast_amg_postprocessing

    check_rgb(rgb_hw3)
    _check_encoded(model, rgb_hw3, encoded)
    generator = make_generator(model, cfg)
    generator.predictor = _reusing_predictor(model.sam, encoded)
    with torch.inference_mode(), fast_amg_postprocessing():
        records = generator.generate(np.ascontiguousarray(rgb_hw3))
    image_hw = (int(rgb_hw3.shape[0]), int(rgb_hw3.shape[1]))
    return MaskSet.from_records(image_hw, records) if records else MaskSet.empty(image_hw)


@dataclass
class EncoderCalls:
    """Mutable counter filled by `count_encoder_calls`: `count` = image-encoder forward passes."""

    count: int = 0


@contextlib.contextmanager
def count_encoder_calls(model: "LoadedModel") -> Iterator[EncoderCalls]:
    """Count `model.sam.image_encoder` forward passes inside the block (forward hook).

    with count_encoder_calls(model) as calls: ...; calls.count
    """
    calls = EncoderCalls()

    def hook(_module: Any, _inputs: Any, _output: Any) -> None:
        calls.count += 1

    handle = model.sam.image_encoder.register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()
