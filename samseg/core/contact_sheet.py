"""Contact sheet of dataset-level classes: one row per class, a few mask cut-outs each.

Arrays in, arrays out. `select_examples` picks masks (no pixels needed); `mask_cutouts`
cuts them out of one photo; `render_contact_sheet` draws the rows. `contact_sheet` chains
the three with a caller-supplied `load(i) -> (rgb, MaskSet)`, visiting each needed image
once, so only one photo is in memory at a time:

    picks = select_examples(results, [m.areas for m in masksets], table.n_classes)
    sheet = contact_sheet(picks, lambda i: (load_image(paths[i]).rgb, masksets[i]), table.sizes)

Row colours are `samseg.core.render.class_color(c)`, the colours of overlay.png, so a class
looks the same on the sheet and in every image's overlay.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from samseg.core.types import ClusterResult, MaskSet

TILE = 96  # px per cut-out tile: big enough to recognise an object, 6 per row < 700 px wide
PER_CLASS = 6
MAX_ROWS = 60  # a sheet taller than ~6000 px is no longer looked at; the rest is summarised
_GUTTER = 88  # left column: class colour + id + size, and the name below when the class has one
_PAD = 4
_BG = (255, 255, 255)


class ContactSheetError(ValueError):
    """Inputs that cannot be drawn (wrong shapes or dtypes)."""


def select_examples(
    results: Sequence[ClusterResult], areas_per_image: Sequence[np.ndarray], n_classes: int, per_class: int = PER_CLASS
) -> list[list[tuple[int, int]]]:
    """Per class c (0..n_classes-1): up to `per_class` (image index, mask index) picks.

    Round-robin over the images the class occurs in (batch order), largest mask of that
    image first, so a row shows the class in as many different images as possible.
    Deterministic: same inputs, same picks.
    """
    by_class: list[list[list[int]]] = [[] for _ in range(n_classes)]  # class → per image → mask ids
    image_of: list[list[int]] = [[] for _ in range(n_classes)]
    for i, (res, areas) in enumerate(zip(results, areas_per_image)):
        labels = np.asarray(res.labels)
        if len(labels) != len(areas):
            raise ContactSheetError(f"image {i}: {len(labels)} labels but {len(areas)} mask areas")
        for c in np.unique(labels[labels >= 0]):
            idx = np.flatnonzero(labels == c)
            order = idx[np.lexsort((idx, -np.asarray(areas)[idx]))]  # area desc, then index
            by_class[int(c)].append(order.tolist())
            image_of[int(c)].append(i)
    picks: list[list[tuple[int, int]]] = []
    for c in range(n_classes):
        row: list[tuple[int, int]] = []
        depth = 0
        while len(row) < per_class and any(depth < len(m) for m in by_class[c]):
            for img, masks in zip(image_of[c], by_class[c]):
                if depth < len(masks) and len(row) < per_class:
                    row.append((img, masks[depth]))
            depth += 1
        picks.append(row)
    return picks


def contact_sheet(
    picks: Sequence[Sequence[tuple[int, int]]],
    load: Callable[[int], tuple[np.ndarray, MaskSet]],
    sizes: Sequence[int] | None = None,
    tile: int = TILE,
    per_class: int = PER_CLASS,
    max_rows: int = MAX_ROWS,
    names: Mapping[int, str] | None = None,
) -> np.ndarray:
    """H×W×3 uint8 sheet for `select_examples` picks; `load(i)` → (H×W×3 uint8, MaskSet) of image i;
    names: {class id: name} of the named classes (ClassTable.class_names)."""
    wanted: dict[int, list[int]] = {}
    for row in list(picks)[:max_rows]:
        for img, mask in row:
            wanted.setdefault(int(img), []).append(int(mask))
    cuts: dict[tuple[int, int], np.ndarray] = {}
    for img in sorted(wanted):
        rgb, masks = load(img)
        for mask, cut in zip(wanted[img], mask_cutouts(rgb, masks, wanted[img])):
            cuts[(img, mask)] = cut
    rows = [[cuts[(int(i), int(m))] for i, m in row] if c < max_rows else [] for c, row in enumerate(picks)]
    return render_contact_sheet(rows, sizes=sizes, tile=tile, per_class=per_class, max_rows=max_rows, names=names)


def mask_cutouts(rgb_hw3: np.ndarray, masks: MaskSet, indices: Sequence[int]) -> list[np.ndarray]:
    """h×w×4 uint8 RGBA per chosen mask: the image cropped to the mask's box, alpha = mask."""
    rgb = np.asarray(rgb_hw3)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ContactSheetError(f"image must be H×W×3 uint8, got {rgb.shape} {rgb.dtype}")
    if tuple(rgb.shape[:2]) != tuple(masks.image_hw):
        raise ContactSheetError(f"image is {rgb.shape[:2]} but the masks are {tuple(masks.image_hw)}")
    out = []
    for i in indices:
        m = masks.decode([int(i)])[0]
        ys, xs = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        if not len(ys):
            out.append(np.zeros((1, 1, 4), np.uint8))
            continue
        y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
        alpha = m[y0:y1, x0:x1].astype(np.uint8) * 255
        out.append(np.dstack([rgb[y0:y1, x0:x1], alpha]))
    return out


