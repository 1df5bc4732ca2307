"""A batch fanned out in shards (flows.fanout.run_shards) against a fake Prefect client:
shards of the plan's size, never more than `in_flight` runs at once, a completed shard's
report read from its table artifact, a crashed shard run again for the images it had not
written (never for those it had), a shard past its timeout set CRASHED and failed after
its retries. The real server and workers are in test_scaleout.py."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from samseg.edges.run_schema import SHARD_REPORT
from samseg.engine import progress
from samseg.engine.request import ShardPlan


class _State(SimpleNamespace):
    @property
    def type(self) -> str:
        return self.name.upper()

    def is_final(self) -> bool:
        return self.name in ("Completed", "Crashed", "Failed", "Cancelled")

    def is_completed(self) -> bool:
        return self.name == "Completed"

    def is_running(self) -> bool:
        return self.name == "Running"


class FakePrefect:
    """Each shard run plays a script keyed by its first image: 'ok' (completes, every image
    in its report; 'bad.png' fails), 'short' (completes, its last image missing from its report, another's in it), 'crash-after-1' (writes its first image, then crashes),
    'hang' (runs forever)."""

    def __init__(self, out: Path, scripts: dict[str, str]) -> None:
        self.out, self.scripts = out, scripts
        self.runs: dict[uuid.UUID, dict] = {}
        self.params: list[dict] = []
        self.max_open = 0
        self.cancels = 0
        self.reads = 0
        self.direct, self.direct_reads = True, 0

    def run_deployment(self, name, parameters, timeout, flow_run_name):
        rid = uuid.uuid4()
        self.params.append(parameters)
        self.runs[rid] = {"params": parameters, "polls": 0, "state": _State(name="Scheduled", message=None)}
        self.max_open = max(self.max_open, sum(not r["state"].is_final() for r in self.runs.values()))
        return SimpleNamespace(id=rid)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read_flow_run(self, rid):
        self.direct_reads += self.direct  # a run read alone, not with the others
        run = self.runs[rid]
        run["polls"] += 1
        images, names = run["params"]["images"], run["params"]["names"]
        script = self.scripts.get(Path(images[0]).name, "ok")
        if run["polls"] == 2 and not run["state"].is_final():
            if script in ("ok", "short"):
                run["state"] = _State(name="Completed", message=None)
                run["rows"] = [{"image": u, "name": n, "status": "failed" if u.endswith("bad.png") else "completed",
                                **({"error": f"{u}: not an image"} if u.endswith("bad.png") else {})}
                               for u, n in zip(images, names)][:-1 if script == "short" else None]
                if script == "short":  # and a row of an image that is not the shard's
                    run["rows"].append({"image": "/elsewhere/z.png", "name": "z", "status": "completed"})
            elif script == "crash-after-1":
                self.scripts[Path(images[0]).name] = "ok"  # its second run goes through
                (self.out / names[0]).mkdir(parents=True)
                (self.out / names[0] / "summary.json").write_text(json.dumps({"prefect_flow_run_id": str(rid), "n_masks": 3}))
                run["state"] = _State(name="Crashed", message="Process exited with status -9")
            else:
                run["state"] = _State(name="Running", message=None)
        elif run["state"].name == "Cancelling":  # the worker stopped the process
            run["state"] = _State(name="Cancelled", message=run["state"].message)
        return SimpleNamespace(id=rid, state=run["state"], start_time=None)

    def read_flow_runs(self, flow_run_filter, limit):
        ids = flow_run_filter.id.any_
        if limit > 200 or len(ids) > limit:  # a Prefect server refuses a limit above its default (422)
            raise ValueError(f"limit {limit} for {len(ids)} ids")
        self.reads += 1
        self.direct = False
        polls = [self.read_flow_run(rid) for rid in ids]
        self.direct = True
        return polls

    def set_flow_run_state(self, rid, state, force=False):
        self.cancels += state.name == "Cancelling"
        self.runs[rid]["state"] = _State(name=state.name, message=state.message)

    def read_artifacts(self, artifact_filter):
        [rid] = artifact_filter.flow_run_id.any_
        rows = self.runs[rid].get("rows")
        return [SimpleNamespace(description=f"{SHARD_REPORT}: x", data=json.dumps(rows))] if rows is not None else []

    def read_events(self, *args, **kwargs):
        return SimpleNamespace(events=[])


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakePrefect:
    import prefect.client.orchestration
    import prefect.deployments

    f = FakePrefect(tmp_path / "out", {"c.png": "crash-after-1", "f.png": "hang"})
    monkeypatch.setattr(prefect.deployments, "run_deployment", f.run_deployment)
    monkeypatch.setattr(prefect.client.orchestration, "get_client", lambda sync_client: f)
    return f


def test_shards_retry_what_a_crash_left_and_cancel_what_hangs(fake: FakePrefect) -> None:
    from flows.fanout import run_shards

    uris = [f"/in/{n}.png" for n in ("a", "b", "c", "d", "bad", "e", "f")]
    events: list[tuple[str, str]] = []
    with progress.reporting(lambda event, **info: events.append((event, Path(info["image"]).name))):
        entries = run_shards(uris, {"out": str(fake.out)},
                             ShardPlan(size=2, in_flight=2, retries=1, timeout_s=0.3, stale_after_s=60), poll_s=0.01)
    by_name = {Path(e["image"]).name: e for e in entries}
    assert [Path(e["image"]).name for e in entries] == [Path(u).name for u in uris]  # input order
    assert {n: e["status"] for n, e in by_name.items()} == {
        "a.png": "completed", "b.png": "completed", "c.png": "completed", "d.png": "completed",
        "bad.png": "failed", "e.png": "completed", "f.png": "failed"}
    # shards of 2, the crashed shard's second run holding only the image it had not written
    assert [[Path(u).name for u in p["images"]] for p in fake.params] == [
        ["a.png", "b.png"], ["c.png", "d.png"], ["d.png"], ["bad.png", "e.png"], ["f.png"]]  # a timeout is not retried
    assert fake.max_open <= 2
    assert fake.reads and fake.direct_reads == 0  # the running shards are read together, never one by one
    assert by_name["c.png"]["attempts"] == 1 and by_name["c.png"]["n_masks"] == 3  # written by the crashed run
    assert by_name["d.png"]["attempts"] == 2
    assert "not finished after 0.3 s" in by_name["f.png"]["error"] and by_name["f.png"]["attempts"] == 1
    assert fake.cancels == 1  # the timed-out run was asked to stop, not left running beside the report
    assert by_name["bad.png"]["error"] == "/in/bad.png: not an image"
    assert sorted(events) == sorted([("image_done", n) for n in ("a.png", "b.png", "c.png", "d.png", "e.png")]
                                    + [("image_failed", "bad.png"), ("image_failed", "f.png")])


@pytest.mark.timeout(120)  # a read the server refuses would be asked again forever
def test_more_shards_in_flight_than_a_server_answers_at_once_are_read_page_by_page(fake: FakePrefect) -> None:
    from flows.fanout import READ_PAGE, run_shards

    uris = [f"/in/{i:04d}.png" for i in range(READ_PAGE + 50)]
    entries = run_shards(uris, {"out": str(fake.out)}, ShardPlan(size=1, in_flight=len(uris)), poll_s=0.01)
    assert [e["status"] for e in entries] == ["completed"] * len(uris) and fake.max_open == len(uris)
    assert fake.direct_reads == 0


def test_a_shard_run_gone_from_the_server_is_read_alone_and_said(fake: FakePrefect, monkeypatch, caplog) -> None:
    import flows.fanout as fanout

    gone: list = []

    def listed(flow_run_filter, limit):  # the server no longer lists a run of `gone`
        fake.direct = False
        runs = [fake.read_flow_run(rid) for rid in flow_run_filter.id.any_ if rid not in gone]
        fake.direct = True
        return runs

    monkeypatch.setattr(fake, "read_flow_runs", listed)
    shard = fanout._Shard(0, ["/in/a.png"], ["a"], run=fake.run_deployment("segment", {"images": ["/in/a.png"],
                                                                                      "names": ["a"]}, 0, "shard"))
    gone.append(shard.run.id)
    runs = fanout._read_runs(fake, [shard])
    assert runs[shard.run.id].id == shard.run.id and fake.direct_reads == 1  # read alone: its answer or its error
    del fake.runs[shard.run.id]
    with caplog.at_level("WARNING"):
        assert fanout._read_runs(fake, [shard]) == {}
    assert f"cannot read shard run {shard.run.id}" in caplog.text


def test_a_bad_shard_plan_is_one_value_error() -> None:
    with pytest.raises(ValueError, match="shard size must be >= 1"):
        ShardPlan(size=0)
    with pytest.raises(ValueError, match="shard timeout_s must be > 0"):
        ShardPlan(timeout_s=0)


def test_a_dead_batchs_shard_runs_are_ended_only_when_their_flow_runs_are_over(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch that died could not end its shard runs' MLflow runs. The next sharded batch ends those
    whose Prefect flow run is over (crashed) or gone from this Prefect API, and leaves a running one
    to end itself, and one of another Prefect API (its flow run id means nothing here)."""
    from mlflow import MlflowClient
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.fanout import end_dead_shard_runs
    from samseg.edges.mlflow import client as mlflow_client, tracking
    from samseg.edges.mlflow.shard_runs import start_shard_run

    exp = f"dead-shards-{uuid.uuid4().hex[:8]}"
    batch = tracking.start_batch_run(exp, "killed", {}, {})
    states = {"crashed": _State(name="Crashed", message="-9"), "running": _State(name="Running", message=None)}
    here, there = "http://127.0.0.1:9/api", "http://staging.example:4200/api"
    runs = {}
    for key, api in (("crashed", here), ("running", here), ("gone", here), ("elsewhere", there)):
        monkeypatch.setenv("PREFECT_API_URL", api)  # as a worker of that server runs the shard
        runs[key] = start_shard_run(exp, batch, f"shard-{key}", {}, f"flow-{key}", str(tmp_path))

    class Api:
        def read_flow_run(self, flow_run_id: str) -> SimpleNamespace:
            key = flow_run_id.removeprefix("flow-")
            if key not in states:
                raise ObjectNotFound(http_exc=Exception("404"))
            return SimpleNamespace(id=flow_run_id, state=states[key])

    with temporary_settings({PREFECT_API_URL: here}):
        assert sorted(end_dead_shard_runs(Api(), exp)) == sorted([runs["crashed"], runs["gone"]])
        client = MlflowClient(mlflow_client.tracking_uri())
        assert {k: client.get_run(r).info.status for k, r in runs.items()} == {
            "crashed": "KILLED", "running": "RUNNING", "gone": "KILLED", "elsewhere": "RUNNING"}
        states["running"] = _State(name="Completed", message=None)  # it ended without ending its run
        assert end_dead_shard_runs(Api(), exp) == [runs["running"]]


def test_shards_are_made_as_slots_free_so_the_inputs_are_never_all_held(fake: FakePrefect, monkeypatch) -> None:
    import prefect.deployments

    from flows.fanout import run_shards

    read: list[str] = []
    submitted_when: list[int] = []

    def inputs():  # a listing page by page: how many it had given when each shard went out
        for i in range(20):
            read.append(f"/in/{i:02d}.png")
            yield read[-1]

    run_deployment = fake.run_deployment

    def counting(*args, **kwargs):
        submitted_when.append(len(read))
        return run_deployment(*args, **kwargs)

    monkeypatch.setattr(prefect.deployments, "run_deployment", counting)
    entries = run_shards(inputs(), {"out": str(fake.out)}, ShardPlan(size=3, in_flight=2), poll_s=0.01)
    assert submitted_when[:2] == [3, 6]  # the first two shards out before the third is read
    assert all(n <= 3 * (k + 1) for k, n in enumerate(submitted_when))
    assert [Path(e["image"]).name for e in entries] == [Path(u).name for u in read] and len(entries) == 20
    assert [p["names"] for p in fake.params][:2] == [["00", "01", "02"], ["03", "04", "05"]]


def test_a_sharded_batch_reports_and_records_its_images_from_disk(fake: FakePrefect, tmp_path: Path, monkeypatch) -> None:
    """run_batch of a sharded batch (no dataset classes): the inputs are a Listing, the entries
    spilled; batch_summary.json and the MLflow batch run's record still list every image in input
    order, with the counts, as a list-held batch writes them."""
    from flows.fanout import run_shards
    from mlflow_store import sqlite_uri
    from samseg.core.config import configure
    from samseg.edges.mlflow import client as mlflow_client
    from samseg.edges.mlflow.tracking import batch_record
    from samseg.edges.run_schema import SHARDED
    from samseg.edges.spill import SpilledEntries
    from samseg.engine.batch import Listing, run_batch
    from samseg.engine.publish import Tracking
    from samseg.engine.request import SegmentJob

    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri(tmp_path / "mlflow.db"))
    photos = tmp_path / "in"
    photos.mkdir()
    for n in ("e", "a", "bad", "d", "c"):
        (photos / f"{n}.png").write_bytes(b"")
    job = SegmentJob(configure(preset="smoke", model="tiny-random"), out=str(fake.out),
                     tracking=Tracking(track=True, experiment="sharded"))
    seen = []

    def run_images(uris, per_image, names):  # the parent's side of a sharded batch: run_shards
        seen.append(uris)
        return run_shards(uris, {"out": job.out}, ShardPlan(size=2, in_flight=1), poll_s=0.01, names=names)

    report = run_batch(str(photos), job, run_images, None, SHARDED)
    assert isinstance(seen[0], Listing) and isinstance(report["images"], SpilledEntries)
    order = [str(photos / f"{n}.png") for n in ("a", "bad", "c", "d", "e")]
    summary = json.loads((fake.out / "batch_summary.json").read_text())
    assert [e["image"] for e in summary["images"]] == order
    assert (summary["succeeded"], summary["failed"], summary["fan_out"]) == (4, 1, SHARDED)
    run = mlflow_client.client().get_run(report["mlflow_run_id"])
    record = batch_record(mlflow_client.client(), run)
    assert [e["image"] for e in record["images"]] == order and record["failed"] == 1
    assert run.info.status == "FAILED" and run.data.metrics["images"] == 5


