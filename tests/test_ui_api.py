"""Web UI API tests (FastAPI TestClient) over synthetic runs logged to a real local MLflow
store (SQLite in a tmp dir).

The synthetic run has KNOWN structure — 12 rectangle masks whose embeddings form two tight
groups (6 and 4 masks) plus 2 outliers — so clustering results are predictable without a
real SAM: DBSCAN(cosine, eps 0.06, min_samples 3) gives 2 clusters + 2 noise; eps 1.5
puts everything in one cluster.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from fastapi.testclient import TestClient

from samseg.core.config import SMOKE
from ui_synthetic import GROUP_A, GROUP_B, OUTLIERS, H, W, sqlite_store, write_image_outputs
from mlflow_store import sqlite_uri

EXPERIMENT = "ui-test"


def _log_synthetic_run(tmp: Path, name: str, image_path: Path) -> str:
    from samseg.edges.mlflow.tracking import log_image_run

    out = tmp / "out" / name
    summary = write_image_outputs(out, image_path)
    return log_image_run(out, summary, experiment=EXPERIMENT, run_name=name)


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory):
    """SQLite MLflow store with two synthetic image runs; yields (tmp, run_a, run_b)."""
    tmp = tmp_path_factory.mktemp("ui")
    mp = pytest.MonkeyPatch()
    paths = sqlite_store(tmp, EXPERIMENT, mp)
    run_a = _log_synthetic_run(tmp, "alpha", paths[0])
    run_b = _log_synthetic_run(tmp, "beta", paths[1])
    yield tmp, run_a, run_b
    mp.undo()


@pytest.fixture
def client(mlflow_store, monkeypatch):
    from samseg.apps.ui import UiSettings, create_app

    tmp, _, _ = mlflow_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri(tmp / 'mlflow.db'))
    monkeypatch.setenv("SAMSEG_CACHE", str(tmp / "stage-cache"))
    app = create_app(UiSettings(experiment=EXPERIMENT, cache_dir=tmp / "ui-cache", stage_cache=str(tmp / "stage-cache")))
    with TestClient(app) as c:
        yield c


def _wait_job(client: TestClient, job: dict, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while job["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"job did not finish: {job}"
        time.sleep(0.05)
        job = client.get(f"/api/jobs/{job['id']}").json()
    return job


# ------------------------------------------------------------------ listing
def test_list_runs_and_filter(client, mlflow_store):
    _, run_a, run_b = mlflow_store
    runs = client.get("/api/runs").json()["runs"]
    ids = {r["run_id"] for r in runs}
    assert {run_a, run_b} <= ids
    row = next(r for r in runs if r["run_id"] == run_a)
    assert row["image"] == "alpha.png"
    assert row["model"] == "tiny-random" and row["algorithm"] == "dbscan"
    assert row["eps"] == "0.06" and row["min_samples"] == "3"
    assert row["n_clusters"] == 2 and row["n_noise"] == 2 and row["n_masks"] == 12
    assert row["time"] and row["thumb_url"].endswith("/thumb.png")
    only_beta = client.get("/api/runs", params={"image": "BETA"}).json()["runs"]
    assert {r["run_id"] for r in only_beta} == {run_b}


def test_runs_page_html_and_thumbnail(client, mlflow_store):
    _, run_a, _ = mlflow_store
    page = client.get("/", headers={"accept": "text/html"})
    assert page.status_code == 200 and "alpha.png" in page.text and run_a in page.text
    thumb = client.get(f"/runs/{run_a}/files/thumb.png")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    empty = client.get("/", params={"experiment": "no-such-experiment"}, headers={"accept": "text/html"})
    assert empty.status_code == 200 and "No image runs" in empty.text


def test_run_detail(client, mlflow_store):
    _, run_a, _ = mlflow_store
    d = client.get(f"/api/runs/{run_a}").json()
    assert [c["n_masks"] for c in d["classes"]] == [6, 4]
    assert d["noise"] == OUTLIERS
    assert len(d["masks"]) == 12 and d["masks"][0]["area"] == 256
    assert {m["cluster"] for m in d["masks"]} == {-1, 0, 1}
    assert d["form"]["eps"] == 0.06 and d["form"]["cell_rule"] == "min_pixels"
    page = client.get(f"/runs/{run_a}", headers={"accept": "text/html"})
    assert page.status_code == 200 and "class 0 (6 masks)" in page.text and "noise (2 masks)" in page.text
    for url in ("/files/overlay.png", "/files/classes/class_1.png", "/highlight.png?masks=10,11"):
        r = client.get(f"/runs/{run_a}{url}")
        assert r.status_code == 200 and r.content[:4] == b"\x89PNG", url
    r = client.get(f"/runs/{run_a}/files/input.jpg")
    assert r.status_code == 200 and r.content[:3] == b"\xff\xd8\xff"


def test_unknown_run_is_404_with_message(client):
    r = client.get("/api/runs/0123456789abcdef0123456789abcdef")
    assert r.status_code == 404 and "not found" in r.json()["detail"]
    page = client.get("/runs/0123456789abcdef0123456789abcdef", headers={"accept": "text/html"})
    assert page.status_code == 404 and "not found" in page.text and "<html" in page.text
    r = client.post("/api/runs/0123456789abcdef0123456789abcdef/rerun", json={"eps": 0.1})
    assert r.status_code == 404 and "not found" in r.json()["detail"]


def test_a_run_id_prefix_opens_its_run_page(client, mlflow_store):
    """The runs list shows 8 characters of an id, as the CLI prints and takes them: /runs/<prefix>
    is that run's page; a prefix of no run, or not an id at all, is a 404 that says so."""
    _, run_a, _ = mlflow_store
    page = client.get(f"/runs/{run_a[:8]}", headers={"accept": "text/html"})
    assert page.status_code == 200 and str(page.url).endswith(f"/runs/{run_a}") and "alpha.png" in page.text
    none = "f" * 8 if not run_a.startswith("ffff") else "0" * 8
    page = client.get(f"/runs/{none}", headers={"accept": "text/html"})
    assert page.status_code == 404 and f"no MLflow run id starts with {none} in this UI" in page.text
    page = client.get("/runs/not-an-id", headers={"accept": "text/html"})
    assert page.status_code == 404 and "not found" in page.text


