"""Where the engine gets its model: an identity for cache keys now, the weights only when a
stage has to compute.

`ModelSource(request).identity()` says which weights a run uses (type, checkpoint sha256,
device, resolved precision) without loading them: the pinned sha256 for an official
checkpoint, the remembered sha256 of a local file (path, size, mtime -> sha256 under
$SAMSEG_HOME, so a 2.5 GB file is hashed once), the state_dict hash for a seeded
tiny-random. `get()` loads the model, once per process per request (a worker serves many
images; loading SAM per image would dominate). A failed load is re-raised at once for
RETRY_AFTER_S, so a batch reports a bad checkpoint once, not once per image; after that the
next request loads again, so a long-running process (the UI) recovers from a transient
failure (a download cut short, a file being copied) without a restart.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from samseg.core.backbones import SAM

if TYPE_CHECKING:
    from samseg.sam.backbones import LoadedBackbone
    from samseg.sam.model import LoadedModel


@dataclass(frozen=True)
class ModelRequest:
    """What the user asked for: model type, checkpoint file (None = official / seeded),
    device (None = best available), seed (tiny-random), precision (may be "auto"), kernels
    (fast | sam | None: samseg.sam.kernels picks; they change speed, not results, so they are
    not part of the identity)."""

    model_type: str
    checkpoint: Optional[str] = None
    device: Optional[str] = None
    seed: int = 0
    precision: str = "fp32"
    kernels: Optional[str] = None
    features: str = SAM  # the feature backbone (config `features.name`); sam = SAM's own encoder
    features_checkpoint: Optional[str] = None  # its weights file (None = the verified download / seeded)


@dataclass(frozen=True)
class ModelIdentity:
    """The weights a run used: what the cache keys and the summary's `model` and `features`
    record. precision is the resolved one (never "auto"); it applies to the backbone too.
    features_sha256: the feature backbone's weights ("" for sam: SAM's are checkpoint_sha256)."""

    model_type: str
    checkpoint_sha256: str
    checkpoint_path: Optional[str]
    device: str
    precision: str = "fp32"
    features: str = SAM
    features_sha256: str = ""
    features_path: Optional[str] = None

    @classmethod
    def of(cls, model: Any, backbone: Optional[tuple[str, str, Optional[str]]] = None) -> "ModelIdentity":
        """The identity of a LoadedModel (or of anything with its fields), with the feature
        backbone's (name, sha256, path) where it is not sam."""
        name, sha, path = backbone or (SAM, "", None)
        return cls(model.model_type, model.checkpoint_sha256, model.checkpoint_path, model.device,
                   getattr(model, "precision", "fp32"), name, sha, path)

    @classmethod
    def from_summary(cls, summary: dict[str, Any]) -> "ModelIdentity":
        """The identity a run's summary.json records (a recluster describes its parent's model)."""
        m = summary.get("model") or {}
        f = summary.get("features") or {}
        return cls(m.get("type") or (summary.get("config") or {}).get("model_type", ""), m.get("checkpoint_sha256") or "",
                   m.get("checkpoint_path"), m.get("device") or "cpu", m.get("precision", "fp32"),
                   f.get("name") or SAM, f.get("sha256") or "", f.get("checkpoint_path"))

    def features_record(self) -> dict[str, Any]:
        """summary.json's `features` (the grid is added per image): backbone name, weights sha256, file."""
        if self.features == SAM:
            return {"name": SAM, "sha256": self.checkpoint_sha256, "checkpoint_path": self.checkpoint_path}
        return {"name": self.features, "sha256": self.features_sha256, "checkpoint_path": self.features_path}


RETRY_AFTER_S = 30.0  # how long a failed load is answered from memory before it is tried again
_LOADED: dict[ModelRequest, "LoadedModel"] = {}
_FAILED: dict[Any, tuple[float, BaseException]] = {}  # key -> (when it failed, time.monotonic(); the error)
_BACKBONES: dict[tuple[Any, ...], "LoadedBackbone"] = {}
_LOCK = threading.Lock()


class ModelSource:
    """Lazily loaded weights for one ModelRequest (see the module docstring)."""

    def __init__(self, request: ModelRequest) -> None:
        self.request = request
        # SAM's weights do not depend on the feature backbone: one SAM per process for all of them
        self._sam = dataclasses.replace(request, features=SAM, features_checkpoint=None)
        self._identity: ModelIdentity | None = None

    def identity(self) -> ModelIdentity:
        """What the cache keys and the summary record; once the weights are loaded, the
        loaded model's own (its resolved device)."""
        loaded = _LOADED.get(self._sam)
        if loaded is not None and self.request.features == SAM:
            return ModelIdentity.of(loaded)
        if self._identity is None:
            self._identity = _identify(self.request)
        if loaded is not None:
            i = self._identity
            return ModelIdentity.of(loaded, (i.features, i.features_sha256, i.features_path))
        return self._identity

    def get_backbone(self) -> "LoadedBackbone":
        """The feature backbone (a DINOv2/v3 ViT), loaded once per process per request."""
        from samseg.sam.backbones import load_backbone

        r = self.request
        key = (r.features, r.features_checkpoint, r.device, r.seed, r.precision)
        return _once(_BACKBONES, key, lambda: load_backbone(r.features, r.features_checkpoint, r.device, r.seed, r.precision))

    def get(self) -> "LoadedModel":
        """The LoadedModel, loaded once per process; a failed load re-raises at once."""
        from samseg.sam.model import load_model

        r = self._sam
        return _once(_LOADED, r, lambda: load_model(r.model_type, checkpoint=r.checkpoint, device=r.device, seed=r.seed,
                                                    precision=r.precision, kernels=r.kernels))


def _once(loaded: dict[Any, Any], key: Any, load: Any) -> Any:
    """`loaded[key]`, loaded on first use; a failed load is re-raised at once for RETRY_AFTER_S,
    then tried again."""
    import time

    with _LOCK:
        if key in _FAILED:
            failed_at, exc = _FAILED[key]
            if time.monotonic() - failed_at < RETRY_AFTER_S:
                raise exc
            del _FAILED[key]
        if key not in loaded:
            try:
                loaded[key] = load()
            except Exception as exc:
                _FAILED[key] = (time.monotonic(), exc)
                raise
        return loaded[key]


def _identify(r: ModelRequest) -> ModelIdentity:
    """The identity without loading weights or importing torch where it can: the device is
    recorded as asked ("auto" until a stage loads the model; then the loaded model's), and
    only precision "auto" or "fp16" needs the device resolved now."""
    from samseg.sam.model import SAM_WEIGHTS
    from samseg.sam.weights import weight

    device = r.device or "auto"
    precision = r.precision
    if precision in ("auto", "fp16"):  # auto picks per device; fp16 must be refused off CUDA now
        from samseg.sam.model import select_device
        from samseg.sam.precision import resolve_precision

        device = select_device(r.device)
        precision = resolve_precision(precision, device)
    backbone: tuple[str, str, Optional[str]] = (SAM, "", None)
    if r.features != SAM:  # a missing download fails here, in one line, before any stage runs
        from samseg.sam.backbones import BACKBONE_WEIGHTS

        path, sha = weight(r.features, BACKBONE_WEIGHTS).identity(r.features_checkpoint, r.seed)
        backbone = (r.features, sha, path)
    path, sha = weight(r.model_type, SAM_WEIGHTS).identity(r.checkpoint, r.seed)
    return ModelIdentity(r.model_type, sha, path, device, precision, *backbone)
