"""Static checks of docker/ and deployments/prefect.yaml (no Docker engine or Prefect server here).

compose.yaml: every ${VAR} is defined in .env.example (and every defined var is used),
every build context / dockerfile / bind-mounted file exists, ports are published on
127.0.0.1 without clashes, depends_on names real services. prefect.yaml: the three
deployments exist, point at real flow functions, and the schedule is a valid cron.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
PREFECT_YAML = REPO / "deployments" / "prefect.yaml"

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}; "$$" is an escaped "$".
_VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:[:?\-+][^}]*)?\}")
_BARE_VAR = re.compile(r"(?<!\$)\$([A-Za-z_][A-Za-z0-9_]*)")


def _env_example() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: {line!r} is not KEY=VALUE"
            assert key not in out, f".env.example defines {key} twice"
            out[key] = value
    return out


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _compose_text_without_comment_lines() -> str:
    return "\n".join(line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#"))


def test_every_compose_variable_is_defined_and_used() -> None:
    text = _compose_text_without_comment_lines()
    used = set(_VAR.findall(text))
    bare = set(_BARE_VAR.findall(text))
    assert not bare, f"use ${{VAR}} (or $$ for a shell variable), not bare: {sorted(bare)}"
    env = _env_example()
    assert used, "compose.yaml references no variables?"
    assert not used - set(env), f"missing from .env.example: {sorted(used - set(env))}"
    assert not set(env) - used, f"defined but unused in compose.yaml: {sorted(set(env) - used)}"
    for key, value in env.items():
        assert value, f".env.example: {key} is empty"
        if "PASSWORD" in key:
            assert "change-me" in value, f"{key}: ship a placeholder, not a real password"


def test_compose_services_and_files() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"postgres", "prefect-server", "mlflow", "minio", "minio-init", "worker", "deploy"} <= set(services)
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            context = (COMPOSE.parent / build["context"]).resolve()
            assert context.is_dir(), f"{name}: build context {context} missing"
            dockerfile = context / build["dockerfile"]
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        assert "image" in svc or build, f"{name}: neither image nor build"
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0]
            if src.startswith((".", "/")):
                assert (COMPOSE.parent / src).exists(), f"{name}: bind mount {src} missing"
            else:
                assert src in (compose.get("volumes") or {}), f"{name}: named volume {src} not declared"
        deps = svc.get("depends_on") or {}
        for dep in deps:
            assert dep in services, f"{name}: depends on unknown service {dep}"
    # The image built by prefect-server is reused by mlflow/deploy: someone must build it.
    built = {s["image"] for s in services.values() if s.get("build")}
    for name, svc in services.items():
        if str(svc.get("image", "")).startswith("samseg-"):
            assert svc["image"] in built, f"{name}: image {svc['image']} is never built"


def test_compose_wiring() -> None:
    services = _compose()["services"]
    prefect_env = services["prefect-server"]["environment"]
    assert prefect_env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert "@postgres:5432/" in prefect_env["PREFECT_API_DATABASE_CONNECTION_URL"]
    mlflow_cmd = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri=postgresql://" in mlflow_cmd and "--artifacts-destination=s3://" in mlflow_cmd
    assert "--serve-artifacts" in mlflow_cmd
    worker = services["worker"]
    assert worker["command"][:5] == ["prefect", "worker", "start", "--pool", "samseg-gpu"]
    assert worker["command"][-2:] == ["--limit", "1"]  # one run at a time: shards spread over the GPU workers
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert worker["environment"]["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_ports_bind_localhost_without_clashes() -> None:
    env = _env_example()
    seen: dict[str, str] = {}
    for name, svc in _compose()["services"].items():
        for spec in svc.get("ports", []):
            resolved = _VAR.sub(lambda m: env[m.group(1)], str(spec))
            parts = resolved.split(":")
            assert len(parts) == 3, f"{name}: publish as HOST_IP:HOST_PORT:CONTAINER_PORT, got {spec}"
            ip, host_port, container_port = parts
            assert ip == "127.0.0.1", f"{name}: {spec} would expose the port beyond this machine"
            assert host_port.isdigit() and container_port.isdigit() and 0 < int(host_port) < 65536, spec
            assert host_port not in seen, f"host port {host_port} used by {seen.get(host_port)} and {name}"
            seen[host_port] = name
    assert "postgres" not in seen.values()  # the database is internal


@pytest.mark.parametrize("dockerfile", ["Dockerfile.worker", "Dockerfile.cpu"])
def test_dockerfiles(dockerfile: str) -> None:
    text = (DOCKER / dockerfile).read_text()
    assert (DOCKER / f"{dockerfile}.dockerignore").is_file(), "keep .venv and outputs out of the build context"
    assert re.search(r"^FROM ", text, re.M) and "pip install ." in text and "USER samseg" in text
    if dockerfile == "Dockerfile.worker":
        base = re.search(r"ARG PYTORCH_IMAGE=(\S+)", text)
        assert base and base.group(1).startswith("pytorch/pytorch:") and "cuda" in base.group(1)
        assert "runtime" in base.group(1)
        assert '"--pool", "samseg-gpu"' in text
    for src in re.findall(r"^COPY (\S+) ", text, re.M):
        assert (REPO / src).exists(), f"{dockerfile}: COPY source {src} missing"


# ---------------------------------------------------------------- deployments/prefect.yaml


def _prefect_yaml() -> dict[str, Any]:
    return yaml.safe_load(PREFECT_YAML.read_text())


def _module_functions(path: Path) -> set[str]:
    return {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_prefect_yaml_deployments_and_entrypoints() -> None:
    doc = _prefect_yaml()
    deployments = {d["name"]: d for d in doc["deployments"]}
    assert set(deployments) == {"nightly-batch", "segment", "recluster"}
    expected = {
        "nightly-batch": "flows/segment.py:segment_batch_flow",
        "segment": "flows/segment.py:segment_shard_flow",
        "recluster": "flows/recluster.py:recluster_flow",
    }
    for name, entry in expected.items():
        assert deployments[name]["entrypoint"] == entry
        path, _, func = entry.partition(":")
        assert (REPO / path).is_file(), f"{name}: {path} missing"
        assert func in _module_functions(REPO / path), f"{name}: {func} not defined in {path}"
    assert deployments["nightly-batch"]["parameters"]["source"].startswith("s3://")
    [schedule] = deployments["nightly-batch"]["schedules"]
    assert schedule["cron"] == "0 2 * * *" and schedule["timezone"] == "UTC"
    assert all(not deployments[n]["schedules"] for n in ("segment", "recluster"))
    for d in deployments.values():
        assert d["work_pool"]["name"] == "samseg-local"
    pools = doc["definitions"]["work_pools"]
    assert pools["gpu"]["name"] == "samseg-gpu"
    assert "CUDA_VISIBLE_DEVICES" in pools["gpu"]["job_variables"]["env"]
    [pull] = doc["pull"]
    assert pull["prefect.deployments.steps.set_working_directory"]["directory"] == "{{ $SAMSEG_PROJECT_DIR }}"


def test_prefect_yaml_is_understood_by_prefect() -> None:
    """Prefect's own schedule parsing, and the flow names the batch fan-out relies on."""
    from prefect.client.schemas.schedules import CronSchedule

    [schedule] = next(d for d in _prefect_yaml()["deployments"] if d["name"] == "nightly-batch")["schedules"]
    CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])

    import flows.recluster
    import flows.segment

    # segment_batch_flow fans its shards out to "<shard flow name>/segment"; it must be this file's deployment.
    from samseg.edges.run_schema import RECLUSTER_DEPLOYMENT, SEGMENT_DEPLOYMENT

    assert SEGMENT_DEPLOYMENT == f"{flows.segment.segment_shard_flow.name}/segment"
    assert RECLUSTER_DEPLOYMENT == f"{flows.recluster.recluster_flow.name}/recluster"  # the UI's --submit prefect default
    for fn in (flows.segment.segment_batch_flow, flows.segment.segment_shard_flow, flows.segment.segment_image_flow,
               flows.recluster.recluster_flow):
        assert hasattr(fn, "deploy") and hasattr(fn, "name"), f"{fn} is not a Prefect flow"
