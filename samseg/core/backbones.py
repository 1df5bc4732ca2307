"""The feature-backbone registry: which image encoder a mask's embedding is pooled from.

SAM's own encoder (`sam`) is the original method and the cheapest (the AMG's single encoder
pass). Its features are weakly semantic (ImageNet k-NN 22.1 % for SAM-H vs 83.4 % for
DINOv2-g, AM-RADIO Table 1), so the registry also holds DINOv2 / DINOv3 ViTs, built by timm
and pooled under SAM's masks (docs/features.md has the numbers and their sources).

A row is pure data (no torch, no timm): the config validates names against it, the CLI
lists it, samseg.sam.backbones builds and loads what it names. Add a backbone with
`register_backbone`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

SAM = "sam"  # the SAM model's own encoder: no second pass, no second download
TINY_RANDOM = "tiny-random"
HF_BASE = "https://huggingface.co/timm/"
APACHE = "Apache-2.0"
DINOV3_LICENCE = "DINOv3 License (https://ai.meta.com/resources/models-and-libraries/dinov3-license)"


@dataclass(frozen=True)
class BackboneEntry:
    """One feature backbone.

    timm_name: timm's `architecture.tag` (None for `sam`, whose features are SAM's encoder's).
    patch_size, embed_dim: pixels per feature cell and channels per cell (embed_dim 0: the SAM
      model's own). input_size: the default input long side in px, a multiple of patch_size.
    licence: the weights' licence, named at download and in `samseg weights list`.
    sha256, size: the weights file's pinned hash and bytes; None = not pinned by this release:
      the hash of the first download is recorded beside the file and checked on every load
      (samseg.sam.backbones). revision: the Hub revision the URL resolves.
    eps: a DBSCAN eps measured for these features; None = `--eps auto` (the k-distance knee).
    timm_kwargs: extra create_model arguments (the tiny-random test ViT's dims).
    seeded: no weights file; seeded random weights are the model (tests and smoke runs only).
    """

    timm_name: Optional[str]
    patch_size: int
    embed_dim: int
    input_size: int
    licence: str
    sha256: Optional[str] = None
    size: Optional[int] = None
    revision: str = "main"
    eps: Optional[float] = None
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    seeded: bool = False

    @property
    def url(self) -> Optional[str]:
        if self.timm_name is None or self.seeded:
            return None
        return f"{HF_BASE}{self.timm_name}/resolve/{self.revision}/model.safetensors"

    @property
    def filename(self) -> str:
        return f"{self.timm_name}.safetensors"

    @property
    def downloadable(self) -> bool:
        return self.url is not None


BACKBONES: dict[str, BackboneEntry] = {}


def register_backbone(name: str, entry: BackboneEntry) -> None:
    if entry.input_size % entry.patch_size:
        raise ValueError(f"backbone {name}: input size {entry.input_size} is not a multiple of its {entry.patch_size}-px patch")
    BACKBONES[name] = entry


def backbone_entry(name: str) -> BackboneEntry:
    """The registry row of `name` (ValueError naming the known backbones otherwise)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown feature backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def default_eps(name: str) -> Optional[float]:
    """The measured eps of backbone `name`, or None: use --eps auto."""
    return backbone_entry(name).eps


# eps 0.06 is the original notebook's, tuned by hand for SAM's features on one image.
register_backbone(SAM, BackboneEntry(None, patch_size=16, embed_dim=0, input_size=1024, licence=f"{APACHE} (SAM)", eps=0.06))
# DINOv2 with registers: 4 register tokens soak up the high-norm artefact tokens, so the dense
# patch features are clean (Darcet et al., "Vision Transformers Need Registers"). 518 = 37 × 14.
for _size, _arch, _dim in (("s", "small", 384), ("b", "base", 768), ("l", "large", 1024), ("g", "giant", 1536)):
    register_backbone(f"dinov2-{_size}", BackboneEntry(f"vit_{_arch}_patch14_reg4_dinov2.lvd142m", 14, _dim, 518, APACHE))
for _size, _arch, _dim in (("s", "small", 384), ("b", "base", 768), ("l", "large", 1024)):
    register_backbone(f"dinov3-{_size}", BackboneEntry(f"vit_{_arch}_patch16_dinov3.lvd1689m", 16, _dim, 512, DINOV3_LICENCE))
# Trained on satellite imagery (SAT-493M): the GeoTIFF users' backbone.
register_backbone("dinov3-sat-l", BackboneEntry("vit_large_patch16_dinov3.sat493m", 16, 1024, 512, DINOV3_LICENCE))
# A seeded 2-block, 32-channel DINOv2-shaped ViT: MEANINGLESS features, for tests and smoke runs.
register_backbone(TINY_RANDOM, BackboneEntry(
    "vit_small_patch14_reg4_dinov2", 14, 32, 224, "none (seeded random weights)", seeded=True,
    timm_kwargs={"embed_dim": 32, "depth": 2, "num_heads": 2}))
BACKBONE_NAMES: tuple[str, ...] = tuple(BACKBONES)
