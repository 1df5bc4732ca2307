"""A real Prefect server on 127.0.0.1 for the flow tests, plus small photo fixtures.

    from prefect_fixtures import prefect_server, prefect_api, small_photos  # noqa: F401

- `prefect_server` (session): `prefect server start --host 127.0.0.1 --port <free>` in a
  temp PREFECT_HOME (SQLite, analytics/UI/scheduler off) → `PrefectServer` (.api_url,
  .env for subprocesses, .home). One per session: Prefect would otherwise start a
  temporary server per process (tens of seconds each on a loaded machine).
- `prefect_api` (session): this process talks to that server (temporary_settings:
  PREFECT_API_URL, result storage in the temp home) → the PrefectServer.
- `small_photos` (session): building/bears/corgi/alphabet from tests/data/photos, downscaled
  to a 192-px long side (JPEG) — real photos, cheap for tiny-random on a shared CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from servers import free_port, launch, serving, stop_process

REPO_ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("building.jpg", "bears.jpg", "alphabet.jpg", "corgi.jpg")
SMALL_SIDE = 192


@dataclass
class PrefectServer:
    proc: subprocess.Popen
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

    def stop(self) -> None:
        stop_process(self.proc)


def start_prefect_server(home: Path, timeout_s: float = 240.0) -> PrefectServer:
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
    return PrefectServer(launch(cmd, env, log, f"{api_url}/health", timeout_s), api_url, home, log)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    yield from serving(start_prefect_server(tmp_path_factory.mktemp("prefect")))


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
