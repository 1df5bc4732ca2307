"""A real Prefect server on 127.0.0.1 for the flow tests, plus small photo fixtures.

Request the fixtures by name (conftest.py loads this module as a plugin):
- `prefect_server` (session): `prefect server start --host 127.0.0.1 --port <free>` in a
  temp PREFECT_HOME (SQLite, analytics/UI/scheduler off) → `PrefectServer` (.api_url,
  .env for subprocesses, .home). One per test session, shared by every pytest-xdist worker
  (servers.shared): Prefect would otherwise start a temporary server per process (tens of
  seconds each on a loaded machine).
- `prefect_api` (session): this process talks to that server (temporary_settings:
  PREFECT_API_URL, result storage in the temp home) → the PrefectServer.
- `small_photos` (session): building/bears/corgi/alphabet from tests/data/photos, downscaled
  to a 192-px long side (JPEG) — real photos, cheap for tiny-random on a shared CPU.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from servers import free_port, spawn, stop_process, up  # noqa: F401 - stop_process: the tests' import

REPO_ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("building.jpg", "bears.jpg", "alphabet.jpg", "corgi.jpg")
SMALL_SIDE = 192


@dataclass
class PrefectServer:
    api_url: str
    home: Path
    log: Path

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses (workers, CLI) that should use this server."""
        return {
            **os.environ,
            "PREFECT_API_URL": self.api_url,
            "PREFECT_HOME": str(self.home / "client"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOCAL_STORAGE_PATH": str(self.home / "storage"),
            "PYTHONPATH": str(REPO_ROOT),
        }


def spawn_prefect_server(home: Path) -> dict[str, object]:
    """`prefect server start` (SQLite under `home`, scheduler, UI and analytics off), not waited for."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = home / "prefect-server.log"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home / "server"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
    }
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
           "--no-scheduler", "--no-late-runs", "--analytics-off", "--no-ui"]
    api_url = f"http://127.0.0.1:{port}/api"
    proc = spawn(cmd, env, log)
    return {"pgid": proc.pid, "url": api_url, "health": f"{api_url}/health", "log": str(log), "home": str(home)}


@pytest.fixture(scope="session")
def prefect_server() -> PrefectServer:
    info = up("prefect", spawn_prefect_server, 240)
    return PrefectServer(str(info["url"]), Path(str(info["home"])), Path(str(info["log"])))


@pytest.fixture(scope="session")
def prefect_api(prefect_server: PrefectServer) -> Iterator[PrefectServer]:
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_LOGGING_TO_API_ENABLED,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )

    updates = {
        PREFECT_API_URL: prefect_server.api_url,
        PREFECT_HOME: str(prefect_server.home / "client"),
        PREFECT_LOCAL_STORAGE_PATH: str(prefect_server.home / "storage"),
        PREFECT_SERVER_ANALYTICS_ENABLED: False,
        # in-process flow logs stay local: the server is gone before the handler's final flush
        PREFECT_LOGGING_TO_API_ENABLED: False,
    }
    with temporary_settings(updates=updates):
        yield prefect_server


@pytest.fixture(scope="session")
def small_photos(tmp_path_factory: pytest.TempPathFactory, photos: Path) -> Path:
    """Dir with the four shared photos downscaled to SMALL_SIDE px (EXIF applied)."""
    from PIL import Image, ImageOps

    out = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        with Image.open(photos / name) as img:
            small = ImageOps.exif_transpose(img).convert("RGB")
            small.thumbnail((SMALL_SIDE, SMALL_SIDE))
            small.save(out / name, quality=90)
    return out
