"""Every weights file samseg reads — SAM checkpoints, feature backbones, class namers — through
one row type and one factory: where it is kept, how it downloads (progress, the licence line),
how it is verified, what identifies it, how it loads.

The rows stay in their registries, beside what builds their models (timm's shape):
samseg.sam.model.MODELS, samseg.core.backbones.BACKBONES, samseg.core.namers.NAMERS. Each
registry's module describes its family once (a `Family`: how a model of it is built and how a
file is read into it); `weight(name, family)` is the one view of a row, and everything below —
download, verify, identify, load — is written once for all. samseg.sam.registry looks a bare
name up across the families and fetches what a run needs before its first image.

Trust: a file's sha256 is the pinned one of its row, or, for a row this release does not pin
(a Hub file), the hash recorded beside it at its first download (`<file>.sha256`) — every later
load checks it, so a truncated or swapped file is refused, never silently used. Weights never
run code: SAM's are read with `torch.load(weights_only=True)`, the others with safetensors.
Seeded weights (tiny-random) have no file: their identity is the state_dict's hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from samseg.core.errors import SamsegError
from samseg.sam.files import remember, remembered, remembered_sha256, samseg_home

log = logging.getLogger(__name__)

_CHUNK = 1 << 20  # 1 MiB read/hash chunks: large enough to be fast, small enough for a smooth progress bar
RECORDED = ".sha256"  # beside a download whose hash this release does not pin: the hash every later load checks
# The most an unpinned download may be (a row with no pinned size): over any weights file a
# registry row names (ViT-g DINOv2, 4.5 GB), far under an endless stream filling the disk.
MAX_DOWNLOAD_BYTES = 6 * 2**30


class CheckpointError(SamsegError, RuntimeError):
    """A weights file could not be found, downloaded, verified or loaded (one-line message)."""


class CheckpointWarning(UserWarning):
    """A given weights file's sha256 is not the pinned one for its row (accepted anyway)."""


@dataclass(frozen=True)
class WeightsFile:
    """An official weights file: download URL, file name, sha256 (hex) and size in bytes.
    sha256/size None: not pinned by this release (recorded at the first download)."""

    url: str
    filename: str
    sha256: Optional[str]
    size: Optional[int]


@dataclass(frozen=True)
class Family:
    """How one registry's models are built and their files read; its module defines it once.

    name: the family (`sam`, `backbone`, `namer`); row(name) -> (WeightsFile or None for seeded
    weights, licence), ValueError for an unknown name; build(name, seed): the model, un-weighted
    (seeded rows: `seed` decides the weights); read(model, path, name): the file's tensors into
    it, CheckpointError when they do not fit; noun: what a file is called in messages; flag: the
    option that passes a file of one's own; fix(name, path, copy): what to do when it cannot be
    fetched (copy: Weight.copy_files' names and their folder); names(): the registry's rows;
    versions: the distributions whose versions decide a seeded model's weights."""

    name: str
    row: Callable[[str], tuple[Optional[WeightsFile], str]]
    build: Callable[[str, int], Any]
    read: Callable[[Any, Path, str], None]
    noun: str
    flag: str
    fix: Callable[[str, Path, str], str]  # (name, path, "FILE [and FILE.sha256] to DIR/") -> what to do
    versions: tuple[str, ...]
    names: Callable[[], Iterable[str]]  # the registry's row names


