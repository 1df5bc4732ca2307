"""Hostile requests against the web UI (TestClient over a real SQLite MLflow store)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ui_synthetic import sqlite_store, write_image_outputs

EXPERIMENT = "hostile-ui"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """(tmp, honest run id, crafted run id): the crafted run names /etc/passwd, no sha256."""
    from mlflow import MlflowClient

    from samseg.edges.mlflow.tracking import log_image_run

    tmp = tmp_path_factory.mktemp("hostile-ui")
    mp = pytest.MonkeyPatch()
    paths = sqlite_store(tmp, EXPERIMENT, mp)
    honest = log_image_run(tmp / "out" / "a", write_image_outputs(tmp / "out" / "a", paths[0]), experiment=EXPERIMENT)
    summary = write_image_outputs(tmp / "out" / "b", paths[1])
    crafted = log_image_run(tmp / "out" / "b", summary, experiment=EXPERIMENT)
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    client.set_tag(crafted, "samseg.image_uri", "/etc/passwd")
    client.delete_tag(crafted, "samseg.image_sha256")
    yield tmp, honest, crafted
    mp.undo()


def _app(tmp: Path, token: str | None = None, **kw):
    from samseg.apps.ui import UiSettings, create_app

    return create_app(UiSettings(experiment=EXPERIMENT, cache_dir=tmp / f"ui-cache-{token}", token=token,
                                 stage_cache=str(tmp / "stage-cache"), **kw))


@pytest.fixture
def client(store):
    with TestClient(_app(store[0])) as c:
        yield c


# ------------------------------------------------------------------ CSRF
@pytest.mark.parametrize("token", [None, "s3cret-token"])
def test_csrf_foreign_origin_post_is_403_in_both_modes(store, token) -> None:
    tmp, honest, _ = store
    with TestClient(_app(tmp, token)) as c:
        if token:
            c.cookies.set("samseg_ui_token", token)
        for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                        {"Origin": "http://testserver.evil.example"}):
            r = c.post(f"/api/runs/{honest}/rerun", content=b"eps=0.5", headers=headers)
            assert r.status_code == 403, (headers, r.status_code)
        ok = c.post(f"/api/runs/{honest}/rerun", json={"eps": 0.5}, headers={"Origin": "http://testserver",
                                                                            "Sec-Fetch-Site": "same-origin"})
        assert ok.status_code == 202


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_json_body_with_a_simple_request_content_type_is_refused(client, store, content_type) -> None:
    """A cross-site form can send a "simple" request (text/plain, form-encoded: no CORS preflight)
    from the same origin's point of view only if the API parses it as JSON: it must not."""
    headers = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    simple = {**headers, **({"Content-Type": content_type} if content_type else {})}
    r = client.post(f"/api/runs/{store[1]}/rerun", content=b'{"eps": 0.5}', headers=simple)
    assert r.status_code in (415, 422), (content_type, r.status_code)
    ok = client.post(f"/api/runs/{store[1]}/rerun", json={"eps": 0.5}, headers=headers)  # the same body, as JSON
    assert ok.status_code == 202


# ------------------------------------------------------------------ headers, token
def test_clickjacking_and_sniffing_headers_on_every_answer(client, store) -> None:
    for path in ("/", f"/runs/{store[1]}", "/api/runs", "/nope"):
        r = client.get(path)
        assert r.headers["x-frame-options"] == "DENY", path
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"


def test_token_never_reaches_the_access_log(store, caplog) -> None:
    from samseg.apps.ui import guards

    guards.redact_access_log()
    logger = logging.getLogger("uvicorn.access")
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", "/?token=s3cret-token&x=1", "1.1", 303)
    assert "s3cret-token" not in caplog.text and "token=***" in caplog.text


def test_wrong_tokens_are_rate_limited(store) -> None:
    with TestClient(_app(store[0], "right-token")) as c:
        codes = [c.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code for _ in range(12)]
        assert codes[:10] == [401] * 10 and codes[10:] == [429, 429]
        assert c.get("/api/runs", headers={"Authorization": "Bearer right-token"}).status_code == 429  # still blocked


