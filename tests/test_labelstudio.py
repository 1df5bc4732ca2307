"""`samseg export --format labelstudio --to URL` against a real Label Studio on 127.0.0.1.

Known structure: the UI tests' synthetic image dirs (12 rectangles, 2 classes + 2 noise masks),
so each pushed prediction must decode, pixel for pixel, to that class's pixels in labels.png.
Read back through the SDK; images fetched from the server."""

from __future__ import annotations

import base64
import json
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_run import run_cli
from ui_synthetic import H, W, write_two_runs

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def out_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ls-push")
    write_two_runs(tmp)
    return tmp


@pytest.fixture()
def ls_env(label_studio, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    from label_studio_sdk import LabelStudio

    return label_studio, LabelStudio(base_url=label_studio.url, api_key=label_studio.token)


def _push(source: Path, url: str, project: str) -> tuple[int, str, str]:
    return run_cli(["export", str(source), "--format", "labelstudio", "--to", url, "--project", project])


def test_push_read_back_pixel_for_pixel_then_no_duplicates_then_a_recluster_beside_it(out_root: Path, ls_env) -> None:
    import httpx
    from label_studio_sdk.converter.brush import decode_rle

    server, client = ls_env
    rc, out, err = _push(out_root / "out", server.url, "samseg-test")
    assert rc == 0, err
    assert "2 new tasks" in out and "2 predictions added" in out
    [project] = [p for p in client.projects.list(title="samseg-test") if p.title == "samseg-test"]
    tasks = list(client.tasks.list(project=project.id))
    assert len(tasks) == 2
    for task in tasks:
        name = next(n for n in ("alpha", "beta") if n in task.data["image"])
        d = out_root / "out" / name
        summary = json.loads((d / "summary.json").read_text())
        assert task.data["samseg_sha256"] == summary["image"]["sha256"]
        # the server serves the uploaded image: the very bytes of the input
        img = httpx.get(server.url + task.data["image"], headers={"Authorization": f"Token {server.token}"})
        assert img.status_code == 200 and img.content == (out_root / "images" / f"{name}.png").read_bytes()
        labels = np.asarray(Image.open(d / "labels.png"))
        [pred] = list(client.predictions.list(task=task.id))
        assert pred.model_version.startswith("samseg:") and 0 <= pred.score <= 1
        seen = set()
        for r in pred.result:  # labelled as the file exports name it: per-image classes are "<image>:class_<c>"
            stem, _, label = r["value"]["brushlabels"][0].partition(":")
            assert stem == name
            c = int(label.split("_")[1])
            mask = decode_rle(r["value"]["rle"]).reshape(H, W, 4)[..., 3] > 0
            np.testing.assert_array_equal(mask, labels == c + 1)  # pixel for pixel
            seen.add(c)
        assert seen == set(np.unique(labels[labels > 0]) - 1)

    config = client.projects.get(id=project.id).label_config
    assert {"alpha:class_0", "beta:class_0"} <= set(re.findall(r'<Label value="([^"]+)"', config))

    rc, out, err = _push(out_root / "out", server.url, "samseg-test")  # again: nothing duplicated
    assert rc == 0 and "0 new tasks, 2 already there" in out and "2 replaced" in out
    assert len(list(client.tasks.list(project=project.id))) == 2
    assert all(len(list(client.predictions.list(task=t.id))) == 1 for t in tasks)

    # a recluster of the run (other clustering settings, same images): a second model_version beside the first
    other = out_root / "reclustered"
    shutil.copytree(out_root / "out", other)
    for d in other.iterdir():
        s = json.loads((d / "summary.json").read_text())
        s["config"]["cluster.eps"] = 0.2
        (d / "summary.json").write_text(json.dumps(s))
    rc, out, err = _push(other, server.url, str(project.id))
    assert rc == 0 and "0 new tasks" in out and "2 predictions added" in out, err
    for t in tasks:
        versions = {p.model_version for p in client.predictions.list(task=t.id)}
        assert len(versions) == 2 and any("eps=0.2" in v for v in versions)


def test_wrong_token_unreachable_server_and_a_project_without_samseg_labels_are_one_line(out_root: Path, ls_env,
                                                                                        monkeypatch) -> None:
    from samseg.edges.labelstudio import labeling_config

    server, client = ls_env
    client.projects.create(title="not-samseg", label_config='<View><Image name="image" value="$image"/>'
                           '<RectangleLabels name="box" toName="image"><Label value="car"/></RectangleLabels></View>')
    rc, _, err = _push(out_root / "out", server.url, "not-samseg")
    assert rc == 1 and err.count("\n") == 1 and "has no <BrushLabels" in err
    for _ in range(2):
        client.projects.create(title="twice", label_config=labeling_config(["class_0", "class_1"]))
    rc, _, err = _push(out_root / "out", server.url, "twice")
    assert rc == 1 and err.count("\n") == 1 and "2 projects are titled 'twice'" in err and "--project ID" in err
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "not-the-token")
    rc, _, err = _push(out_root / "out", server.url, "samseg-test")
    assert rc == 1 and err.count("\n") == 1 and "refused the token" in err and "not-the-token" not in err
    rc, _, err = _push(out_root / "out", "http://127.0.0.1:9", "samseg-test")
    assert rc == 1 and err.count("\n") == 1 and "not reachable" in err


def test_an_image_that_went_missing_stops_with_how_many_went_in(out_root: Path, ls_env, tmp_path: Path) -> None:
    server, client = ls_env
    src = tmp_path / "out"
    shutil.copytree(out_root / "out", src)
    beta = json.loads((src / "beta" / "summary.json").read_text())
    beta["image"]["uri"] = str(tmp_path / "gone.png")
    beta["image"]["sha256"] = "f" * 64
    (src / "beta" / "summary.json").write_text(json.dumps(beta))
    rc, _, err = _push(src, server.url, "partial")
    assert rc == 1 and err.count("\n") == 1 and "1 of 2 tasks were pushed" in err and "pushing again completes" in err


