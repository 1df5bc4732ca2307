"""Real servers on 127.0.0.1 for integration tests: moto S3 (over HTTP) and `mlflow server`.

Reuse from any test module (tests/ is on sys.path under pytest's default import mode):

    from servers import moto_s3, s3_env, s3_bucket, mlflow_server, mlflow_env  # noqa: F401

Fixtures
- `moto_s3` (session): a ThreadedMotoServer on 127.0.0.1:<free port> → `MotoS3`
  (.endpoint_url, .env, .client(), .make_bucket(name)).
- `s3_env` (function): sets AWS_ENDPOINT_URL / MLFLOW_S3_ENDPOINT_URL and fake credentials
  for this test (monkeypatch) → the `MotoS3`.
- `s3_bucket` (function): `s3_env` plus a fresh, uniquely named bucket → its name.
- `mlflow_server` (session): `mlflow server --workers 1`, SQLite backend in a tmp dir,
  `--serve-artifacts --artifacts-destination s3://<bucket>/mlartifacts` on moto → `MlflowServer`.
- `mlflow_env` (function): `s3_env` + MLFLOW_TRACKING_URI → the server's tracking URI.
- `label_studio` (session): `label-studio start` from its own virtualenv (.venv-ls, made by
  scripts/setup.sh: its pinned Django stack stays out of samseg's), SQLite in a tmp dir, a user
  and a legacy API token → `LabelStudioServer` (.url, .token).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-not-real",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gone(proc: subprocess.Popen | int | None) -> bool:
    if isinstance(proc, subprocess.Popen):
        return proc.poll() is not None
    if isinstance(proc, int):  # a shared server's process group, maybe another process's child
        try:
            os.killpg(proc, 0)
        except ProcessLookupError:
            return True
    return False


def wait_http_ok(url: str, timeout_s: float, proc: subprocess.Popen | int | None = None, log: Path | None = None) -> None:
    """Poll `url` until it answers 200; fail early (with the log tail) if `proc` (a process, or a
    process group id) is gone."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if _gone(proc):
            raise RuntimeError(f"server exited before {url} was up:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except Exception as exc:  # connection refused while starting
            last = exc
        time.sleep(0.3)
    raise RuntimeError(f"{url} not up after {timeout_s:.0f}s ({last}):\n{_tail(log)}")


@contextlib.contextmanager
def black_hole() -> Iterator[tuple[str, list[socket.socket]]]:
    """("http://127.0.0.1:PORT", the connections accepted so far): a peer that accepts every
    connection and never answers (a stalled server); everything is closed at the end."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(sock.accept()[0])  # held open, never answered
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", accepted
    finally:
        sock.close()
        for conn in accepted:
            conn.close()


def stop_process(proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """SIGTERM the process group we started, then SIGKILL what is left."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def stop_group(pgid: int, timeout_s: float = 20.0) -> None:
    """stop_process for a process group this process may not have started (a shared server)."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            with contextlib.suppress(ChildProcessError):
                os.waitpid(-pgid, os.WNOHANG)  # reap our own children of that group
            time.sleep(0.1)


def spawn(cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> subprocess.Popen:
    """A server process in its own process group (stop_process / stop_group ends it and what it
    started), its output in `log`; returned at once (wait_http_ok waits for it)."""
    with log.open("wb") as fh:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def launch(cmd: list[str], env: dict[str, str], log: Path, health_url: str, timeout_s: float,
           cwd: Path | None = None) -> subprocess.Popen:
    """spawn, returned once `health_url` answers 200, stopped if it never does."""
    proc = spawn(cmd, env, log, cwd)
    try:
        wait_http_ok(health_url, timeout_s, proc, log)
    except BaseException:
        stop_process(proc)
        raise
    return proc


def _tail(log: Path | None, n: int = 40) -> str:
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:])


@dataclass
class MotoS3:
    endpoint_url: str
    env: dict[str, str] = field(default_factory=dict)

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=FAKE_CREDENTIALS["AWS_DEFAULT_REGION"],
        )

    def make_bucket(self, name: str | None = None) -> str:
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        with contextlib.suppress(self.client().exceptions.BucketAlreadyOwnedByYou):
            self.client().create_bucket(Bucket=name)
        return name


def moto_of(url: str) -> MotoS3:
    env = {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": url, "MLFLOW_S3_ENDPOINT_URL": url}
    return MotoS3(endpoint_url=url, env=env)


def spawn_moto(workdir: Path) -> dict[str, Any]:
    """moto's S3 server as a process (`python -m moto.server`), so every test process can share it."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], dict(os.environ),
                 workdir / "moto.log")
    return {"pgid": proc.pid, "url": f"http://127.0.0.1:{port}", "health": f"http://127.0.0.1:{port}/moto-api/",
            "log": str(workdir / "moto.log")}


