"""COCO RLE as run arrays: what tiling needs without ever decoding a mask at image size.

pycocotools stores a mask column by column (Fortran order) as alternating run lengths,
zeros first, and compresses the runs into a string. Here a mask is also seen as its runs
of ones: `starts`/`ends` indices into that column-major order, i.e. into the flat view of
a W×H (transposed) array. So moving a tile's mask into the image, or painting a mask into a
100-MP label map, costs what its runs cost, not H·W.

`decode_counts` and `encode_counts` are pycocotools' rleFrString / rleToString vectorised
with numpy; tests check them byte for byte against pycocotools' own strings.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def to_coco(rle: dict[str, Any]) -> dict[str, Any]:
    """{"size", "counts"} as pycocotools' C functions take it (counts as bytes)."""
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def decode_counts(counts: str | bytes) -> np.ndarray:
    """Compressed COCO counts → (K,) int64 run lengths (zeros, ones, zeros, ...)."""
    raw = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    if not raw:
        return np.zeros(0, np.int64)
    c = np.frombuffer(raw, np.uint8).astype(np.int64) - 48
    more = (c & 0x20) != 0
    last = np.flatnonzero(~more)  # the last character of every value
    first = np.concatenate([[0], last[:-1] + 1])
    k = np.arange(len(c)) - np.repeat(first, last - first + 1)  # 5-bit digit index within a value
    x = np.add.reduceat((c & 0x1F) << (5 * k), first)
    negative = (c[last] & 0x10) != 0
    x[negative] -= np.left_shift(1, 5 * (k[last[negative]] + 1))  # sign-extend, as rleFrString does
    # Values from the 4th on are stored as differences to the value two before (rleToString).
    if len(x) > 3:
        x[3::2] = np.cumsum(x[1::2])[1:]
    if len(x) > 4:
        x[4::2] = np.cumsum(x[2::2])[1:]
    return x


def encode_counts(runs: np.ndarray, hw: tuple[int, int]) -> str:
    """(K,) run lengths (zeros first) of an H×W mask → compressed counts (rleToString, vectorised).

    Each value (from the 4th on, its difference to the value two before) is written in as
    few 5-bit digits as hold it in two's complement, low digit first, 0x20 = more digits
    follow, each digit + 48. The result is byte-identical to pycocotools' strings (tested).
    """
    x = np.asarray(runs, np.int64).copy()
    if int(x.sum()) != int(hw[0]) * int(hw[1]):
        raise ValueError(f"runs sum to {int(x.sum())}, a {hw[0]}x{hw[1]} mask has {int(hw[0]) * int(hw[1])} pixels")
    if len(x) > 3:
        x[3:] -= np.asarray(runs, np.int64)[1:-2]
    n = np.ones(len(x), np.int64)  # digits per value: the fewest 5n-bit signed fields holding it
    for _ in range(13):
        big = (x >= np.left_shift(1, 5 * n - 1)) | (x < -np.left_shift(1, 5 * n - 1))
        if not big.any():
            break
        n += big
    k = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)  # digit index within its value
    digits = (np.repeat(x, n) >> (5 * k)) & 0x1F
    digits |= np.where(k < np.repeat(n, n) - 1, 0x20, 0)
    return (digits + 48).astype(np.uint8).tobytes().decode("ascii")


