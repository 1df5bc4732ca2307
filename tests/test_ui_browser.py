"""Real-browser test of `samseg ui`: Debian's Chromium driven by Playwright.

Runs are made with the real pipeline and the tiny-random SAM (preset smoke) on two shared
photos, logged to a SQLite MLflow store in a tmp dir; the UI runs as a subprocess on a
loopback port. tiny-random's masks are MEANINGLESS — the test checks plumbing (pages,
rerun, exemplar query, compare), never segmentation quality.

Screenshots land in test-artifacts/ui/ (git-ignored). Never a downloaded browser: the
test uses /usr/bin/chromium (apt packages chromium, chromium-driver) and skips without it.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from mlflow_store import sqlite_uri

pytestmark = pytest.mark.browser

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "ui"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
EXPERIMENT = "ui-browser"
TIMEOUT_MS = 90_000  # two shared CPU cores: be patient, never assert on timing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _segment_and_log(model, image_path: Path, out_root: Path) -> dict:
    """The real pipeline on one photo, logged like `samseg segment` does; returns the facts the test needs."""
    from samseg.core.config import get_preset
    from samseg.edges.image_dir import write_image_dir
    from samseg.edges.images import load_image
    from samseg.edges.mlflow.tracking import log_image_run
    from samseg.engine.runner import run_image
    from samseg.engine.summary import summarize
    from samseg.edges.cache import StageCache
    from samseg.sam.source import ModelIdentity

    # smoke with a 4×4 prompt grid: 16 prompts (48 masks) keep the AMG cheap on a shared CPU.
    cfg = get_preset("smoke").replace(amg={"points_per_side": 4})
    image = load_image(image_path)
    result = run_image(image, cfg, ModelIdentity.of(model), StageCache(out_root / "cache"), load_model=lambda: model)
    summary = summarize(result).to_dict()
    out = write_image_dir(out_root / image.stem, image, result.masks, result.embeddings, result.clusters, result.label_map, summary)
    run_id = log_image_run(out, summary, experiment=EXPERIMENT)
    biggest = int(np.argmax(result.masks.areas))
    ys, xs = np.nonzero(result.masks.decode([biggest])[0])
    k = len(ys) // 2  # a pixel inside the largest mask, for the exemplar click
    return {"run_id": run_id, "n_clusters": result.clusters.n_clusters, "hw": image.hw, "click_xy": (int(xs[k]), int(ys[k]))}


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory, photos, tiny_model, label_studio):
    from mlflow import MlflowClient

    if not Path(CHROMIUM).is_file():
        # scripts/setup.sh installs it; CI must run this test, a developer may lack the package.
        message = f"{CHROMIUM} not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    tmp = tmp_path_factory.mktemp("ui-browser")
    uri = sqlite_uri(tmp / 'mlflow.db')
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    MlflowClient(uri).create_experiment(EXPERIMENT, artifact_location=(tmp / "artifacts").as_uri())
    runs = [_segment_and_log(tiny_model, photos / name, tmp / "out") for name in ("building.jpg", "bears.jpg")]
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "SAMSEG_CACHE": str(tmp / "cache"), "SAMSEG_HOME": str(tmp / "home")}
    env.pop("SAMSEG_UI_TOKEN", None)
    env["LABEL_STUDIO_API_KEY"] = label_studio.token  # the real test server (tests/servers.py)
    log = open(tmp / "ui.log", "w")
    cmd = [*_samseg_ui_command(), "--port", str(port), "--experiment", EXPERIMENT, "--ui-cache", str(tmp / "ui-cache"),
           "--label-studio", label_studio.url, "--label-studio-project", "ui-browser"]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ok(f"{base}/healthz", proc, tmp / "ui.log")
        yield {"base": base, "runs": runs, "uri": uri, "out": tmp / "out", "label_studio": label_studio}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        mp.undo()


def _samseg_ui_command() -> list[str]:
    """`samseg ui`, as this interpreter runs the CLI (the console script of the same package)."""
    return [sys.executable, "-m", "samseg.apps.cli", "ui"]


def _wait_ok(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"samseg ui exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"samseg ui did not answer {url} within {timeout_s} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def page(ui_server):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        yield pg
        browser.close()
        assert not errors, f"JavaScript errors: {errors}"


def _image_loaded(pg, selector: str) -> bool:
    return pg.eval_on_selector(selector, "img => img.complete && img.naturalWidth > 0")


def test_runs_list(page, ui_server):
    page.goto(ui_server["base"] + "/")
    for r in ui_server["runs"]:
        page.wait_for_selector(f'tr[data-run-id="{r["run_id"]}"]')
    assert "building.jpg" in page.inner_text("#runs-table") and "bears.jpg" in page.inner_text("#runs-table")
    page.wait_for_function("Array.from(document.querySelectorAll('img.thumb')).every(i => i.complete && i.naturalWidth > 0)")
    thumb = page.locator("#runs-table img.thumb").first  # an overlay is shown whole (a portrait photo too)
    assert thumb.evaluate("i => [getComputedStyle(i).maxHeight, getComputedStyle(i).objectFit]") == ["none", "fill"]
    page.screenshot(path=str(ARTIFACTS / "01-runs.png"), full_page=True)


def test_rerun_changes_clusters_and_logs_run(page, ui_server):
    from mlflow import MlflowClient

    run = ui_server["runs"][0]
    page.goto(ui_server["base"] + "/")
    page.click(f'tr[data-run-id="{run["run_id"]}"] td:nth-child(3) a')
    page.wait_for_selector("#rerun-form")
    assert page.inner_text("#n-clusters").split()[0] == str(run["n_clusters"])
    page.wait_for_function("document.querySelector('#overlay').naturalWidth > 0")
    page.screenshot(path=str(ARTIFACTS / "02-run.png"), full_page=True)

    # Server-side validation shows the config's message next to the field, in its words (eps, not cluster.eps).
    page.fill('input[name="eps"]', "0")
    page.click("#rerun-btn")
    page.wait_for_selector('.field-error[data-for="eps"]:not(:empty)')
    assert "eps must be > 0" == page.inner_text('.field-error[data-for="eps"]')

    # Cosine distances are <= 2, so eps 2 with min_samples 1 joins every mask into one
    # cluster; min_samples above the mask count leaves none. Pick whichever differs from
    # the run's count (tiny-random's count is arbitrary).
    new_eps = "2.0"
    min_samples, expected = ("1", 1) if run["n_clusters"] != 1 else ("100000", 0)
    page.fill('input[name="eps"]', new_eps)
    page.fill('input[name="min_samples"]', min_samples)
    page.click("#rerun-btn")
    page.wait_for_selector("#rerun-result:not([hidden])")
    assert page.inner_text("#rerun-clusters") == ("1 class" if expected == 1 else f"{expected} classes")
    # the answer shows by the button, in view, not below the sweep chart's space
    line = page.evaluate("(() => { const r = document.querySelector('#rerun-result p').getBoundingClientRect(); "
                         "return [r.top, r.bottom, innerHeight]; })()")
    assert 0 <= line[0] and line[1] <= line[2] + 1, line
    assert page.inner_text("#rerun-seconds").endswith(" s")
    page.wait_for_function("document.querySelector('#rerun-overlay').complete && document.querySelector('#rerun-overlay').naturalWidth > 0")
    new_src = page.get_attribute("#rerun-overlay", "src")
    assert new_src != page.get_attribute("#overlay", "src")
    page.screenshot(path=str(ARTIFACTS / "03-rerun.png"), full_page=True)

    new_id = new_src.split("/")[2]
    logged = MlflowClient(ui_server["uri"]).get_run(new_id)
    assert logged.data.tags["samseg.parent_run_id"] == run["run_id"]
    assert logged.data.params["cluster.eps"] == str(float(new_eps))
    assert logged.data.metrics["n_clusters"] == expected

    # "compare with this run": parent vs rerun, the changed params are in the table.
    page.click("#rerun-compare")
    page.wait_for_selector("#compare-table")
    headers = page.locator("#compare-table th").all_inner_texts()
    assert "cluster.eps" in headers and "cluster.min_samples" in headers
    page.wait_for_function("Array.from(document.querySelectorAll('#compare-grid img')).every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(ARTIFACTS / "03b-compare-rerun.png"), full_page=True)


def test_live_preview_and_eps_sweep(page, ui_server):
    from mlflow import MlflowClient

    run = ui_server["runs"][0]
    client = MlflowClient(ui_server["uri"])
    before = len(client.search_runs([client.get_run(run["run_id"]).info.experiment_id]))
    page.goto(ui_server["base"] + f"/runs/{run['run_id']}")
    page.wait_for_selector("#rerun-form")
    # as in the rerun test: eps 2 with min_samples 1 is one class, min_samples above the mask count none
    min_samples, expected = ("1", 1) if run["n_clusters"] != 1 else ("100000", 0)
    page.fill('input[name="eps"]', "2.0")
    page.fill('input[name="min_samples"]', min_samples)  # each keystroke redraws the preview, no run is made
    shown = "1 class" if expected == 1 else f"{expected} classes"
    page.wait_for_function(f"document.querySelector('#preview-clusters').textContent === '{shown}'")
    # the preview replaces the overlay in place, at the overlay's size (no second, clipped picture)
    page.wait_for_function("document.querySelector('#overlay').src.startsWith('blob:') && "
                           "document.querySelector('#overlay').naturalWidth > 0")
    assert page.is_visible("#preview-note") and not page.is_visible("#overlay-caption")
    assert page.is_visible("#classes-saved-note")  # the classes listed below are the saved run's, and say so
    fig = page.eval_on_selector("#overlay-figure", "f => f.getBoundingClientRect().width")
    img = page.eval_on_selector("#overlay", "i => i.getBoundingClientRect().width")
    assert img <= fig
    # the slider follows the box on a log scale, and moving it sets the box (and redraws)
    assert abs(float(page.input_value("#eps-slider")) - 0.301) < 0.01  # log10(2)
    page.eval_on_selector("#eps-slider", "s => { s.value = '-1'; s.dispatchEvent(new Event('input')); }")
    assert page.input_value('input[name="eps"]') == "0.1"
    page.fill('input[name="eps"]', "0")  # a bad value: the field says why, and no stale preview stands for it
    page.wait_for_selector('.field-error[data-for="eps"]:not(:empty)')
    page.wait_for_selector("#preview-note", state="hidden")
    assert page.is_visible("#overlay-caption") and not page.get_attribute("#overlay", "src").startswith("blob:")
    assert not page.is_visible("#classes-saved-note")
    page.fill('input[name="eps"]', "0.1")
    page.click("#sweep-btn")
    page.wait_for_selector("#sweep-chart:not([hidden])")  # the chart (a flat line has no visible box of its own)
    assert page.locator("#sweep-chart path").count() == 2  # classes and noise over eps
    assert page.locator("#sweep-chart text").count() >= 8  # axis ticks and labels
    assert page.get_attribute("#sweep-current", "visibility") == "visible"  # the form's eps, marked
    assert page.text_content("#sweep-current-label") == "eps 0.1"  # ... and labelled
    assert "eps" in page.inner_text("#sweep-note")
    assert f"min_samples {min_samples}," in page.inner_text("#sweep-note")  # swept under the form's, not the run's
    box = page.locator("#sweep-chart").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)  # a click sets eps there
    page.wait_for_function("document.querySelector('input[name=eps]').value !== '0.1'")
    clicked = float(page.input_value('input[name="eps"]'))
    first, last = page.evaluate("[lastSweep.rows[0].eps, lastSweep.rows[lastSweep.rows.length - 1].eps]")
    assert first <= 0.1 <= last  # the sweep covers the form's eps
    middle = (first * last) ** 0.5  # the middle of the sweep's own range, on its log scale
    assert abs(math.log(clicked / middle)) < 0.1 * math.log(last / first), (clicked, first, last)
    page.locator("#rerun-panel").screenshot(path=str(ARTIFACTS / "03c-preview-sweep.png"))
    page.wait_for_function("document.querySelector('#overlay').src.startsWith('blob:')")
    page.screenshot(path=str(ARTIFACTS / "03d-run-page-tuning.png"))  # the overlay while it previews
    page.click("#preview-reset")  # back to the saved run's overlay
    assert not page.get_attribute("#overlay", "src").startswith("blob:")
    assert len(client.search_runs([client.get_run(run["run_id"]).info.experiment_id])) == before  # nothing logged


def test_exemplar_query_click(page, ui_server):
    run = ui_server["runs"][0]
    page.goto(f"{ui_server['base']}/runs/{run['run_id']}")
    page.wait_for_function("document.querySelector('#overlay').naturalWidth > 0")
    page.fill("#query-distance", "0.2")
    box = page.locator("#overlay").bounding_box()
    h, w = run["hw"]
    x, y = run["click_xy"]
    page.locator("#overlay").click(position={"x": (x + 0.5) / w * box["width"], "y": (y + 0.5) / h * box["height"]})
    page.wait_for_selector("#query-results figure img")
    assert page.inner_text("#query-status").startswith("mask #")
    page.wait_for_function("Array.from(document.querySelectorAll('#query-results img')).every(i => i.complete && i.naturalWidth > 0)")
    assert page.locator("#masks-table tr.hit").count() >= 1  # the clicked mask itself is within any distance
    page.locator("#query-panel").screenshot(path=str(ARTIFACTS / "04-exemplar.png"))

    # Save the selection as a class: a new run, shown as kind "exemplar" in the list.
    page.click("#save-class-btn")
    page.wait_for_selector("#save-class-status a")
    saved_id = page.get_attribute("#save-class-status a", "href").rsplit("/", 1)[-1]
    page.goto(ui_server["base"] + "/")
    assert page.inner_text(f'tr[data-run-id="{saved_id}"] td:nth-child(4)') == "exemplar"


def test_compare_view(page, ui_server):
    a, b = (r["run_id"] for r in ui_server["runs"])
    page.goto(ui_server["base"] + "/")
    page.check(f'tr[data-run-id="{a}"] input.pick')
    page.check(f'tr[data-run-id="{b}"] input.pick')
    page.click("#compare-btn")
    page.wait_for_selector("#compare-table")
    assert page.locator("#compare-grid img").count() == 2
    page.wait_for_function("Array.from(document.querySelectorAll('#compare-grid img')).every(i => i.complete && i.naturalWidth > 0)")
    headers = page.locator("#compare-table th").all_inner_texts()
    assert headers[0] == "run" and set(headers[1:3]) == {a[:8], b[:8]} and "n_clusters" in headers  # a column per run
    page.screenshot(path=str(ARTIFACTS / "05-compare.png"), full_page=True)


def test_unknown_run_shows_error_page(page, ui_server):
    resp = page.goto(f"{ui_server['base']}/runs/0123456789abcdef0123456789abcdef")
    assert resp.status == 404
    assert "not found" in page.inner_text("#error-message")
    page.screenshot(path=str(ARTIFACTS / "06-not-found.png"))


def test_dataset_run_page(page, ui_server):
    """A dataset-level batch over the two runs' outputs (what segment-batch --classes dataset
    logs), then its page: classes table rows = the batch's classes, contact sheet loads,
    child overlays link to their image runs. tiny-random features: counts are not asserted."""
    from samseg.core.config import get_preset
    from samseg.edges.dataset_outputs import apply_dataset_classes, log_dataset_classes
    from samseg.edges.image_dir import read_summary
    from samseg.edges.mlflow.tracking import end_run, log_image_run, start_batch_run

    cfg = get_preset("smoke")
    dirs = sorted(p.parent for p in ui_server["out"].glob("*/summary.json"))[:2]
    batch = start_batch_run(EXPERIMENT, "batch-dataset", {**cfg.flat(), "n_images": len(dirs)}, {})
    report = apply_dataset_classes(ui_server["out"], dirs, cfg.cluster)
    children = [log_image_run(d, read_summary(d), experiment=EXPERIMENT, nested_under=batch) for d in dirs]
    log_dataset_classes(batch, report)
    end_run(batch, "FINISHED", {"images": [{"mlflow_run_id": c} for c in children]})  # the batch's own record
    page.goto(f"{ui_server['base']}/runs/{batch}")
    page.wait_for_selector("#classes-table")
    assert page.locator("#classes-table tbody tr").count() == report["n_classes"]
    page.wait_for_function("Array.from(document.querySelectorAll('#contact-sheet, #children img')).every(i => i.complete && i.naturalWidth > 0)")
    for child in children:
        assert page.locator(f'#children figure[data-run-id="{child}"] a').count() == 2
    page.screenshot(path=str(ARTIFACTS / "07-dataset-run.png"), full_page=True)
    # the batch's images go to Label Studio from here too: one task per image
    page.click("#ls-send")
    page.wait_for_selector("#ls-result:not([hidden])")
    assert "already there" in page.inner_text("#ls-line")
    page.goto(f"{ui_server['base']}/runs/{children[0]}")
    assert "dataset-level" in page.inner_text("#dataset-note")
    page.goto(ui_server["base"] + "/")  # in the runs list the batch's contact sheet shows its first rows, not a row as tall
    thumb = page.locator(f'tr.dataset-row[data-run-id="{batch}"] img.thumb')
    assert thumb.evaluate("i => [getComputedStyle(i).maxHeight, getComputedStyle(i).objectFit]") == ["120px", "cover"]


def test_batch_page_reclusters_every_image_into_a_new_batch_run(page, ui_server):
    """A batch of per-image classes: its page's form takes a new eps, says a bad one next to the
    field, and saves the batch's images reclustered as one new batch run, linked where the click was."""
    from samseg.core.config import get_preset
    from samseg.edges.image_dir import read_summary
    from samseg.edges.mlflow.tracking import end_run, log_image_run, start_batch_run

    cfg = get_preset("smoke")
    dirs = sorted(p.parent for p in ui_server["out"].glob("*/summary.json"))[:2]
    batch = start_batch_run(EXPERIMENT, "batch-per-image", {**cfg.flat(), "n_images": len(dirs)}, {})
    children = [log_image_run(d, read_summary(d), experiment=EXPERIMENT, nested_under=batch) for d in dirs]
    end_run(batch, "FINISHED", {"images": [{"mlflow_run_id": c, "name": d.name} for c, d in zip(children, dirs)]})
    page.goto(f"{ui_server['base']}/runs/{batch}")
    form = page.locator("#batch-recluster-form")
    form.locator("input[name=eps]").fill("3")
    page.click("#batch-recluster-btn")
    page.wait_for_function("document.querySelector('.field-error[data-for=eps]').textContent.length > 0")
    assert "must be <= 2 with the cosine metric" in form.locator(".field-error[data-for=eps]").inner_text()
    page.screenshot(path=str(ARTIFACTS / "12a-batch-recluster-error.png"))
    form.locator("input[name=eps]").fill("0.4")
    page.click("#batch-recluster-btn")
    page.wait_for_selector("#batch-recluster-result:not([hidden])")
    assert form.locator(".field-error[data-for=eps]").inner_text() == ""  # the old message is gone
    assert page.inner_text("#batch-recluster-count") == "2 images"
    box = page.locator("#batch-recluster-result").bounding_box()
    assert box is not None and 0 <= box["y"] <= page.viewport_size["height"] - box["height"]  # in view, where the click was
    page.screenshot(path=str(ARTIFACTS / "12-batch-recluster.png"), full_page=True)
    page.click("#batch-recluster-link")
    page.wait_for_selector("#batch-run")
    assert f"re-tunes batch {batch[:8]}" in page.inner_text("#batch-run .meta") and page.locator("#children figure").count() == 2
    assert page.inner_text("#batch-n-images") == "2"  # its image runs are reclusters: counted as its images
    assert page.locator("#batch-recluster-compare").count() == 0  # compare takes image and dataset runs only


