"""Values passed between stages. Arrays in, arrays out; no I/O here.

Layouts are in the names: `hw` = (height, width), `xywh`/`xyxy` boxes in pixels of the
ORIGINAL (EXIF-corrected) image unless a name says otherwise, features are channels-first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np


@dataclass(frozen=True)
class ImageGeometry:
    """Where the original image sits inside an encoder's padded input frame.

    The long side is resized to `img_size` (SAM's ResizeLongestSide), giving `input_hw`, then
    padded bottom/right to `frame_hw`: SAM's square img_size×img_size frame, or (a feature
    backbone on any grid) `input_hw` rounded up to whole patches. The feature grid has one cell
    per `patch_size`×`patch_size` frame pixels; cells entirely inside the padding are invalid.
    """

    original_hw: tuple[int, int]
    input_hw: tuple[int, int]
    img_size: int = 1024
    patch_size: int = 16
    frame_hw: Optional[tuple[int, int]] = None  # None: the square img_size×img_size frame (SAM)

    @property
    def padded_hw(self) -> tuple[int, int]:
        """The padded frame the encoder saw."""
        return self.frame_hw if self.frame_hw is not None else (self.img_size, self.img_size)

    @property
    def feature_hw(self) -> tuple[int, int]:
        """Full feature grid gh×gw, padding included: (64, 64) for SAM."""
        fh, fw = self.padded_hw
        return (fh // self.patch_size, fw // self.patch_size)

    @property
    def valid_cells_hw(self) -> tuple[int, int]:
        """Cells that contain at least one non-padding input pixel."""
        h, w = self.input_hw
        return (math.ceil(h / self.patch_size), math.ceil(w / self.patch_size))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "original_hw": list(self.original_hw),
            "input_hw": list(self.input_hw),
            "img_size": self.img_size,
            "patch_size": self.patch_size,
        }
        if self.frame_hw is not None:  # SAM's square frame is implied (and its entries stay as they were)
            d["frame_hw"] = list(self.frame_hw)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ImageGeometry":
        frame = d.get("frame_hw")
        return cls(tuple(d["original_hw"]), tuple(d["input_hw"]), int(d["img_size"]), int(d["patch_size"]),
                   None if frame is None else (int(frame[0]), int(frame[1])))

    @classmethod
    def for_image(cls, original_hw: tuple[int, int], img_size: int = 1024, patch_size: int = 16,
                  square: bool = True) -> "ImageGeometry":
        """Same arithmetic as segment_anything's ResizeLongestSide.get_preprocess_shape; square=False
        pads to whole patches only (a ViT with dynamic image size: any gh×gw grid)."""
        h, w = original_hw
        scale = img_size / max(h, w)
        input_hw = (int(h * scale + 0.5), int(w * scale + 0.5))
        frame = None if square else (-(-input_hw[0] // patch_size) * patch_size, -(-input_hw[1] // patch_size) * patch_size)
        return cls(original_hw=(int(h), int(w)), input_hw=input_hw, img_size=img_size, patch_size=patch_size, frame_hw=frame)


@dataclass(frozen=True, eq=False)
class EncodedImage:
    """Output of the image encoder for the full image.

    features: C×Hf×Wf float32, channels-first (256×64×64 for real SAM, 32×64×64 for
    tiny-random). `geometry` says which cells are padding.
    """

    features: np.ndarray
    geometry: ImageGeometry

    def __post_init__(self) -> None:
        if self.features.ndim != 3:
            raise ValueError(f"features must be C×H×W, got shape {self.features.shape}")


@dataclass(frozen=True, eq=False)
class MaskSet:
    """N masks of one image, held as COCO RLE (never N×H×W booleans between stages).

    rles: N dicts {"size": [h, w], "counts": str} (pycocotools compressed RLE, utf-8),
      at the original image size `image_hw`.
    areas: (N,) int64 pixels. bbox_xywh: N×4 float32. predicted_iou, stability_score:
    (N,) float32. point_coords_xy: N×2 float32 (the prompt that produced each mask).
    crop_box_xywh: N×4 float32.
    Order is the AMG's output order; every later array (embeddings, cluster labels)
    uses the same row order. funnel: when the AMG just found no mask, how many candidate
    masks each of its filters let through (samseg.sam.amg; not cached, None otherwise).
    """

    image_hw: tuple[int, int]
    rles: list[dict[str, Any]]
    areas: np.ndarray
    bbox_xywh: np.ndarray
    predicted_iou: np.ndarray
    stability_score: np.ndarray
    point_coords_xy: np.ndarray
    crop_box_xywh: np.ndarray
    funnel: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.rles)

    def content_sha256(self) -> str:
        """Hex sha256 of the masks' pixels (their RLEs, in row order) and the image size: equal
        for the same masks however they were reached (a segment, a recluster, the cache)."""
        import hashlib

        h = hashlib.sha256(f"{self.image_hw[0]}x{self.image_hw[1]}".encode())
        for r in self.rles:
            counts = r["counts"]
            h.update(b"\n" + (counts.encode("utf-8") if isinstance(counts, str) else bytes(counts)))
        return h.hexdigest()

    def decode(self, indices: list[int] | np.ndarray | None = None) -> np.ndarray:
        """K×H×W bool for the chosen masks (all by default). Memory: K·H·W bytes."""
        return np.ascontiguousarray(self.decode_wh(indices).transpose(0, 2, 1))

    def decode_wh(self, indices: list[int] | np.ndarray | None = None) -> np.ndarray:
        """K×W×H bool (transposed!) for the chosen masks, without a full-resolution copy.

        pycocotools decodes to H×W×K in Fortran order; its K×W×H transpose is a free
        C-contiguous view, which is what the chunked pool/compose loops want on 12-MP photos.
        """
        from pycocotools import mask as mask_utils

        idx = range(len(self)) if indices is None else indices
        rles = [self.coco_rle(i) for i in idx]
        if not rles:
            h, w = self.image_hw
            return np.zeros((0, w, h), dtype=bool)
        return mask_utils.decode(rles).transpose(2, 1, 0).view(bool)

    def coco_rle(self, i: int) -> dict[str, Any]:
        """Mask i as the dict pycocotools takes (counts as bytes)."""
        from samseg.core.rle import to_coco

        return to_coco(self.rles[i])

    @classmethod
    def empty(cls, image_hw: tuple[int, int]) -> "MaskSet":
        return cls.from_binary(np.zeros((0, *image_hw), dtype=bool))

    @classmethod
    def from_binary(
        cls,
        masks: np.ndarray,
        predicted_iou: np.ndarray | None = None,
        stability_score: np.ndarray | None = None,
        point_coords_xy: np.ndarray | None = None,
    ) -> "MaskSet":
        """Build from N×H×W bool masks (tests, injected ground truth). Scores default to 1."""
        from pycocotools import mask as mask_utils

        n, h, w = masks.shape
        rles = []
        if n:
            encoded = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
            for r in encoded:
                rles.append({"size": [int(h), int(w)], "counts": r["counts"].decode("utf-8")})
        areas = masks.reshape(n, h * w).sum(axis=1).astype(np.int64)
        bbox = np.zeros((n, 4), dtype=np.float32)
        for i in range(n):
            ys, xs = np.nonzero(masks[i].any(axis=1))[0], np.nonzero(masks[i].any(axis=0))[0]
            if len(ys):
                bbox[i] = [xs[0], ys[0], xs[-1] - xs[0], ys[-1] - ys[0]]  # SAM's xywh convention
        ones = np.ones(n, dtype=np.float32)
        return cls(
            image_hw=(int(h), int(w)),
            rles=rles,
            areas=areas,
            bbox_xywh=bbox,
            predicted_iou=ones if predicted_iou is None else np.asarray(predicted_iou, np.float32),
            stability_score=ones if stability_score is None else np.asarray(stability_score, np.float32),
            point_coords_xy=np.zeros((n, 2), np.float32) if point_coords_xy is None else np.asarray(point_coords_xy, np.float32),
            crop_box_xywh=np.tile(np.array([[0, 0, w, h]], dtype=np.float32), (n, 1)),
        )

    def to_records(self) -> list[dict[str, Any]]:
        """JSON-able per-mask dicts (the annotation fields of masks.json, minus ids/cluster)."""
        return [
            {
                "segmentation": {"size": list(self.rles[i]["size"]), "counts": self.rles[i]["counts"]},
                "area": int(self.areas[i]),
                "bbox": [float(v) for v in self.bbox_xywh[i]],
                "predicted_iou": float(self.predicted_iou[i]),
                "stability_score": float(self.stability_score[i]),
                "point_coords": [[float(v) for v in self.point_coords_xy[i]]],
                "crop_box": [float(v) for v in self.crop_box_xywh[i]],
            }
            for i in range(len(self))
        ]

    @classmethod
    def from_records(cls, image_hw: tuple[int, int], records: list[dict[str, Any]]) -> "MaskSet":
        n = len(records)

        def arr(key: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
            return np.asarray([r[key] for r in records], dtype=dtype).reshape(shape)

        return cls(
            image_hw=(int(image_hw[0]), int(image_hw[1])),
            rles=[{"size": list(r["segmentation"]["size"]), "counts": r["segmentation"]["counts"]} for r in records],
            areas=arr("area", (n,), np.int64),
            bbox_xywh=arr("bbox", (n, 4), np.float32),
            predicted_iou=arr("predicted_iou", (n,), np.float32),
            stability_score=arr("stability_score", (n,), np.float32),
            point_coords_xy=np.asarray([r["point_coords"][0] for r in records], np.float32).reshape(n, 2),
            crop_box_xywh=arr("crop_box", (n, 4), np.float32),
        )


def class_label(c: int, name: str | None = None) -> str:
    """How a class is called wherever one is shown or exported: its name, else class_<c>."""
    return name or f"class_{c}"


@dataclass(frozen=True, eq=False)
class ClusterResult:
    """labels: (N,) int64, -1 = noise, clusters numbered 0..n_clusters-1 by decreasing
    size (ties: lower first member index first), so ids are deterministic."""

    labels: np.ndarray
    # How a setting was chosen for this clustering, e.g. {"eps": 0.07, "rule": "knee"} for --eps auto.
    choice: dict[str, Any] | None = None
    # Names a namer (samseg.sam.namer) or a person (samseg.core.curation) gave classes: {class id:
    # name}; the others are class_<c>. scores: the namer's score of each name (a person's has none).
    names: dict[int, str] | None = None
    scores: dict[int, float] | None = None

    def name(self, c: int) -> str:
        """Class c's name: the one it was given, else class_<c>."""
        return class_label(c, (self.names or {}).get(c))

    def table(self, label_map_hw: np.ndarray, naming: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """summary.json's `class_table`: one row per class present, {id, name (None: unnamed),
        score and runner_up (a namer's, when it named the class), masks, pixels (of the H×W
        label map, 0 = none, c + 1 = class c)}. naming: summary.json's naming["classes"]."""
        n = self.n_clusters
        lab = np.asarray(label_map_hw)
        pixels = np.zeros(n + 1, np.int64)
        for top in range(0, lab.shape[0], 256):  # a band at a time: bincount widens to int64 (8 bytes a pixel)
            pixels += np.bincount(lab[top:top + 256].ravel(), minlength=n + 1)[: n + 1]
        masks = np.bincount(self.labels[self.labels >= 0], minlength=n)
        named = {int(r["id"]): r for r in naming or [] if isinstance(r, dict) and "id" in r}
        rows = []
        for c in np.flatnonzero(masks):
            c = int(c)
            by_namer = named.get(c, {})
            rows.append({"id": c, "name": (self.names or {}).get(c), "score": (self.scores or {}).get(c),
                         "runner_up": by_namer.get("runner_up") if c in (self.scores or {}) else None,
                         "masks": int(masks[c]), "pixels": int(pixels[c + 1])})
        return rows

    def legend(self) -> dict[int, str]:
        """{c: "road 0.31"}: each named class's name and, when a namer gave it, its score (overlay legends)."""
        scores = self.scores or {}
        return {c: f"{n} {scores[c]:.2f}" if c in scores else n for c, n in (self.names or {}).items() if n}

    @property
    def n_clusters(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) and self.labels.max() >= 0 else 0

    @property
    def n_noise(self) -> int:
        return int((self.labels < 0).sum())

    def sizes(self) -> list[int]:
        return [int((self.labels == c).sum()) for c in range(self.n_clusters)]
