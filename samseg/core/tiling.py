"""Tiled segmentation, the pure part: the tile grid, and one image's masks from its tiles'.

Each tile is segmented as an image of its own (SAM at full resolution inside the tile).
`merge_tiles` then moves every tile's masks into image coordinates (samseg.core.rle, run
arithmetic — no mask is decoded at image size), finds the masks two overlapping tiles share,
and unites them: an object cut by a seam becomes one mask (the union of its pieces), an
object seen whole by two tiles is kept once. Two masks are the same object when, inside the
region both tiles see, their IoU reaches `merge_iou`, or the smaller lies inside the other
(CONTAINMENT) while both are cut by their tile's inner border (the object goes on beyond
both views). A group never holds two masks of one tile: SAM's within-tile masks (an object
and its part) stay apart. Embeddings are the area-weighted mean of the pieces' own
embeddings, each pooled from the features of the tile it came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from samseg.core import rle as rle_ops
from samseg.core.config import TileConfig
from samseg.core.types import MaskSet

CONTAINMENT = 0.9  # share of the smaller piece (inside the shared region) the larger must cover
CONTAINMENT_MIN_RATIO = 0.25  # ... and the smaller must be at least this share of the larger there


def tile_starts(length: int, size: int, overlap: int) -> list[int]:
    """Start offsets along one side: stride size − overlap, the last tile flush with the edge."""
    if length <= size:
        return [0]
    stride = size - overlap
    starts = list(range(0, length - size, stride))
    return [*starts, length - size]


def tile_boxes(image_hw: tuple[int, int], cfg: TileConfig) -> list[tuple[int, int, int, int]]:
    """Row-major tile boxes xyxy (end exclusive) covering the image; [] when tiling is off."""
    if not cfg.enabled:
        return []
    h, w = image_hw
    return [(x0, y0, min(w, x0 + cfg.size), min(h, y0 + cfg.size))
            for y0 in tile_starts(h, cfg.size, cfg.overlap) for x0 in tile_starts(w, cfg.size, cfg.overlap)]


@dataclass(frozen=True, eq=False)
class TileMasks:
    """One tile's result. box_xyxy: where it sits in the image (end exclusive); masks: at the
    tile's size, in the tile's coordinates; embeddings: K×C, one row per mask."""

    box_xyxy: tuple[int, int, int, int]
    masks: MaskSet
    embeddings: np.ndarray


@dataclass(frozen=True, eq=False)
class MergedMasks:
    """The image's masks (image coordinates) and N×C embeddings; parts[i]: the (tile, mask)
    pieces mask i was made of, in tile order."""

    masks: MaskSet
    embeddings: np.ndarray
    parts: list[list[tuple[int, int]]]
    n_tiles: int

    @property
    def n_merged(self) -> int:
        """Masks made of more than one tile's piece (seam crossings and duplicates removed)."""
        return sum(len(p) > 1 for p in self.parts)


def merge_tiles(tiles: list[TileMasks], image_hw: tuple[int, int], merge_iou: float) -> MergedMasks:
    """All tiles' masks as one MaskSet at `image_hw` (see the module docstring)."""
    placed = [[rle_ops.translate(t.masks.rles[i], (t.box_xyxy[1], t.box_xyxy[0]), image_hw)
               for i in range(len(t.masks))] for t in tiles]
    boxes = [_bbox_xyxy(t) for t in tiles]  # K×4 image-coordinate boxes per tile
    groups = _group(tiles, placed, boxes, image_hw, merge_iou)
    return _assemble(tiles, placed, boxes, groups, image_hw)


def _bbox_xyxy(t: TileMasks) -> np.ndarray:
    """K×4 image-coordinate boxes (x0, y0, x1, y1), inclusive, from SAM's xywh (w = x1 − x0)."""
    b = t.masks.bbox_xywh.astype(np.int64).reshape(-1, 4)
    x0, y0 = t.box_xyxy[0], t.box_xyxy[1]
    return np.stack([b[:, 0] + x0, b[:, 1] + y0, b[:, 0] + b[:, 2] + x0, b[:, 1] + b[:, 3] + y0], axis=1)


