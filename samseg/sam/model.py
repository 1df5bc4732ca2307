"""The SAM model registry and its loading: the official checkpoints (downloaded and verified by the
one weights factory, samseg.sam.weights) and the tiny-random test model.

`load_model(model_type, checkpoint=None, device=None) -> LoadedModel` is the only entry
point the pipeline needs. Real models (`vit_h`, `vit_l`, `vit_b`) are built from
`segment_anything.sam_model_registry` with `checkpoint=None` and the weights are then
read (SAM_WEIGHTS) with `torch.load(..., weights_only=True)`, so a checkpoint file can never run
pickled code.

`tiny-random` is a seeded, randomly initialised SAM with tiny dims (32 channels instead
of 256) that runs in seconds on CPU. It exists ONLY so tests and smoke runs can exercise
the whole pipeline offline. ITS SEGMENTATIONS ARE MEANINGLESS: never present its output
as a segmentation of anything.

torch / segment_anything are imported inside functions because the CLI imports this
module at startup.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:  # pragma: no cover
    from segment_anything.modeling import Sam

from samseg.core.backbones import TINY_RANDOM
from samseg.sam.weights import CheckpointError, Family, WeightsFile, weight

log = logging.getLogger(__name__)

CHECKPOINT_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


def _official(filename: str, sha256: str, size: int) -> WeightsFile:
    return WeightsFile(url=CHECKPOINT_BASE_URL + filename, filename=filename, sha256=sha256, size=size)


@dataclass(frozen=True)
class ModelEntry:
    """One row of the model registry: everything samseg knows about a model type.

    build(seed): the (un-weighted, or seeded) SAM; checkpoint: the official weights to download
    (None: the seeded weights are the model); input_size: the square side the encoder takes;
    patch_size: pixels per feature cell; embed_dim: channels per cell (the embeddings' width)."""

    build: Callable[[int], "Sam"]
    checkpoint: WeightsFile | None = None
    input_size: int = 1024
    patch_size: int = 16
    embed_dim: int = 256

    @property
    def grid_side(self) -> int:
        """Feature cells per side (64 for SAM)."""
        return self.input_size // self.patch_size


# timm-style registry: model type -> its row. Add a type with register_model; every reader
# (load_model, checkpoint paths, `samseg weights`, the model identity) reads the row only.
MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, entry: ModelEntry) -> None:
    global MODEL_TYPES
    MODELS[name] = entry
    MODEL_TYPES = tuple(MODELS)


def model_entry(model_type: str) -> ModelEntry:
    """The registry row of `model_type` (ValueError naming the known types otherwise)."""
    check_model_type(model_type)
    return MODELS[model_type]


def _segment_anything_builder(model_type: str) -> Callable[[int], "Sam"]:
    def build(_seed: int) -> "Sam":
        from segment_anything import sam_model_registry

        return sam_model_registry[model_type](checkpoint=None)

    return build


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A SAM in eval mode on `device`, plus what identifies its weights.

    checkpoint_path: the weights file (None for a freshly seeded tiny-random).
    checkpoint_sha256: hex sha256 of the checkpoint file, or for a seeded tiny-random the
      sha256 of its state_dict (see `state_dict_sha256`); used in cache keys.
    """

    sam: "Sam"
    model_type: str
    checkpoint_path: str | None
    checkpoint_sha256: str
    device: str
    precision: str = "fp32"  # resolved (never "auto"): what the encoder and decoder run in
    kernels: str = "fast"  # resolved: which code runs the encoder and decoder (samseg.sam.kernels)


def check_model_type(model_type: str) -> None:
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model type {model_type!r}; choose one of: {', '.join(MODEL_TYPES)}")


def select_device(requested: str | None = None) -> str:
    """None/"auto" → "cuda" if available, else "mps", else "cpu". An explicit device that is
    not available raises ValueError."""
    import torch

    mps_ok = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if requested is None or requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if mps_ok else "cpu"
    try:
        dev = torch.device(requested)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"unknown device {requested!r} (use auto, cpu, cuda, cuda:N or mps)") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {requested!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif dev.type == "mps" and not mps_ok:
        raise ValueError(f"device {requested!r} requested but MPS is not available")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {requested!r} (use auto, cpu, cuda, cuda:N or mps)")
    return requested


def build_tiny_random(seed: int = 0) -> "Sam":
    """A randomly initialised SAM with tiny dims, identical for the same `seed`.

    MEANINGLESS SEGMENTATIONS: for tests and smoke runs only. The geometry matches real SAM
    (1024-px input, 16-px patches, so a 64×64 feature grid); the channel count is 32
    instead of 256 so everything runs fast on CPU. The global RNG state is left untouched.
    """
    import torch
    from functools import partial
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    row = MODELS[TINY_RANDOM]
    dim, img_size, patch = row.embed_dim, row.input_size, row.patch_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=img_size, patch_size=patch, embed_dim=dim, depth=2, num_heads=2, mlp_ratio=4,
                out_chans=dim, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                use_rel_pos=True, window_size=14, global_attn_indexes=(1,),
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=dim, image_embedding_size=(img_size // patch, img_size // patch),
                input_image_size=(img_size, img_size), mask_in_chans=16,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64, num_heads=2),
                transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=32,
            ),
            pixel_mean=[123.675, 116.28, 103.53],  # SAM's ImageNet normalisation, as in build_sam
            pixel_std=[58.395, 57.12, 57.375],
        )
    return sam.eval()


def _read_checkpoint(sam: Any, path: Path, model_type: str) -> None:
    """torch.load(weights_only=True) + strict load_state_dict; any failure → CheckpointError naming the file."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (UnpicklingError, RuntimeError, EOFError...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a valid PyTorch checkpoint ({first[:200]})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a SAM state_dict (got {type(state).__name__})")
    try:
        sam.load_state_dict(state)
    except Exception as exc:
        raise CheckpointError(f"{path}: weights do not fit the {model_type} architecture (wrong model type or not a SAM checkpoint)") from exc


