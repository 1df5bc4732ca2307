"""Ids that lead somewhere: the ids a batch prints work in every command, whole or as a unique
prefix (as git takes a commit's), `samseg recluster <batch id>` reclusters each of its images as
one new batch run, and `samseg runs list` shows what there is (a real SQLite MLflow store)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_run import run_cli
from mlflow_store import sqlite_uri

TINY = ["--model", "tiny-random", "--device", "cpu", "--points-per-side", "4", "--orchestrator", "local"]


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> dict:
    """A tracked 2-image batch in a store of its own: its printed batch id and image ids."""
    tmp = tmp_path_factory.mktemp("ids")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", sqlite_uri(tmp / 'mlflow.db'))
    src = tmp / "in"
    src.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(src / f"r{i}.png")
    rc, out, err = run_cli(["segment", str(src), "--out", str(tmp / "o"), "--cache", str(tmp / "c"), *TINY])
    assert rc == 0, err
    ids = [re.search(r"MLflow run (\w+)$", line).group(1) for line in out.splitlines() if line.startswith("r")]
    yield {"tmp": tmp, "batch": re.search(r"MLflow batch run: (\w+)", out).group(1), "images": ids}
    mp.undo()


@pytest.fixture
def store(batch: dict, monkeypatch) -> dict:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri(batch['tmp'] / 'mlflow.db'))
    return batch


def test_recluster_of_a_batch_id_prefix_reclusters_each_image_as_one_new_batch_run(store: dict, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    rc, out, err = run_cli(["recluster", store["batch"][:8], "--eps", "0.5", "--min-samples", "2", "--out",
                            str(tmp_path / "re"), "--cache", str(store["tmp"] / "c")])
    assert rc == 0, err
    new_batch = re.search(r"MLflow batch run: (\w+)", out).group(1)
    new_ids = [re.search(r"MLflow run (\w+)$", line).group(1) for line in out.splitlines() if line.startswith("r")]
    assert len(new_ids) == 2 and new_batch != store["batch"]
    client = MlflowClient()
    assert client.get_run(new_batch).data.tags["samseg.parent_run_id"] == store["batch"]
    totals = client.get_run(new_batch).data.metrics  # what `runs compare` shows of a batch
    # its settings are the batch's with the flags over them: a compare shows what changed, not every setting unset
    was, now = client.get_run(store["batch"]).data.params, client.get_run(new_batch).data.params
    assert {k for k in was.keys() | now.keys() if was.get(k) != now.get(k)} == {"cluster.eps", "cluster.min_samples"}
    assert (now["cluster.eps"], now["cluster.min_samples"]) == ("0.5", "2")
    assert (totals["images"], totals["succeeded"], totals["failed"]) == (2, 2, 0)
    parents = {client.get_run(rid).data.tags["samseg.parent_run_id"] for rid in new_ids}
    assert parents == set(store["images"])  # each new image run re-tunes its own image run
    for rid in new_ids:
        run = client.get_run(rid)
        assert run.data.tags["mlflow.parentRunId"] == new_batch and run.data.params["cluster.eps"] == "0.5"
    report = json.loads((tmp_path / "re" / "batch_summary.json").read_text())
    assert report["succeeded"] == 2 and report["mlflow_run_id"] == new_batch
    assert [i["mlflow_run_id"] for i in report["images"]] == new_ids
    # the new batch's id leads somewhere too: sweep it, recluster it again
    rc, out, err = run_cli(["sweep", new_batch[:10], "--eps-range", "0.1:0.3:0.1"])
    assert rc == 0, err


def test_recluster_of_a_dataset_batch_gives_new_dataset_classes_not_per_image_ones(store: dict, tmp_path: Path) -> None:
    """A --classes dataset batch reclustered at a new eps is clustered as it was made: its images'
    masks together, one classes.json, every image's ids from it and each image run logged once,
    as a recluster of the image it re-tunes (a per-image recluster of it would drop the shared classes)."""
    from mlflow import MlflowClient

    src = store["tmp"] / "in"
    rc, out, err = run_cli(["segment", str(src), "--classes", "dataset", "--out", str(tmp_path / "ds"), "--cache",
                            str(store["tmp"] / "c"), "--names", "sky,tree,road", "--namer", "tiny-random",
                            "--max-cluster", "40", *TINY])
    assert rc == 0, err
    assert json.loads((tmp_path / "ds" / "classes.json").read_text())["sample"]["max_cluster"] == 40
    dataset_batch = re.search(r"MLflow batch run: (\w+)", out).group(1)
    images = {line.split(":")[0]: re.search(r"MLflow run (\w+)$", line).group(1) for line in out.splitlines()
              if line.startswith("r")}
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "classes.json").write_text("a person's file")  # where the recluster's classes.json goes
    rc, _, err = run_cli(["recluster", dataset_batch[:8], "--eps", "0.3", "--out", str(tmp_path / "mine")])
    assert rc == 2 and "classes.json" in err and (tmp_path / "mine" / "classes.json").read_text() == "a person's file"
    rc, out, err = run_cli(["recluster", dataset_batch[:8], "--eps", "0.3", "--out", str(tmp_path / "re"), "--cache",
                            str(store["tmp"] / "c")])
    assert rc == 0, err
    assert "dataset classes (fitted on this batch): " in out and (tmp_path / "re" / "classes.json").is_file()
    table = json.loads((tmp_path / "re" / "classes.json").read_text())
    assert table["sample"]["max_cluster"] == 40  # fitted again as the batch was: --max-cluster is on its run
    # named once for the batch, from the batch's vocabulary (its images' own is "none"), not per image
    assert table["naming"]["vocabulary"] == "sky,tree,road" and len(table["naming"]["classes"]) == len(table["classes"])
    report = json.loads((tmp_path / "re" / "batch_summary.json").read_text())
    assert report["classes"]["mode"] == "dataset"
    client = MlflowClient()
    new_batch = report["mlflow_run_id"]
    assert client.get_run(new_batch).data.tags["samseg.classes"] == "dataset"
    assert client.get_run(new_batch).data.params["cluster.eps"] == "0.3"
    logged = client.search_runs([client.get_run(new_batch).info.experiment_id],
                                f"tags.`mlflow.parentRunId` = '{new_batch}'")
    assert sorted(r.info.run_id for r in logged) == sorted(i["mlflow_run_id"] for i in report["images"])  # once each
    for entry in report["images"]:
        summary = json.loads((Path(entry["out_dir"]) / "summary.json").read_text())
        assert summary["classes"] == "dataset" and summary["n_clusters"] <= len(table["classes"])
        tags = client.get_run(entry["mlflow_run_id"]).data.tags
        assert tags["samseg.kind"] == "recluster" and tags["samseg.parent_run_id"] == images[summary["image"]["file_name"]]
    rc, out, err = run_cli(["sweep", new_batch[:8], "--eps-range", "0.1:0.3:0.1"])  # swept together, as reclustered
    assert rc == 0 and "each clustered alone" not in out, err
    rc, out, err = run_cli(["runs", "list", "--limit", "50"])
    [line] = [line for line in out.splitlines() if line.startswith(new_batch)]
    assert line.split()[-3:] == ["recluster", "of", dataset_batch[:8]], line  # an id one can type, not its tail
    assert line.split()[5] == str(len(table["classes"])), line  # a dataset batch's classes
    assert line.split()[1] == "dataset", line  # its kind as the UI says it (a batch of dataset classes)
    # classes assigned from a table: a new eps changes nothing in an assignment, so it is refused in one line
    rc, out, err = run_cli(["segment", str(src), "--classes-from", dataset_batch, "--out", str(tmp_path / "as"),
                            "--cache", str(store["tmp"] / "c"), *TINY])
    assert rc == 0, err
    assigned = re.search(r"MLflow batch run: (\w+)", out).group(1)
    rc, _, err = run_cli(["recluster", assigned[:8], "--eps", "0.3", "--out", str(tmp_path / "as-re")])
    assert rc == 1 and "its classes were assigned from" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "as-re").exists()
    # the UI's dataset page makes the same request: new dataset classes; an assigned batch says why not
    from fastapi.testclient import TestClient

    from samseg.apps.ui import UiSettings, create_app

    app = create_app(UiSettings(experiment="samseg", cache_dir=tmp_path / "ui-cache", stage_cache=str(store["tmp"] / "c")))
    with TestClient(app) as ui:
        assert 'id="batch-recluster-form"' not in ui.get(f"/runs/{assigned}", headers={"accept": "text/html"}).text
        assert "clustered together again" in ui.get(f"/runs/{dataset_batch}", headers={"accept": "text/html"}).text
        done = {}
        for batch_id in (dataset_batch, assigned):
            job = ui.post(f"/api/runs/{batch_id}/rerun", json={"eps": "0.3"}).json()
            while (state := ui.get(f"/api/jobs/{job['id']}").json())["state"] in ("queued", "running"):
                time.sleep(0.2)  # the test's own timeout bounds a hang
            done[batch_id] = state
        new_page = ui.get(f"/runs/{done[dataset_batch]['result']['run_id']}", headers={"accept": "text/html"}).text
        assert f"re-tunes <a href=\"/runs/{dataset_batch}\"" in new_page and "a person's edits" not in new_page
    assert done[dataset_batch]["state"] == "done", done
    assert client.get_run(done[dataset_batch]["result"]["run_id"]).data.tags["samseg.classes"] == "dataset"
    assert done[assigned]["state"] == "failed" and "its classes were assigned from" in done[assigned]["error"]


def test_a_prefix_works_wherever_an_id_does(store: dict, tmp_path: Path) -> None:
    image = store["images"][0]
    rc, out, err = run_cli(["recluster", image[:8], "--eps", "0.4", "--out", str(tmp_path / "one"), "--no-track"])
    assert rc == 0 and (tmp_path / "one" / "r0" / "labels.png").is_file(), err
    rc, out, err = run_cli(["runs", "compare", store["images"][1][:9], image[:8]])
    assert rc == 0 and out.splitlines()[0].split()[1:] == [store["images"][1][:8], image[:8]], out  # as given
    rc, out, err = run_cli(["export", store["batch"][:8], "--format", "coco", "--out", str(tmp_path / "coco")])
    assert rc == 0 and "2 images" in out, err


@pytest.mark.parametrize("ref, message", [
    ("abc", "needs at least 4 characters"),
    ("ffffffff", "no MLflow run id starts with ffffffff"),
])
def test_a_prefix_that_names_no_single_run_is_one_line(store: dict, ref: str, message: str) -> None:
    rc, out, err = run_cli(["sweep", ref])  # a mistyped id is a usage error, as a mistyped path is
    assert rc == 2 and err.count("error:") == 1 and message in err and "Traceback" not in err


def test_an_ambiguous_prefix_names_two_of_its_runs(monkeypatch) -> None:
    from types import SimpleNamespace

    from samseg.edges.mlflow import client as mlflow_client
    from samseg.edges.mlflow.client import TrackingError
    from samseg.edges.mlflow.tracking import resolve_run_id

    runs = [SimpleNamespace(info=SimpleNamespace(run_id=f"abcd{i}" + "0" * 27)) for i in range(2)]
    fake = SimpleNamespace(search_experiments=lambda **_: [SimpleNamespace(experiment_id="0")],
                           search_runs=lambda exp, flt, max_results: [r for r in runs if flt.endswith("'abcd%'")])
    monkeypatch.setattr(mlflow_client, "client", lambda **_: fake)
    with pytest.raises(TrackingError, match="abcd is ambiguous: it starts abcd0.*, abcd1.*give more characters"):
        resolve_run_id("abcd")
    whole = "abcd0" + "0" * 27
    assert resolve_run_id(whole) == whole  # a whole id is never looked up


def test_runs_list_shows_batch_and_image_runs_in_120_columns(store: dict) -> None:
    rc, out, err = run_cli(["runs", "list", "--limit", "50"])
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("RUN ID") and all(len(line) <= 120 for line in lines)
    kinds = {line.split()[1] for line in lines[1:]}
    assert {"batch", "image"} <= kinds
    assert any(line.startswith(store["batch"]) for line in lines)
    assert len(run_cli(["runs", "list", "--limit", "2"])[1].splitlines()) == 3  # the header and the 2 newest
    assert run_cli(["runs", "list", "--limit", "0"])[0] == 2


def test_the_ui_pages_a_batch_id_lists_its_images_with_links_and_shows_it_in_the_runs(store: dict) -> None:
    from fastapi.testclient import TestClient

    from samseg.apps.ui import UiSettings, create_app

    app = create_app(UiSettings(experiment="samseg", cache_dir=store["tmp"] / "ui-cache"))
    with TestClient(app) as client:
        page = client.get(f"/runs/{store['batch']}", headers={"accept": "text/html"})
        assert page.status_code == 200 and 'id="batch-run"' in page.text
        for rid in store["images"]:  # each image run of the batch, linked
            assert f'href="/runs/{rid}"' in page.text
        assert "r0.png" in page.text and "r1.png" in page.text
        runs = client.get("/", headers={"accept": "text/html"})
        assert runs.status_code == 200 and f'href="/runs/{store["batch"]}"' in runs.text and "batch run" in runs.text
        assert client.get(f"/runs/{'0' * 32}", headers={"accept": "text/html"}).status_code == 404


def test_the_ui_batch_page_reclusters_every_image_as_one_new_batch_run_as_the_cli_does(store: dict) -> None:
    """The batch page's form makes the request `samseg recluster BATCH --eps` makes (samseg.apps.batch_recluster)."""
    import time

    from fastapi.testclient import TestClient
    from mlflow import MlflowClient

    from samseg.apps.ui import UiSettings, create_app

    app = create_app(UiSettings(experiment="samseg", cache_dir=store["tmp"] / "ui-cache",
                                stage_cache=str(store["tmp"] / "c")))
    with TestClient(app) as ui:
        page = ui.get(f"/runs/{store['batch']}", headers={"accept": "text/html"})
        assert 'id="batch-recluster-form"' in page.text and "each image clustered alone" in page.text
        bad = ui.post(f"/api/runs/{store['batch']}/rerun", json={"eps": "3"})  # cosine distances are at most 2
        assert bad.status_code == 422 and bad.json()["errors"]["eps"].startswith("eps must be <= 2 with the cosine metric")
        assert ui.post(f"/api/runs/{store['batch']}/rerun", json={"eps": "-1"}).json()["errors"]["eps"] == "eps must be > 0"
        assert "give an eps" in ui.post(f"/api/runs/{store['batch']}/rerun", json={}).json()["errors"]["form"]
        assert ui.post(f"/api/runs/{store['batch']}/rerun", json={"colour": "red"}).json()["errors"] == {"colour": "unknown field"}
        job = ui.post(f"/api/runs/{store['batch']}/rerun", json={"eps": "0.4", "min_samples": "2"})
        assert job.status_code == 202, job.text
        deadline = time.monotonic() + 300  # a hang detector, not a speed target
        while (done := ui.get(f"/api/jobs/{job.json()['id']}").json())["state"] in ("queued", "running"):
            assert time.monotonic() < deadline, done
            time.sleep(0.2)
        assert done["state"] == "done", done
        res = done["result"]
        assert (res["images"], res["failed"]) == (2, 0) and res["run_url"] == f"/runs/{res['run_id']}"
        assert ui.get(res["run_url"], headers={"accept": "text/html"}).status_code == 200
    client = MlflowClient()
    new = client.get_run(res["run_id"])
    assert new.data.tags["samseg.parent_run_id"] == store["batch"] and new.info.status == "FINISHED"
    assert (new.data.params["cluster.eps"], new.data.params["cluster.min_samples"]) == ("0.4", "2")
    kids = client.search_runs([new.info.experiment_id], f"tags.`mlflow.parentRunId` = '{res['run_id']}'")
    assert sorted(k.data.tags["samseg.parent_run_id"] for k in kids) == sorted(store["images"])
    assert {k.data.params["cluster.eps"] for k in kids} == {"0.4"}
    # the UI's outputs are the runs' artifacts: no run and no record names its temporary folder
    assert not [k for k in kids if "samseg.out_dir" in k.data.tags]
    record = json.loads(client.download_artifacts(res["run_id"], "batch_summary.json", str(store["tmp"])) and
                        (store["tmp"] / "batch_summary.json").read_text())
    assert record["out"] is None and {e["out_dir"] for e in record["images"]} == {None}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> dict:
    """A batch as a fan-out to workers records it (one MLflow run per shard, none per image): a
    2-image batch written untracked, then its shard run and its record logged as the shard's and
    the batch's processes log them (tests/test_scaleout.py makes one for real)."""
    import uuid

    from samseg.edges.mlflow.shard_runs import end_shard_run, start_shard_run
    from samseg.edges.mlflow.tracking import end_run, start_batch_run
    from samseg.edges.run_schema import SHARDED

    tmp = tmp_path_factory.mktemp("sharded")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", sqlite_uri(tmp / 'mlflow.db'))
    src, out = tmp / "in", tmp / "o"
    src.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(src / f"s{i}.png")
    rc, _, err = run_cli(["segment", str(src), "--out", str(out), "--cache", str(tmp / "c"), "--no-track", *TINY])
    assert rc == 0, err
    report = json.loads((out / "batch_summary.json").read_text())
    batch = start_batch_run("samseg", "batch-sharded", {"n_images": 2}, {})
    shard = start_shard_run("samseg", batch, "shard-00000-try1", {"cluster.eps": "0.3"}, str(uuid.uuid4()), str(out))
    entries = [{**e, "mlflow_run_id": None, "mlflow_shard_run_id": shard} for e in report["images"]]
    end_shard_run(shard, entries)
    end_run(batch, "FINISHED", {**report, "fan_out": SHARDED, "images": entries, "mlflow_run_id": batch})
    yield {"tmp": tmp, "batch": batch, "shard": shard, "out": out, "n_masks": sum(e["n_masks"] for e in entries)}
    mp.undo()


