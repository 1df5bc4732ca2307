"""SAM's predictor with its encoder pass through samseg.sam.kernels (the model's kernels and precision).

segment_anything and torch are imported at module import: samseg.sam.encode and the AMG
(samseg.sam.amg.generator) import this module only when they run a model.
"""

from __future__ import annotations

from typing import Any

import torch
from segment_anything import SamPredictor


class KernelPredictor(SamPredictor):
    """SamPredictor for a LoadedModel: SAM's resize and normalisation, then the encoder pass
    through samseg.sam.kernels.encode (fast or SAM's kernels, in the model's precision)."""

    def __init__(self, model: Any) -> None:
        super().__init__(model.sam)
        self.loaded = model

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        from samseg.sam.kernels import encode

        self.reset_image()
        self.original_size = original_image_size
        self.input_size = tuple(transformed_image.shape[-2:])
        self.features = encode(self.loaded, self.model.preprocess(transformed_image))
        self.is_image_set = True