# ------------------------------------------------------------------- rerun
@pytest.mark.parametrize(
    "form, field, message",
    [
        ({"eps": 0}, "eps", "eps must be > 0"),
        ({"eps": -0.5}, "eps", "eps must be > 0"),
        ({"eps": "abc"}, "eps", "eps must be a number"),
        ({"min_samples": 0}, "min_samples", "min_samples must be >= 1"),
        ({"min_samples": 2.5}, "min_samples", "min_samples must be a whole number"),
        ({"algorithm": "kmeans"}, "algorithm", "algorithm must be one of"),
        ({"metric": "hamming"}, "metric", "metric 'hamming' is not supported"),
        ({"min_coverage": 0}, "min_coverage", "min_coverage must be in (0, 1]"),
        ({"weighting": "max"}, "weighting", "weighting must be uniform or coverage"),
        ({"colour": "red"}, "colour", "unknown field"),
    ],
)
def test_rerun_validation(client, mlflow_store, form, field, message):
    _, run_a, _ = mlflow_store
    r = client.post(f"/api/runs/{run_a}/rerun", json=form)
    assert r.status_code == 422
    assert r.json()["errors"][field].startswith(message)  # in the field's words: "eps …", not "cluster.eps …"


def test_rerun_reports_every_bad_field(client, mlflow_store):
    _, run_a, _ = mlflow_store
    errors = client.post(f"/api/runs/{run_a}/rerun", json={"eps": "0", "min_samples": "0", "algorithm": "x"}).json()["errors"]
    assert set(errors) == {"eps", "min_samples", "algorithm"}


def test_rerun_logs_new_run_with_parent(client, mlflow_store):
    from mlflow import MlflowClient

    tmp, run_a, _ = mlflow_store
    job = client.post(f"/api/runs/{run_a}/rerun", json={"eps": "1.5", "min_samples": "3"})
    assert job.status_code == 202
    done = _wait_job(client, job.json())
    assert done["state"] == "done", done
    res = done["result"]
    assert res["n_clusters"] == 1 and res["n_noise"] == 0 and res["parent_run_id"] == run_a
    run = MlflowClient(sqlite_uri(tmp / 'mlflow.db')).get_run(res["run_id"])
    assert run.data.tags["samseg.parent_run_id"] == run_a
    assert run.data.tags["samseg.kind"] == "recluster"
    assert run.data.params["cluster.eps"] == "1.5"
    assert run.data.metrics["n_clusters"] == 1.0
    assert client.get(res["overlay_url"]).status_code == 200
    assert res["run_id"] in {r["run_id"] for r in client.get("/api/runs").json()["runs"]}


def test_pool_change_without_cached_features_fails_clearly(client, mlflow_store):
    _, run_a, _ = mlflow_store
    done = _wait_job(client, client.post(f"/api/runs/{run_a}/rerun", json={"weighting": "coverage"}).json())
    assert done["state"] == "failed"
    assert "encoder features" in done["error"] and "stage cache" in done["error"]


