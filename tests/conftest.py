"""Shared fixtures: the real photos in tests/data/photos, the tiny-random SAM, the smoke config.

Isolation: before any test module is imported, `pytest_configure` points SAMSEG_HOME,
SAMSEG_CACHE, MLFLOW_TRACKING_URI (SQLite), PREFECT_HOME at one session temp dir and
runs the session from there, so no test writes into the repo (mlflow.db, mlruns/ — MLflow
puts a SQLite store's artifacts under the working dir) or into ~/.cache.

Servers (tests/servers.py, tests/prefect_fixtures.py) are plugins here, so each
session-scoped server starts once per session; test modules must request the fixtures by
name, never import them (an imported fixture is a second definition: a second server).
Every test that runs a flow requests `prefect_api`: without PREFECT_API_URL Prefect would
start a temporary server per process.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PHOTOS = REPO_ROOT / "tests" / "data" / "photos"

pytest_plugins = ["servers", "prefect_fixtures"]

_SESSION: dict[str, object] = {}


def pytest_configure(config: pytest.Config) -> None:
    home = Path(tempfile.mkdtemp(prefix="samseg-tests-"))
    _SESSION.update(home=home, cwd=os.getcwd(), env={k: os.environ.get(k) for k in _ISOLATED})
    os.environ.update({
        "SAMSEG_HOME": str(home / "samseg-home"),
        "SAMSEG_CACHE": str(home / "samseg-cache"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "PREFECT_HOME": str(home / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    })
    os.chdir(home)


_ISOLATED = ("SAMSEG_HOME", "SAMSEG_CACHE", "MLFLOW_TRACKING_URI", "PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED")


def pytest_unconfigure(config: pytest.Config) -> None:
    if "home" not in _SESSION:
        return
    os.chdir(str(_SESSION["cwd"]))
    for key, value in dict(_SESSION["env"]).items():  # type: ignore[call-overload]
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    shutil.rmtree(str(_SESSION["home"]), ignore_errors=True)


@pytest.fixture(scope="session")
def photos() -> Path:
    """tests/data/photos: building.jpg, bears.jpg, alphabet.jpg, corgi.jpg — the four real photos
    of ../shared/images at 512 px (see its NOTICE), in the repository so no test needs ../shared."""
    return PHOTOS


@pytest.fixture(scope="session")
def tiny_model():
    """The deterministic tiny-random SAM (seed 0) on CPU, loaded once per test session.

    Its masks are meaningless; tests use it for shapes, plumbing and determinism only.
    """
    from samseg.sam.model import load_model

    return load_model("tiny-random", device="cpu", seed=0)


@pytest.fixture(scope="session")
def smoke_cfg():
    """The `smoke` preset (tiny-random, 8×8 points, filters opened up)."""
    from samseg.core.config import get_preset

    return get_preset("smoke")
