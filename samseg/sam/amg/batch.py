"""The AMG's per-batch work, fused and chunked: same MaskData as segment_anything's
`SamAutomaticMaskGenerator._process_batch`, a fraction of the time and memory.

SAM's `_process_batch` upsamples ALL 3 × points_per_batch low-res masks to 1024² and then
to the crop's full resolution (64 prompts on a 770² image: 805 MB, then 455 MB of float32
logits), and only then applies the predicted-IoU filter, the stability score, the
threshold, the boxes and the RLE, each a full pass over that many fresh pages. Here:

1. the predicted-IoU filter runs on the decoder's outputs, BEFORE upsampling — a mask it
   drops is never upsampled (the IoU prediction does not depend on the upsampling); with
   the fast kernels, a prompt whose masks it all drops never even goes through the
   decoder's own upscaling (`samseg.sam.kernels.decode`);
2. survivors are upsampled `masks_per_chunk` at a time (samseg.sam.amg.budget), and each chunk
   goes through stability score, stability filter, threshold, boxes, crop-edge filter and
   RLE while it is still warm; memory is bounded by the chunk, not by points_per_batch;
3. the first bilinear step only computes the rows/columns of the 1024² frame that the
   crop to the input size keeps (`upscale_logits`; bit-identical, see its docstring).

Every number is computed by the same torch ops as SAM's code (the same interpolations,
`calculate_stability_score`, `batched_mask_to_box`, `is_box_near_crop_edge`,
`uncrop_masks`), on the same masks in the same order, so the MaskData is identical —
tests/test_amg_batch.py compares it field by field with SAM's on several crops.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def upscale_logits(low_res_bmhw: Any, img_size: int, input_hw: tuple[int, int], out_hw: tuple[int, int]) -> Any:
    """`Sam.postprocess_masks` without computing what it crops away: B×M×h×w low-res logits
    → B×M×out_h×out_w float logits, bit-identical to SAM's.

    SAM: bilinear to img_size² (align_corners=False), keep [:input_h, :input_w], bilinear
    to out_hw. Output row y of the first step reads source rows floor(s), floor(s)+1 with
    s = (y + 0.5)·h/img_size − 0.5, so rows y < input_h only read source rows
    < ceil(input_h·h/img_size) + 1; upsampling that slice with the same scale factor
    (passed explicitly, so the source coordinates are the same floats) gives the same
    values for the kept rows. Likewise for columns.
    """
    import torch
    import torch.nn.functional as F

    h, w = low_res_bmhw.shape[-2:]
    in_h, in_w = input_hw
    scale_h, scale_w = img_size / h, img_size / w
    rows, cols = min(h, math.ceil(in_h / scale_h) + 1), min(w, math.ceil(in_w / scale_w) + 1)
    frame = torch.ops.aten.upsample_bilinear2d.default(
        low_res_bmhw[..., :rows, :cols], [in_h, in_w], False, scale_h, scale_w
    )
    return F.interpolate(frame, tuple(out_hw), mode="bilinear", align_corners=False)


def decode_batch(predictor: Any, points_xy: np.ndarray, im_size: tuple[int, int],
                 min_iou: float | None = None) -> tuple[Any, Any, Any]:
    """The decoder part of SamPredictor.predict_torch for N single-point prompts (xy in
    crop pixels): low-res logits K×M×256×256 of the K prompts `rows` that have a mask with
    predicted IoU > min_iou (all N when min_iou is None), predicted IoU N×M (M = 3,
    multimask). predictor: a samseg.sam.kernels.predictor.KernelPredictor (its model's
    kernels and precision run the decoder: samseg.sam.kernels.decode); a plain SamPredictor
    runs segment_anything's own decoder."""
    import torch

    from samseg.sam.kernels import decode, reference

    sam = predictor.model
    coords = torch.as_tensor(predictor.transform.apply_coords(points_xy, im_size), device=predictor.device)
    labels = torch.ones(coords.shape[0], dtype=torch.int, device=coords.device)
    sparse, dense = sam.prompt_encoder(points=(coords[:, None, :], labels[:, None]), boxes=None, masks=None)
    model = getattr(predictor, "loaded", None) or reference(predictor.model)
    return decode(model, predictor.features, sam.prompt_encoder.get_dense_pe(), sparse, dense,
                  multimask_output=True, min_iou=min_iou)


def process_batch(generator: Any, points_xy: np.ndarray, im_size: tuple[int, int], crop_box: list[int],
                  orig_size: tuple[int, int], masks_per_chunk: int) -> Any:
    """Drop-in for `SamAutomaticMaskGenerator._process_batch` (same arguments, same MaskData:
    iou_preds, points, stability_score, boxes, rles), upsampling `masks_per_chunk` masks at
    a time. points_xy: N×2 in crop pixels; crop_box xyxy in the original image."""
    min_iou = generator.pred_iou_thresh if generator.pred_iou_thresh > 0.0 else None
    low_res, iou_preds, rows = decode_batch(generator.predictor, points_xy, im_size, min_iou)
    return postprocess_batch(generator, low_res, iou_preds, points_xy, crop_box, orig_size, masks_per_chunk, rows)