def test_pool_change_uses_cached_encoder_features(client, mlflow_store):
    """With the image's C×64×64 features in the stage cache, a pooling change re-pools
    (no encoder/AMG) and logs the new pool config."""
    from samseg.edges.cache import StageCache
    from samseg.engine.stages import stage_key
    from samseg.edges.images import load_image
    from samseg.core.types import EncodedImage, ImageGeometry

    tmp, run_a, _ = mlflow_store
    image = load_image(tmp / "images" / "alpha.png")
    geom = ImageGeometry.for_image(image.hw)
    feats = np.random.default_rng(2).normal(size=(8, 64, 64)).astype(np.float32)
    key = stage_key("encode", image.sha256, "c" * 64, SMOKE)
    StageCache(str(tmp / "stage-cache")).save("encode", key, "encoded", EncodedImage(feats, geom))
    done = _wait_job(client, client.post(f"/api/runs/{run_a}/rerun", json={"weighting": "coverage", "cell_rule": "min_coverage"}).json())
    assert done["state"] == "done", done
    d = client.get(f"/api/runs/{done['result']['run_id']}").json()
    assert d["form"]["weighting"] == "coverage" and d["form"]["cell_rule"] == "min_coverage"


def test_rerun_with_another_backbone_repools_in_the_background(client, mlflow_store, monkeypatch):
    """The rerun form's `features`: the run's masks, re-pooled from the tiny-random backbone (a
    background job computing its features); the new run records the backbone, the page shows it."""
    from mlflow import MlflowClient

    monkeypatch.setenv("SAMSEG_HOME", str(mlflow_store[0] / "home"))
    tmp, run_a, _ = mlflow_store
    page = client.get(f"/runs/{run_a}").text
    assert '<b id="features">sam</b>' in page and '<option value="tiny-random">tiny-random</option>' in page
    done = _wait_job(client, client.post(f"/api/runs/{run_a}/rerun", json={"features": "tiny-random", "eps": "0.5"}).json())
    assert done["state"] == "done", done
    new = done["result"]["run_id"]
    run = MlflowClient(sqlite_uri(tmp / 'mlflow.db')).get_run(new)
    assert run.data.params["features.name"] == "tiny-random" and len(run.data.tags["samseg.features_sha256"]) == 64
    assert client.get(f"/api/runs/{new}").json()["form"]["features"] == "tiny-random"
    assert '<b id="features">tiny-random</b>' in client.get(f"/runs/{new}").text


def test_rerun_with_an_unknown_backbone_is_a_field_error(client, mlflow_store):
    _, run_a, _ = mlflow_store
    r = client.post(f"/api/runs/{run_a}/rerun", json={"features": "dinov9"})
    assert r.status_code == 422 and "unknown feature backbone 'dinov9'" in r.json()["errors"]["features"]


def test_the_eps_a_person_sets_is_the_eps_a_saved_run_uses_also_under_eps_auto(mlflow_store) -> None:
    """The form's values go through samseg.core.config.override, as the CLI's flags do: on a run
    made with --eps auto, an eps from the slider turns auto off — the saved run clusters with the
    eps the preview showed, not with a knee chosen again — and the form starts at the eps the run used."""
    from samseg.apps.ui.actions import form_defaults
    from samseg.apps.ui.validation import validate_cluster_form, validate_rerun_form
    from samseg.core.config import DEFAULT, configure

    assert DEFAULT.cluster.eps_auto
    new = validate_rerun_form({"eps": 0.1, "min_samples": 3}, DEFAULT)
    assert new == configure(eps=0.1, min_samples=3)  # the CLI's `--eps 0.1 --min-samples 3`
    assert (new.cluster.eps, new.cluster.eps_auto) == (0.1, False)
    assert validate_cluster_form({"eps": 0.1}, DEFAULT) == configure(eps=0.1).cluster
    form = form_defaults(DEFAULT, {"eps_auto": {"requested": "auto", "rule": "knee", "k": 8, "eps": 0.0421}})
    assert form["eps"] == 0.0421


# ------------------------------------------------------------- exemplar
def test_exemplar_query_and_save_class(client, mlflow_store):
    from mlflow import MlflowClient

    tmp, run_a, _ = mlflow_store
    # Centre of mask 7 (row 1, col 1) → the group-B masks only.
    r = client.post(f"/api/runs/{run_a}/query", json={"x": 24, "y": 24, "max_distance": 0.05, "scope": "image"})
    assert r.status_code == 200
    q = r.json()
    assert q["mask"] == 7 and q["results"][0]["indices"] == GROUP_B
    assert client.get(q["results"][0]["highlight_url"]).status_code == 200
    miss = client.post(f"/api/runs/{run_a}/query", json={"x": 500, "y": 5, "max_distance": 0.05}).json()
    assert miss["mask"] is None and "no mask" in miss["message"]
    bad = client.post(f"/api/runs/{run_a}/query", json={"x": 1, "y": 1, "max_distance": 5, "scope": "world"})
    assert bad.status_code == 422 and set(bad.json()["errors"]) == {"max_distance", "scope"}
    job = client.post("/api/classes", json={"source_run_id": run_a, "mask": 7, "max_distance": 0.05,
                                            "selections": [{"run_id": run_a, "indices": GROUP_B}]})
    assert job.status_code == 202
    done = _wait_job(client, job.json())
    assert done["state"] == "done", done
    saved = done["result"][0]
    run = MlflowClient(sqlite_uri(tmp / 'mlflow.db')).get_run(saved["run_id"])
    assert run.data.tags["samseg.exemplar"] == "true" and run.data.tags["samseg.parent_run_id"] == run_a
    assert next(r for r in client.get("/api/runs").json()["runs"] if r["run_id"] == saved["run_id"])["kind"] == "exemplar"
    d = client.get(f"/api/runs/{saved['run_id']}").json()
    assert [c["n_masks"] for c in d["classes"]] == [4] and len(d["noise"]) == 8


