"""samseg.engine.progress (the flows' progress hook) and the CLI's bars over images and stages.

The CLI test runs `samseg segment` in-process with the tiny-random SAM (meaningless masks:
plumbing only) and records every event the flows report.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_run import run_cli
from samseg.engine import progress


@pytest.fixture(autouse=True)
def no_reporter_left():
    """Each test starts and ends without a reporter (it is process-global)."""
    assert progress.set_reporter(None) is None
    yield
    assert progress.set_reporter(None) is None, "a test left a reporter installed"


# ---------------------------------------------------------------- the hook


def test_report_without_reporter_is_noop() -> None:
    assert progress.set_reporter(None) is None
    progress.report("image_start", image="a.png")  # nothing to call, nothing raised


def test_events_reach_reporter_in_order_and_reporting_restores() -> None:
    events: list[tuple[str, dict]] = []
    outer = lambda event, **info: events.append(("outer", event))  # noqa: E731
    with progress.reporting(outer):
        with progress.reporting(lambda event, **info: events.append((event, info))):
            progress.report("image_start", image="a.png")
            progress.report("stage", image="a.png", stage="encode", status="hit")
            progress.report("image_done", image="a.png")
        progress.report("image_failed", image="b.png", error="boom")
    progress.report("image_start", image="c.png")  # after the block: none installed again
    assert events == [("image_start", {"image": "a.png"}),
                      ("stage", {"image": "a.png", "stage": "encode", "status": "hit"}),
                      ("image_done", {"image": "a.png"}),
                      ("outer", "image_failed")]


def test_unknown_event_raises_and_failing_reporter_is_ignored() -> None:
    with pytest.raises(ValueError, match="unknown progress event 'stage_done'"):
        progress.report("stage_done", image="a.png")

    def broken(event, **info):
        raise RuntimeError("display gone")

    with progress.reporting(broken):
        progress.report("image_done", image="a.png")  # a broken display never fails a run


def test_reports_from_threads_are_serialised() -> None:
    inside, overlaps, seen = [0], [], []

    def reporter(event, **info):
        inside[0] += 1
        overlaps.append(inside[0])
        seen.append(info["image"])
        inside[0] -= 1

    def worker(k: int) -> None:
        for i in range(200):
            progress.report("image_done", image=f"{k}-{i}")

    with progress.reporting(reporter):
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(seen) == 800 and len(set(seen)) == 800
    assert max(overlaps) == 1  # never two reporter calls at once


def test_tqdm_reporter_counts_stages_marks_hits_and_counts_each_image_once() -> None:
    buf = io.StringIO()
    bars = progress.TqdmReporter(2, file=buf, disable=False)
    bars("image_start", image="/x/a.png")
    for stage, status in zip(progress.STAGES, ("skipped", "hit", "skipped", "hit", "computed", "computed", "computed")):
        bars("stage", image="/x/a.png", stage=stage, status=status)
    assert bars.stages.n == len(progress.STAGES) == 7
    bars("image_done", image="/x/a.png")
    bars("image_done", image="/x/a.png")  # reported twice (flow + poll loop): counted once
    bars("image_start", image="/x/b.png")
    assert bars.stages.n == 0  # the stage bar restarts per image
    bars("image_failed", image="/x/b.png", error="bad")
    assert bars.images.n == 2
    bars.close()
    text = buf.getvalue()
    assert "encode skipped > amg hit > features skipped > pool hit > cluster" in text and "a.png" in text and "images" in text


# ---------------------------------------------------------------- the CLI


@pytest.fixture()
def quick(monkeypatch: pytest.MonkeyPatch, tiny_model, tmp_path: Path, prefect_api) -> Path:
    """The session's tiny model instead of one load per CLI call; a fresh stage cache."""
    import samseg.sam.source

    monkeypatch.setattr("samseg.sam.model.load_model", lambda *a, **k: tiny_model)
    monkeypatch.setattr(samseg.sam.source, "_LOADED", {})  # the once-per-process model cache
    monkeypatch.setattr(samseg.sam.source, "_FAILED", {})
    monkeypatch.setenv("SAMSEG_CACHE", str(tmp_path / "cache"))
    return tmp_path


def recording_bars(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict]]:
    """The CLI's real TqdmReporter, forced on (stderr is no terminal here), recording events."""
    events: list[tuple[str, dict]] = []

    class Recording(progress.TqdmReporter):
        def __init__(self, n_images: int, finished=None) -> None:
            events.append(("bars", {"n_images": n_images}))
            super().__init__(n_images, disable=False, finished=finished)

        def __call__(self, event: str, **info) -> None:
            events.append((event, info))
            super().__call__(event, **info)

    monkeypatch.setattr(progress, "TqdmReporter", Recording)
    return events


