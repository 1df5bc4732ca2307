"""How long is the walk of one image? The distinct named samseg/flows functions (comprehensions,
lambdas and generator expressions excluded) and their modules that one command executes,
counted with sys.setprofile in every thread the command runs — issue #36's measure of "following one image".

    .venv/bin/python benchmarks/code_walk.py [IMAGE]   # default: tests/data/photos/bears.jpg

Runs `samseg segment IMAGE --model tiny-random --preset smoke --no-cache --no-track
--orchestrator local` in this process and prints the two counts, then the modules by count.
A class body (run once, when its module is imported on the way) is a call to the profiler too:
the first line counts them with the functions, as the measure always has; the second without.
"""

from __future__ import annotations

import inspect
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ANON = {"<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>", "<lambda>", "<module>"}


def walk(image: str) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(every (file, qualified name) the command ran, class bodies included; the class bodies)."""
    from samseg.apps.cli import main

    seen: set[tuple[str, str]] = set()
    class_bodies: set[tuple[str, str]] = set()
    roots = (str(REPO / "samseg"), str(REPO / "flows"))

    def profile(frame, event, _arg):
        if event == "call":
            code = frame.f_code
            if code.co_filename.startswith(roots) and code.co_name not in ANON:
                seen.add((code.co_filename, code.co_qualname))
                if not code.co_flags & inspect.CO_NEWLOCALS:  # a class body, not a function
                    class_bodies.add((code.co_filename, code.co_qualname))

    with tempfile.TemporaryDirectory() as out:
        argv = ["segment", image, "--out", out, "--model", "tiny-random", "--preset", "smoke", "--no-cache",
                "--no-track", "--orchestrator", "local", "-q"]
        sys.setprofile(profile)
        threading.setprofile(profile)  # the threads the command starts too: an image's publish step runs in one
        try:
            rc = main(argv)
        finally:
            sys.setprofile(None)
            threading.setprofile(None)  # type: ignore[arg-type]
    assert rc == 0, rc
    return seen, class_bodies


if __name__ == "__main__":
    functions, class_bodies = walk(sys.argv[1] if len(sys.argv) > 1 else str(REPO / "tests" / "data" / "photos" / "bears.jpg"))
    modules = Counter(str(Path(f).relative_to(REPO)) for f, _ in functions)
    plain = functions - class_bodies
    print(f"{len(functions)} functions in {len(modules)} modules (class bodies included)")
    print(f"{len(plain)} functions in {len({f for f, _ in plain})} modules (class bodies excluded)")
    for module, n in modules.most_common():
        print(f"{n:4d}  {module}")
