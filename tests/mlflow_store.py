"""A migrated MLflow SQLite store for a test, copied from one made once per test process.

MLflow creates and migrates a new store's tables in 2–5 s on the 2-core machines; a copy of a
store made by the same MLflow takes milliseconds. Tests of a store's first use itself (two
commands racing to create it: tests/hostile/test_hostile_tracking.py) make theirs from nothing.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from pathlib import Path

_LOCK = threading.Lock()
_TEMPLATE: dict[str, Path] = {}


def sqlite_uri(path: Path | str) -> str:
    """`sqlite:///<path>`, the store at `path` a copy of the process's template unless it exists."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_template(), path)
    return f"sqlite:///{path}"


def _template() -> Path:
    with _LOCK:
        if "db" not in _TEMPLATE:
            from mlflow import MlflowClient

            folder = Path(tempfile.mkdtemp(prefix="samseg-mlflow-template-"))
            atexit.register(shutil.rmtree, folder, True)
            db = folder / "mlflow.db"
            MlflowClient(f"sqlite:///{db}").search_experiments()  # creates and migrates the tables
            _TEMPLATE["db"] = db
        return _TEMPLATE["db"]