def expected_events(uri: str, cached: str) -> list[tuple[str, dict]]:
    """A fresh image computes every stage in table order; a warm one reads amg + pool, and
    encode — not needed — is reported skipped once the stages that wanted it are done."""
    def event(stage: str, status: str) -> tuple[str, dict]:
        return ("stage", {"image": uri, "stage": stage, "status": status})

    if cached == "computed":
        stages = [event(s, "computed") for s in progress.STAGES]
    else:
        stages = [event("amg", "hit"), event("pool", "hit"), event("cluster", "computed"), event("compose", "computed"),
                  event("encode", "skipped"), event("features", "skipped"), event("write", "computed")]
    return [("image_start", {"image": uri}), *stages, ("image_done", {"image": uri})]


def by_image(events: list[tuple[str, dict]]) -> dict[str, list[tuple[str, dict]]]:
    """Each image's events in order, checking that images start in input order. An image's
    export runs while the next one computes, so events of neighbouring images interleave."""
    out: dict[str, list[tuple[str, dict]]] = {}
    events = [(event, info) for event, info in events if event != "listed"]  # the batch's, not an image's
    for event, info in events:
        entry = info.get("entry")  # the image's report line, which the CLI prints as the image finishes
        assert entry is None or (entry["image"] == info["image"] and event in ("image_done", "image_failed"))
        out.setdefault(info["image"], []).append((event, {k: v for k, v in info.items() if k != "entry"}))
    assert [info["image"] for event, info in events if event == "image_start"] == list(out)
    return out


def test_cli_reports_every_stage_of_every_image_in_order(quick: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    src = quick / "in"
    src.mkdir()
    Image.fromarray(rng.integers(0, 255, (24, 36, 3), dtype=np.uint8)).save(src / "a.png")
    (src / "b_broken.png").write_text("not a PNG\n")
    Image.fromarray(rng.integers(0, 255, (30, 20, 3), dtype=np.uint8)).save(src / "c.png")
    argv = ["segment", str(src), "--preset", "smoke", "--points-per-side", "2", "--no-track", "--out", str(quick / "out")]
    a, b, c = (str(src / n) for n in ("a.png", "b_broken.png", "c.png"))

    events = recording_bars(monkeypatch)
    rc, stdout, stderr = run_cli(argv)
    assert rc == 1
    assert events[0] == ("bars", {"n_images": 3}) and events[1] == ("listed", {"n_images": 3})
    failed = [e for e in events if e[0] == "image_failed"]
    assert len(failed) == 1 and failed[0][1]["image"] == b and "b_broken.png" in failed[0][1]["error"]
    failed = [(e, {k: v for k, v in info.items() if k != "entry"}) for e, info in failed]
    assert by_image(events[1:]) == {a: expected_events(a, "computed"), b: [("image_start", {"image": b}), failed[0]],
                                    c: expected_events(c, "computed")}
    # the one-line error and the per-image lines are as without bars
    # printed as the image failed, among the bars' redraws (tqdm.write clears them on a terminal)
    errors = [line[line.index("error: "):] for line in stderr.splitlines() if "error: " in line]
    assert len(errors) == 1 and "b_broken.png" in errors[0] and "Traceback" not in stderr
    assert "images" in stderr and "3/3" in stderr  # the image bar went on to the end, failure included

    events.clear()
    rc, stdout_again, stderr = run_cli(argv)  # same inputs and cache: the cached stages hit
    assert rc == 1
    assert by_image(events[1:]) == {a: expected_events(a, "hit"), b: [("image_start", {"image": b}), failed[0]],
                                    c: expected_events(c, "hit")}
    assert "amg hit > pool hit > cluster > compose > encode skipped" in stderr

    events.clear()
    rc, stdout_quiet, stderr_quiet = run_cli([*argv, "--quiet"])
    assert rc == 1 and events == []  # no bars, no reporter
    assert stdout_quiet == stdout_again and "cache hits: 2/2" in stdout_quiet
    assert [line for line in stderr_quiet.splitlines() if line.startswith("error: ")] == errors
    assert progress.set_reporter(None) is None  # the CLI took its reporter away again


def test_a_bar_without_a_count_takes_the_batchs_listing_as_its_total() -> None:
    """A sharded batch's command does not list its source itself: the batch's "listed" sets the total once."""
    import io

    bars = progress.TqdmReporter(None, file=io.StringIO(), disable=False)
    with progress.reporting(bars):
        progress.report("listed", n_images=5)
        progress.report("listed", n_images=7)  # a later batch's part (a dataset batch's sample) changes nothing
        progress.report("image_done", image="a")
    assert (bars.images.total, bars.images.n) == (5, 1)
    bars.close()
