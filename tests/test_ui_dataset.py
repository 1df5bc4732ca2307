"""Web UI over dataset-level runs (issue 6): a batch parent run with classes.json +
contact_sheet.png and its child image runs, logged to a real SQLite MLflow store through
the same functions segment-batch uses (samseg.edges.dataset_outputs.apply_dataset_classes,
log_dataset_classes, samseg.edges.mlflow.tracking.start_batch_run / log_image_run).

Known structure, no SAM: each of the 2 images has 12 rectangle masks whose embeddings form
group A (6 masks), group B (4) and 2 outliers. Over the batch DBSCAN(cosine, eps 0.06,
min_samples 3) finds 2 classes (A: 12 masks, B: 8) and 4 noise masks (each outlier occurs
twice, below min_samples). A second batch run is `assigned` to the first one's classes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastapi.testclient import TestClient

from samseg.core.config import SMOKE
from ui_synthetic import sqlite_store, write_image_outputs
from mlflow_store import sqlite_uri

EXPERIMENT = "ui-dataset-test"


def _image_dir(out: Path, image_path: Path, seed: int) -> Path:
    """One image's outputs (samseg.edges.image_dir layout) with per-image clustering, as a batch writes them."""
    d = out / image_path.stem
    write_image_outputs(d, image_path, seed)
    return d


def _log_dataset_batch(tmp: Path, name: str, images: list[Path], classes_from: str | None) -> tuple[str, list[str]]:
    """What segment-batch --classes dataset (or --classes-from RUN) logs; returns (batch id, child ids)."""
    from samseg.edges.dataset_outputs import apply_dataset_classes, load_class_table, log_dataset_classes
    from samseg.edges.image_dir import read_summary
    from samseg.edges.mlflow.tracking import end_run, log_image_run, start_batch_run

    out = tmp / "out" / name
    dirs = [_image_dir(out, p, seed) for seed, p in enumerate(images)]
    batch = start_batch_run(EXPERIMENT, name, {**SMOKE.flat(), "n_images": len(images)}, {"samseg.source": str(tmp / "images")})
    if classes_from:  # each image assigned where it is computed, then the counts added up
        report = _assign_dirs(out, dirs, load_class_table(classes_from))
    else:
        report = apply_dataset_classes(out, dirs, SMOKE.cluster)
    children = [log_image_run(d, read_summary(d), experiment=EXPERIMENT, nested_under=batch) for d in dirs]
    log_dataset_classes(batch, report)
    end_run(batch, "FINISHED", {"images": [{"mlflow_run_id": c} for c in children]})  # the batch's own record
    return batch, children


def _assign_dirs(out: Path, dirs: list[Path], table) -> dict:
    """What an --classes-from batch leaves: each summary.json with the given classes' ids, then classes.json."""
    import json

    from samseg.core.dataset import assign_to_classes
    from samseg.edges.dataset_outputs import dataset_ids, write_assigned_classes
    from samseg.edges.image_dir import read_image_dir, read_summary

    images = []
    for d in dirs:
        _, emb, _ = read_image_dir(d)
        summary, _ = dataset_ids(read_summary(d), assign_to_classes(emb, table), table, "assigned")
        (d / "summary.json").write_text(json.dumps(summary))
        images.append({"name": d.name, "file_name": summary["image"]["file_name"], "n_masks": len(emb),
                       "cluster_sizes": summary["cluster_sizes"]})
    return write_assigned_classes(out, table, images, dirs)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """SQLite MLflow store: a `dataset` batch (2 images), an `assigned` batch, a plain batch
    without classes and a lone image run. Yields a dict of their ids and the tmp dir."""
    from samseg.edges.mlflow.tracking import end_run, log_image_run, start_batch_run

    tmp = tmp_path_factory.mktemp("ui-dataset")
    mp = pytest.MonkeyPatch()
    images = sqlite_store(tmp, EXPERIMENT, mp)
    ds, ds_children = _log_dataset_batch(tmp, "batch-dataset", images, None)
    assigned, _ = _log_dataset_batch(tmp, "batch-assigned", images, ds)
    plain = start_batch_run(EXPERIMENT, "batch-plain", {"n_images": 0}, {})
    end_run(plain)
    lone_dir = _image_dir(tmp / "out" / "lone", images[0], 7)
    from samseg.edges.image_dir import read_summary

    lone = log_image_run(lone_dir, read_summary(lone_dir), experiment=EXPERIMENT, run_name="lone")
    yield {"tmp": tmp, "dataset": ds, "children": ds_children, "assigned": assigned, "plain": plain, "lone": lone}
    mp.undo()