def postprocess_batch(generator: Any, low_res: Any, iou_preds: Any, points_xy: np.ndarray, crop_box: list[int],
                      orig_size: tuple[int, int], masks_per_chunk: int, rows: Any = None) -> Any:
    """Everything of `process_batch` after the decoder: low_res K×M×h×w logits of the
    prompts `rows` (None: all, K = N), iou_preds N×M for the N prompts `points_xy` →
    MaskData (the generator's predictor gives the input and crop sizes). Every prompt
    with a mask that passes the predicted-IoU filter must be in `rows`."""
    import torch
    from segment_anything.utils.amg import MaskData

    n, per_prompt = iou_preds.shape
    low_res, iou_preds = low_res.flatten(0, 1), iou_preds.flatten(0, 1)
    points = torch.as_tensor(points_xy.repeat(per_prompt, axis=0))
    index = torch.arange(len(iou_preds), device=iou_preds.device)  # same device as the masks it selects
    if generator.pred_iou_thresh > 0.0:
        index = index[iou_preds > generator.pred_iou_thresh]
    _count(generator, candidates=len(iou_preds), pred_iou=len(index),
           best_iou=float(iou_preds.max()) if len(iou_preds) else None)
    src = index if rows is None else _rows_of(index, rows, n, per_prompt)
    parts = [_process_chunk(generator, low_res[src[i : i + masks_per_chunk]], index[i : i + masks_per_chunk],
                            crop_box, orig_size) for i in range(0, len(index), masks_per_chunk)]
    # SAM computes the boxes of a whole batch at once: int64 when any mask reached the
    # threshold step, float zeros (batched_mask_to_box on nothing) when none did. Chunks
    # that had no mask there would turn a torch.cat float, so they are left out.
    thresholded = [p for p in parts if p["boxes"] is not None]
    if thresholded:
        kept = torch.cat([p["index"] for p in thresholded])
        stability = torch.cat([p["stability_score"] for p in thresholded])
        boxes = torch.cat([p["boxes"] for p in thresholded])
    else:
        from segment_anything.utils.amg import batched_mask_to_box

        kept, stability = index[:0], iou_preds[:0]
        boxes = batched_mask_to_box(torch.zeros((0, *orig_size), dtype=torch.bool, device=low_res.device))
    return MaskData(iou_preds=iou_preds[kept], points=points[kept.cpu()], stability_score=stability, boxes=boxes,
                    rles=[r for p in thresholded for r in p["rles"]])


def _count(generator: Any, **seen: Any) -> None:
    """Add to the generator's funnel (samseg.sam.amg.generator): counts add up, best_* keep the max."""
    funnel = getattr(generator, "funnel", None)
    if funnel is None:  # SAM's own generator (the reference in tests)
        return
    for key, value in seen.items():
        if key.startswith("best_"):
            if value is not None:
                funnel[key] = value if funnel[key] is None else max(funnel[key], value)
        else:
            funnel[key] += int(value)


def _rows_of(index: Any, rows: Any, n: int, per_prompt: int) -> Any:
    """Flat mask indices over N×M → indices into the K×M logits of the prompts `rows`."""
    import torch

    pos = torch.full((n,), -1, dtype=torch.long, device=index.device)
    pos[rows.to(index.device)] = torch.arange(len(rows), device=index.device)
    prompt = pos[index // per_prompt]
    if bool((prompt < 0).any()):
        raise AssertionError("a mask passed the IoU filter but its prompt's logits were not computed")
    return prompt * per_prompt + index % per_prompt


def _process_chunk(generator: Any, low_res: Any, index: Any, crop_box: list[int], orig_size: tuple[int, int]) -> dict:
    """Upsample `low_res` (K×256×256, the masks `index` of the batch) and run SAM's
    per-mask filters and encoders on them; returns the surviving indices and their fields
    ("boxes" is None when no mask survived the stability filter)."""
    import torch
    from segment_anything.utils.amg import (batched_mask_to_box, calculate_stability_score, is_box_near_crop_edge,
                                            uncrop_masks)

    from samseg.sam.amg.post import mask_to_rle_fast

    predictor, sam = generator.predictor, generator.predictor.model
    logits = upscale_logits(low_res[None], sam.image_encoder.img_size, predictor.input_size,
                            predictor.original_size)[0]
    stability = calculate_stability_score(logits, sam.mask_threshold, generator.stability_score_offset)
    best = float(stability.max()) if len(stability) else None
    if generator.stability_score_thresh > 0.0:
        keep = stability >= generator.stability_score_thresh
        index, stability, logits = index[keep], stability[keep], logits[keep]
    _count(generator, stability=len(index), best_stability=best)
    if not len(index):
        return {"index": index, "stability_score": stability, "boxes": None, "rles": []}
    masks = logits > sam.mask_threshold
    del logits
    boxes = batched_mask_to_box(masks)
    orig_h, orig_w = orig_size
    keep = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_w, orig_h])
    if not torch.all(keep):
        index, stability, boxes, masks = index[keep], stability[keep], boxes[keep], masks[keep]
    _count(generator, crop_edge=len(index))
    rles = mask_to_rle_fast(uncrop_masks(masks, crop_box, orig_h, orig_w)) if len(index) else []
    return {"index": index, "stability_score": stability, "boxes": boxes, "rles": rles}
