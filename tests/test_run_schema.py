"""The run schema lives in samseg/edges/run_schema.py once: no other module spells a
"samseg.<tag>" (or MLflow's "mlflow.parentRunId") as a string literal — they import the name."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "samseg" / "edges" / "run_schema.py"
TAG_LITERAL = re.compile(r"(?<![\w.])(samseg\.[a-z_]+|mlflow\.parentRunId)(?![\w/])")  # "samseg.classes/1" is a file format id, not a tag


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def tag_literals(path: Path, root: Path = REPO) -> list[str]:
    """'file:line: literal' for every tag-like string literal (docstrings are prose, not code)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            for m in TAG_LITERAL.finditer(node.value):
                if not _is_module(m.group(1)):
                    found.append(f"{path.relative_to(root)}:{node.lineno}: {m.group(1)}")
    return found


def test_tag_literal_detector_finds_one(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text('"""Tags: "samseg.kind"."""\ntags = {"samseg.kind": 1}\nlog = "samseg.apps.cli"\n'
                     'fmt = "samseg.classes/1"\nq = f"tags.`mlflow.parentRunId` = 1"\n', encoding="utf-8")
    # a docstring, a module name and a format id are not tags; an f-string's text is
    assert [x.split(": ")[-1] for x in tag_literals(probe, tmp_path)] == ["samseg.kind", "mlflow.parentRunId"]


def test_no_tag_name_outside_the_run_schema() -> None:
    sources = sorted(p for d in ("samseg", "flows") for p in (REPO / d).rglob("*.py") if p != SCHEMA)
    assert sources
    found = [hit for p in sources for hit in tag_literals(p)]
    assert not found, "tag names belong in samseg/edges/run_schema.py:\n" + "\n".join(found)
