"""Prefect's temporary server, as samseg starts it for a command without PREFECT_API_URL."""

from __future__ import annotations

from typing import Any

import pytest

from samseg.apps import watchdog
from samseg.core.errors import UnavailableError


class _Server:
    """Stands in for prefect.server.api.server.SubprocessASGIServer: records the start's timeout."""

    started_with: list = []
    fails = False
    stopped = False
    server_process = None
    api_url = "http://127.0.0.1:1/api"

    def start(self, timeout=None) -> None:
        _Server.started_with.append(timeout)
        if _Server.fails:
            raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.")

    def stop(self) -> None:
        _Server.stopped = True


@pytest.fixture
def server(monkeypatch, tmp_path):
    import prefect.server.api.server as prefect_server
    import prefect.settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("SAMSEG_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(prefect_server, "SubprocessASGIServer", _Server)
    monkeypatch.setattr(_Server, "started_with", [])
    monkeypatch.setattr(_Server, "fails", False)
    monkeypatch.setattr(_Server, "stopped", False)
    real = prefect.settings.get_current_settings

    def no_server_configured() -> Any:  # whatever this machine's Prefect profile says, as on a fresh machine
        settings = real()
        return settings.model_copy(update={"api": settings.api.model_copy(update={"url": None})})

    monkeypatch.setattr(prefect.settings, "get_current_settings", no_server_configured)
    return _Server


def test_the_temporary_server_gets_samsegs_start_bound_unless_the_user_set_prefects(server, monkeypatch):
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    assert watchdog.guard_prefect_ephemeral() == server.api_url
    with temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 7}):  # as the environment or a profile sets it
        watchdog.guard_prefect_ephemeral()
    assert server.started_with == [watchdog.SERVER_START_S, None]  # None: Prefect reads the user's setting


def test_a_temporary_server_that_never_answers_is_one_line_naming_its_log(server):
    server.fails = True
    with pytest.raises(UnavailableError) as err:
        watchdog.guard_prefect_ephemeral()
    line = str(err.value)
    assert "Timed out while attempting to connect" in line and watchdog.server_log() in line
    assert "PREFECT_API_URL" in line and "\n" not in line
    assert server.stopped  # Prefect leaves a server that did not answer running: samseg stops it
