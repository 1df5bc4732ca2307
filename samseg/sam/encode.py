"""Encode once: one SAM image-encoder pass over the full image → C×64×64 features.

Preprocessing is exactly `segment_anything.SamPredictor.set_image` (ResizeLongestSide to
1024, pixel normalisation, bottom/right zero padding), so the features are bit-identical to
what SAM's own predictor and automatic mask generator compute for the same image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from samseg.core.types import EncodedImage, ImageGeometry

if TYPE_CHECKING:  # pragma: no cover
    from samseg.sam.model import LoadedModel


class ImageArrayError(ValueError):
    """The array given as an image is not H×W×3 uint8 RGB."""


def check_rgb(rgb_hw3: np.ndarray, what: str = "image") -> None:
    """Raise ImageArrayError unless `rgb_hw3` is a non-empty H×W×3 uint8 array."""
    if not isinstance(rgb_hw3, np.ndarray):
        raise ImageArrayError(f"{what}: expected a numpy H×W×3 uint8 array, got {type(rgb_hw3).__name__}")
    if rgb_hw3.ndim != 3 or rgb_hw3.shape[2] != 3:
        raise ImageArrayError(f"{what}: expected shape H×W×3 (RGB), got {rgb_hw3.shape}")
    if rgb_hw3.dtype != np.uint8:
        raise ImageArrayError(f"{what}: expected dtype uint8, got {rgb_hw3.dtype}")
    if rgb_hw3.shape[0] < 1 or rgb_hw3.shape[1] < 1:
        raise ImageArrayError(f"{what}: image is empty, shape {rgb_hw3.shape}")


def model_geometry(model: "LoadedModel", original_hw: tuple[int, int]) -> ImageGeometry:
    """ImageGeometry for this model's input size and patch size (1024 / 16 for every SAM)."""
    encoder = model.sam.image_encoder
    patch = int(encoder.patch_embed.proj.kernel_size[0])
    return ImageGeometry.for_image(original_hw, img_size=int(encoder.img_size), patch_size=patch)


def encode_image(model: "LoadedModel", rgb_hw3: np.ndarray) -> EncodedImage:
    """Exactly one image-encoder pass over the full image.

    rgb_hw3: H×W×3 uint8 RGB (original, EXIF-corrected pixels).
    Returns EncodedImage(features C×64×64 float32 numpy channels-first — 256 for real SAM,
    32 for tiny-random — geometry = where the image sits in the padded 1024² input frame).
    """
    import torch

    from samseg.sam.kernels.predictor import KernelPredictor

    check_rgb(rgb_hw3)
    geometry = model_geometry(model, (int(rgb_hw3.shape[0]), int(rgb_hw3.shape[1])))
    predictor = KernelPredictor(model)
    with torch.inference_mode():
        predictor.set_image(np.ascontiguousarray(rgb_hw3), image_format="RGB")
        features = predictor.features[0].float().cpu().numpy()
    if tuple(predictor.input_size) != geometry.input_hw:
        raise RuntimeError(f"geometry mismatch: SAM resized to {tuple(predictor.input_size)}, samseg computed {geometry.input_hw}")
    if features.shape[1:] != geometry.feature_hw:
        raise RuntimeError(f"encoder returned a {features.shape[1:]} grid, expected {geometry.feature_hw}")
    return EncodedImage(features=np.ascontiguousarray(features, dtype=np.float32), geometry=geometry)
