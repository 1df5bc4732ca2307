"""Pictures of a class map: overlay with legend, and per-class cut-outs. Arrays in, arrays out.

Label-map convention (samseg.core.compose): H×W uint16, 0 = no class, c + 1 = cluster c.
Colours are fixed per class id (`class_color`), so class 3 has the same colour in every
image and every run.
"""

from __future__ import annotations

import colorsys

import numpy as np

# 20 hand-picked colours that stay distinguishable from each other and readable over
# photos (Kelly's / Glasbey-style set, no white or black: those are the boundary and
# legend colours). Class ids beyond 20 get golden-angle hues (`class_color`).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
)
BOUNDARY_RGB = (0, 0, 0)
# Class colour weight in the blend: strong enough to read the classes, weak enough to
# still see the photo underneath.
DEFAULT_ALPHA = 0.5
MAX_LEGEND_ROWS = 24
BAND_PIXELS = 1 << 22  # pixels per band of rows while blending / cutting out (bounded temporaries)  # more classes than this are summarised as "+k more classes"


def class_color(c: int) -> tuple[int, int, int]:
    """RGB uint8 colour of cluster id c (c >= 0); deterministic, no randomness."""
    if c < 0:
        raise ValueError(f"class id must be >= 0, got {c}")
    if c < len(PALETTE):
        return PALETTE[c]
    hue = ((c - len(PALETTE)) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return (int(r * 255), int(g * 255), int(b * 255))


def color_lut(n_classes: int) -> np.ndarray:
    """(n_classes + 1)×3 uint8 indexed by label-map value; row 0 (no class) is black."""
    lut = np.zeros((n_classes + 1, 3), np.uint8)
    for c in range(n_classes):
        lut[c + 1] = class_color(c)
    return lut


def class_boundaries(label_map_hw: np.ndarray, thickness: int = 1) -> np.ndarray:
    """H×W bool: pixels whose right or lower neighbour has a different label, dilated
    to `thickness` pixels."""
    lab = np.asarray(label_map_hw)
    edge = np.zeros(lab.shape, bool)
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    edge[:-1, :] |= lab[:-1, :] != lab[1:, :]
    if thickness > 1 and edge.any():
        import cv2

        kernel = np.ones((thickness, thickness), np.uint8)
        edge = cv2.dilate(edge.astype(np.uint8), kernel) > 0
    return edge


def render_overlay(
    rgb: np.ndarray,
    label_map_hw: np.ndarray,
    class_sizes: list[int] | None = None,
    n_noise: int | None = None,
    alpha: float = DEFAULT_ALPHA,
    names: dict[int, str] | None = None,
) -> np.ndarray:
    """H×W×3 uint8: class colours alpha-blended over `rgb`, thin black class boundaries,
    and a legend box (top-left) listing "class c (n masks)" per class of `class_sizes` (mask
    counts per cluster) with a mask here, plus "noise (n masks)" when `n_noise` is given.

    rgb: H×W×3 uint8. label_map_hw: H×W integer, 0 = none, c + 1 = cluster c.
    class_sizes None → classes are read off the label map and the legend has no counts.
    """
    lab = _check_pair(rgb, label_map_hw)
    n_classes = len(class_sizes) if class_sizes is not None else int(lab.max(initial=0))
    if int(lab.max(initial=0)) > n_classes:
        raise ValueError(f"label map has class id {int(lab.max()) - 1} but only {n_classes} class sizes were given")
    out = _blend(rgb, lab, color_lut(n_classes), alpha)
    h, w = lab.shape
    out[class_boundaries(lab, thickness=max(1, min(h, w) // 400))] = BOUNDARY_RGB
    rows = _legend_rows(n_classes, class_sizes, n_noise, names)
    return _draw_legend(out, rows) if rows else np.ascontiguousarray(out)


def _blend(rgb: np.ndarray, lab: np.ndarray, lut: np.ndarray, alpha: float) -> np.ndarray:
    """H×W×3 uint8: rint((1 − alpha)·rgb + alpha·colour) where lab > 0, rgb elsewhere.

    Through a (classes+1)×256 table per channel, each entry computed with the same float32
    arithmetic as blending the pixels one by one (so the bytes are the same), instead of
    boolean-indexing H×W×3 floats: an overlay costs table look-ups."""
    v = np.arange(256, dtype=np.float32)
    out = np.empty_like(rgb)
    tables = []
    for ch in range(3):
        table = np.rint((1.0 - alpha) * v[None, :] + alpha * lut[:, ch].astype(np.float32)[:, None]).astype(np.uint8)
        table[0] = np.arange(256, dtype=np.uint8)  # label 0: the photo as it is
        tables.append(table)
    for rows in _bands(lab.shape):  # numpy turns index arrays into intp: bounded bands, not 8 bytes × H×W
        for ch in range(3):
            out[rows, :, ch] = tables[ch][lab[rows], rgb[rows, :, ch]]
    return out


def _bands(hw: tuple[int, int], pixels: int = BAND_PIXELS) -> list[slice]:
    """Row slices of about `pixels` pixels each, covering an H×W image."""
    h, w = hw
    step = max(1, pixels // max(1, w))
    return [slice(y, min(h, y + step)) for y in range(0, h, step)]


def render_cutout(rgb: np.ndarray, label_map_hw: np.ndarray, c: int) -> np.ndarray:
    """H×W×4 uint8 RGBA: the image where the label map is class c (value c + 1), fully
    transparent (and zeroed, which also keeps the PNG small) everywhere else."""
    lab = _check_pair(rgb, label_map_hw)
    out = np.empty((*lab.shape, 4), np.uint8)
    for rows in _bands(lab.shape):  # multiply by 0/1 instead of boolean indexing: ~3× faster
        inside = (lab[rows] == (int(c) + 1)).view(np.uint8)
        np.multiply(rgb[rows], inside[:, :, None], out=out[rows, :, :3])
        np.multiply(inside, 255, out=out[rows, :, 3])
    return out


def _check_pair(rgb: np.ndarray, label_map_hw: np.ndarray) -> np.ndarray:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be H×W×3 uint8, got {rgb.shape} {rgb.dtype}")
    lab = np.asarray(label_map_hw)
    if lab.shape != rgb.shape[:2]:
        raise ValueError(f"label map is {lab.shape} but the image is {rgb.shape[:2]}")
    if lab.dtype.kind not in "ui":
        raise ValueError(f"label map must be integer, got {lab.dtype}")
    if lab.dtype.kind == "i" and lab.size and int(lab.min()) < 0:
        raise ValueError("label map has negative values (0 = no class, c + 1 = cluster c)")
    return lab  # its own dtype (uint16): an int64 copy is 8 bytes a pixel, 800 MB at 100 MP


def _legend_rows(n_classes: int, class_sizes: list[int] | None, n_noise: int | None,
                 names: dict[int, str] | None = None) -> list[tuple[tuple[int, int, int] | None, str]]:
    """(swatch colour or None, text) per legend line: "class 3" or, when named, "3 road 0.31"
    (`names`: ClusterResult.legend(), the name and the namer's score)."""
    rows: list[tuple[tuple[int, int, int] | None, str]] = []
    # a class with no mask here (a dataset class absent from this image, one emptied by an edit) is not in its legend
    present = [c for c in range(n_classes) if class_sizes is None or class_sizes[c] > 0]
    for c in present[:MAX_LEGEND_ROWS]:
        label = f"{c} {names[c]}" if names and names.get(c) else f"class {c}"
        text = label if class_sizes is None else f"{label} ({_masks(class_sizes[c])})"
        rows.append((class_color(c), text))
    if len(present) > MAX_LEGEND_ROWS:
        rows.append((None, f"+{len(present) - MAX_LEGEND_ROWS} more classes"))
    if n_noise is not None:
        rows.append((None, f"noise ({_masks(n_noise)})"))
    if not rows:
        rows.append((None, "no classes"))
    return rows


def _masks(n: int) -> str:
    return f"{int(n)} mask" if int(n) == 1 else f"{int(n)} masks"


def _draw_legend(out: np.ndarray, rows: list[tuple[tuple[int, int, int] | None, str]]) -> np.ndarray:
    """Draw the legend box onto `out` (H×W×3 uint8, in place; returned); skipped on tiny images.
    Only the box's region goes through PIL: a 100-MP overlay is not copied twice for a legend."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = out.shape[:2]
    size = max(10, min(h, w) // 45)  # text ~2% of the short side, readable at full size
    if h < 2 * size or w < 6 * size:
        return np.ascontiguousarray(out)
    font = ImageFont.load_default(size=size)
    pad, line = size // 2, int(size * 1.4)
    text_w = max(font.getlength(text) for _, text in rows)
    box_w = min(w - 1, int(pad * 3 + size + text_w))
    box_h = min(h - 1, pad * 2 + line * len(rows))
    # the text may run past the box only where the box is cut at the image edge: the region is all of that side
    region = (slice(0, h if box_h >= h - 1 else box_h + line + 1), slice(0, w if box_w >= w - 1 else box_w + 1))
    img = Image.fromarray(np.ascontiguousarray(out[region]))
    draw = ImageDraw.Draw(img, "RGBA")
    draw.rectangle([0, 0, box_w, box_h], fill=(255, 255, 255, 210), outline=(0, 0, 0, 255))
    for i, (color, text) in enumerate(rows):
        y = pad + i * line
        if y + size > h:
            break
        if color is not None:
            draw.rectangle([pad, y, pad + size, y + size], fill=(*color, 255), outline=(0, 0, 0, 255))
        draw.text((pad * 2 + size, y), text, fill=(0, 0, 0, 255), font=font)
    out[region] = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return out