@dataclass(frozen=True)
class Weight:
    """One row's weights: `file` None means seeded weights (no file, nothing to download)."""

    name: str
    family: Family
    file: Optional[WeightsFile]
    licence: str
    home: Optional[Path] = None  # $SAMSEG_HOME when None

    @property
    def url(self) -> Optional[str]:
        return self.file.url if self.file else None

    @property
    def path(self) -> Path:
        """Where the file is (or would be) kept: <home>/checkpoints/<filename>."""
        if self.file is None:
            raise ValueError(f"{self.family.name} {self.name!r} has seeded weights; there is nothing to download")
        return (self.home if self.home is not None else samseg_home()) / "checkpoints" / self.file.filename

    @property
    def present(self) -> bool:
        return self.file is None or self.path.is_file()

    @property
    def what(self) -> str:
        return f"the {self.name} {self.family.noun}"

    def copy_files(self) -> list[str]:
        """What a machine that cannot download it needs copied into <home>/checkpoints/: the file,
        and for a file this release does not pin, the sha256 recorded beside it at its download."""
        name = self.path.name
        return [name, name + RECORDED] if self.file is not None and self.file.sha256 is None else [name]

    def hint(self) -> str:
        return self.family.fix(self.name, self.path, f"{' and '.join(self.copy_files())} to {self.path.parent}/")

    def download(self, url: Optional[str] = None) -> Path:
        """The verified file, downloaded if missing or not the expected bytes (`url` overrides the
        row's: tests serve a file from loopback). CheckpointError in one line."""
        dest = self.path  # ValueError for seeded weights: nothing to download
        info = self.file
        assert info is not None
        if url:
            info = dataclasses.replace(info, url=url)
        # a pinned hash says the bytes are the right ones; an unpinned file must also fit the model
        validate = None if info.sha256 else (lambda part: self.family.read(self.family.build(self.name, 0), part, self.name))
        return fetch_verified(info, dest, self.what, self.licence, self.hint(), validate)

    def identity(self, given: str | Path | None = None, seed: int = 0, warn: bool = False) -> tuple[Optional[str], str]:
        """(path, sha256) of the weights a load would read, without loading them: what the cache
        keys and the summary record. A missing unpinned download is CheckpointError now. warn: a
        given file that is not the row's pinned one warns (the load does, once per model)."""
        if given is not None:
            return self._given(Path(given).expanduser(), warn)
        if self.file is None:
            return None, self.seeded_sha256(seed)
        path = self.path
        if self.file.sha256 is not None:  # pinned: the load downloads and verifies it
            return str(path), self.file.sha256
        if not path.is_file():
            raise CheckpointError(f"{self.name} weights are not downloaded ({path}); {self.hint()}")
        want = expected_sha256(path, None)
        if want is None:
            raise CheckpointError(f"{path}: no recorded sha256 (not downloaded by samseg); {self.hint()}")
        sha = remembered_sha256(path)
        if sha != want:
            raise CheckpointError(f"{path}: sha256 {sha} is not the expected {want} (truncated or replaced); {self.hint()}")
        return str(path), sha

    def _given(self, path: Path, warn: bool) -> tuple[str, str]:
        """A file passed with the family's flag: its hash, with a warning when the row pins another."""
        if not path.is_file():
            raise CheckpointError(f"{path}: {self.family.noun} file not found ({self.family.flag})")
        sha = remembered_sha256(path)
        pinned = self.file.sha256 if self.file else None
        if warn and sha != pinned and (pinned or self.file is None):  # an unpinned row has nothing to compare with
            expected = f"the pinned {pinned}" if pinned else f"any pinned hash ({self.name} has none)"
            msg = f"{path}: sha256 {sha} is not {expected}; using it anyway"
            log.warning(msg)
            warnings.warn(msg, CheckpointWarning, stacklevel=5)
        return str(path), sha

    def seeded_sha256(self, seed: int) -> str:
        """The state_dict hash of seeded weights, remembered per (family, name, seed, library
        versions): the same seed on the same libraries builds the same weights, so a cached run
        need neither build them nor import torch."""
        from importlib import metadata

        versions = []
        for dist in self.family.versions:
            try:
                versions.append(f"{dist}={metadata.version(dist)}")
            except metadata.PackageNotFoundError:
                continue
        key = f"seeded:{self.family.name}:{self.name}:seed={seed}:" + ",".join(versions)
        sha = remembered(key)
        if sha is None:
            sha = state_dict_sha256(self.family.build(self.name, seed))
            remember(key, sha)
        return sha

    def load(self, given: str | Path | None = None, seed: int = 0) -> tuple[Any, Optional[str], str]:
        """(the model with its weights on the CPU, the file read or None for seeded, its sha256):
        `given` when passed, else the verified download (fetched now when missing), else seeded."""
        if given is None and self.file is None:
            model = self.family.build(self.name, seed)
            return model, None, state_dict_sha256(model)
        if given is None and (self.file is not None and (self.file.sha256 is not None or not self.path.is_file())):
            self.download()  # missing, or pinned: its bytes are checked against the pin (remembered, not re-hashed)
        path, sha = self.identity(given, seed, warn=True)  # before the build: a missing file costs no model
        assert path is not None
        model = self.family.build(self.name, seed)
        self.family.read(model, Path(path), self.name)
        return model, path, sha