def test_exemplar_batch_scope_searches_other_runs(client, mlflow_store):
    _, run_a, run_b = mlflow_store
    q = client.post(f"/api/runs/{run_a}/query", json={"x": 8, "y": 8, "max_distance": 0.05, "scope": "batch"}).json()
    by_run = {r["run_id"]: r["indices"] for r in q["results"]}
    assert by_run[run_a] == GROUP_A and by_run[run_b] == GROUP_A


def test_save_class_rejects_bad_indices(client, mlflow_store):
    _, run_a, _ = mlflow_store
    r = client.post("/api/classes", json={"selections": [{"run_id": run_a, "indices": [99]}]})
    assert r.status_code == 422 and "out of range" in r.json()["detail"]


# -------------------------------------------------------------- compare
def test_compare(client, mlflow_store):
    _, run_a, run_b = mlflow_store
    data = client.get("/api/compare", params={"runs": f"{run_a},{run_b}"}).json()
    assert [r["run_id"] for r in data["runs"]] == [run_a, run_b]
    assert "run_id" in data["columns"] and "n_clusters" in data["columns"]
    page = client.get("/compare", params={"runs": f"{run_a},{run_b}"}, headers={"accept": "text/html"})
    assert page.status_code == 200 and "compare-table" in page.text
    assert client.get("/api/compare", params={"runs": run_a}).status_code == 400
    assert client.get("/api/compare", params={"runs": f"{run_a},0123456789abcdef0123456789abcdef"}).status_code == 404


# ------------------------------------------------------------- safety
TRAVERSALS = [
    "../summary.json",
    "../../mlflow.db",
    "..%2f..%2fmlflow.db",
    "%2e%2e/%2e%2e/mlflow.db",
    "%252e%252e/mlflow.db",
    "classes/../../mlflow.db",
    "..\\..\\mlflow.db",
    "..%5c..%5cmlflow.db",
    "/etc/passwd",
    "%2fetc%2fpasswd",
    "C:\\Windows\\win.ini",
    "masks.parquet",  # a real artifact, but not one the UI serves
    "embeddings.npy",
    ".ui/thumb.png",
    "input.png",
    "overlay.png%00.txt",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_is_refused(client, mlflow_store, path):
    _, run_a, _ = mlflow_store
    r = client.get(f"/runs/{run_a}/files/{path}")
    assert r.status_code == 404, (path, r.status_code)
    assert b"SQLite format" not in r.content and b"root:" not in r.content


def test_traversal_in_run_id_is_refused(client):
    for rid in ("..", "..%2f..", "%2e%2e", "a b", "x" * 65):
        r = client.get(f"/api/runs/{rid}")
        assert r.status_code == 404, rid


def test_loopback_host_check_blocks_dns_rebinding(mlflow_store, monkeypatch):
    from samseg.apps.ui import UiSettings, create_app

    tmp, _, _ = mlflow_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri(tmp / 'mlflow.db'))
    app = create_app(UiSettings(experiment=EXPERIMENT, cache_dir=tmp / "ui-cache", allowed_hosts=("127.0.0.1", "localhost")))
    with TestClient(app, base_url="http://127.0.0.1:8765") as c:
        assert c.get("/api/runs").status_code == 200
        assert c.get("/api/runs", headers={"host": "evil.example:8765"}).status_code == 400


def test_mlflow_links_never_carry_credentials():
    from samseg.apps.ui.service import _link_base

    assert _link_base("https://bob:hunter2@mlflow.example:5000/?token=abc") == "https://mlflow.example:5000"
    assert _link_base("http://127.0.0.1:5000/") == "http://127.0.0.1:5000"


def test_check_artifact_path_unit():
    from samseg.apps.ui.guards import UnsafePathError, check_artifact_path

    assert check_artifact_path("classes/class_3.png") == "classes/class_3.png"
    assert check_artifact_path("classes/class_3-dining-table.png") == "classes/class_3-dining-table.png"
    for bad in ("classes/class_3-../x.png", "classes/class_3-Road.png", "classes/class_3-a/b.png"):
        with pytest.raises(UnsafePathError):
            check_artifact_path(bad)
    for bad in ("../overlay.png", "classes/../overlay.png", "/overlay.png", "overlay.png/", "classes\\class_1.png", "%2e%2e/x", ""):
        with pytest.raises(UnsafePathError):
            check_artifact_path(bad)


