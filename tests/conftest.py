"""Shared fixtures: the real photos in tests/data/photos, the tiny-random SAM, the smoke config.

Isolation: before any test module is imported, `pytest_configure` points SAMSEG_HOME,
SAMSEG_CACHE, MLFLOW_TRACKING_URI (SQLite), PREFECT_HOME at one temp dir per test process, and
the tests run from there (after collection), so no test writes into the repo (mlflow.db, mlruns/ — MLflow
puts a SQLite store's artifacts under the working dir) or into ~/.cache.

Servers (tests/servers.py, tests/prefect_fixtures.py) are plugins here; each server starts once
per test session, whatever the number of pytest-xdist workers (servers.shared), in the background
as soon as collection shows a test needs it. Test modules request the fixtures by name, never
import them (an imported fixture is a second definition). Each test is marked with the servers
its fixtures need (`prefect`, `mlflow`, `s3`, `labelstudio`, and `integration`).
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

# Two workers on two cores: each worker's torch, and every samseg process a test starts, computes
# on one thread, so the workers do not fight over the cores (set before anything imports torch).
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

_SESSION: dict[str, object] = {}


# The servers a fixture needs (the fixture closure of a test says which): each gets a marker,
# so a lane is one `-m` (docs/development.md), and starts in the background once collection
# shows a test will need it (servers.shared).
SERVER_FIXTURES: dict[str, tuple[str, ...]] = {
    "prefect_server": ("prefect",), "moto_s3": ("s3",), "mlflow_server": ("mlflow", "s3"), "label_studio": ("labelstudio",),
}


# The modules that take 30 s or more (`./scripts/test.sh --durations=0`, summed per file, on the
# 2-core development machine): each starts as early as its servers allow, longest first, so no
# long module is the last one running while the other worker idles.
HEAVY_MODULES: dict[str, int] = {
    "tests/test_scaleout.py": 80, "tests/hostile/test_hostile_signals.py": 59, "tests/test_flows.py": 48,
    "tests/hostile/test_hostile_tracking.py": 39, "tests/test_benchmark_smoke.py": 37, "tests/test_ui_browser.py": 36,
    "tests/test_amg_batch.py": 35, "tests/test_labelstudio.py": 31, "tests/test_ui_api.py": 30,
}


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the session's first process: the shared servers' folder
        from servers import SHARED_ENV

        os.environ[SHARED_ENV] = tempfile.mkdtemp(prefix="samseg-test-servers-")
        _SESSION["shared"] = os.environ[SHARED_ENV]
    home = Path(tempfile.mkdtemp(prefix="samseg-tests-"))
    _SESSION.update(home=home, cwd=os.getcwd(), env={k: os.environ.get(k) for k in _ISOLATED})
    os.environ.update({
        "SAMSEG_HOME": str(home / "samseg-home"),
        "SAMSEG_CACHE": str(home / "samseg-cache"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "PREFECT_HOME": str(home / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    })


def pytest_collection_finish(session: pytest.Session) -> None:
    # after collection: an xdist worker resolves the paths it was given against the repo
    os.chdir(str(_SESSION["home"]))


_ISOLATED = ("SAMSEG_HOME", "SAMSEG_CACHE", "MLFLOW_TRACKING_URI", "PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with the servers it needs (and `integration`), start those servers in
    the background, and run the modules that need no server first, so the boots overlap them."""
    from servers import SPAWNERS

    needed: set[str] = set()
    server_modules: set[str] = set()
    for item in items:
        used = {s for f in getattr(item, "fixturenames", ()) for s in SERVER_FIXTURES.get(f, ())}
        for name in sorted(used):
            item.add_marker(getattr(pytest.mark, name))
        if used:
            item.add_marker(pytest.mark.integration)
            server_modules.add(item.nodeid.split("::")[0])
        needed |= used
    def order(item: pytest.Item) -> tuple[bool, int]:  # stable: a module's tests stay together, in order
        module = item.nodeid.split("::")[0]
        return module in server_modules, -HEAVY_MODULES.get(module, 0)

    items.sort(key=order)
    for name in ("labelstudio", "prefect", "s3", "mlflow"):  # the slowest boot first
        if name in needed:
            SPAWNERS[name]()


def pytest_unconfigure(config: pytest.Config) -> None:
    if "shared" in _SESSION:
        from servers import stop_shared

        stop_shared()
        shutil.rmtree(str(_SESSION["shared"]), ignore_errors=True)
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
