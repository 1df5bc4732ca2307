"""Every weights file a run needs — SAM's checkpoint and the feature backbone's — found,
fetched and, when they cannot be fetched, named together in one message.

The rows stay in their registries (samseg.sam.model.MODELS, samseg.core.backbones.BACKBONES);
this module is what a run asks before its first image: `ensure(model, features)` downloads
what is missing (first use, with progress and the licence line), and a machine that cannot
reach the hosts hears once which files to copy where, not one weight per attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from samseg.core.backbones import BACKBONES, SAM
from samseg.sam.model import CheckpointError


@dataclass(frozen=True)
class Weight:
    """One weights file a run needs: its name (`vit_h`, `dinov2-b`), where it is kept, its licence."""

    name: str
    path: Path
    licence: str
    url: str = ""  # where it downloads from

    @property
    def present(self) -> bool:
        return self.path.is_file()

    def download(self) -> Path:
        """The verified file, downloaded if missing (CheckpointError in one line)."""
        from samseg.core.namers import NAMERS

        if self.name in NAMERS:
            from samseg.sam.namer import download_namer

            return download_namer(self.name)
        if self.name in BACKBONES:
            from samseg.sam.backbones import download_backbone

            return download_backbone(self.name)
        from samseg.sam.model import download_checkpoint

        return download_checkpoint(self.name)


def weight(name: str) -> Weight:
    """The Weight of a downloadable SAM type (`vit_b`), feature backbone (`dinov2-b`) or namer (`clip-b16`)."""
    from samseg.core.namers import NAMERS

    if name in NAMERS:
        from samseg.sam.namer import weights_path as namer_path

        return Weight(name, namer_path(name), NAMERS[name].licence, NAMERS[name].url or "")
    if name in BACKBONES:
        from samseg.sam.backbones import weights_path

        return Weight(name, weights_path(name), BACKBONES[name].licence, BACKBONES[name].url or "")
    from samseg.sam.model import checkpoint_path, official_checkpoint

    return Weight(name, checkpoint_path(name), BACKBONES[SAM].licence, official_checkpoint(name).url)


def needed(model_type: str, features: str = SAM, checkpoint: Optional[str] = None,
           features_checkpoint: Optional[str] = None, namer: Optional[str] = None) -> list[Weight]:
    """The downloadable weights a run with this model and feature backbone reads (a file given
    with --checkpoint / --features-checkpoint, and seeded weights, need none)."""
    from samseg.sam.model import model_entry

    out = []
    if checkpoint is None and model_entry(model_type).checkpoint is not None:
        out.append(weight(model_type))
    row = BACKBONES.get(features)
    if features != SAM and features_checkpoint is None and row is not None and row.downloadable:
        out.append(weight(features))
    if namer is not None:
        from samseg.core.namers import namer_entry

        if namer_entry(namer).downloadable:
            out.append(weight(namer))
    return out


def ensure(model_type: str, features: str = SAM, checkpoint: Optional[str] = None,
           features_checkpoint: Optional[str] = None, namer: Optional[str] = None) -> None:
    """Download every missing weight the run needs; when some cannot be fetched, one
    CheckpointError names them all, the command that fetches them and where to copy them."""
    failed: list[tuple[Weight, CheckpointError]] = []
    for w in needed(model_type, features, checkpoint, features_checkpoint, namer):
        if not w.present:
            try:
                w.download()
            except CheckpointError as exc:
                failed.append((w, exc))
    if failed:
        raise CheckpointError(missing_message(failed))


def missing_message(failed: list[tuple[Weight, CheckpointError]]) -> str:
    """One line: which weights, why the first could not be fetched, the command, what to copy where."""
    names = [w.name for w, _ in failed]
    reason = " ".join(str(failed[0][1]).split()).rsplit("; ", 1)[0]  # without its own hint: the fix is below
    if len(reason) > 300:
        reason = reason[:297] + "..."
    folders: dict[Path, list[str]] = {}
    for w, _ in failed:
        folders.setdefault(w.path.parent, []).append(w.path.name)
    where = "; ".join(f"{' and '.join(files)} to {folder}/" for folder, files in folders.items())
    return (f"missing weights: {', '.join(names)} ({reason}). Copy {where} "
            f"(`samseg weights download {' '.join(names)}` fetches them on a machine that reaches the hosts)")
