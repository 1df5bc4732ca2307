"""The class namer: a CLIP-family model (open_clip) that names a run's classes from a vocabulary.

For each class: its `masks_per_class` most central masks (nearest the class's mean embedding)
are cropped from the image at their boxes, the pixels outside each mask set to CLIP's mean
colour, embedded by the image tower and averaged; each vocabulary name is embedded by the text
tower as the mean over samseg.core.namers.TEMPLATES; samseg.core.namers.pick_names takes the best
name, or none when the softmax over the vocabulary is too flat. Weights are read with safetensors
and checked like every weights file (samseg.sam.weights); a vocabulary's text embeddings are kept
per loaded namer, so a batch embeds its names once.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from samseg.core.namers import NAMERS, TEMPLATES, namer_entry, pick_names
from samseg.sam.files import samseg_home
from samseg.sam.weights import CheckpointError, Family, WeightsFile, weight

log = logging.getLogger(__name__)
_CROP_BATCH = 16


@dataclass
class LoadedNamer:
    name: str
    model: Any
    tokenizer: Any
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    sha256: str
    texts: dict[tuple[str, ...], np.ndarray] = field(default_factory=dict)  # vocabulary -> V×D, normalised


def _build(name: str, seed: int = 0) -> Any:
    import open_clip
    import torch

    entry = namer_entry(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if entry.seeded:  # a miniature CLIP: the plumbing, in milliseconds
            from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

            model = CLIP(embed_dim=32, vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=16,
                                                                image_size=64),
                         text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
                         quick_gelu=True)
        else:
            logging.disable(logging.WARNING)  # open_clip warns that it loaded no weights: samseg loads them next
            try:
                model = open_clip.create_model(entry.open_clip_name, pretrained=None, force_quick_gelu=entry.quick_gelu)
            finally:
                logging.disable(logging.NOTSET)
    return model.eval()


def _read_safetensors(model: Any, path: Path, _name: str) -> None:
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # SafetensorError, a foreign file, keys that do not fit
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: not this namer's safetensors weights ({first[:200]})") from None


_LOADED: dict[tuple[str, str, int], LoadedNamer] = {}
_LOCK = threading.Lock()


def load_namer(name: str, device: Optional[str] = None, seed: int = 0) -> LoadedNamer:
    """Namer `name` on `device` (cpu when None), loaded once per process."""
    import open_clip

    from samseg.sam.model import select_device

    dev = select_device(device)  # as SAM's: cuda when there is one
    key = (name, dev, seed)
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
        if namer_entry(name).seeded:
            log.warning("namer %s has random weights: its class names are MEANINGLESS (tests and plumbing only)", name)
        model, _path, sha = weight(name, NAMER_WEIGHTS).load(None, seed)
        size = model.visual.image_size
        size = int(size[0] if isinstance(size, (tuple, list)) else size)
        mean = tuple(getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
        std = tuple(getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
        loaded = LoadedNamer(name, model.to(dev), open_clip.get_tokenizer("ViT-B-16"), size, mean, std, sha)
        _LOADED[key] = loaded
        return loaded


def text_embeddings(namer: LoadedNamer, names: list[str]) -> np.ndarray:
    """V×D: each name's prompt-ensembled text embedding, L2-normalised (kept per vocabulary)."""
    import torch

    key = tuple(names)
    if key not in namer.texts:
        cached = _text_cache_path(namer, names)
        if cached is not None and cached.is_file():
            try:
                arr = np.load(cached)
                if arr.shape[0] == len(names):
                    namer.texts[key] = arr
                    return arr
            except (OSError, ValueError):
                pass  # a bad entry: computed again below
        device = next(namer.model.parameters()).device
        out = []
        with torch.inference_mode():
            for start in range(0, len(names), 64):
                chunk = names[start:start + 64]
                tokens = namer.tokenizer([t.format(n) for n in chunk for t in TEMPLATES]).to(device)
                emb = namer.model.encode_text(tokens).float()
                emb = emb / emb.norm(dim=-1, keepdim=True)
                emb = emb.reshape(len(chunk), len(TEMPLATES), -1).mean(dim=1)
                out.append((emb / emb.norm(dim=-1, keepdim=True)).cpu().numpy())
        namer.texts[key] = np.concatenate(out).astype(np.float32)
        if cached is not None:  # 171 names × 5 templates are ~45 s of a 2-core CPU: once per machine, not per command
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_name(cached.name + f".{os.getpid()}.tmp.npy")
                np.save(tmp, namer.texts[key])
                os.replace(tmp, cached)
            except OSError:
                pass
    return namer.texts[key]


def _text_cache_path(namer: LoadedNamer, names: list[str]) -> Optional[Path]:
    """$SAMSEG_HOME/text-embeddings/<sha256 of weights, templates, names>.npy (None: weights without a hash)."""
    if not namer.sha256:
        return None
    import hashlib
    import json

    key = hashlib.sha256(json.dumps([namer.sha256, list(TEMPLATES), names]).encode("utf-8")).hexdigest()
    return samseg_home() / "text-embeddings" / f"{key}.npy"


def central_masks(labels: np.ndarray, embeddings_nc: np.ndarray, c: int, k: int) -> np.ndarray:
    """The (up to) k masks of class c nearest the class's mean embedding (cosine), most central first."""
    rows = np.flatnonzero(labels == c)
    emb = embeddings_nc[rows].astype(np.float64)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    centre = emb.mean(axis=0)
    return rows[np.argsort(-(emb @ centre), kind="stable")[:k]]