def test_send_to_label_studio(page, ui_server):
    """The run page's button pushes the run into the real Label Studio as a background job; the
    task and its prediction are there (read back through the SDK), a second click adds no task."""
    from label_studio_sdk import LabelStudio

    ls = ui_server["label_studio"]
    run = ui_server["runs"][1]
    page.goto(f"{ui_server['base']}/runs/{run['run_id']}")
    for _ in range(2):  # the second push (like the dataset page's, which may have run first) adds no task
        page.click("#ls-send")
        page.wait_for_selector("#ls-result:not([hidden])")
        page.wait_for_function("!document.querySelector('#ls-send').disabled")
    assert "0 new tasks, 1 already there" in page.inner_text("#ls-line")
    page.screenshot(path=str(ARTIFACTS / "08-label-studio.png"), full_page=True)
    client = LabelStudio(base_url=ls.url, api_key=ls.token)
    [project] = [p for p in client.projects.list(title="ui-browser") if p.title == "ui-browser"]
    assert page.get_attribute("#ls-link", "href").endswith(f"/projects/{project.id}")
    tasks = list(client.tasks.list(project=project.id))
    assert len(tasks) <= 2  # one per image, however often the two photos were pushed
    versions = [p.model_version for t in tasks for p in client.predictions.list(task=t.id) if p.result]
    assert sum(v.startswith(run["run_id"]) for v in versions) == 1  # this run's prediction, once