@pytest.fixture
def client(store, monkeypatch):
    from samseg.apps.ui import UiSettings, create_app

    tmp = store["tmp"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri(tmp / 'mlflow.db'))
    monkeypatch.setenv("SAMSEG_CACHE", str(tmp / "stage-cache"))
    app = create_app(UiSettings(experiment=EXPERIMENT, cache_dir=tmp / "ui-cache", stage_cache=str(tmp / "stage-cache")))
    with TestClient(app) as c:
        yield c


HTML = {"accept": "text/html"}


# ------------------------------------------------------------------ listing
def test_list_shows_dataset_runs_and_membership(client, store):
    rows = {r["run_id"]: r for r in client.get("/api/runs").json()["runs"]}
    ds = rows[store["dataset"]]
    assert ds["is_dataset"] and ds["kind"] == "dataset"
    assert ds["n_classes"] == 2 and ds["n_images"] == 2 and ds["n_noise"] == 4 and ds["time"]
    assigned = rows[store["assigned"]]
    assert assigned["kind"] == "assigned" and assigned["classes_from"] == store["dataset"]
    plain = rows[store["plain"]]  # a batch of per-image classes: listed, its page lists its images
    assert plain["is_batch"] and plain["kind"] == "batch" and not plain["is_dataset"]
    for child in store["children"]:
        assert rows[child]["dataset_run_id"] == store["dataset"] and rows[child]["dataset_mode"] == "dataset"
    assert rows[store["lone"]]["dataset_run_id"] is None

    page = client.get("/", headers=HTML)
    assert page.status_code == 200
    assert f'href="/runs/{store["dataset"]}"' in page.text and "dataset run" in page.text
    assert f"dataset ids from <a href=\"/runs/{store['dataset']}\"" in page.text


def test_image_filter_leaves_dataset_runs_out(client, store):
    rows = client.get("/api/runs", params={"image": "alpha"}).json()["runs"]
    assert rows and all(not r["is_dataset"] and r["image"] == "alpha.png" for r in rows)


# ------------------------------------------------------------- dataset page
def test_dataset_page_classes_table_contact_sheet_children(client, store):
    from samseg.core.render import class_color

    rid = store["dataset"]
    page = client.get(f"/runs/{rid}", headers=HTML)
    assert page.status_code == 200, page.text
    assert 'id="classes-table"' in page.text and f'src="/runs/{rid}/files/contact_sheet.png"' in page.text
    for c in (0, 1):
        assert "#%02x%02x%02x" % class_color(c) in page.text  # swatch = overlay colour of class c
    for child in store["children"]:
        assert f'href="/runs/{child}"' in page.text and f"/runs/{child}/files/thumb.png" in page.text

    detail = client.get(f"/api/runs/{rid}").json()
    assert detail["n_classes"] == 2 and detail["n_noise"] == 4 and detail["n_images"] == 2
    sizes = sorted(c["size"] for c in detail["classes"])
    assert sizes == [8, 12]  # group B twice, group A twice
    for c in detail["classes"]:
        assert c["images"] == ["alpha.png", "beta.png"] and c["image_coverage"] == 1.0
        assert 0.0 <= c["radius"] < 0.06
    assert {r["run_id"] for r in detail["children"]} == set(store["children"])


def test_assigned_page_links_its_source(client, store):
    page = client.get(f"/runs/{store['assigned']}", headers=HTML)
    assert page.status_code == 200
    assert 'id="assigned-note"' in page.text and f'href="/runs/{store["dataset"]}"' in page.text
    detail = client.get(f"/api/runs/{store['assigned']}").json()
    assert detail["classes_from_url"] == f"/runs/{store['dataset']}"