@dataclass
class MlflowServer:
    tracking_uri: str
    artifacts_destination: str
    workdir: Path
    log: Path
    proc: subprocess.Popen | None = None  # set where this process started it (start_mlflow)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


MLFLOW_BUCKET = "mlflow-artifacts"


def spawn_mlflow(workdir: Path, s3: MotoS3, bucket: str = MLFLOW_BUCKET) -> tuple[subprocess.Popen, dict[str, Any]]:
    """`mlflow server` subprocess: SQLite backend under `workdir`, artifacts proxied to moto S3."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    destination = f"s3://{bucket}/mlartifacts"
    log = workdir / "mlflow-server.log"
    env = {
        **os.environ,
        **s3.env,
        # No background job runner (it would spawn Huey workers) in a test server.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
        "--serve-artifacts", "--artifacts-destination", destination,
    ]  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    proc = spawn(cmd, env, log, cwd=workdir)
    return proc, {"pgid": proc.pid, "url": uri, "health": f"{uri}/health", "log": str(log),
                  "destination": destination, "workdir": str(workdir), "bucket": bucket}


def start_mlflow(workdir: Path, s3: MotoS3, bucket: str, timeout_s: float = 120.0) -> MlflowServer:
    """An MLflow server of the caller's own, up when returned (stop() ends it)."""
    proc, info = spawn_mlflow(workdir, s3, bucket)
    try:
        wait_http_ok(info["health"], timeout_s, proc, Path(info["log"]))
    except BaseException:
        stop_process(proc)
        raise
    return MlflowServer(info["url"], info["destination"], workdir, Path(info["log"]), proc)


REPO = Path(__file__).resolve().parents[1]
LABEL_STUDIO_BIN = Path(os.environ.get("SAMSEG_LABEL_STUDIO", REPO / ".venv-ls" / "bin" / "label-studio"))


@dataclass
class LabelStudioServer:
    url: str
    token: str
    log: Path


def spawn_label_studio(workdir: Path) -> dict[str, Any]:
    """`label-studio start` on 127.0.0.1:<free port>, SQLite under `workdir`, user + token made at start."""
    if not LABEL_STUDIO_BIN.is_file():
        raise RuntimeError(f"{LABEL_STUDIO_BIN} not found: scripts/setup.sh --test installs Label Studio into .venv-ls")
    workdir.mkdir(parents=True, exist_ok=True)
    port, token = free_port(), uuid.uuid4().hex
    log = workdir / "label-studio.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))}
    env.update(LABEL_STUDIO_BASE_DATA_DIR=str(workdir), SENTRY_DSN="", COLLECT_ANALYTICS="false",
               # the server's own credentials for an S3 source storage on moto, which listens on loopback:
               # Label Studio refuses storage endpoints on reserved addresses unless SSRF protection is off
               SSRF_PROTECTION_ENABLED="false", **FAKE_CREDENTIALS)
    cmd = [str(LABEL_STUDIO_BIN), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(port),
           "--data-dir", str(workdir / "data"), "--database", str(workdir / "label_studio.sqlite3"),
           "--username", "samseg@example.com", "--password", uuid.uuid4().hex, "--user-token", token,
           "--enable-legacy-api-token"]
    url = f"http://127.0.0.1:{port}"
    proc = spawn(cmd, env, log, cwd=workdir)
    return {"pgid": proc.pid, "url": url, "health": f"{url}/health", "log": str(log), "token": token}