# ------------------------------------------------------------------ files
def test_crafted_run_cannot_read_local_files(client, store) -> None:
    _, honest, crafted = store
    answers = set()
    for run in (crafted,):
        r = client.get(f"/runs/{run}/files/input.jpg")
        assert r.status_code == 409
        answers.add(r.json()["detail"].replace(run, "RUN"))
    from mlflow import MlflowClient

    mc = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    for target in ("/nonexistent/file.png", "/etc", "/etc/hostname"):
        mc.set_tag(crafted, "samseg.image_uri", target)
        r = client.get(f"/runs/{crafted}/files/input.jpg")
        assert r.status_code == 409 and "root:" not in r.text
        answers.add(r.json()["detail"].replace(crafted, "RUN"))
    assert len(answers) == 1, answers  # one identical answer: nothing about what exists
    assert client.get(f"/runs/{honest}/files/input.jpg").status_code == 200


def test_image_root_limits_where_inputs_come_from(store) -> None:
    tmp, honest, _ = store
    with TestClient(_app(tmp, image_roots=(tmp / "elsewhere",))) as c:
        assert c.get(f"/runs/{honest}/files/input.jpg").status_code == 409
    with TestClient(_app(tmp, image_roots=(tmp / "images",))) as c:
        assert c.get(f"/runs/{honest}/files/input.jpg").status_code == 200


def test_symlink_planted_in_ui_cache_is_not_served(client, store) -> None:
    tmp, honest, _ = store
    assert client.get(f"/runs/{honest}/files/overlay.png").status_code == 200
    run_dir = tmp / "ui-cache-None" / "runs" / honest
    (run_dir / ".ui").mkdir(exist_ok=True)
    for name in ("thumb.png", "input.jpg"):
        target = run_dir / ".ui" / name
        target.unlink(missing_ok=True)
        os.symlink("/etc/passwd", target)
        r = client.get(f"/runs/{honest}/files/{name}")
        assert r.status_code == 404 and "root:" not in r.text
    (run_dir / "summary.json").rename(run_dir / "summary.real")
    os.symlink(run_dir / "summary.real", run_dir / "summary.json")
    assert client.get(f"/runs/{honest}/files/summary.json").status_code == 404


# ------------------------------------------------------------------ form values
@pytest.mark.parametrize("form, field", [({"min_samples": 1e308}, "min_samples"), ({"eps": True}, "eps"),
                                         ({"eps": [0.1]}, "eps"), ({"min_samples": "1e400"}, "min_samples"),
                                         ({"algorithm": 3}, "algorithm"), ({"eps": "nan"}, "eps")])
def test_rerun_form_strict_types_and_bounds(client, store, form, field) -> None:
    r = client.post(f"/api/runs/{store[1]}/rerun", json=form)
    assert r.status_code == 422 and field in r.json()["errors"], r.text