def test_an_image_a_completed_shard_did_not_report_fails_instead_of_vanishing(fake: FakePrefect) -> None:
    from flows.fanout import run_shards

    fake.scripts["s.png"] = "short"
    uris = [f"/in/{n}.png" for n in ("s", "t", "u")]
    entries = run_shards(uris, {"out": str(fake.out)}, ShardPlan(size=2, in_flight=1), poll_s=0.01)
    assert [(Path(e["image"]).name, e["status"]) for e in entries] == [
        ("s.png", "completed"), ("t.png", "failed"), ("u.png", "completed")]
    assert "not in its shard run's report" in list(entries)[1]["error"] and entries.counts["failed"] == 1
    assert len(entries) == 3 and entries.counts["succeeded"] == 2  # the foreign row is not the batch's


def test_a_listing_that_fails_mid_batch_lets_the_running_shards_finish_then_fails(fake: FakePrefect) -> None:
    from flows.fanout import run_shards
    from samseg.edges.storage import StorageError

    def inputs():  # S3 answers the first page, then is gone
        yield from (f"/in/{n}.png" for n in ("a", "b", "c"))
        raise StorageError("s3://b/in: list failed: endpoint gone")

    with pytest.raises(StorageError, match="endpoint gone"):
        run_shards(inputs(), {"out": str(fake.out)}, ShardPlan(size=2, in_flight=2), poll_s=0.01)
    assert [p["images"] for p in fake.params] == [["/in/a.png", "/in/b.png"]]
    assert fake.cancels == 0 and all(r["state"].name == "Completed" for r in fake.runs.values())  # not cancelled
