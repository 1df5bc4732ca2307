"""Model loading: SAM checkpoints (pinned, hash-verified downloads) and the tiny-random test model.

`load_model(model_type, checkpoint=None, device=None) -> LoadedModel` is the only entry
point the pipeline needs. Real models (`vit_h`, `vit_l`, `vit_b`) are built from
`segment_anything.sam_model_registry` with `checkpoint=None` and the weights are then
loaded here with `torch.load(..., weights_only=True)`, so a checkpoint file can never run
pickled code.

`tiny-random` is a seeded, randomly initialised SAM with tiny dims (32 channels instead
of 256) that runs in seconds on CPU. It exists ONLY so tests and smoke runs can exercise
the whole pipeline offline. ITS SEGMENTATIONS ARE MEANINGLESS: never present its output
as a segmentation of anything.

torch / segment_anything are imported inside functions because the CLI imports this
module at startup.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:  # pragma: no cover
    from segment_anything.modeling import Sam

from samseg.core.errors import SamsegError
from samseg.core.backbones import TINY_RANDOM
from samseg.sam.files import file_sha256, remembered_sha256, samseg_home

log = logging.getLogger(__name__)

CHECKPOINT_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
_CHUNK = 1 << 20  # 1 MiB read/hash chunks: large enough to be fast, small enough for a smooth progress bar


class CheckpointError(SamsegError, RuntimeError):
    """A checkpoint could not be found, downloaded, verified or loaded (one-line message)."""


class CheckpointWarning(UserWarning):
    """A local checkpoint's sha256 is not the pinned one for its model type (accepted anyway)."""


@dataclass(frozen=True)
class CheckpointInfo:
    """An official weights file: download URL, file name, pinned sha256 (hex), size in bytes.
    sha256/size None: not pinned by this release (a feature backbone's Hub file, samseg.sam.backbones)."""

    url: str
    filename: str
    sha256: Optional[str]
    size: Optional[int]


def _official(filename: str, sha256: str, size: int) -> CheckpointInfo:
    return CheckpointInfo(url=CHECKPOINT_BASE_URL + filename, filename=filename, sha256=sha256, size=size)


@dataclass(frozen=True)
class ModelEntry:
    """One row of the model registry: everything samseg knows about a model type.

    build(seed): the (un-weighted, or seeded) SAM; checkpoint: the official weights to download
    (None: the seeded weights are the model); input_size: the square side the encoder takes;
    patch_size: pixels per feature cell; embed_dim: channels per cell (the embeddings' width)."""

    build: Callable[[int], "Sam"]
    checkpoint: CheckpointInfo | None = None
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


def downloadable_types() -> tuple[str, ...]:
    """The model types whose row has official weights to download."""
    return tuple(name for name, entry in MODELS.items() if entry.checkpoint is not None)


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


def checkpoint_path(model_type: str, home: str | Path | None = None) -> Path:
    """Where the official checkpoint of `model_type` is (or would be) cached."""
    info = official_checkpoint(model_type)
    return Path(home if home is not None else samseg_home()) / "checkpoints" / info.filename


def check_model_type(model_type: str) -> None:
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model type {model_type!r}; choose one of: {', '.join(MODEL_TYPES)}")


def official_checkpoint(model_type: str) -> CheckpointInfo:
    """The row's official checkpoint (ValueError when the type has none: tiny-random)."""
    info = model_entry(model_type).checkpoint
    if info is None:
        raise ValueError(f"model type {model_type!r} has no official checkpoint to download")
    return info


def download_checkpoint(model_type: str, home: str | Path | None = None, url: str | None = None) -> Path:
    """Return the verified cached checkpoint of `model_type`, downloading it if needed.

    Streams into `<file>.part` while hashing; the file gets its final name (os.replace)
    only when the sha256 matches the pinned one. A cached file that already matches is not
    downloaded again; one that does not match is replaced. `url` overrides the download URL
    (tests serve a small file from a loopback server).
    Raises CheckpointError (one line, naming the expected path) on any failure.
    """
    info = official_checkpoint(model_type)
    dest = checkpoint_path(model_type, home)
    if dest.is_file():
        actual = file_sha256(dest)
        if actual == info.sha256:
            return dest
        log.warning("cached %s has sha256 %s, expected %s; downloading again", dest, actual, info.sha256)
    download_verified(url or info.url, dest, info, f"the {model_type} checkpoint",
                      f"put {dest.name} at {dest} or pass --checkpoint PATH")
    return dest


RECORDED = ".sha256"  # beside a download whose hash this release does not pin: the hash every later load checks


def expected_sha256(path: Path, pinned: Optional[str]) -> Optional[str]:
    """The sha256 `path` must have: the pinned one, else the one recorded beside it at its first download."""
    if pinned:
        return pinned
    recorded = path.with_name(path.name + RECORDED)
    return recorded.read_text(encoding="utf-8").strip() if recorded.is_file() else None