def load_model(
    model_type: str,
    checkpoint: str | Path | None = None,
    device: str | None = None,
    seed: int = 0,
    precision: str = "fp32",
    kernels: str | None = None,
) -> LoadedModel:
    """Build `model_type`, load its weights, move it to `device` (None/"auto" = best available).

    Real types: `checkpoint` given → that file (hash logged, warning if not pinned);
    otherwise the cached official file, downloaded and verified if missing.
    tiny-random: seeded random weights (`seed`), or the state_dict file `checkpoint`.
    precision: fp32 | bf16 | fp16 | auto (samseg.sam.precision), resolved for `device` here:
    the encoder's and decoder's weights are converted to it.
    kernels: fast | sam | None (samseg.sam.kernels: $SAMSEG_KERNELS, else sam on CUDA, fast
    elsewhere) — which code the encoder and decoder calls run; the modules are never patched.
    Raises CheckpointError (one line) for missing/invalid/undownloadable weights.
    """
    from samseg.sam.kernels import resolve_kernels
    from samseg.sam.malloc import tune_malloc
    from samseg.sam.precision import resolve_precision, set_precision

    tune_malloc()  # before the first big tensor (samseg.sam.malloc: no page faults per decoder chunk)
    dev = select_device(device)
    resolved = resolve_precision(precision, dev)
    chosen = resolve_kernels(kernels, dev)
    sam, path, sha = weight(model_type, SAM_WEIGHTS).load(checkpoint, seed)
    sam.eval().to(dev)
    set_precision(sam, resolved)
    log.info("loaded %s on %s in %s, %s kernels (weights sha256 %s)", model_type, dev, resolved, chosen, sha)
    return LoadedModel(sam=sam, model_type=model_type, checkpoint_path=path,
                       checkpoint_sha256=sha, device=dev, precision=resolved, kernels=chosen)


MODEL_TYPES: tuple[str, ...] = ()  # the registry's names, in registration order (register_model keeps it)
register_model("vit_h", ModelEntry(_segment_anything_builder("vit_h"), _official(
    "sam_vit_h_4b8939.pth", "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2_564_550_879)))
register_model("vit_l", ModelEntry(_segment_anything_builder("vit_l"), _official(
    "sam_vit_l_0b3195.pth", "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", 1_249_524_607)))
register_model("vit_b", ModelEntry(_segment_anything_builder("vit_b"), _official(
    "sam_vit_b_01ec64.pth", "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 375_042_383)))
# SAM's geometry (1024-px input, 16-px patches: a 64×64 grid) with 32 channels instead of 256
register_model(TINY_RANDOM, ModelEntry(build_tiny_random, embed_dim=32))


def _sam_row(model_type: str) -> tuple[Optional[WeightsFile], str]:
    from samseg.core.backbones import BACKBONES, SAM

    return model_entry(model_type).checkpoint, BACKBONES[SAM].licence


# SAM checkpoints in the one weights factory (samseg.sam.weights): torch.load(weights_only=True), strict
SAM_WEIGHTS = Family("sam", _sam_row, lambda name, seed: model_entry(name).build(seed), _read_checkpoint, "checkpoint",
                     "--checkpoint", lambda name, path, _copy: f"put {path.name} at {path} or pass --checkpoint PATH",
                     ("torch", "segment_anything", "segment-anything"), lambda: MODELS)
