"""The code's shape: short files and short functions as guidance, long ones as a smell.

Files are split by concept, never to meet a number, so the guide (400 lines a file, 50 a
function) only warns: the test run's warnings summary lists what is over it, for a reviewer
to judge. A hard stop remains far above it (600 / 100), where a file or function is past any
concept's size and is two things that should be two. samseg/, flows/, benchmarks/; tests exempt.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GUIDE_FILE_LINES, GUIDE_FUNCTION_LINES = 400, 50
MAX_FILE_LINES, MAX_FUNCTION_LINES = 600, 100


class ShapeWarning(UserWarning):
    """A file or function over the size guide (listed, not failed)."""


def _sources() -> list[Path]:
    return sorted(p for d in ("samseg", "flows", "benchmarks") for p in (REPO / d).rglob("*.py"))


def _file_lengths() -> dict[str, int]:
    return {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in _sources()}


def _function_lengths() -> dict[str, int]:
    out = {}
    for p in _sources():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out[f"{p.relative_to(REPO)}:{node.lineno} {node.name}"] = node.end_lineno - node.lineno + 1
    return out


def _check(lengths: dict[str, int], guide: int, hard: int, what: str) -> None:
    over_guide = {k: n for k, n in lengths.items() if n > guide}
    if over_guide:
        warnings.warn(ShapeWarning(f"{what} over {guide} lines (guide): {over_guide}"))
    too_long = {k: n for k, n in lengths.items() if n > hard}
    assert not too_long, too_long


def test_no_file_past_any_concepts_size() -> None:
    _check(_file_lengths(), GUIDE_FILE_LINES, MAX_FILE_LINES, "files")


def test_no_function_past_any_concepts_size() -> None:
    _check(_function_lengths(), GUIDE_FUNCTION_LINES, MAX_FUNCTION_LINES, "functions")