def test_class_curation_by_clicking_then_the_saved_run_and_its_export(page, ui_server, tmp_path):
    """A person merges two classes and names the result on the run page, saves, and the new run's
    labels.png, summary.json and a COCO export carry the edit (a synthetic run of known structure:
    class 0 = 6 masks, class 1 = 4, 2 noise)."""
    import json

    from mlflow import MlflowClient

    from cli_run import run_cli
    from samseg.edges.image_dir import read_label_png
    from samseg.edges.mlflow.tracking import log_image_run
    from ui_synthetic import GROUP_A, GROUP_B, write_two_runs

    write_two_runs(tmp_path)
    summary = json.loads((tmp_path / "out" / "alpha" / "summary.json").read_text())
    run_id = log_image_run(tmp_path / "out" / "alpha", summary, experiment=EXPERIMENT, run_name="alpha.png")
    page.goto(f"{ui_server['base']}/runs/{run_id}")
    page.wait_for_selector("#class-edit-table")
    page.check('input.pick-class[value="0"]')
    page.check('input.pick-class[value="1"]')
    page.click("#merge-btn")
    assert page.locator("input.pick-class:checked").count() == 0  # an applied merge leaves no tick for the next one
    page.wait_for_selector("#edits-preview-figure:not([hidden])")  # the edits drawn as they are made
    page.wait_for_function("document.querySelector('#edits-preview-clusters').textContent === '1 class'")
    # a split follows the eps box live: half the run's eps parts A from B again, eps 1.5 keeps them one
    page.click('.split-btn[data-class="0"]')
    page.wait_for_function("document.querySelector('#edits-preview-clusters').textContent === '2 classes'")
    page.fill("#split-eps", "1.5")
    page.wait_for_function("document.querySelector('#edits-preview-clusters').textContent === '1 class'")
    assert "at eps 1.5" in page.inner_text("#edit-list")
    page.locator("#classes-panel").screenshot(path=str(ARTIFACTS / "09-class-curation-preview.png"))
    script_errors: list[str] = []
    page.on("pageerror", lambda e: script_errors.append(str(e)))
    refuse = "**/classes/preview"  # the server refusing an edit list (its answer, as the API gives it)
    page.route(refuse, lambda route: route.fulfill(status=422, content_type="application/json",
                                                   body='{"errors": {"edits": "split eps refused"}}'))
    page.fill("#split-eps", "1.4")
    page.wait_for_selector("#edits-preview-figure", state="hidden")  # no stale preview stands for it
    assert "No preview: split eps refused" in page.inner_text("#edits-error") and not script_errors, script_errors
    page.unroute(refuse)
    page.fill("#split-eps", "1.5")
    page.wait_for_selector("#edits-preview-figure:not([hidden])")
    page.click("#undo-btn")
    page.fill("#split-eps", "")
    page.fill('input.class-name[data-class="0"]', "things")
    page.press('input.class-name[data-class="0"]', "Tab")  # the change event records the name
    assert page.locator("#edit-list li").count() == 2
    page.click("#undo-btn")  # undo the name: its box forgets it too, so the same name typed again is an edit
    assert page.locator("#edit-list li").count() == 1
    assert page.input_value('input.class-name[data-class="0"]') == ""
    page.fill('input.class-name[data-class="0"]', "things")
    page.press('input.class-name[data-class="0"]', "Tab")
    assert page.locator("#edit-list li").count() == 2
    page.click("#save-edits-btn")
    page.wait_for_selector("#edits-result:not([hidden])")
    assert "things" in page.inner_text("#edits-summary")
    page.locator("#classes-panel").screenshot(path=str(ARTIFACTS / "09-class-curation.png"))
    new = page.get_attribute("#edits-link", "href").rsplit("/", 1)[1]

    client = MlflowClient(ui_server["uri"])
    assert client.get_run(new).data.tags["samseg.parent_run_id"] == run_id
    d = Path(client.download_artifacts(new, "", str(tmp_path / "dl")))
    saved = json.loads((d / "summary.json").read_text())
    assert saved["class_names"] == {"0": "things"} and saved["n_clusters"] == 1
    assert saved["edits"] == [{"op": "merge", "classes": [0, 1]}, {"op": "rename", "classes": [0], "name": "things"}]
    assert set(np.unique(read_label_png(d / "labels.png"))) <= {0, 1}
    rc, _, err = run_cli(["export", new, "--format", "coco", "--out", str(tmp_path / "coco")])
    assert rc == 0, err
    coco = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["alpha:things"]
    assert len(coco["annotations"]) == len(GROUP_A) + len(GROUP_B)