@pytest.mark.parametrize("body", [{"x": "nan", "y": 1}, {"x": float("1e400"), "y": 1}, {"x": True, "y": 2}, {"x": 1}])
def test_exemplar_query_with_nan_is_422_not_500(client, store, body) -> None:
    import json

    r = client.post(f"/api/runs/{store[1]}/query", content=json.dumps(body).replace("Infinity", "1e400"),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text


def test_save_class_with_repeated_indices_is_422(client, store) -> None:
    honest = store[1]
    for sel in ([{"run_id": honest, "indices": [1] * 960}], [{"run_id": honest, "indices": [1, 2, 1]}],
                [{"run_id": honest, "indices": [1]}, {"run_id": honest, "indices": [2]}],
                [{"run_id": honest, "indices": [True]}]):
        r = client.post("/api/classes", json={"selections": sel})
        assert r.status_code == 422, (sel[:1], r.text)


def test_job_queue_is_bounded(store) -> None:
    import threading

    from samseg.apps.ui.jobs import JobRunner, QueueFull

    release = threading.Event()
    jobs = JobRunner(max_pending=3)
    try:
        for _ in range(3):
            jobs.submit("x", lambda p: release.wait(10))
        with pytest.raises(QueueFull):
            jobs.submit("x", lambda p: None)
    finally:
        release.set()
        jobs.shutdown()
    tmp, honest, _ = store
    app = _app(tmp)
    app.state.jobs.max_pending = 0
    with TestClient(app) as c:
        assert c.post(f"/api/runs/{honest}/rerun", json={"eps": 0.5}).status_code == 429


def test_a_stopped_ui_lets_a_running_batch_job_end_its_run_before_it_exits(monkeypatch) -> None:
    """Ctrl-C while the UI reclusters a batch: the job's loop sees the stop at its next image
    (shutdown.check, as the engine's batch loops call it) and ends what it started (its new batch
    run KILLED), and the UI's shutdown waits for that instead of abandoning the thread mid-run."""
    import signal
    import threading
    import time

    from samseg.apps.ui.jobs import JobRunner
    from samseg.edges import shutdown

    monkeypatch.setattr(shutdown, "_received", [])  # this process's later tests must not see a stop requested
    monkeypatch.setattr(shutdown, "_raised", [])
    running, ended = threading.Event(), []

    def batch(progress) -> None:
        try:
            for _ in range(3000):  # images; each starts only while no stop was asked for
                shutdown.check()
                running.set()
                time.sleep(0.01)
        except BaseException:
            time.sleep(0.2)  # ending the new batch run KILLED takes a moment
            ended.append("KILLED")
            raise

    jobs = JobRunner()
    job = jobs.submit("recluster-batch", batch)
    assert running.wait(30)
    shutdown._received.append(signal.SIGINT)  # what the UI's server notes (shutdown.received, less its deadline thread)
    jobs.shutdown()
    assert ended == ["KILLED"] and job.finished is not None
    assert job.to_dict()["state"] == "failed" and "stopped" in job.to_dict()["error"]


# ------------------------------------------------------------------ store trouble
def test_locked_mlflow_db_is_a_clear_503(store, monkeypatch) -> None:
    from mlflow.exceptions import MlflowException

    tmp, honest, _ = store
    app = _app(tmp)

    def locked(*a, **k):
        raise MlflowException("(sqlite3.OperationalError) database is locked [SQL: SELECT runs.run_uuid FROM runs]")

    monkeypatch.setattr(app.state.store.client, "search_runs", locked)
    monkeypatch.setattr(app.state.store.client, "get_run", locked)
    with TestClient(app) as c:
        for path in ("/api/runs", f"/runs/{honest}", f"/api/runs/{honest}"):
            r = c.get(path)
            assert r.status_code == 503, (path, r.status_code)
            assert "SELECT" not in r.text and "locked" in r.text


def test_error_bodies_carry_no_server_paths(client, store) -> None:
    tmp, honest, _ = store
    run_dir = tmp / "ui-cache-None" / "runs" / honest
    client.get(f"/api/runs/{honest}")
    (run_dir / "masks.json").write_text("{ not json")
    r = client.get(f"/api/runs/{honest}")
    assert r.status_code == 409 and str(tmp) not in r.text and "/tmp/" not in r.text, r.text
    assert "masks.json" in r.text


def test_ui_refuses_a_tracking_uri_without_a_database(tmp_path: Path, monkeypatch, capsys) -> None:
    from cli_run import run_cli

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////nonexistent/dir/mlflow.db")
    rc, _, stderr = run_cli(["ui", "--port", "1"])
    assert rc == 2 and "no MLflow store at /nonexistent/dir/mlflow.db" in stderr
    assert not Path("/nonexistent").exists()


def test_ui_on_a_port_in_use_is_one_usage_line_not_the_other_servers_url(monkeypatch) -> None:
    """Another server holds the port: one line saying so, exit 2, and no URL printed (it would be the other's)."""
    import socket

    from cli_run import run_cli

    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc, _, stderr = run_cli(["ui", "--port", str(port)])
    assert rc == 2 and f"127.0.0.1:{port} is in use" in stderr and "http://" not in stderr, stderr


def test_bound_loopback_address_is_an_allowed_host() -> None:
    import argparse

    from samseg.apps.cli.ui import add_parser, build_settings

    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers())
    settings = build_settings(p.parse_args(["ui", "--host", "127.0.0.2"]))
    assert "127.0.0.2" in settings.allowed_hosts and "localhost" in settings.allowed_hosts


