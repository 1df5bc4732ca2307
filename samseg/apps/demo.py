"""Which model `scripts/demo.sh` runs: a real checkpoint whenever one can be had.

`python -m samseg.apps.demo choose` prints the model type on stdout (one word) and, on stderr,
one line saying why. Rules (SAMSEG_DEMO_MODEL unset or `auto`):
- vit_b (the smallest official checkpoint, 375 MB, sha256-pinned) when it is already in
  `$SAMSEG_HOME/checkpoints/` (verified when the run loads it), or when the download host
  answers within a few seconds and the download succeeds;
- else `tiny-random`, with one line naming the reason and the command that fetches vit_b.
SAMSEG_DEMO_MODEL=tiny-random|vit_b|vit_l|vit_h forces a choice; a forced real model that
cannot be had is an error (exit 1), not a silent fallback.

`python -m samseg.apps.demo features MODEL` prints the feature backbone the same way: dinov2-s
(the cheapest semantic backbone, docs/features.md) when its weights are downloaded or can be,
else sam (SAM's own encoder features) with one line saying why; always sam for tiny-random.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from typing import Callable
from urllib.parse import urlsplit

ENV = "SAMSEG_DEMO_MODEL"
REAL = ("vit_b", "vit_l", "vit_h")
CHOICES = ("auto", "tiny-random", *REAL)
DEFAULT_REAL = "vit_b"
DEMO_FEATURES = "dinov2-s"
PROBE_TIMEOUT_S = 3.0


class DemoError(Exception):
    """A forced model that cannot be had, or a bad SAMSEG_DEMO_MODEL; one line."""


def reachable(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when a TCP connection to `url`'s host opens within `timeout_s`, else why not.

    Runs in a thread with a hard deadline: name resolution has no timeout of its own and can
    hang far longer than a connect on a machine without a network."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    result: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            result.append(None)
        except OSError as exc:
            result.append(f"{host} is not reachable ({exc.strerror or exc})")

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout_s + 1.0)
    return result[0] if result else f"{host} did not answer within {timeout_s:g} s"


def obtain(name: str, what: str, have: Callable[[str], bool], probe: Callable[[str], str | None],
           download: Callable[[str], object]) -> tuple[str | None, str]:
    """(None, line) when `name`'s weights are here or were downloaded now; (why not, "") otherwise."""
    if have(name):
        return None, f"demo: using the cached {what}"
    reason = probe(name)
    if reason is None:
        try:
            download(name)
            return None, f"demo: downloaded the {what}"
        except Exception as exc:  # noqa: BLE001 — any failure is one line and a fallback
            reason = " ".join(str(exc).split())
    return reason, ""


def choose(requested: str | None, have: Callable[[str], bool], probe: Callable[[str], str | None],
           download: Callable[[str], object]) -> tuple[str, str]:
    """(model type, one line for the user). `have(m)`: a verified checkpoint of m is cached;
    `probe(m)`: None if m's download host answers, else why not; `download(m)`: fetch it
    (raises on failure). Pure decision logic: the callables do the I/O."""
    req = (requested or "auto").strip() or "auto"
    if req not in CHOICES:
        raise DemoError(f"{ENV}={req!r}: must be one of {', '.join(CHOICES)}")
    if req == "tiny-random":
        return "tiny-random", f"demo: {ENV}=tiny-random: a random miniature SAM; its masks are meaningless"
    model = DEFAULT_REAL if req == "auto" else req
    fetch = f"samseg weights download {model}"
    reason, line = obtain(model, f"{model} checkpoint", have, probe, download)
    if reason is None:
        return model, line
    if req != "auto":
        raise DemoError(f"demo: {ENV}={model} but no {model} checkpoint can be had ({reason}); run: {fetch}")
    return "tiny-random", (f"demo: no {model} checkpoint ({reason}); falling back to tiny-random, whose masks are "
                           f"meaningless. To segment for real: {fetch}, then run the demo again")


def choose_features(model: str, have: Callable[[str], bool], probe: Callable[[str], str | None],
                    download: Callable[[str], object]) -> tuple[str, str]:
    """(feature backbone, one line): DEMO_FEATURES when it can be had for a real model, else sam."""
    if model == "tiny-random":
        return "sam", "demo: tiny-random pools its own encoder's features (no backbone to download)"
    name = DEMO_FEATURES
    reason, line = obtain(name, f"{name} backbone for the embeddings", have, probe, download)
    if reason is None:
        return name, line
    return "sam", (f"demo: no {name} backbone ({reason}); embeddings from SAM's own encoder (weakly semantic). "
                   f"For better classes: samseg weights download {name}, then run the demo again")


DEMO_NAMER = "clip-b16"


def choose_names(model: str, have: Callable[[str], bool], probe: Callable[[str], str | None],
                 download: Callable[[str], object]) -> tuple[str, str]:
    """(vocabulary, one line): coco-stuff when the namer's weights can be had for a real model, else none."""
    if model == "tiny-random":
        return "none", "demo: tiny-random: no class names (a random namer's names would be meaningless)"
    reason, line = obtain(DEMO_NAMER, f"{DEMO_NAMER} namer for the class names", have, probe, download)
    if reason is None:
        return "coco-stuff", line
    return "none", (f"demo: no {DEMO_NAMER} namer ({reason}); classes stay unnamed. For names: "
                    f"samseg weights download {DEMO_NAMER}, then run the demo again")


# The demo's three probes, for a SAM checkpoint, a backbone or a namer alike (samseg.sam.weights).
def _have(name: str) -> bool:
    """Its weights file is there. Not hashed here: the segment run's load verifies the sha256 anyway
    (and fetches a good copy when it does not match)."""
    from samseg.sam.registry import find

    return find(name).present


def _probe(name: str) -> str | None:
    from samseg.sam.registry import find

    return reachable(find(name).url)


def _download(name: str) -> object:
    from samseg.sam.registry import find

    return find(name).download()  # .part + sha256 + atomic rename: no partial file stays


def main(argv: list[str]) -> int:
    if argv[:1] != ["choose"] and not (argv[:1] in (["features"], ["names"]) and len(argv) == 2):
        print("usage: python -m samseg.apps.demo choose | features MODEL | names MODEL", file=sys.stderr)
        return 2
    try:
        if argv[0] == "features":
            model, message = choose_features(argv[1], _have, _probe, _download)
        elif argv[0] == "names":
            model, message = choose_names(argv[1], _have, _probe, _download)
        else:
            model, message = choose(os.environ.get(ENV), _have, _probe, _download)
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(message, file=sys.stderr)
    print(model)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
