"""The one weights registry: every family's rows (SAM checkpoints, feature backbones, class
namers) by name, and what a run needs fetched before its first image.

The rows and their loading are samseg.sam.weights'; this module only looks across the three
registries, so `samseg weights list|download`, the demo, the UI's features menu and a run's
`ensure` see one table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from samseg.core.backbones import SAM, TINY_RANDOM
from samseg.sam.backbones import BACKBONE_WEIGHTS
from samseg.sam.model import SAM_WEIGHTS
from samseg.sam.namer import NAMER_WEIGHTS
from samseg.sam.weights import CheckpointError, Family, Weight, WeightsFile, weight


def find(name: str) -> Weight:
    """The downloadable row of a bare name: a SAM type (`vit_b`), a feature backbone (`dinov2-b`)
    or a namer (`clip-b16`); a name no family has a file of is SAM's (ValueError if unknown)."""
    family = next((f for f in FAMILIES if _file_of(f, name) is not None), SAM_WEIGHTS)
    return weight(name, family)


def _file_of(family: Family, name: str) -> Optional[WeightsFile]:
    try:
        return family.row(name)[0]
    except ValueError:
        return None


# Every family of weights, in the order `samseg weights list` shows them.
FAMILIES: tuple[Family, ...] = (SAM_WEIGHTS, BACKBONE_WEIGHTS, NAMER_WEIGHTS)


def downloadable() -> list[Weight]:
    """Every row that has a file to download, family by family (`samseg weights list`)."""
    return [weight(n, f) for f in FAMILIES for n in f.names() if _file_of(f, n) is not None]


def needed(model_type: str, features: str = SAM, checkpoint: Optional[str] = None,
           features_checkpoint: Optional[str] = None, namer: Optional[str] = None) -> list[Weight]:
    """The downloadable weights a run with this model, feature backbone and namer reads (a file
    given with --checkpoint / --features-checkpoint, and seeded weights, need none)."""
    from samseg.core.backbones import BACKBONES

    wanted = [(model_type, SAM_WEIGHTS, checkpoint)]
    if features != SAM and features in BACKBONES:
        wanted.append((features, BACKBONE_WEIGHTS, features_checkpoint))
    if namer is not None:
        wanted.append((namer, NAMER_WEIGHTS, None))
    return [w for name, fam, given in wanted if given is None and (w := weight(name, fam)).file is not None]


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
    if failed:  # a run, unlike `samseg weights download`, has an offline way to go on
        raise CheckpointError(f"{missing_message(failed)}. To try samseg without them: --model {TINY_RANDOM} "
                              "(random weights, meaningless classes)")


def missing_message(failed: list[tuple[Weight, CheckpointError]]) -> str:
    """One line: which weights, why the first could not be fetched, the command, what to copy where."""
    import re

    names = [w.name for w, _ in failed]
    reason = " ".join(str(failed[0][1]).split()).rsplit("; ", 1)[0]  # without its own hint: the fix is below
    reason = re.sub(r"https?://([^/\s]+)\S*", r"\1", reason)  # the host says where; the URL is in `samseg weights list`
    if len(reason) > 200:
        reason = reason[:197] + "..."
    folders: dict[Path, list[str]] = {}
    for w, _ in failed:  # a file and the sha256 recorded beside it: "file (and its .sha256)"
        first, *more = w.copy_files()
        folders.setdefault(w.path.parent, []).append(first + "".join(f" (and its {f[len(first):]})" for f in more))
    where = "; ".join(f"{', '.join(files)} into {folder}/" for folder, files in folders.items())
    return (f"missing weights: {', '.join(names)} ({reason}). Run `samseg weights download {' '.join(names)}` "
            f"on a machine that reaches the hosts, then copy {where}")