def test_token_enforcement(mlflow_store, monkeypatch):
    from samseg.apps.ui import UiSettings, create_app

    tmp, run_a, _ = mlflow_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri(tmp / 'mlflow.db'))
    app = create_app(UiSettings(experiment=EXPERIMENT, cache_dir=tmp / "ui-cache", token="s3cret-token"))
    with TestClient(app) as c:
        for url in ("/api/runs", "/", f"/runs/{run_a}/files/overlay.png", "/static/app.js", "/healthz"):
            assert c.get(url).status_code == 401, url
        assert c.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/runs", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        assert c.get("/api/runs?token=wrong", follow_redirects=False).status_code == 401
        r = c.get("/?token=s3cret-token&image=alpha", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/?image=alpha"
        assert "httponly" in r.headers["set-cookie"].lower()
        assert c.get("/api/runs").status_code == 200  # the cookie now authorises
        c.cookies.clear()
        assert c.get("/api/runs").status_code == 401
        page = c.get("/", headers={"accept": "text/html"})
        assert page.status_code == 401 and "token" in page.text


# ------------------------------------------------------------------ CLI
def test_the_uis_server_tells_samsegs_stop_handling_the_signal_it_takes(monkeypatch):
    """uvicorn takes SIGINT/SIGTERM itself; samseg's stop handling must hear it, so that a job's
    loop stops at its next image (shutdown.check) and the command exits 143 for SIGTERM."""
    import signal

    import uvicorn

    from samseg.apps.cli import ui as cli_ui
    from samseg.edges import shutdown

    monkeypatch.setattr(shutdown, "_received", [])  # this process's later tests must not see a stop requested
    monkeypatch.setattr(shutdown, "_deadline", lambda: None)  # the stop's deadline would end this test process
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: self.handle_exit(signal.SIGTERM, None))
    cli_ui.serve(object(), host="127.0.0.1", port=9)
    assert shutdown.requested() and shutdown.exit_code() == 143


def test_cli_defaults_and_public_bind_warning(monkeypatch, capsys, tmp_path):
    import argparse

    from samseg.apps.cli import ui as cli_ui

    parser = argparse.ArgumentParser()
    cli_ui.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["ui"])
    assert (args.host, args.port) == ("127.0.0.1", 8765)
    import samseg.apps.ui

    calls, built = [], []
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    from mlflow import MlflowClient

    MlflowClient().search_experiments()  # the store exists: `samseg ui` refuses a URI without a database
    monkeypatch.setattr(cli_ui, "_check_port_free", lambda host, port: None)  # no real port here (tested on its own)
    monkeypatch.setattr(cli_ui, "serve", lambda app, **kw: calls.append(kw))
    monkeypatch.setattr(samseg.apps.ui, "create_app", lambda settings: built.append(settings) or object())
    monkeypatch.delenv("SAMSEG_UI_TOKEN", raising=False)
    assert args.handler(args) == 0
    assert calls[-1]["host"] == "127.0.0.1" and "WARNING" not in capsys.readouterr().err
    assert built[-1].experiment == "samseg" and built[-1].token is None and built[-1].submit == "auto"
    assert "127.0.0.1" in built[-1].allowed_hosts and "localhost" in built[-1].allowed_hosts
    args = parser.parse_args(["ui", "--host", "0.0.0.0", "--port", "9999", "--ui-cache", str(tmp_path)])
    assert args.handler(args) == 0
    err = capsys.readouterr().err
    assert calls[-1] == {"host": "0.0.0.0", "port": 9999, "log_level": "warning"}
    assert "WARNING" in err and "SAMSEG_UI_TOKEN" in err
    assert built[-1].allowed_hosts is None
    from samseg.core.errors import UsageError

    with pytest.raises(UsageError, match="not a TCP port"):  # main prints it with the usage, exit 2
        args.handler(parser.parse_args(["ui", "--port", "0"]))
    monkeypatch.setenv("SAMSEG_UI_TOKEN", "tok")
    args = parser.parse_args(["ui", "--host", "0.0.0.0"])
    assert args.handler(args) == 0
    assert built[-1].token == "tok" and "set SAMSEG_UI_TOKEN" not in capsys.readouterr().err
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with pytest.raises(UsageError, match="needs PREFECT_API_URL"):
        args.handler(parser.parse_args(["ui", "--submit", "prefect"]))


