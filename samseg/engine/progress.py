"""Process-local progress hook: the flows `report()` stage boundaries, a UI (the CLI's
tqdm bars, a test's recorder) listens through `set_reporter()`.

Events (keyword info in brackets):
- "image_start"  [image: uri]                  an image flow began
- "stage"        [image, stage, status]        a stage finished; stage in STAGES, status
                                               "hit" (stage cache), "computed" or "skipped"
                                               (not needed: later stages were cached)
- "tile"         [image, done, total, cached]  a tiled image finished tile `done` of `total`
                                               (`cached`: tiles so far whose amg + pool were hits)
- "image_done"   [image, entry]                an image finished (or its deployment run did);
                                               entry: its line of the batch report
- "image_failed" [image, error, entry]         an image failed (error: one line)
- "listed"       [n_images]                    a batch listed its source (the image bar's total,
                                               where the caller did not count it itself)

With no reporter set, `report` is a no-op (workers, library use). The hook is one global
per process, not per flow run: Prefect may run tasks and subflows in other threads,
where a contextvar set by the CLI would not reach. Calls are serialised under a lock, so a reporter need
not be thread-safe itself. No heavy imports: the CLI imports this at startup.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from collections.abc import MutableSet
from pathlib import PurePosixPath
from typing import Any, Callable, Iterator, Optional

from samseg.engine.stages import STEPS as STAGES  # the stage bar's steps: the table's rows, then export

log = logging.getLogger(__name__)


EVENTS = ("image_start", "stage", "tile", "image_done", "image_failed", "listed")


_LOCK = threading.RLock()  # re-entrant: a reporter may itself report
_REPORTER: Optional[Callable[..., None]] = None


def set_reporter(reporter: Optional[Callable[..., None]]) -> Optional[Callable[..., None]]:
    """Install `reporter` (None = none); returns the one it replaces."""
    global _REPORTER
    with _LOCK:
        previous, _REPORTER = _REPORTER, reporter
    return previous


@contextmanager
def reporting(reporter: Optional[Callable[..., None]]) -> Iterator[None]:
    """`reporter` installed for the block; the previous one restored after it."""
    previous = set_reporter(reporter)
    try:
        yield
    finally:
        set_reporter(previous)


def report(event: str, **info: Any) -> None:
    """Tell the installed reporter about `event`; no-op when none is installed.

    A failing reporter is logged and ignored: a broken progress display must never fail
    a segmentation. An unknown event name is a programming error and raises.
    """
    if event not in EVENTS:
        raise ValueError(f"unknown progress event {event!r}; expected one of {EVENTS}")
    with _LOCK:
        reporter = _REPORTER
        if reporter is None:
            return
        try:
            reporter(event, **info)
        except Exception:  # noqa: BLE001 - see docstring
            log.debug("progress reporter failed on %s %s", event, info, exc_info=True)


class TqdmReporter:
    """Two tqdm bars on `file` (default: sys.stderr at construction): images (total
    `n_images`) and the stages of the current image, "hit" marking stage-cache hits.

    disable=None: tqdm shows the bars only when `file` is a terminal, so logs and pipes
    stay clean. Print lines meanwhile with `tqdm.write` so they do not tear the bars.
    """

    def __init__(self, n_images: Optional[int], file: Any = None, disable: Optional[bool] = None,
                 finished: Optional[MutableSet[str]] = None) -> None:
        import sys

        from tqdm import tqdm

        file = sys.stderr if file is None else file
        self.images = tqdm(total=n_images, desc="images", unit="img", file=file, disable=disable, position=0,
                           dynamic_ncols=True)
        self.stages = tqdm(total=len(STAGES), desc="stages", unit="stage", file=file, disable=disable, position=1,
                           leave=False, dynamic_ncols=True, mininterval=0,  # ≤ 5 redraws per image: show each
                           bar_format="{desc}: {bar:10} {n_fmt}/{total_fmt}{postfix}")
        self._finished = set() if finished is None else finished  # a batch of millions: on disk (edges.spill)
        self._done_stages: list[str] = []
        self._current = ""

    def __call__(self, event: str, **info: Any) -> None:
        image = str(info.get("image", ""))
        if event == "image_start":
            self._current = image
            self.stages.reset(total=len(STAGES))
            self._done_stages = []
            self.stages.set_description_str(PurePosixPath(image).name or "stages", refresh=False)
            self.stages.set_postfix_str("", refresh=True)
        elif event == "stage" and image != self._current:
            pass  # the previous image's export, finishing while this one computes: its bar is gone
        elif event == "stage":
            mark = f" {info['status']}" if info.get("status") in ("hit", "skipped") else ""
            self._done_stages.append(f"{info.get('stage')}{mark}")
            self.stages.set_postfix_str(" > ".join(self._done_stages), refresh=False)
            self.stages.update(1)
        elif event == "tile":
            tiles = f"tiles {info.get('done')}/{info.get('total')} ({info.get('cached', 0)} cached)"
            self.stages.set_postfix_str(" > ".join([*self._done_stages, tiles]), refresh=True)
        elif event == "listed" and self.images.total is None:
            self.images.total = info["n_images"]
            self.images.refresh()
        elif event in ("image_done", "image_failed") and image not in self._finished:
            # once per image, whoever reports it (the image flow, the batch's poll loop)
            self._finished.add(image)
            self.images.update(1)

    def close(self) -> None:
        self.stages.close()
        self.images.close()