def fetch_verified(info: CheckpointInfo, dest: Path, what: str, licence: str, hint: str,
                   validate: Callable[[Path], None]) -> Path:
    """`dest` when it holds its expected hash and passes `validate` (a file an older samseg recorded as
    trusted is checked again, not kept for good); else downloaded (`download_verified`, the licence
    named first) and, when this release pins no hash, its sha256 recorded beside it."""
    if dest.is_file():
        want = expected_sha256(dest, info.sha256)
        try:
            if want is None or remembered_sha256(dest) != want:
                raise CheckpointError(f"{dest}: sha256 is not the {'pinned' if info.sha256 else 'recorded'} one "
                                      "(truncated, replaced, or not downloaded by samseg)")
            validate(dest)
            return dest
        except CheckpointError as exc:
            log.warning("%s; downloading again", exc)
            dest.with_name(dest.name + RECORDED).unlink(missing_ok=True)
    log.warning("%s: under the %s", what, licence)
    sha = download_verified(info.url, dest, info, what, hint, validate=validate)
    if info.sha256 is None:
        dest.with_name(dest.name + RECORDED).write_text(sha + "\n", encoding="utf-8")
        log.warning("%s: sha256 %s recorded (this samseg release pins no hash for it: compare it with the file's "
                    "page on the Hugging Face Hub)", dest, sha)
    return dest


# The most an unpinned download may be (a row with no pinned size): over any weights file a
# registry row names (ViT-g DINOv2, 4.5 GB), far under an endless stream filling the disk.
MAX_DOWNLOAD_BYTES = 6 * 2**30


def download_verified(url: str, dest: Path, info: CheckpointInfo, what: str, hint: str,
                      validate: Optional[Callable[[Path], None]] = None) -> str:
    """Stream `url` into `dest` (via `<dest>.part`); returns the file's sha256. The file gets its
    final name only when it is whole: as long as the server's Content-Length, no longer than the
    row's size (or MAX_DOWNLOAD_BYTES), matching the pinned sha256 where there is one, and passing
    `validate(part)` (a backbone: parses as safetensors and fits its model) — so an HTML page
    served with 200, or a body cut short, is never kept as weights. Any failure is one
    CheckpointError line naming `what`, the URL and `hint`; the partial file is deleted."""
    import http.client
    import shutil
    import urllib.error
    import urllib.request

    from tqdm import tqdm

    part = dest.with_name(dest.name + ".part")
    bound = int(info.size * 1.01) if info.size else MAX_DOWNLOAD_BYTES
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(dest.parent).free
        if info.size is not None and free < info.size:  # refuse now, not after gigabytes
            raise CheckpointError(f"{dest.parent}: {free / 2**30:.1f} GiB free, {what} needs "
                                  f"{info.size / 2**30:.1f} GiB; {hint}")
        h = hashlib.sha256()
        got = 0
        with urllib.request.urlopen(url, timeout=60) as resp, open(part, "wb") as out:
            length = int(resp.headers.get("Content-Length") or 0) or None
            if length is not None and length > bound:
                raise CheckpointError(f"{url} offers {length:,} bytes for {what}, more than the {bound:,} it can be; "
                                      f"nothing kept; {hint}")
            with tqdm(total=length or info.size, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name) as bar:
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    got += len(chunk)
                    if got > bound:
                        raise CheckpointError(f"{url} sent more than {bound:,} bytes for {what}; download discarded; {hint}")
                    h.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
        if length is not None and got != length:
            raise CheckpointError(f"{url} sent {got:,} of the {length:,} bytes it announced for {what} (cut short); "
                                  f"download discarded; {hint}")
        actual = h.hexdigest()
        if info.sha256 is not None and actual != info.sha256:
            raise CheckpointError(f"downloaded {url} has sha256 {actual}, expected {info.sha256}; file discarded")
        if validate is not None:
            validate(part)
    except CheckpointError as exc:
        part.unlink(missing_ok=True)
        raise CheckpointError(str(exc).replace(str(part), f"the download from {url}")) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
        raise CheckpointError(f"could not download {what} from {url} ({reason}); {hint}") from exc
    except BaseException:  # Ctrl-C mid-download: never leave a half-written .part behind
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    log.info("downloaded %s (sha256 %s)", dest, actual)
    return actual


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


def state_dict_sha256(sam: Any) -> str:
    """Hex sha256 over the state_dict in key order: each key, dtype, shape and raw bytes.
    Deterministic for identical weights; independent of device."""
    import torch

    h = hashlib.sha256()
    for key, tensor in sam.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _load_weights(sam: Any, path: Path, model_type: str) -> None:
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


def _resolve_checkpoint(model_type: str, checkpoint: str | Path | None) -> tuple[Path, str]:
    """(path, sha256) of the weights to load; warns when a given file is not the pinned one."""
    pinned = model_entry(model_type).checkpoint
    if checkpoint is None:
        path = download_checkpoint(model_type)
        return path, official_checkpoint(model_type).sha256
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    sha = remembered_sha256(path)
    log.info("checkpoint %s sha256 %s", path, sha)
    if pinned is None or sha != pinned.sha256:
        expected = f"the pinned {pinned.sha256}" if pinned else f"any pinned hash ({model_type} has none)"
        msg = f"{path}: sha256 {sha} is not {expected}; using it anyway"
        log.warning(msg)
        warnings.warn(msg, CheckpointWarning, stacklevel=3)
    return path, sha


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
    entry = model_entry(model_type)
    dev = select_device(device)
    resolved = resolve_precision(precision, dev)
    chosen = resolve_kernels(kernels, dev)
    sam = entry.build(seed)
    if checkpoint is None and entry.checkpoint is None:  # seeded weights: their hash is the identity
        path, sha = None, state_dict_sha256(sam)
    else:
        path, sha = _resolve_checkpoint(model_type, checkpoint)
    if path is not None:
        _load_weights(sam, path, model_type)
    sam.eval().to(dev)
    set_precision(sam, resolved)
    log.info("loaded %s on %s in %s, %s kernels (weights sha256 %s)", model_type, dev, resolved, chosen, sha)
    return LoadedModel(sam=sam, model_type=model_type, checkpoint_path=None if path is None else str(path),
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