def _cut(t: TileMasks, b: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """(K,) bool: the mask (image box b, K×4) touches a border of its tile inside the image (a seam)."""
    x0, y0, x1, y1 = t.box_xyxy
    h, w = image_hw
    return (((b[:, 0] <= x0) & (x0 > 0)) | ((b[:, 1] <= y0) & (y0 > 0))
            | ((b[:, 2] >= x1 - 1) & (x1 < w)) | ((b[:, 3] >= y1 - 1) & (y1 < h)))


def _shared(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _pairs(tiles: list[TileMasks], placed: list[list[dict]], boxes: list[np.ndarray], image_hw: tuple[int, int],
           merge_iou: float) -> list[tuple[float, tuple[int, int], tuple[int, int]]]:
    """(score, (tile, mask), (tile, mask)) for every pair of masks judged the same object."""
    from pycocotools import mask as mask_utils

    cut = [_cut(t, b, image_hw) for t, b in zip(tiles, boxes)]
    out = []
    for a in range(len(tiles)):
        for b in range(a + 1, len(tiles)):
            region = _shared(tiles[a].box_xyxy, tiles[b].box_xyxy)
            if region is None:
                continue
            ia, ib = _touching(boxes[a], region), _touching(boxes[b], region)
            if not len(ia) or not len(ib):
                continue
            ra, rb = _inside(placed[a], ia, region, image_hw), _inside(placed[b], ib, region, image_hw)
            area_a, area_b = mask_utils.area(ra).astype(np.float64), mask_utils.area(rb).astype(np.float64)
            iou = np.asarray(mask_utils.iou(ra, rb, [0] * len(rb)), np.float64).reshape(len(ia), len(ib))
            inter = iou * (area_a[:, None] + area_b[None, :]) / (1.0 + iou)
            small = np.minimum(area_a[:, None], area_b[None, :])
            large = np.maximum(area_a[:, None], area_b[None, :])
            contained = ((inter >= CONTAINMENT * small) & (small >= CONTAINMENT_MIN_RATIO * large)
                         & cut[a][ia][:, None] & cut[b][ib][None, :])
            same = ((iou >= merge_iou) | contained) & (small > 0)
            for r, c in zip(*np.nonzero(same)):
                out.append((float(iou[r, c]), (a, int(ia[r])), (b, int(ib[c]))))
    return sorted(out, key=lambda p: (-p[0], p[1], p[2]))


def _touching(boxes_xyxy: np.ndarray, region: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = region
    hit = (boxes_xyxy[:, 0] < x1) & (boxes_xyxy[:, 2] >= x0) & (boxes_xyxy[:, 1] < y1) & (boxes_xyxy[:, 3] >= y0)
    return np.flatnonzero(hit)


def _inside(rles: list[dict], idx: np.ndarray, region: tuple[int, int, int, int], image_hw: tuple[int, int]) -> list:
    """The masks `idx` cut to `region` (pycocotools RLEs at image size)."""
    from pycocotools import mask as mask_utils

    h, w = image_hw
    x0, y0, x1, y1 = region
    cols = np.arange(x0, x1, dtype=np.int64) * h
    box = rle_ops.to_coco(rle_ops.runs_to_rle(cols + y0, cols + y1, image_hw))
    return [mask_utils.merge([rle_ops.to_coco(rles[i]), box], intersect=True) for i in idx]


def _group(tiles: list[TileMasks], placed: list[list[dict]], boxes: list[np.ndarray], image_hw: tuple[int, int],
           merge_iou: float) -> list[list[tuple[int, int]]]:
    """Union-find over the matched pairs, best match first, never two pieces of one tile in a group."""
    members: dict[tuple[int, int], list[tuple[int, int]]] = {(t, i): [(t, i)] for t in range(len(tiles))
                                                            for i in range(len(tiles[t].masks))}
    root = {k: k for k in members}
    for _score, p, q in _pairs(tiles, placed, boxes, image_hw, merge_iou):
        rp, rq = root[p], root[q]
        if rp == rq or {t for t, _ in members[rp]} & {t for t, _ in members[rq]}:
            continue
        members[rp] += members.pop(rq)
        for k in members[rp]:
            root[k] = rp
    return sorted((sorted(g) for g in members.values()), key=lambda g: g[0])


def _assemble(tiles: list[TileMasks], placed: list[list[dict]], tile_xyxy: list[np.ndarray],
              groups: list[list[tuple[int, int]]], image_hw: tuple[int, int]) -> MergedMasks:
    from pycocotools import mask as mask_utils

    n = len(groups)
    channels = next((t.embeddings.shape[1] for t in tiles if t.embeddings.ndim == 2), 0)
    rles, emb = [], np.zeros((n, channels), np.float32)
    areas, boxes = np.zeros(n, np.int64), np.zeros((n, 4), np.float32)
    iou, stability = np.zeros(n, np.float32), np.zeros(n, np.float32)
    points, crops = np.zeros((n, 2), np.float32), np.zeros((n, 4), np.float32)
    for g, parts in enumerate(groups):
        weights = np.array([tiles[t].masks.areas[i] for t, i in parts], np.float64)
        weights = weights / weights.sum() if weights.sum() > 0 else np.full(len(parts), 1.0 / len(parts))
        if len(parts) == 1:
            rles.append(placed[parts[0][0]][parts[0][1]])
        else:
            merged = mask_utils.merge([rle_ops.to_coco(placed[t][i]) for t, i in parts], intersect=False)
            rles.append({"size": [int(v) for v in merged["size"]], "counts": merged["counts"].decode("ascii")})
        areas[g] = int(mask_utils.area(rle_ops.to_coco(rles[-1])))
        xyxy = np.stack([tile_xyxy[t][i] for t, i in parts])
        lo, hi = xyxy[:, :2].min(axis=0), xyxy[:, 2:].max(axis=0)
        boxes[g] = [lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]]
        emb[g] = weights @ np.stack([tiles[t].embeddings[i] for t, i in parts]).astype(np.float64)
        iou[g] = weights @ np.array([tiles[t].masks.predicted_iou[i] for t, i in parts], np.float64)
        stability[g] = weights @ np.array([tiles[t].masks.stability_score[i] for t, i in parts], np.float64)
        t, i = parts[int(np.argmax(weights))]  # the largest piece's prompt and tile
        x0, y0, x1, y1 = tiles[t].box_xyxy
        points[g] = tiles[t].masks.point_coords_xy[i] + np.array([x0, y0], np.float32)
        crops[g] = [x0, y0, x1 - x0, y1 - y0]
    masks = MaskSet(image_hw=(int(image_hw[0]), int(image_hw[1])), rles=rles, areas=areas, bbox_xywh=boxes,
                    predicted_iou=iou, stability_score=stability, point_coords_xy=points, crop_box_xywh=crops)
    return MergedMasks(masks=masks, embeddings=emb, parts=groups, n_tiles=len(tiles))