def test_a_sharded_batch_id_leads_to_its_images_dirs_in_every_command_and_the_ui(sharded: dict, tmp_path: Path,
                                                                                  monkeypatch) -> None:
    from fastapi.testclient import TestClient
    from mlflow import MlflowClient

    from samseg.apps.ui import UiSettings, create_app

    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri(sharded["tmp"] / "mlflow.db"))
    batch, shard = sharded["batch"], sharded["shard"]
    client = MlflowClient()
    table = client.load_table(client.get_run(shard).info.experiment_id, "images.json", run_ids=[shard])
    assert list(table["name"]) == ["s0", "s1"] and list(table["status"]) == ["completed"] * 2
    # recluster: each image from its dir, as one new batch run that names the batch it re-tunes
    rc, out, err = run_cli(["recluster", batch[:8], "--eps", "0.5", "--out", str(tmp_path / "re"),
                            "--cache", str(sharded["tmp"] / "c")])
    assert rc == 0, err
    new_batch = re.search(r"MLflow batch run: (\w+)", out).group(1)
    assert client.get_run(new_batch).data.tags["samseg.parent_run_id"] == batch
    new_ids = [re.search(r"MLflow run (\w+)$", line).group(1) for line in out.splitlines() if line.startswith("s")]
    assert len(new_ids) == 2 and all(client.get_run(i).data.params["cluster.eps"] == "0.5" for i in new_ids)
    redone = json.loads((tmp_path / "re" / "s0" / "summary.json").read_text())  # what it re-tunes: a dir, not a run id
    assert redone["recluster_of"] == str(sharded["out"] / "s0") and redone["recluster"]["parent_run_id"] is None
    rc, out, err = run_cli(["sweep", batch[:8], "--eps-range", "0.1:0.3:0.1"])
    assert rc == 0 and out.startswith(f"{sharded['n_masks']} masks in 2 images, each"), err  # read from their dirs
    rc, out, err = run_cli(["export", batch[:8], "--format", "coco", "--out", str(tmp_path / "coco")])
    assert rc == 0 and "2 images" in out, err
    rc, out, err = run_cli(["runs", "compare", shard[:8]])
    assert rc == 0 and "images" in out, err
    rc, _, err = run_cli(["sweep", shard[:8]])  # a shard run is not an image: the batch is what to give
    assert rc == 1 and f"is a shard run of batch {batch}" in err, err
    # the UI reads no path a record names: it refuses to push or edit a sharded batch, naming the command
    from types import SimpleNamespace

    from samseg.apps.ui import actions
    from samseg.apps.ui.service import RunDataError

    fake = SimpleNamespace(client=client, get_any_run=client.get_run)
    with pytest.raises(RunDataError, match="ran in shards .*samseg export"):
        actions.image_runs_only(fake, batch, f"push it with `samseg export {batch[:8]} --format labelstudio --to URL`")
    # the UI: the batch page lists its shard run and its images; the shard run's id leads there
    with TestClient(create_app(UiSettings(experiment="samseg", cache_dir=sharded["tmp"] / "ui-cache"))) as ui:
        page = ui.get(f"/runs/{batch}", headers={"accept": "text/html"})
        assert page.status_code == 200 and 'id="shards"' in page.text and f'id="shard-{shard}"' in page.text
        assert str(sharded["out"] / "s0") in page.text and str(sharded["out"] / "s1") in page.text
        hop = ui.get(f"/runs/{shard}", headers={"accept": "text/html"}, follow_redirects=False)
        assert hop.status_code == 307 and hop.headers["location"] == f"/runs/{batch}#shard-{shard}"
        # no recluster panel: its images are dirs its record names; the API says which command does it
        assert 'id="batch-recluster-form"' not in page.text
        job = ui.post(f"/api/runs/{batch}/rerun", json={"eps": "0.3"}).json()
        while (state := ui.get(f"/api/jobs/{job['id']}").json())["state"] in ("queued", "running"):
            time.sleep(0.2)  # the test's own timeout bounds a hang
        assert state["state"] == "failed" and "ran in shards" in state["error"] and "samseg recluster" in state["error"]