def test_dataset_curation_by_clicking_then_the_saved_batch_and_its_export(page, ui_server, tmp_path):
    """On a dataset run's page a person merges the batch's two classes and names the result, saves,
    and the new dataset batch run carries the edit in every image, its classes.json and a COCO
    export (synthetic runs of known structure: group A = class 0 in both images, B = class 1)."""
    import json

    from mlflow import MlflowClient

    from cli_run import run_cli
    from samseg.core.config import PipelineConfig
    from samseg.core.dataset import ClassTable
    from samseg.edges.dataset_outputs import apply_dataset_classes, log_dataset_classes
    from samseg.edges.image_dir import read_image_dir, read_summary
    from samseg.edges.mlflow.tracking import end_run, log_image_run, start_batch_run
    from ui_synthetic import GROUP_A, GROUP_B, write_two_runs

    write_two_runs(tmp_path)
    dirs = [tmp_path / "out" / "alpha", tmp_path / "out" / "beta"]
    cfg = PipelineConfig.from_flat(read_summary(dirs[0])["config"])
    batch = start_batch_run(EXPERIMENT, "batch-synthetic", {**cfg.flat(), "n_images": 2}, {})
    report = apply_dataset_classes(tmp_path / "out", dirs, cfg.cluster)
    assert report["n_classes"] == 2  # A and B, the same two classes in both images
    children = [log_image_run(d, read_summary(d), experiment=EXPERIMENT, nested_under=batch) for d in dirs]
    log_dataset_classes(batch, report)
    end_run(batch, "FINISHED", {"images": [{"mlflow_run_id": c, "name": d.name} for c, d in zip(children, dirs)]})

    page.goto(f"{ui_server['base']}/runs/{batch}")
    page.wait_for_selector("#class-edit-table")
    assert page.locator("#class-edit-table tbody tr").count() == 2
    page.check('input.pick-class[value="0"]')
    page.check('input.pick-class[value="1"]')
    page.click("#merge-btn")
    page.fill('input.class-name[data-class="0"]', "things")
    page.press('input.class-name[data-class="0"]', "Tab")
    page.fill("#register-name", "ui-edited-classes")  # and register the corrected classes
    page.locator("#classes-panel").screenshot(path=str(ARTIFACTS / "10-dataset-curation.png"))
    page.click("#save-edits-btn")
    page.wait_for_selector("#edits-result:not([hidden])")
    assert "things" in page.inner_text("#edits-summary")
    assert page.inner_text("#edits-model") == "models:/ui-edited-classes/1"
    new = page.get_attribute("#edits-link", "href").rsplit("/", 1)[1]
    from samseg.edges.dataset_outputs import load_class_table

    assert load_class_table("models:/ui-edited-classes/1").class_names == {0: "things"}

    client = MlflowClient(ui_server["uri"])
    saved_run = client.get_run(new)
    assert saved_run.data.tags["samseg.parent_run_id"] == batch and saved_run.data.tags["samseg.classes"] == "dataset"
    table = ClassTable.from_json(Path(client.download_artifacts(new, "classes.json", str(tmp_path / "t"))).read_text())
    assert table.n_classes == 1 and int(table.sizes[0]) == 2 * (len(GROUP_A) + len(GROUP_B))
    assert table.class_names == {0: "things"}
    kids = client.search_runs([saved_run.info.experiment_id], f"tags.mlflow.parentRunId = '{new}'")
    assert len(kids) == 2
    for kid in kids:  # every image of the batch carries the edit
        d = Path(client.download_artifacts(kid.info.run_id, "", str(tmp_path / kid.info.run_id)))
        summary = json.loads((d / "summary.json").read_text())
        assert summary["classes"] == "dataset" and summary["class_names"] == {"0": "things"}
        assert summary["edits"][-2:] == [{"op": "merge", "classes": [0, 1]}, {"op": "rename", "classes": [0], "name": "things"}]
        _, _, labels = read_image_dir(d)
        assert sorted(np.flatnonzero(labels == 0)) == sorted(GROUP_A + GROUP_B)
    rc, _, err = run_cli(["export", new, "--format", "coco", "--out", str(tmp_path / "coco")])
    assert rc == 0, err
    coco = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["things"]
    assert len(coco["annotations"]) == 2 * (len(GROUP_A) + len(GROUP_B))
    page.goto(f"{ui_server['base']}/runs/{new}")
    page.wait_for_selector("#class-edit-table")
    assert page.input_value('input.class-name[data-class="0"]') == "things"
    page.screenshot(path=str(ARTIFACTS / "11-dataset-edited.png"), full_page=True)
