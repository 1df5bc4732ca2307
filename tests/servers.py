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


def wait_http_ok(url: str, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll `url` until it answers 200; fail early (with the log tail) if `proc` dies."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} was up:\n{_tail(log)}")
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


def launch(cmd: list[str], env: dict[str, str], log: Path, health_url: str, timeout_s: float,
           cwd: Path | None = None) -> subprocess.Popen:
    """A server process in its own process group (stop_process ends it and what it started),
    its output in `log`; returned once `health_url` answers 200, stopped if it never does."""
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
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
    server: Any
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
        self.client().create_bucket(Bucket=name)
        return name


def start_moto() -> MotoS3:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint}
    return MotoS3(server=server, endpoint_url=endpoint, env=env)


@dataclass
class MlflowServer:
    proc: subprocess.Popen
    tracking_uri: str
    artifacts_destination: str
    workdir: Path
    log: Path

    def stop(self) -> None:
        stop_process(self.proc)


def start_mlflow(workdir: Path, s3: MotoS3, bucket: str, timeout_s: float = 120.0) -> MlflowServer:
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
    return MlflowServer(launch(cmd, env, log, f"{uri}/health", timeout_s, cwd=workdir), uri, destination, workdir, log)


REPO = Path(__file__).resolve().parents[1]
LABEL_STUDIO_BIN = Path(os.environ.get("SAMSEG_LABEL_STUDIO", REPO / ".venv-ls" / "bin" / "label-studio"))


@dataclass
class LabelStudioServer:
    proc: subprocess.Popen
    url: str
    token: str
    log: Path

    def stop(self) -> None:
        stop_process(self.proc)


def start_label_studio(workdir: Path, timeout_s: float = 180.0) -> LabelStudioServer:
    """`label-studio start` on 127.0.0.1:<free port>, SQLite under `workdir`, user + token made at start."""
    if not LABEL_STUDIO_BIN.is_file():
        raise RuntimeError(f"{LABEL_STUDIO_BIN} not found: scripts/setup.sh installs Label Studio into .venv-ls")
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
    return LabelStudioServer(launch(cmd, env, log, f"{url}/health", timeout_s, cwd=workdir), url, token, log)


# ---------------------------------------------------------------- fixtures


def serving(server: Any) -> Iterator[Any]:
    """A session fixture's body: yield the started server, stop it when the session ends."""
    try:
        yield server
    finally:
        server.stop()



@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    yield from serving(start_label_studio(tmp_path_factory.mktemp("label-studio")))



@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    s3 = start_moto()
    try:
        yield s3
    finally:
        s3.server.stop()


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
def mlflow_server(moto_s3: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    bucket = moto_s3.make_bucket("mlflow-artifacts")
    yield from serving(start_mlflow(tmp_path_factory.mktemp("mlflow"), moto_s3, bucket))


@pytest.fixture
def mlflow_env(mlflow_server: MlflowServer, s3_env: MotoS3, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
    return mlflow_server.tracking_uri