def test_a_batch_form_checks_the_new_values_against_the_batchs_own_settings() -> None:
    """eps 5 is a cosine batch's error and a euclidean batch's setting; a batch an older samseg
    recorded under rules since changed is said on the form, never an internal error."""
    from samseg.apps.ui.validation import FormError, validate_batch_form
    from samseg.core.config import DEFAULT

    cosine = {k: str(v) for k, v in DEFAULT.flat().items()}
    with pytest.raises(FormError) as err:
        validate_batch_form({"eps": "5"}, cosine)
    assert err.value.errors["eps"].startswith("eps must be <= 2 with the cosine metric")
    assert validate_batch_form({"eps": "5"}, {**cosine, "cluster.metric": "euclidean"}) == {"eps": 5.0}
    assert validate_batch_form({"eps": "auto", "min_samples": "4"}, cosine) == {"eps": "auto", "min_samples": 4}
    with pytest.raises(FormError) as err:
        validate_batch_form({"eps": "0.5"}, {**cosine, "cluster.algorithm": "optics"})  # no such algorithm now
    assert "recorded settings cannot be reclustered here" in err.value.errors["form"]


def test_a_per_image_batch_id_where_one_image_or_dataset_classes_are_needed_says_what_to_give(store: dict,
                                                                                              tmp_path: Path) -> None:
    rc, _, err = run_cli(["classes", store["batch"][:8]])
    assert rc == 1 and "is a batch run, not one image's: give one of its image runs" in err, err
    rc, _, err = run_cli(["segment", str(store["tmp"] / "in" / "r0.png"), "--out", str(tmp_path / "cf"), "--cache",
                          str(store["tmp"] / "c"), "--classes-from", store["batch"][:8], *TINY])
    assert rc == 1 and "no usable classes.json: it is a batch of per-image classes, not a dataset batch" in err, err
    rc, _, err = run_cli(["recluster", store["images"][0][:8], "--eps", "-1", "--out", str(tmp_path / "x")])
    assert rc == 2 and err.strip().endswith("--eps must be > 0"), err  # the flag, named, in segment's words
    rc, _, err = run_cli(["recluster", store["images"][0][:8], "--eps", "3", "--out", str(tmp_path / "x")])
    assert rc == 2 and err.strip().splitlines()[-1].startswith("samseg recluster: error: --eps must be <= 2 with the cosine"), err