def test_child_page_says_ids_are_dataset_wide_and_rerun_is_per_image(client, store):
    child = store["children"][0]
    page = client.get(f"/runs/{child}", headers=HTML)
    assert page.status_code == 200
    assert 'id="dataset-note"' in page.text and 'id="rerun-dataset-note"' in page.text
    assert client.get(f"/api/runs/{child}").json()["dataset"]["batch_run_id"] == store["dataset"]
    lone = client.get(f"/runs/{store['lone']}", headers=HTML)
    assert "dataset-note" not in lone.text


def test_rerun_of_dataset_child_is_labelled_per_image(client, store):
    """The rerun's summary must not carry the parent's 'classes: dataset' claim."""
    import time

    child = store["children"][0]
    job = client.post(f"/api/runs/{child}/rerun", json={"eps": "0.06", "min_samples": "3"}).json()
    deadline = time.monotonic() + 60
    while job["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
        job = client.get(f"/api/jobs/{job['id']}").json()
    assert job["state"] == "done", job
    new_id = job["result"]["run_id"]
    detail = client.get(f"/api/runs/{new_id}").json()
    assert detail["dataset"] == {"kind": "rerun", "batch_run_id": None, "mode": "dataset"}
    page = client.get(f"/runs/{new_id}", headers=HTML)
    assert "per-image" in page.text and 'id="dataset-note"' in page.text


# -------------------------------------------------------------------- files
def test_dataset_files_served_for_dataset_runs_only(client, store):
    rid = store["dataset"]
    r = client.get(f"/runs/{rid}/files/classes.json")
    assert r.status_code == 200 and json.loads(r.content)["format"] == "samseg.classes/1"
    sheet = client.get(f"/runs/{rid}/files/contact_sheet.png")
    assert sheet.status_code == 200 and sheet.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get(f"/runs/{rid}/files/thumb.png").content[:4] == b"\x89PNG"
    for bad in ("overlay.png", "summary.json", "../classes.json", "%2e%2e/classes.json", "classes.json/.."):
        assert client.get(f"/runs/{rid}/files/{bad}").status_code == 404, bad
    child = store["children"][0]
    for name in ("classes.json", "contact_sheet.png"):
        assert client.get(f"/runs/{child}/files/{name}").status_code == 404
    assert client.get(f"/runs/{child}/files/overlay.png").status_code == 200


def test_unknown_and_plain_batch_runs_404(client, store):
    for rid in ("0" * 32, store["plain"], "not..a/run"):
        assert client.get(f"/api/runs/{rid}").status_code == 404, rid
    page = client.get(f"/runs/{'0' * 32}", headers=HTML)
    assert page.status_code == 404 and 'id="error-message"' in page.text
    assert client.get(f"/runs/{store['plain']}/files/classes.json").status_code == 404
    # a dataset run's rerun is its batch's (samseg.apps.batch_recluster): with nothing to change, a form error
    empty = client.post(f"/api/runs/{store['dataset']}/rerun", json={})
    assert empty.status_code == 422 and "give an eps" in empty.json()["errors"]["form"]


# ------------------------------------------------------------------ compare
def test_compare_two_dataset_runs(client, store):
    ids = [store["dataset"], store["assigned"]]
    data = client.get("/api/compare", params={"runs": ",".join(ids)}).json()
    assert [r["run_id"] for r in data["runs"]] == ids and all(r["is_dataset"] for r in data["runs"])
    for col in ("n_classes", "n_noise", "mean_class_coverage"):
        assert col in data["columns"]
    assert "run_name" in data["columns"]
    page = client.get("/compare", params={"runs": ",".join(ids)}, headers=HTML)
    assert page.status_code == 200
    for rid in ids:
        assert f'src="/runs/{rid}/files/contact_sheet.png"' in page.text


def test_compare_dataset_run_with_image_run(client, store):
    ids = [store["dataset"], store["lone"]]
    page = client.get("/compare", params={"runs": ",".join(ids)}, headers=HTML)
    assert page.status_code == 200
    assert f'src="/runs/{ids[0]}/files/contact_sheet.png"' in page.text
    assert f'src="/runs/{ids[1]}/files/overlay.png"' in page.text