def _crop(rgb: np.ndarray, mask_hw: np.ndarray, box_xywh: np.ndarray, size: int, fill: np.ndarray) -> np.ndarray:
    """size×size×3 float32 in [0, 1]: the mask's box, outside pixels `fill`, padded square, resized."""
    from PIL import Image

    x, y, w, h = (int(round(v)) for v in box_xywh)
    x, y = max(x, 0), max(y, 0)
    w, h = max(w, 1), max(h, 1)
    part = rgb[y:y + h, x:x + w].astype(np.float32) / 255.0
    keep = mask_hw[y:y + h, x:x + w, None]
    part = np.where(keep, part, fill)
    side = max(part.shape[0], part.shape[1])
    square = np.empty((side, side, 3), np.float32)
    square[:] = fill
    oy, ox = (side - part.shape[0]) // 2, (side - part.shape[1]) // 2
    square[oy:oy + part.shape[0], ox:ox + part.shape[1]] = part
    img = Image.fromarray((square * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    return np.asarray(img, np.float32) / 255.0


def mask_crop(namer: LoadedNamer, rgb: np.ndarray, mask_hw: np.ndarray, box_xywh: np.ndarray) -> np.ndarray:
    """A mask's crop as the namer takes it: S×S×3 float32 in [0, 1], outside pixels the model's mean."""
    return _crop(rgb, mask_hw, box_xywh, namer.image_size, np.asarray(namer.mean, np.float32))


def crop_embeddings(namer: LoadedNamer, crops: list[np.ndarray]) -> np.ndarray:
    """N×D: each crop's L2-normalised image embedding."""
    import torch

    device = next(namer.model.parameters()).device
    mean, std = np.asarray(namer.mean, np.float32), np.asarray(namer.std, np.float32)
    with torch.inference_mode():
        x = torch.from_numpy(((np.stack(crops) - mean) / std).transpose(0, 3, 1, 2).copy()).to(device)
        feats = torch.cat([namer.model.encode_image(x[s:s + _CROP_BATCH]).float() for s in range(0, len(x), _CROP_BATCH)])
        return (feats / feats.norm(dim=-1, keepdim=True)).cpu().numpy().astype(np.float32)


def crops_embedding(namer: LoadedNamer, crops: list[np.ndarray]) -> np.ndarray:
    """D: the L2-normalised mean of the crops' L2-normalised image embeddings."""
    return mean_direction(crop_embeddings(namer, crops))


def mean_direction(vectors_nd: np.ndarray) -> np.ndarray:
    """D: the L2-normalised mean of N unit rows (a class's embedding from its crops')."""
    m = vectors_nd.astype(np.float32).mean(axis=0)
    return (m / max(float(np.linalg.norm(m)), 1e-12)).astype(np.float32)


def class_embeddings(namer: LoadedNamer, rgb: np.ndarray, masks: Any, labels: np.ndarray, embeddings_nc: np.ndarray,
                     classes: list[int], per_class: int, crops: Optional[dict[int, np.ndarray]] = None) -> np.ndarray:
    """K×D: each class's mean image embedding over its central masks' crops, L2-normalised.
    crops: {mask row: its crop's D embedding} already known for these masks (a cache the caller
    keeps: a recluster or a new vocabulary re-names from it); the masks it lacks are embedded
    (in one pass) and added to it."""
    crops = {} if crops is None else crops
    picked = {c: central_masks(labels, embeddings_nc, c, per_class) for c in classes}
    missing = sorted({int(r) for rows in picked.values() for r in rows} - set(crops))
    for start in range(0, len(missing), _CROP_BATCH):  # a few full-size masks decoded at a time (100-MP images)
        part = missing[start:start + _CROP_BATCH]
        decoded = masks.decode(part)
        crops.update(zip(part, crop_embeddings(namer, [mask_crop(namer, rgb, decoded[i], masks.bbox_xywh[r])
                                                       for i, r in enumerate(part)])))
    out = [mean_direction(np.stack([crops[int(r)] for r in picked[c]])) for c in classes]
    return np.stack(out) if out else np.zeros((0, 1), np.float32)


def name_classes(namer: LoadedNamer, rgb: np.ndarray, masks: Any, labels: np.ndarray, embeddings_nc: np.ndarray,
                 names: list[str], min_prob: float, per_class: int,
                 crops: Optional[dict[int, np.ndarray]] = None) -> dict[int, dict[str, Any]]:
    """{class id: {name (None = unnamed), best, score, runner_up, runner_up_score}}. crops: as class_embeddings."""
    classes = sorted({int(c) for c in labels[labels >= 0]})
    if not classes or not names:
        return {}
    image_kd = class_embeddings(namer, rgb, masks, labels, embeddings_nc, classes, per_class, crops)
    rows = pick_names(image_kd, text_embeddings(namer, names), names, min_prob)
    return dict(zip(classes, rows))


def _namer_row(name: str) -> tuple[Optional[WeightsFile], str]:
    entry = namer_entry(name)
    file = WeightsFile(entry.url or "", entry.filename, entry.sha256, entry.size) if entry.downloadable else None
    return file, entry.licence


# Namers in the one weights factory (samseg.sam.weights): safetensors, a strict fit
NAMER_WEIGHTS = Family("namer", _namer_row, _build, _read_safetensors, "namer weights", "--names",
                       lambda name, _path, copy: f"run `samseg weights download {name}` (or copy {copy}), or use --names none",
                       ("torch", "open_clip_torch"), lambda: NAMERS)
