"""Hostile values around the Label Studio push that need no server: credentials in the URL, a
token with a line break or a non-ASCII character, project 'ids' that are not ASCII digits, a
server that answers with an HTML page, the UI's button pressed twice."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cli_run import run_cli
from ui_synthetic import write_two_runs


@pytest.fixture(scope="module")
def out_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ls-hostile")
    write_two_runs(tmp)
    return tmp


@pytest.mark.parametrize("url", ["http://alice:hunter2@127.0.0.1:9", "http://hunter2@127.0.0.1:9",
                                 "http://127.0.0.1:9/?token=hunter2", "http://127.0.0.1:9/#hunter2",
                                 "http://admin:hun/ter2@127.0.0.1:9", "http://admin:hun#ter2@127.0.0.1",
                                 "http://admin:hun?ter2@127.0.0.1", "ftp://u:hunter2@x@h"])
def test_credentials_in_the_push_url_are_refused_and_never_printed(out_root: Path, url: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "tok")
    rc, out, err = run_cli(["export", str(out_root / "out"), "--format", "labelstudio", "--to", url])
    assert rc == 2 and "LABEL_STUDIO_API_KEY" in err.strip().splitlines()[-1], err
    assert "hunter2" not in out + err and "ter2" not in out + err


def test_credentials_in_the_ui_label_studio_url_are_refused_at_start(tmp_path: Path) -> None:
    from servers import free_port

    (tmp_path / "m.db").touch()
    rc, _, err = run_cli(["ui", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--port", str(free_port()),  # not 8765:
                          "--label-studio", "http://alice:hunter2@127.0.0.1:9"])  # another UI may hold it
    assert rc == 2 and "hunter2" not in err and "LABEL_STUDIO_API_KEY" in err


@pytest.mark.parametrize("token", ["abc\ndef-secret", "tökén-secret"])
def test_a_token_with_a_line_break_or_non_ascii_is_one_line_without_the_token(out_root: Path, token: str,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", token)
    rc, _, err = run_cli(["export", str(out_root / "out"), "--format", "labelstudio", "--to", "http://127.0.0.1:9"])
    assert rc == 1 and err.count("\n") == 1 and "secret" not in err and "unexpected" not in err, err


@pytest.mark.parametrize("project", ["²", "١", "12a", "-1"])
def test_project_ids_are_ascii_digits_only(project: str) -> None:
    from samseg.edges.labelstudio import is_project_id

    assert not is_project_id(project) and is_project_id("12")


def test_a_url_with_a_path_prefix_answering_html_says_it_is_not_the_api() -> None:
    from samseg.edges.labelstudio import server_said

    said = server_said("<!DOCTYPE html><html><head><title>Label Studio</title>" + "x" * 500)
    assert "not Label Studio's API" in said and "<" not in said


def test_the_servers_error_text_is_said_whole() -> None:
    from samseg.edges.labelstudio import server_said

    detail = "Validation error: " + "this label is missing from the config; " * 12
    said = server_said({"detail": detail, "status_code": 400})
    assert said == " ".join(detail.split()) and len(said) > 200


def test_the_ui_push_pressed_twice_is_one_job() -> None:
    from samseg.apps.ui.jobs import JobRunner

    release = threading.Event()
    runs: list[int] = []

    def push(progress) -> int:
        runs.append(1)
        release.wait(30)
        return 1

    jobs = JobRunner()
    try:
        first = jobs.submit("label-studio", push, key=("run1", "http://ls", "samseg"))
        second = jobs.submit("label-studio", push, key=("run1", "http://ls", "samseg"))
        other = jobs.submit("label-studio", push, key=("run2", "http://ls", "samseg"))
        assert second is first and other is not first
    finally:
        release.set()
        jobs.shutdown()


def test_two_pushes_into_one_project_on_one_machine_run_one_after_the_other(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock is held by an open file: a second push (another thread here; another process the
    same) waits until the first is done, so it sees the first's project and tasks."""
    from samseg.edges.labelstudio import _one_push_at_a_time

    monkeypatch.setenv("SAMSEG_HOME", str(tmp_path / "home"))
    order: list[str] = []
    inside = threading.Event()

    def second() -> None:
        inside.wait(30)
        with _one_push_at_a_time("http://ls"):
            order.append("second")

    t = threading.Thread(target=second)
    t.start()
    with _one_push_at_a_time("http://ls"):
        inside.set()
        t.join(0.5)  # it cannot get in while the first holds the lock (however long we wait here)
        assert t.is_alive()
        order.append("first")
    t.join(30)
    assert order == ["first", "second"]
