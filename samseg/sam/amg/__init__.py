"""Automatic mask generation with SAM's own `SamAutomaticMaskGenerator`, encoding once.

The generator's full-image crop reuses the features from `encode_image` instead of running
the image encoder a second time; crop layers > 0 still encode their own crops. The per-batch
work is samseg.sam.amg.batch's fused, chunked version of SAM's `_process_batch` (chunk size from
samseg.sam.amg.budget), and the RLE encoder and MaskData.cat are swapped for identical, faster
ones (samseg.sam.amg.post). Everything else (point grid, crops, NMS, small-region removal) is
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


def make_generator(model: "LoadedModel", cfg: AmgConfig, masks_per_chunk: int | None = None,
                   encoded: EncodedImage | None = None) -> Any:
    """samseg.sam.amg.generator.ChunkedMaskGenerator with every AmgConfig field and
    output_mode="coco_rle"; with `encoded`, the full-image crop reuses those features."""
    from samseg.sam.amg.generator import ChunkedMaskGenerator

    return ChunkedMaskGenerator(model, cfg, encoded=encoded, masks_per_chunk=masks_per_chunk)


def generate_masks(model: "LoadedModel", rgb_hw3: np.ndarray, encoded: EncodedImage, cfg: AmgConfig) -> MaskSet:
    """All masks of the image, in AMG's output order, as COCO RLE at the original size.

    rgb_hw3: H×W×3 uint8 RGB, the same image `encoded` came from (checked by size and
    channel count). The full-image crop reuses `encoded.features`; 0 masks → empty MaskSet.
    """
    import torch

    check_rgb(rgb_hw3)
    _check_encoded(model, rgb_hw3, encoded)
    generator = make_generator(model, cfg, encoded=encoded)
    with torch.inference_mode():
        records = generator.generate(np.ascontiguousarray(rgb_hw3))
    image_hw = (int(rgb_hw3.shape[0]), int(rgb_hw3.shape[1]))
    if records:
        return MaskSet.from_records(image_hw, records)
    return dataclasses.replace(MaskSet.empty(image_hw), funnel=dict(generator.funnel))  # which filter left nothing


@dataclass
class EncoderCalls:
    """Mutable counter filled by `count_encoder_calls`: `count` = image-encoder forward passes."""

    count: int = 0


@contextlib.contextmanager
def count_encoder_calls(model: "LoadedModel") -> Iterator[EncoderCalls]:
    """Count image-encoder passes inside the block (samseg.sam.kernels.observe: every pass,
    fast or SAM's kernels, goes through kernels.encode).

    with count_encoder_calls(model) as calls: ...; calls.count
    """
    from samseg.sam.kernels import observe

    calls = EncoderCalls()

    def seen(part: str, _seconds: float, _prompts: int) -> None:
        if part == "encoder":
            calls.count += 1

    with observe(seen):
        yield calls
