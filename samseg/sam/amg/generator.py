"""samseg's fork of segment_anything's automatic mask generator, patched one way: subclasses.

- `FastMaskData`: MaskData whose `cat` concatenates lists by reference (SAM deep-copies
  every RLE list on each concatenation; with salt-and-pepper masks that is most of the time).
- `ReusingPredictor`: a samseg.sam.kernels.predictor.KernelPredictor whose set_image(full
  image) restores the features the encode stage already computed, so the AMG never encodes
  the full image a second time.
- `ChunkedMaskGenerator`: SamAutomaticMaskGenerator with samseg.sam.amg.batch's fused,
  chunked `_process_batch`, FastMaskData in `_process_crop` / `_generate_masks` (the same
  steps as SAM's, in the same order), and crops with no mask given (0, 4) crop boxes.
Nothing here replaces an attribute of segment_anything's modules or classes, so two
generators in two threads never see each other's patches. Outputs are SAM's: tests/
test_perf_helpers.py and tests/test_amg_batch.py compare them field by field.

segment_anything and torch are imported at module import: only samseg.sam.amg (itself
imported by the stages that run the AMG) imports this module.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Optional

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils.amg import MaskData, batch_iterator, generate_crop_boxes, uncrop_boxes_xyxy, uncrop_points
from torchvision.ops.boxes import batched_nms, box_area

from samseg.core.config import AmgConfig
from samseg.core.types import EncodedImage
from samseg.sam.kernels.predictor import KernelPredictor


class FastMaskData(MaskData):
    def cat(self, new_stats: MaskData) -> None:
        """MaskData.cat with lists concatenated by reference (a new outer list, the same
        elements) instead of deep-copied; tensors/arrays exactly as in SAM's cat."""
        for k, v in new_stats.items():
            if isinstance(v, list):
                old = self._stats.get(k)
                self._stats[k] = list(v) if old is None else old + v
            elif k not in self._stats or self._stats[k] is None:
                self._stats[k] = v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
            elif isinstance(v, torch.Tensor):
                self._stats[k] = torch.cat([self._stats[k], v], dim=0)
            elif isinstance(v, np.ndarray):
                self._stats[k] = np.concatenate([self._stats[k], v], axis=0)
            else:
                raise TypeError(f"MaskData key {k} has an unsupported type {type(v)}.")


class ReusingPredictor(KernelPredictor):
    """set_image(full image) restores `encoded`; any smaller crop is encoded through the kernels.

    AMG's crops are sub-arrays of the image, so a crop with the full image's H×W is the
    full image itself."""

    def __init__(self, model: Any, encoded: EncodedImage) -> None:
        super().__init__(model)
        self.encoded = encoded

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        if tuple(image.shape[:2]) != self.encoded.geometry.original_hw:
            return super().set_image(image, image_format)
        self.reset_image()
        self.original_size = tuple(image.shape[:2])
        self.input_size = tuple(self.encoded.geometry.input_hw)
        self.features = torch.as_tensor(self.encoded.features, device=self.device)[None]
        self.is_image_set = True


class ChunkedMaskGenerator(SamAutomaticMaskGenerator):
    """Every AmgConfig field, output_mode="coco_rle", for a LoadedModel (its kernels and
    precision); `masks_per_chunk` masks upsampled at a time (None:
    samseg.sam.amg.budget.masks_per_chunk of the crop)."""

    def __init__(self, model: Any, cfg: AmgConfig, encoded: Optional[EncodedImage] = None,
                 masks_per_chunk: Optional[int] = None) -> None:
        super().__init__(model.sam, output_mode="coco_rle", **dataclasses.asdict(cfg))
        self.predictor = KernelPredictor(model) if encoded is None else ReusingPredictor(model, encoded)
        self.masks_per_chunk = masks_per_chunk
        # candidate masks left after each filter, in SAM's order (the best scores seen say how far
        # a threshold was missed): what a run that finds no mask reports
        self.funnel: dict[str, Any] = {"candidates": 0, "pred_iou": 0, "stability": 0, "crop_edge": 0, "box_nms": 0,
                                       "best_iou": None, "best_stability": None}

    def _process_batch(self, points, im_size, crop_box, orig_size):  # type: ignore[override]
        from samseg.sam.amg.batch import process_batch
        from samseg.sam.amg.budget import masks_per_chunk as budget_chunk

        chunk = self.masks_per_chunk or budget_chunk(tuple(im_size))
        return process_batch(self, points, tuple(im_size), crop_box, tuple(orig_size), chunk)

    def _process_crop(self, image, crop_box, crop_layer_idx, orig_size):  # type: ignore[override]
        x0, y0, x1, y1 = crop_box
        cropped_im = image[y0:y1, x0:x1, :]
        cropped_im_size = cropped_im.shape[:2]
        self.predictor.set_image(cropped_im)
        points_for_image = self.point_grids[crop_layer_idx] * np.array(cropped_im_size)[None, ::-1]
        data = FastMaskData()
        for (points,) in batch_iterator(self.points_per_batch, points_for_image):
            data.cat(self._process_batch(points, cropped_im_size, crop_box, orig_size))
        self.predictor.reset_image()
        keep_by_nms = batched_nms(data["boxes"].float(), data["iou_preds"], torch.zeros(len(data["boxes"])),
                                  iou_threshold=self.box_nms_thresh)
        data.filter(keep_by_nms)
        self.funnel["box_nms"] += len(data["rles"])
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = uncrop_points(data["points"], crop_box)
        # SAM's torch.tensor([box] * n) is shape (0,) for no mask, and then box_area fails
        # in _generate_masks when NO crop has a mask: give it the (0, 4) it expects.
        n = len(data["rles"])
        data["crop_boxes"] = torch.tensor([crop_box for _ in range(n)]) if n else torch.zeros((0, 4), dtype=torch.int64)
        return data

    def _generate_masks(self, image: np.ndarray) -> MaskData:  # type: ignore[override]
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        data = FastMaskData()
        for crop_box, layer_idx in zip(crop_boxes, layer_idxs):
            data.cat(self._process_crop(image, crop_box, layer_idx, orig_size))
        if len(crop_boxes) > 1:  # duplicates between crops: prefer masks from smaller crops
            scores = (1 / box_area(data["crop_boxes"])).to(data["boxes"].device)
            keep_by_nms = batched_nms(data["boxes"].float(), scores, torch.zeros(len(data["boxes"])),
                                      iou_threshold=self.crop_nms_thresh)
            data.filter(keep_by_nms)
        data.to_numpy()
        return data