def weight(name: str, family: Family, home: str | Path | None = None) -> Weight:
    """The Weight of row `name` of `family` (ValueError naming the known rows otherwise)."""
    file, licence = family.row(name)
    return Weight(name, family, file, licence, Path(home) if home is not None else None)


# --------------------------------------------------------------------------- verify and download


def state_dict_sha256(model: Any) -> str:
    """Hex sha256 over the state_dict in key order: each key, dtype, shape and raw bytes.
    Deterministic for identical weights; independent of device."""
    import torch

    h = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def expected_sha256(path: Path, pinned: Optional[str]) -> Optional[str]:
    """The sha256 `path` must have: the pinned one, else the one recorded beside it at its first download."""
    if pinned:
        return pinned
    recorded = path.with_name(path.name + RECORDED)
    return recorded.read_text(encoding="utf-8").strip() if recorded.is_file() else None


def fetch_verified(info: WeightsFile, dest: Path, what: str, licence: str, hint: str,
                   validate: Optional[Callable[[Path], None]]) -> Path:
    """`dest` when it holds its expected hash and passes `validate` (a file an older samseg recorded as
    trusted is checked again, not kept for good); else downloaded (`download_verified`, the licence
    named first) and, when this release pins no hash, its sha256 recorded beside it."""
    if dest.is_file():
        want = expected_sha256(dest, info.sha256)
        try:
            if want is None or remembered_sha256(dest) != want:
                raise CheckpointError(f"{dest}: sha256 is not the {'pinned' if info.sha256 else 'recorded'} one "
                                      "(truncated, replaced, or not downloaded by samseg)")
            if validate is not None:
                validate(dest)
            return dest
        except CheckpointError as exc:
            log.warning("%s; downloading again", exc)
            dest.with_name(dest.name + RECORDED).unlink(missing_ok=True)
    sha = download_verified(info.url, dest, info, what, hint, validate=validate, licence=licence)
    if info.sha256 is None:
        dest.with_name(dest.name + RECORDED).write_text(sha + "\n", encoding="utf-8")
        log.warning("%s: sha256 %s recorded (this samseg release pins no hash for it: compare it with the file's "
                    "page on the Hugging Face Hub)", dest, sha)
    return dest


def download_verified(url: str, dest: Path, info: WeightsFile, what: str, hint: str,
                      validate: Optional[Callable[[Path], None]] = None, licence: str = "") -> str:
    """Stream `url` into `dest` (via `<dest>.part`); returns the file's sha256. The file gets its
    final name only when it is whole: as long as the server's Content-Length, no longer than the
    row's size (or MAX_DOWNLOAD_BYTES), matching the pinned sha256 where there is one, and passing
    `validate(part)` (an unpinned file: parses and fits its model) — so an HTML page served with
    200, or a body cut short, is never kept as weights. Any failure is one CheckpointError line
    naming `what`, the URL and `hint`; the partial file is deleted. The download and its
    `licence` are announced once the server answers: offline, the one error line says it all."""
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
            log.warning("%s: downloading %s (licence: %s)", what, url, licence)
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