def test_to_needs_the_labelstudio_format_and_no_out(out_root: Path) -> None:
    rc, _, err = run_cli(["export", str(out_root / "out"), "--format", "coco", "--to", "http://127.0.0.1:9"])
    assert rc == 2 and "needs --format labelstudio" in err
    rc, _, err = run_cli(["export", str(out_root / "out"), "--format", "labelstudio"])
    assert rc == 2 and "--out DIR" in err


def test_s3_images_get_the_bucket_as_source_storage_and_are_served(out_root: Path, ls_env, s3_bucket, s3_env,
                                                                  tmp_path: Path) -> None:
    """An image on S3 (moto) is not uploaded: the task references its s3:// URI, the project gets an
    S3 source storage for the bucket (once), and Label Studio serves the image from it."""
    import httpx

    server, client = ls_env
    body = (out_root / "images" / "alpha.png").read_bytes()
    s3_env.client().put_object(Bucket=s3_bucket, Key="in/alpha.png", Body=body)
    src = tmp_path / "out"
    shutil.copytree(out_root / "out" / "alpha", src / "alpha")
    s = json.loads((src / "alpha" / "summary.json").read_text())
    s["image"]["uri"] = f"s3://{s3_bucket}/in/alpha.png"  # the same bytes: its recorded sha256 holds
    (src / "alpha" / "summary.json").write_text(json.dumps(s))
    for _ in range(2):
        rc, out, err = _push(src, server.url, "from-s3")
        assert rc == 0, err
    [project] = [p for p in client.projects.list(title="from-s3") if p.title == "from-s3"]
    [storage] = list(client.import_storage.s3.list(project=project.id))
    assert storage.bucket == s3_bucket and storage.presign
    [task] = list(client.tasks.list(project=project.id))  # its s3:// URI, resolved through the storage
    resolved = task.data["image"]
    assert resolved.startswith(f"/tasks/{task.id}/resolve/?fileuri=")
    fileuri = base64.b64decode(resolved.split("fileuri=")[1]).decode()
    assert fileuri == f"s3://{s3_bucket}/in/alpha.png"
    img = httpx.get(server.url + resolved, headers={"Authorization": f"Token {server.token}"}, follow_redirects=True)
    assert img.status_code == 200 and img.content == body  # served from the bucket


def test_a_lost_import_answer_does_not_duplicate_the_task(out_root: Path, ls_env) -> None:
    """The server imported alpha but its answer never came back (it died, or the 30-s timeout
    passed): the task exists without samseg's sha256. The next push finds it by the sha256 prefix
    its upload name carries, records the sha256, and creates only beta's task."""
    from samseg.edges import labelstudio
    from samseg.edges.annotations import labeling_config

    server, client = ls_env
    project = client.projects.create(title="lost-answer", label_config=labeling_config(["class_0", "class_1"]))
    alpha = json.loads((out_root / "out" / "alpha" / "summary.json").read_text())["image"]
    data = (out_root / "images" / "alpha.png").read_bytes()
    labelstudio._upload(client, server.url, project.id, labelstudio.upload_name("alpha.png", alpha["sha256"]), data)
    rc, out, err = _push(out_root / "out", server.url, "lost-answer")
    assert rc == 0 and "1 new tasks, 1 already there" in out, err
    tasks = list(client.tasks.list(project=project.id))
    assert len(tasks) == 2 and {t.data.get("samseg_sha256") for t in tasks} >= {alpha["sha256"]}
    # the project's own labels stay; the pushed classes' labels were added beside them
    labels = re.findall(r'<Label value="([^"]+)"', client.projects.get(id=project.id).label_config)
    assert labels[:2] == ["class_0", "class_1"] and "alpha:class_0" in labels and len(labels) == len(set(labels))


def test_two_pushes_at_once_make_one_project_and_no_duplicate_task(out_root: Path, ls_env) -> None:
    """Two pushes into one new project at the same time (two CLI commands, the UI's button twice):
    one project, one task per image."""
    from concurrent.futures import ThreadPoolExecutor

    from samseg.edges.annotations import image_dirs, read_image_dirs
    from samseg.edges.labelstudio import push

    server, client = ls_env
    results = read_image_dirs(image_dirs(out_root / "out"))
    with ThreadPoolExecutor(2) as pool:
        done = [f.result() for f in [pool.submit(push, server.url, results, "at-once") for _ in range(2)]]
    projects = [p for p in client.projects.list(title="at-once") if p.title == "at-once"]
    assert len(projects) == 1 and sorted(d.created for d in done) == [0, 2]
    assert len(list(client.tasks.list(project=projects[0].id))) == 2


def test_the_ui_picks_the_oldest_of_two_projects_with_one_title(out_root: Path, ls_env) -> None:
    from samseg.edges.annotations import image_dirs, labeling_config, read_image_dirs
    from samseg.edges.labelstudio import LabelStudioError, push

    server, client = ls_env
    config = labeling_config(["class_0", "class_1"])
    title = f"twice-{uuid.uuid4().hex[:8]}"
    for _ in range(2):
        client.projects.create(title=title, label_config=config)
    ids = sorted(p.id for p in client.projects.list(title=title) if p.title == title)
    results = read_image_dirs(image_dirs(out_root / "out"))
    with pytest.raises(LabelStudioError, match=f"{len(ids)} projects are titled"):
        push(server.url, results, title)  # the CLI: the user passes --project ID
    assert len(ids) >= 2 and push(server.url, results, title, pick_oldest=True).project_id == ids[0]  # the UI's button
