"""A large image whose objects are written into its pixels, and stand-ins for SAM's encoder and
AMG that read them back: the tiled engine's merge, pool, cluster, compose and export then run
on smooth, known masks at any scale (tests/test_tiling.py, benchmarks/tiled.py).

Pixels: R + 256·G = object id (0 = background), B = 100·class (1 = disc, 2 = square). The
stand-in AMG returns one mask per object id a tile sees, plus the tile's background; the
stand-in encoder gives each 16-px cell its majority class's vector plus noise.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

CHANNELS = 48


def scene(hw: tuple[int, int], objects: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(H×W×3 uint8 pixels, H×W uint8 class map) for objects (cy, cx, size): even index = disc of
    radius size, odd = square of half-side size. Objects must not overlap (later ones win)."""
    rgb, classes = np.zeros((*hw, 3), np.uint8), np.zeros(hw, np.uint8)
    for k, (cy, cx, s) in enumerate(objects):
        y0, y1, x0, x1 = max(0, cy - s), min(hw[0], cy + s + 1), max(0, cx - s), min(hw[1], cx + s + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= s * s if k % 2 == 0 else np.ones((y1 - y0, x1 - x0), bool)
        cls, oid = 1 + k % 2, k + 1
        rgb[y0:y1, x0:x1][m] = (oid % 256, oid // 256, 100 * cls)
        classes[y0:y1, x0:x1][m] = cls
    return rgb, classes


def grid_objects(hw: tuple[int, int], n: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """About n non-overlapping objects on a jittered grid (sizes 20..45% of a grid cell)."""
    rng = np.random.default_rng(seed)
    per_row = max(1, int(np.sqrt(n * hw[1] / hw[0])))
    cell = hw[1] // per_row
    out = []
    for cy in range(cell // 2, hw[0] - cell // 2, cell):
        for cx in range(cell // 2, hw[1] - cell // 2, cell):
            s = int(cell * rng.uniform(0.2, 0.45) / 2)
            jitter = cell // 2 - s - 1
            out.append((cy + int(rng.integers(-jitter, jitter + 1)), cx + int(rng.integers(-jitter, jitter + 1)), s))
    return out[:n]


def install_standins(monkeypatch: Any = None) -> dict[str, int]:
    """Replace samseg.sam.encode.encode_image / samseg.sam.amg.generate_masks (through pytest's
    monkeypatch when given); returns the call counter."""
    from samseg.sam import amg as amg_mod
    from samseg.sam import encode as encode_mod

    calls = {"encode": 0, "amg": 0}
    vectors = np.random.default_rng(7).normal(size=(3, CHANNELS))  # background, disc, square

    def encode(model: Any, rgb_hw3: np.ndarray) -> Any:
        calls["encode"] += 1
        return standin_features(rgb_hw3, vectors)

    def amg(model: Any, rgb_hw3: np.ndarray, encoded: Any, cfg: Any) -> Any:
        from samseg.core.types import MaskSet

        calls["amg"] += 1
        ids = rgb_hw3[:, :, 0].astype(np.int32) + 256 * rgb_hw3[:, :, 1].astype(np.int32)
        found = [ids == k for k in np.unique(ids) if k > 0] + ([ids == 0] if (ids == 0).any() else [])
        return MaskSet.from_binary(np.stack(found))

    for module, name, fn in ((encode_mod, "encode_image", encode), (amg_mod, "generate_masks", amg)):
        if monkeypatch is not None:
            monkeypatch.setattr(module, name, fn)
        else:
            setattr(module, name, fn)
    return calls


def standin_features(rgb_hw3: np.ndarray, vectors: np.ndarray) -> Any:
    """EncodedImage: each valid cell = its majority class's vector + noise; padding cells junk."""
    from PIL import Image

    from samseg.core.types import EncodedImage, ImageGeometry

    geometry = ImageGeometry.for_image(rgb_hw3.shape[:2])
    (ih, iw), p = geometry.input_hw, geometry.patch_size
    framed = np.asarray(Image.fromarray(rgb_hw3[:, :, 2]).resize((iw, ih), Image.NEAREST)) // 100
    gh, gw = geometry.valid_cells_hw
    padded = np.full((gh * p, gw * p), 9, np.uint8)
    padded[:ih, :iw] = framed
    cells = padded.reshape(gh, p, gw, p).transpose(0, 2, 1, 3).reshape(gh, gw, p * p)
    majority = np.stack([(cells == k).sum(-1) for k in range(3)], -1).argmax(-1)
    rng = np.random.default_rng(int(hashlib.sha256(rgb_hw3.tobytes()).hexdigest()[:8], 16))
    features = rng.normal(size=(vectors.shape[1], *geometry.feature_hw)) * 100
    features[:, :gh, :gw] = (vectors[majority] + 0.05 * rng.normal(size=(gh, gw, vectors.shape[1]))).transpose(2, 0, 1)
    return EncodedImage(features.astype(np.float32), geometry)