def test_a_path_of_the_wrong_kind_says_what_to_give_instead(store: dict, tmp_path: Path) -> None:
    """A newcomer gives a batch's OUT where one image is read, an input photo to export, a folder
    that does not exist, a folder where only run ids are taken: one line each that says what to give."""
    out = store["tmp"] / "o"
    rc, _, err = run_cli(["classes", str(out)])
    assert rc == 1 and "a batch of per-image classes" in err and f"({out / 'r0'})" in err, err
    photo = store["tmp"] / "in" / "r0.png"
    rc, _, err = run_cli(["export", str(photo), "--format", "coco", "--out", str(tmp_path / "x")])
    assert rc == 2 and f"{photo}: a file, not a samseg output dir" in err and "Errno" not in err, err
    rc, _, err = run_cli(["export", str(tmp_path / "nothere"), "--format", "coco", "--out", str(tmp_path / "x")])
    assert rc == 2 and "no such file or folder, and not an MLflow run id" in err, err
    rc, _, err = run_cli(["sweep", str(out / "r0")])
    assert rc == 2 and "a file or folder, not an MLflow run id (this command takes run ids" in err, err
    assert not (tmp_path / "x").exists()


def test_a_command_that_reads_runs_where_there_is_no_store_says_where_it_looked_and_creates_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`samseg runs list` in another folder than the one the runs were made in: not "no runs" over
    a new empty mlflow.db, but one line naming the store it looked for (exit 2), nothing created."""
    db = tmp_path / "elsewhere" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    for argv in (["runs", "list"], ["runs", "compare"], ["recluster", "abcd1234", "--eps", "0.1", "--out", str(tmp_path / "o")],
                 ["recluster", "ab" * 16, "--eps", "0.1", "--out", str(tmp_path / "o")], ["sweep", "abcd1234"],
                 ["segment", str(Path(__file__).parent / "data" / "photos" / "bears.jpg"), "--classes-from", "ab" * 16,
                  "--model", "tiny-random", "--out", str(tmp_path / "o")]):
        rc, _, err = run_cli(argv)
        assert rc == 2 and err.strip() == (f"error: no MLflow store at {db}: runs are kept where samseg segment ran them "
                                           "(./mlflow.db), or where MLFLOW_TRACKING_URI points; run from that folder "
                                           "or set it"), (argv, err)
    assert not db.parent.exists()


def test_an_s3_folder_given_where_a_run_id_goes_says_to_give_its_batch_run(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`samseg classes s3://…/OUT/` reads a dataset OUT; export and sweep take the batch's run id instead."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri(tmp_path / "mlflow.db"))
    for argv in (["export", "s3://bucket/ds/", "--format", "coco", "--out", str(tmp_path / "x")], ["sweep", "s3://bucket/ds/"]):
        rc, _, err = run_cli(argv)
        assert rc == 2 and "'s3://bucket/ds/': an s3:// folder, not an MLflow run id: give the run id of the batch" in err, err


def test_a_batch_recluster_stopped_mid_way_ends_its_new_batch_run_killed(store: dict, tmp_path: Path, monkeypatch) -> None:
    """A stop (Ctrl-C to `samseg ui` or the CLI) reaches the recluster's loop at its next image
    (shutdown.check): the new batch run it opened ends KILLED, never left RUNNING."""
    import signal

    from mlflow import MlflowClient

    from samseg.apps.batch_recluster import recluster_batch_run
    from samseg.edges import shutdown
    from samseg.edges.mlflow.tracking import batch_images
    from samseg.engine.publish import Tracking

    client = MlflowClient()
    batch = client.get_run(store["batch"])
    monkeypatch.setattr(shutdown, "_received", [signal.SIGTERM])  # as the UI's server notes it; no deadline thread here
    monkeypatch.setattr(shutdown, "_raised", [])
    with pytest.raises(KeyboardInterrupt):
        recluster_batch_run(store["batch"], batch_images(client, batch), dict(batch.data.params), {"eps": 0.45},
                            str(tmp_path / "re"), Tracking(experiment="samseg"), str(store["tmp"] / "c"))
    new = client.search_runs([batch.info.experiment_id], f"tags.`samseg.parent_run_id` = '{store['batch']}'",
                             order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert new.info.status == "KILLED" and new.data.params["cluster.eps"] == "0.45"