def ones_runs(rle: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) int64 of the runs of ones, as column-major flat indices (end exclusive)."""
    runs = decode_counts(rle["counts"])
    edges = np.concatenate([[0], np.cumsum(runs)])
    return edges[1:-1:2], edges[2::2]


def runs_to_rle(starts: np.ndarray, ends: np.ndarray, hw: tuple[int, int]) -> dict[str, Any]:
    """Sorted, disjoint runs of ones (column-major flat indices) → {"size", "counts": str}."""
    starts, ends = np.asarray(starts, np.int64), np.asarray(ends, np.int64)
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    if len(starts) > 1:  # runs that touch (a column run continuing into the next column) become one
        join = starts[1:] == ends[:-1]
        starts = starts[np.concatenate([[True], ~join])]
        ends = ends[np.concatenate([~join, [True]])]
    total = int(hw[0]) * int(hw[1])
    bounds = np.empty(2 * len(starts) + 2, np.int64)
    bounds[0], bounds[-1] = 0, total
    bounds[1:-1:2], bounds[2:-1:2] = starts, ends
    runs = np.diff(bounds)
    if len(runs) > 1 and runs[-1] == 0:  # pycocotools ends on the last run of ones: no empty zeros run after it
        runs = runs[:-1]
    return {"size": [int(hw[0]), int(hw[1])], "counts": encode_counts(runs, hw)}


def translate(rle: dict[str, Any], offset_yx: tuple[int, int], image_hw: tuple[int, int]) -> dict[str, Any]:
    """A tile's mask (RLE at the tile's size) placed at `offset_yx` in an `image_hw` image.

    Every run of the tile is cut at its column ends (a column of the tile is part of a
    longer column of the image) and shifted: tile (x, y) → image (x0 + x, y0 + y).
    """
    th, tw = (int(v) for v in rle["size"])
    (y0, x0), (h, w) = offset_yx, image_hw
    if y0 < 0 or x0 < 0 or y0 + th > h or x0 + tw > w:
        raise ValueError(f"a {th}x{tw} tile at {offset_yx} does not fit a {h}x{w} image")
    starts, ends = ones_runs(rle)
    col_first, col_last = starts // th, (ends - 1) // th
    pieces = col_last - col_first + 1
    col = np.repeat(col_first, pieces) + (np.arange(int(pieces.sum())) - np.repeat(np.cumsum(pieces) - pieces, pieces))
    p_start = np.maximum(np.repeat(starts, pieces), col * th)
    p_end = np.minimum(np.repeat(ends, pieces), (col + 1) * th)
    shift = (x0 + col) * h + y0 - col * th
    return runs_to_rle(p_start + shift, p_end + shift, image_hw)


def paint(out_wh: np.ndarray, rle: dict[str, Any], value: int) -> None:
    """In place: out_wh (W×H, C-contiguous: the transposed image) = value on the mask's pixels."""
    if not out_wh.flags.c_contiguous:
        raise ValueError("paint needs a C-contiguous W×H array (a reshape would copy)")
    flat = out_wh.reshape(-1)
    starts, ends = ones_runs(rle)
    lengths = ends - starts
    if lengths.sum() <= 1 << 22:  # ≤ 4 M pixels: one fancy-indexed write (32 MB of indices at most)
        idx = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()))
        flat[idx] = value
        return
    for s, e in zip(starts.tolist(), ends.tolist()):  # a huge mask: its runs are long, so they are few
        flat[s:e] = value


def sample_grid(rle: dict[str, Any], rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """len(rows)×len(cols) bool: the mask at pixels (rows[i], cols[j]) — `decoded[np.ix_(rows, cols)]`
    without decoding it. rows and cols: sorted int arrays of pixel indices."""
    h = int(rle["size"][0])
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    out = np.zeros((len(rows) + 1, len(cols)), np.int32)  # +1 row: run ends past the last sample
    starts, ends = ones_runs(rle)
    if not len(starts) or not len(rows) or not len(cols):
        return out[:-1] > 0
    first = np.searchsorted(ends, cols * h, side="right")  # first run ending after each column's top
    last = np.searchsorted(starts, (cols + 1) * h, side="left")  # runs starting before its bottom
    n = np.maximum(last - first, 0)
    col = np.repeat(np.arange(len(cols)), n)
    run = np.repeat(first, n) + (np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n))
    top = np.repeat(cols * h, n)
    lo = np.searchsorted(rows, np.maximum(starts[run], top) - top, side="left")
    hi = np.searchsorted(rows, np.minimum(ends[run], top + h) - top, side="left")
    np.add.at(out, (lo, col), 1)
    np.add.at(out, (hi, col), -1)
    return np.cumsum(out, axis=0)[:-1] > 0