# -------------------------------------------------------------- Prefect
def test_use_prefect_decision(monkeypatch):
    from samseg.apps.ui import prefect_submit
    from samseg.apps.ui.service import RunDataError

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert prefect_submit.use_prefect("auto", False, "recluster/recluster") is False
    assert prefect_submit.use_prefect("local", False, "x/y") is False
    with pytest.raises(RunDataError, match="PREFECT_API_URL"):
        prefect_submit.use_prefect("prefect", False, "x/y")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:1/api")
    assert prefect_submit.use_prefect("prefect", True, "x/y") is False  # pooling changes stay local
    monkeypatch.setattr(prefect_submit, "deployment_exists", lambda name: name == "recluster/recluster")
    assert prefect_submit.use_prefect("auto", False, "recluster/recluster") is True
    assert prefect_submit.use_prefect("auto", False, "other/one") is False


def test_rerun_through_prefect_deployment(client, mlflow_store, monkeypatch):
    """The Prefect path with run_deployment stubbed (a real server + worker is
    tests/test_scaleout.py's job): parameters sent, and the new MLflow run found by its
    samseg.prefect_flow_run_id tag."""
    import types
    import uuid

    import prefect.deployments
    from mlflow import MlflowClient

    from samseg.apps.ui import actions, prefect_submit

    tmp, run_a, _ = mlflow_store
    store = client.app.state.store
    sent = {}

    def fake_run_deployment(name, parameters, **kw):
        from samseg.core.config import ClusterConfig

        sent.update(name=name, parameters=parameters)
        fr_id = str(uuid.uuid4())
        res = actions.rerun(store, parameters["run_id"], ClusterConfig(**parameters["cluster"]), actions.run_config(store, run_a).pool, lambda s: None)
        MlflowClient(sqlite_uri(tmp / 'mlflow.db')).set_tag(res["run_id"], "samseg.prefect_flow_run_id", fr_id)
        state = types.SimpleNamespace(is_completed=lambda: True, name="Completed", message="")
        return types.SimpleNamespace(id=fr_id, name="fake-run", state=state)

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:1/api")
    monkeypatch.setattr(prefect_submit, "deployment_exists", lambda name: True)
    monkeypatch.setattr(prefect.deployments, "run_deployment", fake_run_deployment)
    done = _wait_job(client, client.post(f"/api/runs/{run_a}/rerun", json={"eps": "1.5"}).json())
    assert done["state"] == "done", done
    assert done["result"]["via"] == "prefect" and done["result"]["n_clusters"] == 1
    assert sent["name"] == "recluster/recluster"
    assert sent["parameters"]["run_id"] == run_a and sent["parameters"]["cluster"]["eps"] == 1.5
    assert sent["parameters"]["experiment"] == EXPERIMENT


# ------------------------------------------- real mlflow server, S3 artifacts
@pytest.mark.integration
def test_ui_over_mlflow_server_with_s3_artifacts(mlflow_env, tmp_path, monkeypatch):
    """The same UI over `mlflow server` (artifacts proxied to moto S3): listing, run page,
    artifact download, a rerun logged back to the server, and links to the MLflow UI."""
    from PIL import Image

    from samseg.apps.ui import UiSettings, create_app

    img = tmp_path / "gamma.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(img)
    run_id = _log_synthetic_run(tmp_path, "gamma", img)
    app = create_app(UiSettings(experiment=EXPERIMENT, cache_dir=tmp_path / "ui-cache", submit="local"))
    with TestClient(app) as c:
        row = next(r for r in c.get("/api/runs").json()["runs"] if r["run_id"] == run_id)
        assert row["mlflow_url"].startswith(mlflow_env.rstrip("/") + "/#/experiments/")
        assert [k["n_masks"] for k in c.get(f"/api/runs/{run_id}").json()["classes"]] == [6, 4]
        assert c.get(f"/runs/{run_id}/files/overlay.png").content[:4] == b"\x89PNG"
        done = _wait_job(c, c.post(f"/api/runs/{run_id}/rerun", json={"eps": "1.5"}).json())
        assert done["state"] == "done", done
        assert c.get(f"/api/runs/{done['result']['run_id']}").json()["run"]["parent_run_id"] == run_id


# ------------------------------------------------------------------ live preview
def test_preview_answers_png_with_counts_and_creates_no_run(client, mlflow_store):
    import io

    from PIL import Image

    _, run_a, _ = mlflow_store
    before = {r["run_id"] for r in client.get("/api/runs").json()["runs"]}
    r = client.post(f"/api/runs/{run_a}/preview", json={"eps": 1.5, "min_samples": 3})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert (r.headers["X-Samseg-Clusters"], r.headers["X-Samseg-Noise"]) == ("1", "0")  # as the saved rerun gives
    img = Image.open(io.BytesIO(r.content))
    assert img.size == (W, H) and max(img.size) <= 1024
    same = client.post(f"/api/runs/{run_a}/preview", json={})  # missing keys keep the run's values
    detail = client.get(f"/api/runs/{run_a}").json()
    assert int(same.headers["X-Samseg-Clusters"]) == len(detail["classes"])
    assert {r["run_id"] for r in client.get("/api/runs").json()["runs"]} == before  # nothing logged


