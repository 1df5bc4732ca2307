"""Dataset-level classes end to end with the tiny-random SAM over the test photos (tests/data/photos).

The batch is segmented image by image (per-image ids, as segment-batch writes them), then
samseg.edges.dataset_outputs.apply_dataset_classes gives the whole batch shared ids, classes.json and a
contact sheet; a second batch is labelled from those classes (--classes-from), and the
MLflow edge round-trips classes.json through a run.

tiny-random's masks are meaningless: this checks plumbing and consistency only (every id
in every labels.png is a class of classes.json, masks.json agrees), never quality.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_run import run_cli
from samseg.core.dataset import ClassTable, assign_to_classes
from mlflow_store import sqlite_uri

PHOTOS = ("building.jpg", "bears.jpg", "alphabet.jpg", "corgi.jpg")
# Long side of the copies segmented here: full-size photos make the tiny-random AMG's
# full-resolution mask post-processing take minutes on CI's 2 cores; plumbing is the same.
SMALL_SIDE = 320


@pytest.fixture(scope="module")
def segmented(photos, tiny_model, smoke_cfg, tmp_path_factory):
    """OUT/<stem>/ per image with per-image cluster ids, from SMALL_SIDE-px PNG copies."""
    from samseg.core.cluster import cluster_embeddings
    from samseg.core.compose import compose_labels
    from samseg.edges.image_dir import write_image_dir
    from samseg.edges.images import load_image
    from samseg.edges.cache import StageCache
    from samseg.engine.runner import run_image
    from samseg.engine.summary import summarize
    from samseg.sam.source import ModelIdentity

    # 4×4 prompts (48 masks a photo, 192 in the batch) instead of smoke's 8×8: enough
    # masks to form batch classes, a quarter of the AMG time on 2 shared cores.
    cfg = smoke_cfg.replace(amg={"points_per_side": 4})
    root = tmp_path_factory.mktemp("dataset")
    (root / "photos").mkdir()
    out, dirs, segs = root / "out", [], []
    for name in PHOTOS:
        small = Image.fromarray(load_image(photos / name).rgb)
        small.thumbnail((SMALL_SIDE, SMALL_SIDE))
        small.save(root / "photos" / f"{Path(name).stem}.png")
        img = load_image(root / "photos" / f"{Path(name).stem}.png")
        seg = run_image(img, cfg, ModelIdentity.of(tiny_model), StageCache(root / "cache"), load_model=lambda: tiny_model)
        own = cluster_embeddings(seg.embeddings, cfg.cluster)  # per-image ids
        dirs.append(write_image_dir(out / img.stem, img, seg.masks, seg.embeddings, own,
                                  compose_labels(seg.masks, own), summarize(seg).to_dict()))
        segs.append(seg)
    return root, out, dirs, segs, cfg


@pytest.fixture(scope="module")
def batch_run(segmented):
    from samseg.edges.dataset_outputs import apply_dataset_classes

    root, out, dirs, segs, cfg = segmented
    report = apply_dataset_classes(out, dirs, cfg.cluster)
    table = ClassTable.from_json(Path(report["classes_json"]).read_text(), source=report["classes_json"])
    return report, table


def test_every_label_id_is_a_class(segmented, batch_run):
    from samseg.edges.image_dir import read_label_png, read_image_dir

    _, out, dirs, segs, _ = segmented
    report, table = batch_run
    names = [f"{Path(n).stem}.png" for n in PHOTOS]
    assert report["mode"] == "dataset" and table.image_names == names
    # Not a quality claim: with no class at all the consistency checks below would be vacuous.
    assert table.n_classes >= 1 and table.n_noise < sum(len(s.masks) for s in segs)
    assert int(table.sizes.sum()) + table.n_noise == sum(len(s.masks) for s in segs)
    assert report["metrics"]["n_classes"] == table.n_classes
    for d, name, seg in zip(dirs, names, segs):
        labels = read_label_png(d / "labels.png")
        assert labels.shape == seg.masks.image_hw
        ids = {int(v) - 1 for v in np.unique(labels) if v > 0}
        assert ids <= set(range(table.n_classes))
        for c in ids:  # a class painted in an image lists that image in classes.json
            assert name in table.image_counts[c]
        _, emb, stored = read_image_dir(d)
        assert np.array_equal(emb, seg.embeddings)
        for c, counts in enumerate(table.image_counts):  # masks.json carries the dataset ids
            assert int((stored == c).sum()) == counts.get(name, 0)
        summary = json.loads((d / "summary.json").read_text())
        assert summary["classes"] == "dataset" and summary["dataset_n_classes"] == table.n_classes
        assert summary["n_noise"] == int((stored < 0).sum())
        present = sorted({int(c) for c in stored[stored >= 0]})  # the classes this image has, not the max id + 1
        assert summary["n_clusters"] == len(present) and summary["classes_present"] == present
        assert sorted(p.name for p in (d / "classes").iterdir()) == sorted(f"class_{c}.png" for c in present)


def test_members_are_covered_by_their_classes(segmented, batch_run):
    from samseg.edges.image_dir import read_image_dir

    _, _, dirs, _, _ = segmented
    _, table = batch_run
    for d in dirs:
        _, emb, stored = read_image_dir(d)
        again = assign_to_classes(emb, table).labels
        # every clustered mask lies inside its own class's radius, so it is never noise here
        assert (again[stored >= 0] >= 0).all()


def test_contact_sheet_written(segmented, batch_run):
    report, table = batch_run
    sheet = np.asarray(Image.open(report["contact_sheet"]))
    assert sheet.ndim == 3 and sheet.shape[2] == 3
    assert sheet.shape[0] >= min(table.n_classes, 60) * 96


def test_classes_from_assigns_each_image_where_it_is_computed(segmented, batch_run, tmp_path):
    """--classes-from: each image is assigned to the given classes as it is computed and written
    once with their ids; the batch adds up the counts into classes.json (no image dir rewritten)."""
    from samseg.edges.image_dir import read_image_dir
    from samseg.engine.batch import ClassesRequest, segment_local
    from samseg.engine.publish import Tracking
    from samseg.engine.request import Runtime, SegmentJob

    root, _, _, segs, cfg = segmented
    first, table = batch_run
    sources = [str(root / "photos" / f"{Path(n).stem}.png") for n in PHOTOS[:2]]
    job = SegmentJob(cfg, Runtime(cache=str(root / "cache")), str(tmp_path / "new"), Tracking(track=False))
    report = segment_local(sources, job, ClassesRequest(classes_from=first["classes_json"]))
    assert report["failed"] == 0 and report["classes"]["mode"] == "assigned", report
    back = ClassTable.from_json(Path(report["classes"]["classes_json"]).read_text())
    assert np.array_equal(back.prototypes, table.prototypes)  # same classes, stable ids
    assert back.image_names == [Path(s).name for s in sources]
    total = 0
    for src, seg, entry in zip(sources, segs, report["images"]):
        d = Path(entry["out_dir"])
        _, emb, stored = read_image_dir(d)
        assert np.array_equal(emb, seg.embeddings)  # the same masks as the first batch's (its cache)
        assert np.array_equal(stored, assign_to_classes(emb, table).labels)
        summary = json.loads((d / "summary.json").read_text())
        assert summary["classes"] == "assigned" and summary["classes_from"] == "local classes.json"
        present = sorted({int(c) for c in stored[stored >= 0]})
        assert summary["classes_present"] == present and entry["n_clusters"] == len(present)
        for c, counts in enumerate(back.image_counts):  # classes.json's counts are the written masks'
            assert counts.get(Path(src).name, 0) == int((stored == c).sum())
        total += len(stored)
    assert int(back.sizes.sum()) + back.n_noise == total


def test_attack_a_classes_json_rewritten_mid_batch_is_refused_not_mixed(batch_run, tmp_path, monkeypatch):
    """A shard loads the batch's pinned reference and checks the table's sha256; the batch refuses
    to add up images assigned to another table (or to none)."""
    from samseg.edges.dataset_outputs import DatasetOutputsError
    from samseg.engine.dataset import GivenClasses, record_assigned

    first, _ = batch_run
    copy = tmp_path / "classes.json"
    copy.write_text(Path(first["classes_json"]).read_text())
    monkeypatch.chdir(tmp_path)
    given = GivenClasses.load("classes.json")
    assert given.ref == str(copy)  # pinned: a worker in another directory reads the same file
    doc = json.loads(copy.read_text())
    doc["classes"][0]["radius"] = 0.5
    copy.write_text(json.dumps(doc))
    with pytest.raises(DatasetOutputsError, match="the classes changed since the batch started"):
        GivenClasses.load(given.ref, given.sha256)
    entries = [{"name": "a", "image": "/x/a.jpg", "status": "completed", "n_masks": 3, "cluster_sizes": [3],
                "classes_sha256": "0" * 64}]
    report = record_assigned(str(tmp_path / "out"), iter(entries), given, None)  # read once, as a shard's spill streams
    assert "were not assigned to the batch's classes" in report["error"] and not (tmp_path / "out").exists()


def test_mlflow_round_trip(batch_run, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from samseg.edges.dataset_outputs import load_class_table, load_classes_from_run, log_dataset_classes
    from samseg.edges.mlflow.client import TrackingError

    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri(tmp_path / 'mlflow.db'))
    client = MlflowClient()
    exp = client.create_experiment("ds", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(exp, tags={"samseg.kind": "batch"}).info.run_id
    report, table = batch_run
    log_dataset_classes(run_id, report)
    run = client.get_run(run_id)
    assert run.data.tags["samseg.classes"] == "dataset"
    assert run.data.metrics["n_classes"] == table.n_classes
    assert {a.path for a in client.list_artifacts(run_id)} >= {"classes.json", "contact_sheet.png"}
    loaded = load_classes_from_run(run_id)
    assert np.array_equal(loaded.prototypes, table.prototypes) and loaded.sample["run_id"] == run_id
    assert np.array_equal(load_class_table(report["classes_json"]).radii, table.radii)  # a file works too
    empty = client.create_run(exp).info.run_id
    with pytest.raises(TrackingError, match=f"MLflow run {empty}: no usable classes.json"):
        load_classes_from_run(empty)


def test_cli_dataset_classes_then_classes_from_run(prefect_api, small_photos, tmp_path):
    """Through `samseg segment` and segment-batch: --classes dataset over three photos, then
    --classes-from the batch run id on a fourth; MLflow holds what the next run needs."""
    import uuid

    from mlflow import MlflowClient

    from samseg.edges.image_dir import read_label_png

    src = tmp_path / "in"
    src.mkdir()
    for name in PHOTOS[:3]:
        shutil.copy(small_photos / name, src / name)
    experiment = f"dataset-{uuid.uuid4().hex[:8]}"
    common = ["--model", "tiny-random", "--preset", "smoke", "--points-per-side", "4", "--device", "cpu",
              "--experiment", experiment]

    def label_ids(d: Path) -> set[int]:
        return {int(v) - 1 for v in np.unique(read_label_png(d / "labels.png")) if v > 0}

    rc, stdout, stderr = run_cli(["segment", str(src), "--out", str(tmp_path / "out"), "--classes", "dataset", *common])
    assert rc == 0, stderr
    report = json.loads((tmp_path / "out" / "batch_summary.json").read_text())
    table = ClassTable.from_json((tmp_path / "out" / "classes.json").read_text())
    assert report["classes"]["mode"] == "dataset" and report["classes"]["n_classes"] == table.n_classes
    assert table.n_classes >= 1  # not a quality claim: with no class the id checks below would be vacuous
    for name in PHOTOS[:3]:
        d = tmp_path / "out" / Path(name).stem
        assert label_ids(d) <= set(range(table.n_classes))
        assert json.loads((d / "summary.json").read_text())["classes"] == "dataset"

    ml = MlflowClient()
    batch_id = report["mlflow_run_id"]
    batch = ml.get_run(batch_id)
    assert batch.info.status == "FINISHED" and batch.data.tags["samseg.classes"] == "dataset"
    assert batch.data.metrics["n_classes"] == table.n_classes
    assert {a.path for a in ml.list_artifacts(batch_id)} >= {"classes.json", "contact_sheet.png"}
    children = ml.search_runs([batch.info.experiment_id], f"tags.mlflow.parentRunId = '{batch_id}'")
    assert sorted(r.info.run_name for r in children) == sorted(PHOTOS[:3])
    for child in children:  # logged after relabelling: the child runs carry the dataset ids
        path = ml.download_artifacts(child.info.run_id, "summary.json", str(tmp_path))
        summary = json.loads(Path(path).read_text())
        assert summary["classes"] == "dataset" and child.data.metrics["n_clusters"] == summary["n_clusters"]

    # a later image, labelled with the batch run's classes: same ids, no re-clustering
    new = tmp_path / "new"
    new.mkdir()
    shutil.copy(small_photos / PHOTOS[3], new / PHOTOS[3])
    rc, stdout, stderr = run_cli(["segment", str(new / PHOTOS[3]), "--out", str(tmp_path / "out2"),
                              "--classes-from", batch_id, *common])
    assert rc == 0, stderr
    assigned = ClassTable.from_json((tmp_path / "out2" / "classes.json").read_text())
    assert np.array_equal(assigned.prototypes, table.prototypes)
    d = tmp_path / "out2" / Path(PHOTOS[3]).stem
    assert label_ids(d) <= set(range(table.n_classes))
    assert json.loads((d / "summary.json").read_text())["classes"] == "assigned"
    second = ml.get_run(json.loads((tmp_path / "out2" / "batch_summary.json").read_text())["mlflow_run_id"])
    assert second.data.tags["samseg.classes"] == "assigned" and second.data.tags["samseg.classes_from"] == batch_id

    # a run id without classes.json fails before any image is segmented: one line, exit 1
    rc, _, stderr = run_cli(["segment", str(new), "--out", str(tmp_path / "out3"), "--classes-from", children[0].info.run_id,
                         *common])
    assert rc == 1 and "no usable classes.json" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out3" / "corgi").exists()


def test_dataset_classes_on_s3_then_classes_from_its_json(mlflow_env, s3_bucket, small_photos, tmp_path):
    """--classes dataset with --out s3://…: every image dir is read back from its manifest,
    relabelled and published again (a cut-out of a per-image class that is gone goes with it,
    the user's object beside it stays); classes.json, the contact sheet and the image runs'
    out dirs on S3; then --classes-from that s3:// classes.json."""
    import io
    import uuid

    from mlflow import MlflowClient

    from samseg.edges.image_dir import read_label_png
    from samseg.edges.storage import SUCCESS_MARKER, join_uri, list_keys, listed_files, read_bytes, write_bytes

    src = tmp_path / "in"
    src.mkdir()
    for name in PHOTOS[:3]:
        shutil.copy(small_photos / name, src / name)
    out = f"s3://{s3_bucket}/out"
    write_bytes(f"{out}/notes.txt", b"the user's")  # beside the image dirs: never samseg's to touch
    experiment = f"dataset-s3-{uuid.uuid4().hex[:8]}"
    common = ["--model", "tiny-random", "--preset", "smoke", "--points-per-side", "4", "--device", "cpu",
              "--experiment", experiment, "--orchestrator", "local", "--no-cache"]
    rc, stdout, stderr = run_cli(["segment", str(src), "--out", out, "--classes", "dataset", *common])
    assert rc == 0, stderr
    report = json.loads(read_bytes(f"{out}/batch_summary.json"))
    table = ClassTable.from_json(read_bytes(f"{out}/classes.json"))
    assert report["classes"]["mode"] == "dataset" and report["classes"]["classes_json"] == f"{out}/classes.json"
    assert table.n_classes >= 1  # not a quality claim: with no class the id checks below would be vacuous
    assert read_bytes(f"{out}/notes.txt") == b"the user's"
    Image.open(io.BytesIO(read_bytes(f"{out}/contact_sheet.png"))).verify()
    for name in PHOTOS[:3]:
        d = join_uri(out, Path(name).stem)
        listed = set(listed_files(join_uri(d, SUCCESS_MARKER)))
        keys = {k[len(d) + 1:] for k in list_keys(d)} - {SUCCESS_MARKER}
        assert keys == listed  # nothing left over from the per-image publish
        summary = json.loads(read_bytes(join_uri(d, "summary.json")))
        assert summary["classes"] == "dataset"
        ids = {int(v) - 1 for v in np.unique(read_label_png(io.BytesIO(read_bytes(join_uri(d, "labels.png"))))) if v > 0}
        assert ids <= set(range(table.n_classes)) and ids == set(summary["classes_present"])
        assert {k for k in listed if k.startswith("classes/")} == {f"classes/class_{c}.png" for c in ids}

    ml = MlflowClient()
    batch = ml.get_run(report["mlflow_run_id"])
    assert batch.info.status == "FINISHED" and batch.data.tags["samseg.classes"] == "dataset"
    assert {a.path for a in ml.list_artifacts(batch.info.run_id)} >= {"classes.json", "contact_sheet.png"}
    children = ml.search_runs([batch.info.experiment_id], f"tags.mlflow.parentRunId = '{batch.info.run_id}'")
    assert sorted(r.data.tags["samseg.out_dir"] for r in children) == sorted(
        join_uri(out, Path(n).stem) for n in PHOTOS[:3])

    new = tmp_path / "new"
    new.mkdir()
    shutil.copy(small_photos / PHOTOS[3], new / PHOTOS[3])
    rc, _, stderr = run_cli(["segment", str(new), "--out", f"s3://{s3_bucket}/out2", "--classes-from",
                             f"{out}/classes.json", *common])
    assert rc == 0, stderr
    assigned = ClassTable.from_json(read_bytes(f"s3://{s3_bucket}/out2/classes.json"))
    assert np.array_equal(assigned.prototypes, table.prototypes)
    summary = json.loads(read_bytes(f"s3://{s3_bucket}/out2/{Path(PHOTOS[3]).stem}/summary.json"))
    assert summary["classes"] == "assigned"


def test_dataset_classes_are_named_once_for_the_batch_and_assigned_images_keep_the_names(small_photos, tmp_path):
    """--classes dataset with a vocabulary: classes.json names each dataset class once (the
    seeded tiny open_clip namer: the names are meaningless, only where they go is checked), every
    image's summary, legend (masks.json categories) and export use them; a later image assigned
    to those classes (--classes-from, names off) gets the same names."""
    src = tmp_path / "in"
    src.mkdir()
    for name in PHOTOS[:3]:
        shutil.copy(small_photos / name, src / name)
    vocab = "grass,water"  # two names: the seeded namer's margin clears the bar for two, so some class is named
    common = ["--model", "tiny-random", "--preset", "smoke", "--points-per-side", "4", "--device", "cpu",
              "--no-track", "--no-cache", "--orchestrator", "local", "-q"]
    rc, _, stderr = run_cli(["segment", str(src), "--out", str(tmp_path / "out"), "--classes", "dataset", *common,
                             "--names", vocab, "--namer", "tiny-random", "--names-min-prob", "0.01"])
    assert rc == 0, stderr
    table = ClassTable.from_json((tmp_path / "out" / "classes.json").read_text())
    assert table.n_classes >= 1  # not a quality claim: with no class the checks below would be vacuous
    assert table.naming["namer"] == "tiny-random" and table.naming["vocabulary"] == vocab
    assert [r["id"] for r in table.naming["classes"]] == list(range(table.n_classes))
    assert all(r["best"] in vocab.split(",") for r in table.naming["classes"])
    assert table.class_names  # else the checks below would be vacuous
    for name in PHOTOS[:3]:
        d = tmp_path / "out" / Path(name).stem
        summary = json.loads((d / "summary.json").read_text())
        assert summary["class_names"] == {str(c): table.class_names[c] for c in summary["classes_present"]
                                          if c in table.class_names}
        cats = json.loads((d / "masks.json").read_text())["categories"]
        assert [c["name"] for c in cats] == [table.class_names.get(k, f"class_{k}") for k in range(len(cats))]
    rc, _, stderr = run_cli(["export", str(tmp_path / "out"), "--format", "coco", "--out", str(tmp_path / "coco")])
    assert rc == 0, stderr
    exported = [c["name"] for c in json.loads((tmp_path / "coco" / "annotations.json").read_text())["categories"]]
    wanted = [table.class_names.get(k, f"class_{k}") for k in range(table.n_classes)]
    # one category per dataset class, named; two classes named alike stay two ("grass (0)", "grass (1)")
    assert exported == [n if wanted.count(n) == 1 else f"{n} ({k})" for k, n in enumerate(wanted)]

    new = tmp_path / "new"
    new.mkdir()
    shutil.copy(small_photos / PHOTOS[3], new / PHOTOS[3])
    rc, _, stderr = run_cli(["segment", str(new), "--out", str(tmp_path / "out2"), "--classes-from",
                             str(tmp_path / "out" / "classes.json"), *common, "--names", "none"])
    assert rc == 0, stderr
    assigned = ClassTable.from_json((tmp_path / "out2" / "classes.json").read_text())
    assert assigned.naming == table.naming
    summary = json.loads((tmp_path / "out2" / Path(PHOTOS[3]).stem / "summary.json").read_text())
    assert summary["class_names"] == {str(c): table.class_names[c] for c in summary["classes_present"]
                                      if c in table.class_names}


def test_the_images_of_a_dataset_batch_are_not_named_on_their_own_ids() -> None:
    """The batch names its classes once; naming each image first would be work thrown away."""
    from samseg.engine.batch import image_job
    from samseg.engine.publish import Tracking
    from samseg.engine.request import Runtime, SegmentJob
    from samseg.core.config import configure

    job = SegmentJob(configure(names="coco-stuff"), Runtime(), "out", Tracking(track=False))
    assert image_job(job, job.tracking, dataset=True).cfg.names.vocabulary == "none"
    assert image_job(job, job.tracking, dataset=False).cfg == job.cfg


def test_a_sharded_batch_fits_its_classes_on_a_spread_sample_and_assigns_every_image_where_it_is_computed(
        segmented, tmp_path):
    """--fan-out deployment with more images than --fit-images: the classes are fitted on a spread
    sample (its images computed first, their dirs the only ones read back), then every image is
    computed again (stages cached), assigned to those classes and written once with their ids.
    The parent holds neither the inputs (a Listing, named on disk) nor the entries (spilled by
    the shards): classes.json is added up from the entries as they stream, once."""
    from samseg.core.dataset import ClassTable
    from samseg.edges.image_dir import read_image_dir
    from samseg.edges.spill import SpilledEntries, spill_entries
    from samseg.engine.batch import ClassesRequest, Listing, run_batch
    from samseg.engine.dataset import spread, table_sha256
    from samseg.engine.publish import Tracking
    from samseg.engine.request import Runtime, SegmentJob
    from samseg.engine.segment import segment_overlapped, start_one

    root, _, _, _, cfg = segmented
    sources = [str(root / "photos" / f"{Path(n).stem}.png") for n in PHOTOS]
    job = SegmentJob(cfg, Runtime(cache=str(root / "cache")), str(tmp_path / "out"), Tracking(track=False))
    calls = []

    def run_images(uris, per_image, names):  # the shards' loop, here in-process; its entries spilled as run_shards does
        calls.append((type(uris), list(uris), names, per_image.assign_to))
        return spill_entries(segment_overlapped(uris, job.out, lambda uri, name: start_one(uri, per_image, name),
                                                names=names))

    report = run_batch(sources, job, run_images, ClassesRequest(fit_images=2), "deployment")
    assert spread(4, 2) == [1, 3] and spread(3, 5) == [0, 1, 2] and spread(1000, 3) == [166, 500, 833]
    (_, sample, sample_names, none), (listed, every, names, given) = calls
    assert sample == [sources[1], sources[3]] and sample_names == ["bears", "corgi"] and none is None
    assert listed is Listing and every == sources and names is None  # named as the sample was: unique stems
    assert isinstance(report["images"], SpilledEntries)
    assert [e["name"] for e in report["images"]] == ["building", "bears", "alphabet", "corgi"]
    fitted = ClassTable.from_json((tmp_path / "out" / "classes.fitted.json").read_text())
    assert table_sha256(fitted) == given.sha256 and fitted.image_names == ["bears.png", "corgi.png"]  # the sample's
    assert report["failed"] == 0 and report["classes"]["mode"] == "dataset", report  # the batch's own classes
    assert report["classes"]["fitted_on"] == "2 of 4 images"  # what the CLI's classes line says
    final = ClassTable.from_json(Path(report["classes"]["classes_json"]).read_text())
    assert np.array_equal(final.prototypes, fitted.prototypes) and final.image_names == [Path(s).name for s in sources]
    total = 0
    for entry in report["images"]:
        _, emb, stored = read_image_dir(Path(entry["out_dir"]))
        assert np.array_equal(stored, assign_to_classes(emb, fitted).labels)  # every image, the sample's too
        summary = json.loads((Path(entry["out_dir"]) / "summary.json").read_text())
        assert summary["classes"] == "assigned" and summary["classes_sha256"] == given.sha256
        assert summary["classes_from"] == str(tmp_path / "out" / "classes.fitted.json")  # where they came from
        total += len(stored)
    assert int(final.sizes.sum()) + final.n_noise == total
    # a later batch into the same OUT fitted on all of its masks: the earlier fitted classes go, samseg's own file
    from samseg.engine.batch import segment_local

    assert segment_local(sources[:2], job, ClassesRequest())["classes"]["mode"] == "dataset"
    assert not (tmp_path / "out" / "classes.fitted.json").exists()


def test_a_sharded_batch_given_classes_streams_its_inputs_and_entries_into_classes_json(segmented, batch_run, tmp_path):
    """--classes-from with --fan-out deployment: the shards assign, the parent reads a Listing and
    the shards' spilled entries, and classes.json adds up every image from them."""
    from samseg.core.dataset import ClassTable
    from samseg.edges.spill import SpilledEntries, spill_entries
    from samseg.engine.batch import ClassesRequest, Listing, run_batch
    from samseg.engine.publish import Tracking
    from samseg.engine.request import Runtime, SegmentJob
    from samseg.engine.segment import segment_overlapped, start_one

    root, _, _, _, cfg = segmented
    first, _ = batch_run
    sources = [str(root / "photos" / f"{Path(n).stem}.png") for n in PHOTOS]
    job = SegmentJob(cfg, Runtime(cache=str(root / "cache")), str(tmp_path / "out"), Tracking(track=False))
    seen = []

    def run_images(uris, per_image, names):  # the shards, here in-process; their entries spilled as run_shards does
        seen.append((type(uris), per_image.assign_to))
        return spill_entries(segment_overlapped(uris, job.out, lambda uri, name: start_one(uri, per_image, name),
                                                names=names))

    report = run_batch(sources, job, run_images, ClassesRequest(classes_from=first["classes_json"]), "deployment")
    [(listed, given)] = seen
    assert listed is Listing and given is not None and isinstance(report["images"], SpilledEntries)
    assert report["failed"] == 0 and report["classes"]["mode"] == "assigned", report
    final = ClassTable.from_json(Path(report["classes"]["classes_json"]).read_text())
    assert final.image_names == [Path(s).name for s in sources]
    assert int(final.sizes.sum()) + final.n_noise == sum(e["n_masks"] for e in report["images"])


def test_the_sample_of_a_fit_is_named_as_the_full_run_names_its_images(tmp_path):
    """Two inputs with one stem: the second is <stem>-2 in the sample as in the batch's shards."""
    from samseg.edges.outdirs import unique_names
    from samseg.engine.batch import ClassesRequest, Listing
    from samseg.engine.dataset import fit_then_assign, spread
    from samseg.engine.segment import failed_entry

    sources = [str(tmp_path / d / f"{n}.png") for d, n in (("a", "x"), ("b", "x"), ("c", "y"), ("d", "x"), ("e", "z"))]
    for s in sources:
        Path(s).parent.mkdir()
        Path(s).write_bytes(b"")
    sampled = []

    def run_images(uris, per_image, names):  # the sample lost: the fit stops after it
        sampled.append(list(zip(uris, names)))
        return [failed_entry(u, n, f"{u}: worker lost") for u, n in zip(uris, names)]

    class Job:
        out = str(tmp_path / "out")

    pick = spread(5, 2)
    listing = Listing([str(tmp_path / d / "*.png") for d in "abcde"])
    _, _, error = fit_then_assign(listing, Job, lambda logged, to: None, ClassesRequest(fit_images=2), run_images)
    assert "no image of the 2" in error and pick == [1, 3]
    assert sampled == [[(sources[i], unique_names(sources)[i]) for i in pick]] == [[(sources[1], "x-2"), (sources[3], "x-3")]]


def test_a_sharded_batch_whose_fit_fails_reports_it_and_stays_incomplete(segmented, tmp_path):
    """No image of the sample could be segmented: one line says so, the images not started fail
    naming why, no classes.json is written and OUT stays marked incomplete for a rerun."""
    from samseg.edges.owned_files import incomplete_since
    from samseg.engine.batch import ClassesRequest, run_batch
    from samseg.engine.publish import Tracking
    from samseg.engine.request import Runtime, SegmentJob
    from samseg.edges.spill import SpilledEntries
    from samseg.engine.segment import failed_entry

    root, _, _, _, cfg = segmented
    sources = [str(root / "photos" / f"{Path(n).stem}.png") for n in PHOTOS]
    job = SegmentJob(cfg, Runtime(cache=str(root / "cache")), str(tmp_path / "out"), Tracking(track=False))
    calls = []

    def run_images(uris, per_image, names):  # every shard of the sample lost
        calls.append(uris)
        return [failed_entry(u, n, f"{u}: worker lost") for u, n in zip(uris, names)]

    report = run_batch(sources, job, run_images, ClassesRequest(fit_images=2), "deployment")
    assert len(calls) == 1  # nothing assigned without classes
    assert isinstance(report["images"], SpilledEntries)  # a failed entry for each image not started: on disk too
    assert "no image of the 2 the classes are fitted on was segmented" in report["classes"]["error"]
    assert [r["status"] for r in report["images"]] == ["failed"] * 4
    assert [r["error"].endswith("worker lost") for r in report["images"]] == [False, True, False, True]
    assert "not segmented: " in next(iter(report["images"]))["error"]
    assert not (tmp_path / "out" / "classes.json").exists() and incomplete_since(str(tmp_path / "out"))


def test_a_resumed_sharded_batch_keeps_the_classes_it_fitted_before(segmented, batch_run, tmp_path):
    """A killed sampled batch run again: images it logged before are not logged again, so it
    assigns to the classes.fitted.json it wrote then instead of fitting new ones."""
    from samseg.edges.dataset_outputs import write_fitted_classes
    from samseg.engine.batch import ClassesRequest
    from samseg.engine.dataset import fit_then_assign, table_sha256

    root, _, _, _, cfg = segmented
    _, table = batch_run
    out = tmp_path / "out"
    out.mkdir()
    ref = write_fitted_classes(str(out), table)
    sources = [str(root / "photos" / f"{Path(n).stem}.png") for n in PHOTOS]
    calls = []

    def run_images(uris, per_image, names):
        calls.append((uris, per_image))
        return [{"image": u, "status": "completed"} for u in uris]

    class Job:
        out = str(tmp_path / "out")

    given, results, error = fit_then_assign(sources, Job, lambda logged, to: (logged, to), ClassesRequest(fit_images=2),
                                            run_images, resumed=True)
    assert error is None and [c[0] for c in calls] == [sources]  # no sample run, no new fit
    assert calls[0][1] == (True, given) and given.ref == ref
    assert given.sha256 == table_sha256(ClassTable.from_json((out / "classes.fitted.json").read_text()))
