"""The `tiles` stage: segment a large image tile by tile, then merge (samseg.core.tiling).

Each tile is an image of its own to the runner: its pixels (a crop of the image, copied so
the image can be released tile by tile by the caller), an identity derived from the image's
sha256 and the tile box, and the untiled config. So every tile has its own encode, amg and
pool cache entries and executor steps (Prefect tasks with the `gpu` tag when orchestrated),
and peak memory is one tile's SAM work plus the image and the RLE masks, never H×W per mask.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING

import numpy as np

from samseg.core.config import TileConfig
from samseg.core.tiling import MergedMasks, TileMasks, merge_tiles, tile_boxes
from samseg.edges.images import LoadedImage
from samseg.engine import progress

if TYPE_CHECKING:
    from samseg.engine.stages import StageInputs


def tile_image(image: LoadedImage, box_xyxy: tuple[int, int, int, int]) -> LoadedImage:
    """The tile `box_xyxy` (end exclusive) of `image` as an image: pixels copied, identity
    `sha256(image sha256 + box)`, uri `<image uri>#tile=x0,y0,x1,y1`."""
    x0, y0, x1, y1 = box_xyxy
    where = f"{x0},{y0},{x1},{y1}"
    sha = hashlib.sha256(f"{image.sha256}#tile={where}".encode("ascii")).hexdigest()
    rgb = np.ascontiguousarray(image.rgb[y0:y1, x0:x1])
    return LoadedImage(rgb=rgb, sha256=sha, name=f"{image.stem}@{x0}_{y0}.tile", uri=f"{image.uri}#tile={where}")


def segment_tiles(ctx: "StageInputs") -> MergedMasks:
    """Every tile through the runner (amg + pool), then one merged set of image masks."""
    if ctx.run_part is None:
        raise RuntimeError("the tiles stage needs the runner's run_part")
    image, cfg = ctx.image, ctx.cfg
    boxes = tile_boxes(image.hw, cfg.tile)
    part_cfg = dataclasses.replace(cfg, tile=TileConfig())
    tiles: list[TileMasks] = []
    hits = 0
    for k, box in enumerate(boxes):
        part = ctx.run_part(tile_image(image, box), part_cfg)
        tiles.append(TileMasks(box_xyxy=box, masks=part.masks, embeddings=part.embeddings))
        hits += part.status.get("amg") == "hit" and part.status.get("pool") == "hit"
        progress.report("tile", image=image.uri, done=k + 1, total=len(boxes), cached=hits)
    return merge_tiles(tiles, image.hw, cfg.tile.merge_iou)