@pytest.mark.parametrize("body, field", [({"eps": 0}, "eps"), ({"eps": "nan"}, "eps"), ({"min_samples": 1.5}, "min_samples"),
                                         ({"algorithm": "kmeans"}, "algorithm"), ({"weighting": "coverage"}, "weighting"),
                                         ({"eps": True}, "eps")])
def test_preview_bad_value_is_422_naming_the_field(client, mlflow_store, body, field):
    _, run_a, _ = mlflow_store
    r = client.post(f"/api/runs/{run_a}/preview", json=body)
    assert r.status_code == 422 and field in r.json()["errors"]


def test_preview_of_unknown_run_is_404(client):
    assert client.post("/api/runs/" + "f" * 32 + "/preview", json={}).status_code == 404


def test_sweep_api_gives_rows_curve_and_knee(client, mlflow_store):
    _, run_a, _ = mlflow_store
    rep = client.get(f"/api/runs/{run_a}/sweep", params={"eps_range": "0.1:1.0:0.1"}).json()
    assert [round(r["eps"], 3) for r in rep["rows"]] == [round(0.1 * i, 3) for i in range(1, 11)]
    assert rep["n_masks"] == len(rep["kdist"]) or len(rep["kdist"]) <= 400
    assert rep["kdist"] == sorted(rep["kdist"])
    bad = client.get(f"/api/runs/{run_a}/sweep", params={"eps_range": "1:0:1"})
    assert bad.status_code == 422 and "eps_range" in bad.json()["errors"]


def test_the_sweep_of_the_form_uses_its_min_samples_and_metric_not_the_runs(client, mlflow_store):
    """The chart's curve, knee and rows are for the settings the click on it will set an eps beside."""
    _, run_a, _ = mlflow_store
    own = client.get(f"/api/runs/{run_a}/sweep").json()
    form = {"min_samples": own["min_samples"] + 1, "metric": "euclidean" if own["metric"] != "euclidean" else "cosine"}
    rep = client.post(f"/api/runs/{run_a}/sweep", json=form).json()
    assert (rep["min_samples"], rep["metric"]) == (form["min_samples"], form["metric"])
    assert rep["kdist"] != own["kdist"]  # another k and metric: another k-distance curve
    bad = client.post(f"/api/runs/{run_a}/sweep", json={"min_samples": 0})
    assert bad.status_code == 422 and "min_samples" in bad.json()["errors"]


@pytest.mark.parametrize("edits, message", [
    (None, "edits must be a list"),
    ([{"op": "explode", "classes": [0]}], "op must be one of"),
    ([{"op": "merge", "classes": [0, 0]}], "distinct class ids"),
    ([{"op": "rename", "classes": [0], "name": "road\x1b[2J"}], "printable characters"),
    ([{"op": "split", "classes": [0], "eps": -1}], "split eps must be a number > 0"),
])
def test_attack_bad_class_edits_are_one_line_and_no_job(client, mlflow_store, edits, message):
    _, run_a, _ = mlflow_store
    resp = client.post(f"/api/runs/{run_a}/classes", json={"edits": edits})
    assert resp.status_code == 422 and message in resp.json()["detail"]


def test_class_edits_of_a_class_the_run_lacks_fail_as_a_job_in_one_line(client, mlflow_store):
    _, run_a, _ = mlflow_store
    job = client.post(f"/api/runs/{run_a}/classes", json={"edits": [{"op": "drop", "classes": [7]}]}).json()
    done = _wait_job(client, job)
    assert done["state"] == "failed" and "class 7 is not a class of this run" in done["error"]


def test_a_rerun_of_an_edited_run_says_its_edits_are_not_carried_over(client, mlflow_store):
    """As `samseg recluster` of an edited run says on its line: the page shows the same note."""
    _, run_a, _ = mlflow_store
    edited = _wait_job(client, client.post(f"/api/runs/{run_a}/classes",
                                           json={"edits": [{"op": "rename", "classes": [0], "name": "things"}]}).json())
    assert edited["state"] == "done", edited
    done = _wait_job(client, client.post(f"/api/runs/{edited['result']['run_id']}/rerun", json={"eps": 0.5}).json())
    assert done["state"] == "done" and "not carried over" in done["result"]["warning"]
    plain = _wait_job(client, client.post(f"/api/runs/{run_a}/rerun", json={"eps": 0.5}).json())
    assert plain["state"] == "done" and plain["result"]["warning"] is None