def test_a_burst_of_first_previews_of_one_run_builds_its_session_once(monkeypatch) -> None:
    """Ten parallel first previews of one run used to decode its masks ten times at once
    (each request opened its own session outside the lock); now one builds, nine wait."""
    import threading
    import time

    from samseg.apps.ui.preview_api import PreviewSessions

    opened: list[str] = []
    sessions = PreviewSessions(store=None)

    def slow_open(run_id: str) -> object:
        opened.append(run_id)
        time.sleep(0.3)  # long enough that every request arrives while the first one builds
        return object()

    monkeypatch.setattr(sessions, "_open", slow_open)
    got: list[object] = []
    start = threading.Barrier(10)

    def first_preview() -> None:
        start.wait()
        got.append(sessions.get("run-a"))

    threads = [threading.Thread(target=first_preview) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert opened == ["run-a"] and len(got) == 10 and len({id(s) for s in got}) == 1


def test_a_failed_first_preview_fails_the_waiters_and_the_next_request_retries(monkeypatch) -> None:
    import threading
    import time

    from samseg.apps.ui.preview_api import PreviewSessions
    from samseg.apps.ui.service import RunDataError

    sessions, calls = PreviewSessions(store=None), []

    def failing_open(run_id: str) -> object:
        calls.append(run_id)
        time.sleep(0.2)
        raise RunDataError(f"run {run_id}: no masks.json")

    monkeypatch.setattr(sessions, "_open", failing_open)
    errors: list[str] = []

    def preview() -> None:
        try:
            sessions.get("run-b")
        except RunDataError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=preview) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["run-b"] and errors == ["run run-b: no masks.json"] * 4
    preview()  # nothing is left half-built: the next request tries again
    assert calls == ["run-b", "run-b"]


def test_unknown_run_404_names_no_server_path(client, store) -> None:
    r = client.get("/runs/0123456789abcdef0123456789abcdef")
    assert r.status_code == 404
    assert "mlflow.db" not in r.text and str(store[0]) not in r.text and "sqlite" not in r.text


def test_head_answers_as_get_without_a_body(client, store) -> None:
    for path, status in (("/", 200), ("/api/runs", 200), ("/runs/0123456789abcdef0123456789abcdef", 404)):
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code == status, path
        assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"]
        assert head.headers["x-frame-options"] == "DENY"


def test_a_huge_bad_value_is_not_echoed_back(client, store) -> None:
    """A 2 MB field value (or key) in a form: the 422 names the field and shows a short prefix only."""
    headers = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    for body in ({"algorithm": "x" * 2_000_000}, {"y" * 2_000_000: 1}):
        r = client.post(f"/api/runs/{store[1]}/preview", json=body, headers=headers)
        assert r.status_code == 422 and len(r.content) < 2_000, len(r.content)


def test_a_stalled_tracking_server_pins_a_few_threads_and_healthz_still_answers(tmp_path: Path, monkeypatch) -> None:
    """50 parallel /api/runs against an MLflow server that accepts connections and never answers:
    at most the gate's slots ever reach it (the rest answer 503 without waiting their own
    timeout), every answer is a 503 naming the store, and /healthz answers while they wait."""
    from concurrent.futures import ThreadPoolExecutor

    from samseg.apps.ui import UiSettings, create_app
    from samseg.apps.ui.tracking_gate import SLOTS
    from servers import black_hole

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")  # the gate's shape, not MLflow's timeout, is under test
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with black_hole() as (uri, accepted):
        app = create_app(UiSettings(tracking_uri=uri, experiment=EXPERIMENT, cache_dir=tmp_path / "ui-cache"))
        with TestClient(app) as c, ThreadPoolExecutor(50) as pool:
            burst = [pool.submit(c.get, "/api/runs") for _ in range(50)]
            health = c.get("/healthz")
            waiting = sum(not f.done() for f in burst)
            answers = [f.result() for f in burst]
        assert health.status_code == 200 and waiting == len(burst)  # answered before any of the burst
        assert {r.status_code for r in answers} == {503}
        assert all("MLflow store" in r.json()["detail"] for r in answers)
        assert 1 <= len(accepted) <= SLOTS


def test_preview_sessions_are_bounded_in_bytes_not_only_in_count(monkeypatch) -> None:
    """Four sessions of big runs used to stay in memory after a burst (2.8 GB); the LRU now
    also evicts the oldest while the sessions together hold more than max_bytes."""
    from types import SimpleNamespace

    from samseg.apps.ui.preview_api import PreviewSessions

    sessions = PreviewSessions(store=None, size=4, max_bytes=250)
    monkeypatch.setattr(sessions, "_open", lambda run_id: SimpleNamespace(nbytes=100, run_id=run_id))
    for run_id in ("a", "b", "c"):
        sessions.get(run_id)
    assert list(sessions._sessions) == ["b", "c"] and sessions.held_bytes() == 200
    sessions.get("b")  # a hit moves it to the end
    sessions.get("d")
    assert list(sessions._sessions) == ["b", "d"]
    big = PreviewSessions(store=None, size=4, max_bytes=50)
    monkeypatch.setattr(big, "_open", lambda run_id: SimpleNamespace(nbytes=100, run_id=run_id))
    assert big.get("huge").run_id == "huge" and list(big._sessions) == ["huge"]  # the newest stays