def render_contact_sheet(
    cutouts_per_class: Sequence[Sequence[np.ndarray]],
    sizes: Sequence[int] | None = None,
    tile: int = TILE,
    per_class: int = PER_CLASS,
    max_rows: int = MAX_ROWS,
    names: Mapping[int, str] | None = None,
) -> np.ndarray:
    """H×W×3 uint8 sheet: row c = class c's colour, id and size (and its name below, cut to the
    gutter, when `names` has one), then its cut-outs (h×w×4 RGBA or h×w×3) each scaled to fit a
    tile×tile cell over white. More than `max_rows` classes → the first max_rows rows and a
    "+k more classes" line."""
    from samseg.core.render import class_color

    n = len(cutouts_per_class)
    shown = min(n, max_rows)
    row_h = tile + 2 * _PAD
    height = max(1, shown) * row_h + (row_h // 2 if n > shown or n == 0 else 0)
    sheet = np.full((height, sheet_width(tile, per_class), 3), _BG, dtype=np.uint8)
    for c in range(shown):
        _, y, _, _ = cutout_xywh(c, 0, tile)
        color = class_color(c)
        sheet[y : y + tile, _PAD : _PAD + 12] = color
        label = f"{c}" + (f" ({int(sizes[c])})" if sizes is not None else "")
        name = (names or {}).get(c)
        _text(sheet, label, (_PAD + 18, y + tile // 2 + (-3 if name else 5)))
        if name:  # the gutter's width: the sheet's layout (cutout_xywh) does not move for a long name
            _text(sheet, _fitted(name, _GUTTER - _PAD - 18 - 2), (_PAD + 18, y + tile // 2 + 13))
        for j, cut in enumerate(list(cutouts_per_class[c])[:per_class]):
            x, y, _, _ = cutout_xywh(c, j, tile)
            sheet[y : y + tile, x : x + tile] = fit_tile(cut, tile)
    if n == 0:
        _text(sheet, "no classes", (_PAD, row_h // 2))
    elif n > shown:
        _text(sheet, f"+{n - shown} more classes", (_PAD, shown * row_h + row_h // 3))
    return sheet


def sheet_width(tile: int = TILE, per_class: int = PER_CLASS) -> int:
    """Width in px of every contact sheet drawn with these settings."""
    return _GUTTER + per_class * (tile + _PAD) + _PAD


def cutout_xywh(c: int, j: int = 0, tile: int = TILE) -> tuple[int, int, int, int]:
    """(x, y, w, h) of class c's j-th cut-out on the sheet (rows past MAX_ROWS are not drawn):
    the UI shows a class's first cut-out as a window on the sheet it already loads."""
    return _GUTTER + j * (tile + _PAD), c * (tile + 2 * _PAD) + _PAD, tile, tile


def fit_tile(cut: np.ndarray, tile: int) -> np.ndarray:
    """tile×tile×3 uint8: the cut-out scaled (aspect kept) and centred, alpha over white."""
    import cv2

    cut = np.asarray(cut)
    if cut.ndim != 3 or cut.shape[2] not in (3, 4) or cut.dtype != np.uint8:
        raise ContactSheetError(f"cut-out must be h×w×3 or h×w×4 uint8, got {cut.shape} {cut.dtype}")
    h, w = cut.shape[:2]
    scale = tile / max(h, w)
    nh, nw = max(1, min(tile, round(h * scale))), max(1, min(tile, round(w * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(cut, (nw, nh), interpolation=interp)
    if small.ndim == 2:  # cv2 drops a trailing axis of 1; cannot happen for 3/4 channels
        small = small[:, :, None]
    rgb = small[:, :, :3].astype(np.float32)
    alpha = small[:, :, 3:4].astype(np.float32) / 255 if cut.shape[2] == 4 else np.ones((nh, nw, 1), np.float32)
    out = np.full((tile, tile, 3), _BG, dtype=np.float32)
    y0, x0 = (tile - nh) // 2, (tile - nw) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = rgb * alpha + out[y0 : y0 + nh, x0 : x0 + nw] * (1 - alpha)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


_FONT = (0, 0.45, 1)  # cv2.FONT_HERSHEY_SIMPLEX, scale, thickness


def _text(img: np.ndarray, text: str, org_xy: tuple[int, int]) -> None:
    import cv2

    face, scale, thick = _FONT
    cv2.putText(img, text, org_xy, face, scale, (0, 0, 0), thick, cv2.LINE_AA)


def _fitted(name: str, width_px: int) -> str:
    """`name` as the sheet's font draws it (ASCII: accents dropped, other letters '?'), cut with
    '..' to `width_px`."""
    import unicodedata

    import cv2

    face, scale, thick = _FONT
    text = "".join(ch if ch.isascii() and ch.isprintable() else "?"
                   for ch in unicodedata.normalize("NFKD", name) if not unicodedata.combining(ch))
    if cv2.getTextSize(text, face, scale, thick)[0][0] <= width_px:
        return text
    while text and cv2.getTextSize(text + "..", face, scale, thick)[0][0] > width_px:
        text = text[:-1]
    return text + ".."
