"""Feature backbones: build a registry row (samseg.core.backbones) with timm, load its weights
from a sha256-checked safetensors file, and encode an image into a C×gh×gw patch grid.

Weights never run code: the file is read with safetensors (tensors only), never torch.hub
(which executes the downloaded repository) nor timm's `pretrained=True` (which fetches at
will). Where the file is kept, how it downloads and how it is verified is the one weights
factory's (samseg.sam.weights); this module says how a backbone is built and read (BACKBONE_WEIGHTS).

timm / torch are imported inside functions: the CLI imports this module at startup.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from samseg.core.backbones import BACKBONES, SAM, BackboneEntry, backbone_entry
from samseg.core.types import EncodedImage, ImageGeometry
from samseg.sam.weights import CheckpointError, Family, WeightsFile, weight

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class LoadedBackbone:
    """A timm ViT in eval mode on `device`, with what identifies its weights (sha256: of the
    file, or of the seeded state_dict) and what its input needs (mean/std from timm's own
    pretrained config, the patch, the prefix tokens to drop: class + registers)."""

    net: Any
    name: str
    checkpoint_path: Optional[str]
    sha256: str
    device: str
    precision: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    patch_size: int
    num_prefix_tokens: int


def _timm_row(name: str) -> BackboneEntry:
    entry = backbone_entry(name)
    if name == SAM or entry.timm_name is None:
        raise ValueError("--features sam pools SAM's own encoder features: there is no second backbone to load")
    return entry


def _fix(name: str, _path: Path, copy: str) -> str:
    return f"run `samseg weights download {name}` (or copy {copy}), pass --features-checkpoint FILE, or use --features sam"


def build_backbone(name: str, seed: int = 0) -> Any:
    """timm's model for row `name`, un-weighted (seeded: `seed` decides the weights; the global
    RNG is left as it was). dynamic_img_size: any gh×gw grid, position embeddings interpolated."""
    import timm
    import torch

    entry = _timm_row(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = timm.create_model(entry.timm_name, pretrained=False, num_classes=0, dynamic_img_size=True, **entry.timm_kwargs)
    return net.eval()


# Keys a weights file may hold that the headless feature model has no use for.
_IGNORED_KEYS = ("head.weight", "head.bias")


def _read_safetensors(net: Any, path: Path, name: str) -> None:
    """safetensors (tensors only, no code) + a strict fit; any failure is one CheckpointError line."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as exc:  # SafetensorError, OSError, ...: a truncated or foreign file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: not a safetensors weights file ({first[:200]})") from exc
    for key in _IGNORED_KEYS:
        state.pop(key, None)
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or extra or wrong:
        k = (wrong or missing or extra)[0]
        detail = (f"{k} is {tuple(state[k].shape)}, the model's is {tuple(own[k].shape)}" if wrong else
                  f"{k} missing" if missing else f"unexpected {k}")
        entry = backbone_entry(name)
        raise CheckpointError(f"{path}: weights do not fit the {name} backbone ({entry.timm_name}, {entry.embed_dim} "
                              f"channels): {detail}; a checkpoint of another backbone?")
    bad = next((k for k, t in state.items() if t.is_floating_point() and not bool(t.isfinite().all())), None)
    if bad is not None:  # else every image fails later in scikit-learn with "Input X contains NaN"
        raise CheckpointError(f"{path}: weights hold NaN or infinite values ({bad}); not usable as the {name} backbone")
    net.load_state_dict(state)


def load_backbone(name: str, checkpoint: str | Path | None = None, device: str | None = None, seed: int = 0,
                  precision: str = "fp32") -> LoadedBackbone:
    """Build backbone `name`, load its weights (the given file, else the verified download —
    downloaded now if pinned and missing — else the seeded ones), move it to `device` in
    `precision` (fp32 | bf16 | fp16 | auto, as SAM's: samseg.sam.precision)."""
    from samseg.sam.model import select_device
    from samseg.sam.precision import resolve_precision, torch_dtype

    entry = _timm_row(name)
    dev = select_device(device)
    resolved = resolve_precision(precision, dev)
    net, path, sha = weight(name, BACKBONE_WEIGHTS).load(checkpoint, seed)
    net.eval().to(dev, dtype=torch_dtype(resolved))
    cfg = net.pretrained_cfg
    log.info("loaded backbone %s (%s) on %s in %s (weights sha256 %s)", name, entry.timm_name, dev, resolved, sha)
    return LoadedBackbone(net=net, name=name, checkpoint_path=path, sha256=sha, device=dev, precision=resolved,
                          mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))), std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
                          patch_size=entry.patch_size, num_prefix_tokens=int(getattr(net, "num_prefix_tokens", 1)))


def encode_features(backbone: LoadedBackbone, rgb_hw3: np.ndarray, long_side: int) -> EncodedImage:
    """One backbone pass: C×gh×gw float32 patch features of an H×W×3 uint8 RGB image.

    Resized keeping its aspect ratio to `long_side` (antialiased bilinear), normalised with the
    model's own mean/std, zero-padded bottom/right to whole patches (as SAM pads its frame), so
    the geometry is SAM's with a non-square grid and core.pool pools it unchanged.
    """
    import torch
    import torch.nn.functional as F

    from samseg.sam.encode import check_rgb
    from samseg.sam.precision import torch_dtype

    check_rgb(rgb_hw3)
    p = backbone.patch_size
    if long_side % p:
        raise ValueError(f"features input size {long_side} is not a multiple of {backbone.name}'s {p}-px patch")
    geometry = ImageGeometry.for_image(rgb_hw3.shape[:2], img_size=long_side, patch_size=p, square=False)
    (ih, iw), (fh, fw), (gh, gw) = geometry.input_hw, geometry.padded_hw, geometry.feature_hw
    with torch.inference_mode():
        x = torch.from_numpy(np.array(rgb_hw3, copy=True)).to(backbone.device).permute(2, 0, 1)[None].float()
        if (ih, iw) != tuple(rgb_hw3.shape[:2]):
            x = F.interpolate(x, size=(ih, iw), mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(backbone.mean, device=x.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(backbone.std, device=x.device).view(1, 3, 1, 1) * 255
        x = F.pad((x - mean) / std, (0, fw - iw, 0, fh - ih))  # 1×3×fh×fw, zeros = the mean colour
        tokens = backbone.net.forward_features(x.to(torch_dtype(backbone.precision)))  # 1×(prefix + gh·gw)×C
        patches = tokens[0, backbone.num_prefix_tokens:].float()
    if patches.shape[0] != gh * gw:
        raise RuntimeError(f"{backbone.name} returned {patches.shape[0]} patch tokens for a {gh}×{gw} grid")
    features = patches.T.reshape(-1, gh, gw).cpu().numpy()  # C×gh×gw, channels-first like SAM's
    return EncodedImage(features=np.ascontiguousarray(features, dtype=np.float32), geometry=geometry)


def _backbone_row(name: str) -> tuple[Optional[WeightsFile], str]:
    entry = _timm_row(name)
    file = WeightsFile(str(entry.url), entry.filename, entry.sha256, entry.size) if entry.downloadable else None
    return file, entry.licence


# Feature backbones in the one weights factory (samseg.sam.weights): safetensors, a strict fit
BACKBONE_WEIGHTS = Family("backbone", _backbone_row, lambda name, seed: build_backbone(name, seed), _read_safetensors,
                          "backbone weights", "--features-checkpoint", _fix, ("torch", "timm"),
                          lambda: BACKBONES)