# ---------------------------------------------------------------- shared servers
# One of each server per test session, whatever the number of pytest-xdist workers: the first
# process that needs it starts it (under a file lock in SHARED_ENV's folder, which the session's
# first process makes and its workers inherit) and records its address there; the others read
# it. They start in the background as soon as collection shows a test will need them
# (conftest.py), so a boot overlaps the tests that need none. The session's first process
# stops them all at its end (stop_shared).

SHARED_ENV = "SAMSEG_TEST_SHARED"


def _shared_dir() -> Path:
    return Path(os.environ[SHARED_ENV])


def shared(name: str, spawn_it: Any) -> dict[str, Any]:
    """The record of shared server `name` ({"url", "health", "pgid", ...}), spawned by
    `spawn_it(workdir)` if no process of this session has yet; not waited for."""
    from filelock import FileLock

    d = _shared_dir()
    with FileLock(str(d / f"{name}.lock")):
        record = d / f"{name}.json"
        if record.exists():
            return json.loads(record.read_text())
        info = spawn_it(d / name)
        record.write_text(json.dumps(info))
        return info


def up(name: str, spawn_it: Any, timeout_s: float) -> dict[str, Any]:
    """shared(), then waited for until its health URL answers."""
    info = shared(name, spawn_it)
    wait_http_ok(info["health"], timeout_s, info["pgid"], Path(info["log"]))
    return info


def stop_shared() -> None:
    """Stop every shared server this session started (its first process only)."""
    for record in sorted(_shared_dir().glob("*.json")):
        stop_group(int(json.loads(record.read_text())["pgid"]))


def _moto_info() -> dict[str, Any]:
    return shared("moto", spawn_moto)


def _mlflow_info() -> dict[str, Any]:
    s3 = moto_of(_moto_info()["url"])
    return shared("mlflow", lambda d: spawn_mlflow(d, s3)[1])


def _prefect_info() -> dict[str, Any]:
    from prefect_fixtures import spawn_prefect_server

    return shared("prefect", spawn_prefect_server)


SPAWNERS: dict[str, Any] = {  # by the marker names of conftest.SERVER_FIXTURES
    "s3": _moto_info,
    "mlflow": _mlflow_info,
    "labelstudio": lambda: shared("labelstudio", spawn_label_studio),
    "prefect": _prefect_info,
}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def label_studio() -> LabelStudioServer:
    info = up("labelstudio", spawn_label_studio, 240)
    return LabelStudioServer(info["url"], info["token"], Path(info["log"]))


@pytest.fixture(scope="session")
def moto_s3() -> MotoS3:
    return moto_of(up("moto", spawn_moto, 60)["url"])


@pytest.fixture
def s3_env(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> MotoS3:
    for key, value in moto_s3.env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    return moto_s3


@pytest.fixture
def s3_bucket(s3_env: MotoS3) -> str:
    return s3_env.make_bucket()


@pytest.fixture(scope="session")
def mlflow_server(moto_s3: MotoS3) -> MlflowServer:
    info = _mlflow_info()
    moto_s3.make_bucket(info["bucket"])
    wait_http_ok(info["health"], 180, info["pgid"], Path(info["log"]))
    return MlflowServer(info["url"], info["destination"], Path(info["workdir"]), Path(info["log"]))


@pytest.fixture
def mlflow_env(mlflow_server: MlflowServer, s3_env: MotoS3, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
    return mlflow_server.tracking_uri


@contextlib.contextmanager
def freezable(target_url: str) -> Iterator[tuple[str, Any]]:
    """("http://127.0.0.1:PORT", freeze): a TCP relay to `target_url` that, once freeze() is
    called, stops relaying: connections are still accepted and nothing is answered, as with a
    server stopped by SIGSTOP — without a server of the test's own."""
    from urllib.parse import urlsplit

    target = urlsplit(target_url)
    frozen = threading.Event()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    held: list[socket.socket] = []

    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while not frozen.is_set():
                data = src.recv(65536)
                if not data or frozen.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass

    def accept() -> None:
        while True:
            try:
                conn = listener.accept()[0]
            except OSError:
                return
            held.append(conn)
            if frozen.is_set():
                continue  # held open, never answered
            upstream = socket.create_connection((target.hostname, target.port))
            held.append(upstream)
            threading.Thread(target=pump, args=(conn, upstream), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, conn), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", frozen.set
    finally:
        listener.close()
        for conn in held:
            conn.close()