def test_the_overlay_after_class_edits_is_previewed_without_a_run(client, mlflow_store):
    _, run_a, _ = mlflow_store
    before = {r["run_id"] for r in client.get("/api/runs").json()["runs"]}
    merged = [{"op": "merge", "classes": [0, 1]}]
    r = client.post(f"/api/runs/{run_a}/classes/preview", json={"edits": merged})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert (r.headers["X-Samseg-Clusters"], r.headers["X-Samseg-Noise"]) == ("1", str(len(OUTLIERS)))
    split = client.post(f"/api/runs/{run_a}/classes/preview", json={"edits": [*merged, {"op": "split", "classes": [0]}]})
    assert split.headers["X-Samseg-Clusters"] == "2"  # half the run's eps parts A from B again
    bad = client.post(f"/api/runs/{run_a}/classes/preview", json={"edits": [{"op": "drop", "classes": [7]}]})
    assert bad.status_code == 422 and "class 7 is not a class of this run" in bad.json()["errors"]["edits"]
    assert {r["run_id"] for r in client.get("/api/runs").json()["runs"]} == before  # nothing logged


def test_attack_class_edits_of_a_run_whose_image_is_outside_the_image_roots_are_refused(mlflow_store, monkeypatch,
                                                                                           tmp_path):
    """--image-root: a save re-reads the run's image, so it follows the same rule as serving it."""
    from samseg.apps.ui import UiSettings, create_app

    tmp, run_a, _ = mlflow_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri(tmp / 'mlflow.db'))
    app = create_app(UiSettings(experiment=EXPERIMENT, cache_dir=tmp_path / "ui-cache", stage_cache=str(tmp_path / "sc"),
                                image_roots=[str(tmp_path / "elsewhere")]))
    with TestClient(app) as c:
        before = {r["run_id"] for r in c.get("/api/runs").json()["runs"]}
        job = c.post(f"/api/runs/{run_a}/classes", json={"edits": [{"op": "drop", "classes": [1]}]}).json()
        done = _wait_job(c, job)
        assert done["state"] == "failed" and "input image" in done["error"]
        assert {r["run_id"] for r in c.get("/api/runs").json()["runs"]} == before  # nothing logged


def test_the_run_page_shows_the_names_a_run_gave_its_classes(client, mlflow_store, tmp_path):
    """A run whose summary names its classes (samseg classes edit, --names): the legend and cut-outs say them."""
    import json

    from cli_run import run_cli

    tmp, run_a, _ = mlflow_store
    rc, out, err = run_cli(["classes", "edit", run_a, "--rename", "0=red <door>", "--out", str(tmp_path / "cur"),
                            "--experiment", EXPERIMENT])
    assert rc == 0, err
    new = out.rsplit("MLflow run ", 1)[1].split()[0]
    page = client.get(f"/runs/{new}", headers={"accept": "text/html"}).text
    assert '<b class="class-label">red &lt;door&gt;</b>' in page  # named, and escaped
    assert json.loads((tmp_path / "cur" / "alpha" / "summary.json").read_text())["class_names"] == {"0": "red <door>"}


def test_the_curation_panel_shows_the_namers_score_of_each_named_class(client, mlflow_store, tmp_path):
    import json
    import re

    from samseg.edges.image_dir import read_summary
    from samseg.edges.mlflow.tracking import log_image_run

    tmp, _, _ = mlflow_store
    d = tmp_path / "named"
    write_image_outputs(d, sorted((tmp / "images").glob("*.png"))[0], 0)
    summary = read_summary(d)
    summary["class_names"] = {"0": "road"}
    summary["naming"] = {"namer": "tiny-random", "classes": [{"id": 0, "name": "road", "score": 0.8712, "runner_up": "sky"},
                                                            {"id": 1, "name": None, "score": 0.2, "runner_up": "sea"}]}
    (d / "summary.json").write_text(json.dumps(summary))
    run_id = log_image_run(d, summary, experiment=EXPERIMENT)
    page = client.get(f"/runs/{run_id}", headers={"accept": "text/html"}).text
    rows = re.findall(r'<tr data-class="(\d+)">.*?</tr>', page, re.S)
    assert rows == ["0", "1"]
    row0 = re.search(r'<tr data-class="0">.*?</tr>', page, re.S).group(0)
    row1 = re.search(r'<tr data-class="1">.*?</tr>', page, re.S).group(0)
    assert ">0.87<" in row0 and "0.20" not in row1  # an unnamed class shows no score


@pytest.mark.parametrize("register, message", [("x/y", "a model name is"), ("", None)])
def test_attack_register_names_a_dataset_batch_only_and_a_plain_model_name(client, mlflow_store, register, message):
    _, run_a, _ = mlflow_store
    edits = [{"op": "rename", "classes": [0], "name": "a"}]
    r = client.post(f"/api/runs/{run_a}/classes", json={"edits": edits, "register": "good-name"})
    assert r.status_code == 422 and "only a dataset batch" in r.json()["errors"]["register"]  # an image run
    if message:  # the name is checked on a dataset run (the store's image run is refused first, as above)
        from samseg.apps.ui.app import REGISTERED_NAME

        assert not REGISTERED_NAME.fullmatch(register) and REGISTERED_NAME.fullmatch("ui-edited classes.v2")
