"""Background jobs for actions that take longer than a moment (rerun, save class).

A job runs in a worker thread; the page polls `GET /api/jobs/{id}` and shows `stage`
as progress text, then the result or the error. Jobs live in memory only: the results
that matter are MLflow runs, which outlive the UI process.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)

# Clustering is CPU-bound and sklearn already uses several threads; two concurrent jobs
# keep the page responsive without oversubscribing a laptop.
_MAX_WORKERS = 2
_KEEP_FINISHED = 200
# Jobs queued or running at once: each rerun of a large run holds tens of MB until it is
# done, so an unbounded queue is a memory leak a click-happy (or hostile) client can fill.
MAX_PENDING = 8


class QueueFull(RuntimeError):
    """MAX_PENDING jobs are already queued or running (answered 429)."""


@dataclass
class Job:
    id: str
    kind: str
    state: str = "queued"  # queued | running | done | failed
    stage: str = "queued"
    result: Any = None
    error: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    key: Any = None  # single flight: one unfinished job per key

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "stage": self.stage,
            "result": self.result,
            "error": self.error,
            "seconds": round((self.finished or time.time()) - self.started, 3),
        }


class JobRunner:
    """Runs `fn(progress)` in a thread; `progress(stage: str)` updates the job's stage."""

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self.max_pending = max_pending
        self._pool = ThreadPoolExecutor(max_workers=_MAX_WORKERS, thread_name_prefix="samseg-ui-job")
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return sum(j.finished is None for j in self._jobs.values())

    def submit(self, kind: str, fn: Callable[[Callable[[str], None]], Any], key: Any = None) -> Job:
        """A new job, or — single flight — the unfinished job submitted with the same `key`
        (a button pressed twice pushes once)."""
        job = Job(id=uuid.uuid4().hex, kind=kind, key=None if key is None else (kind, key))
        with self._lock:
            same = next((j for j in self._jobs.values() if j.finished is None and j.key == job.key), None)
            if key is not None and same is not None:
                return same
            if sum(j.finished is None for j in self._jobs.values()) >= self.max_pending:
                raise QueueFull(f"{self.max_pending} jobs are already queued or running; try again when one is done")
            self._jobs[job.id] = job
            self._forget_old()
        self._pool.submit(self._run, job, fn)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def _run(self, job: Job, fn: Callable[[Callable[[str], None]], Any]) -> None:
        def progress(stage: str) -> None:
            job.stage = stage

        job.state = "running"
        try:
            job.result = fn(progress)
            job.state, job.stage = "done", "done"
        except KeyboardInterrupt:  # the UI stops (shutdown.check in the job's loop): what it started has ended
            job.error, job.state = "stopped: the samseg UI was stopped", "failed"
        except Exception as exc:  # reported to the page as one line
            if type(exc).__module__.startswith("samseg."):  # an expected condition (no cache entry, a bad
                log.warning("job %s (%s) failed: %s", job.id, job.kind, " ".join(str(exc).split()))  # file): one line
            else:
                log.exception("job %s (%s) failed", job.id, job.kind)  # a bug: its traceback, for the report
            job.error = str(exc) or type(exc).__name__
            job.state = "failed"
        finally:
            job.finished = time.time()

    def _forget_old(self) -> None:
        done = [j for j in self._jobs.values() if j.finished is not None]
        for j in sorted(done, key=lambda j: j.started)[: max(0, len(done) - _KEEP_FINISHED)]:
            self._jobs.pop(j.id, None)

    def shutdown(self) -> None:
        """Drop the queued jobs. On a stop (Ctrl-C, SIGTERM), wait for the running ones to end: a
        batch loop sees the stop at its next image (samseg.edges.shutdown.check) and ends its new
        MLflow run KILLED, not RUNNING. The stop's deadline, counted from the signal, ends the
        process if a job takes longer (the run it leaves RUNNING is swept by the next batch)."""
        from samseg.edges import shutdown

        self._pool.shutdown(wait=False, cancel_futures=True)
        if not shutdown.requested():  # an app closed without a stop (a test's client): nothing is stopping its jobs
            return
        with self._lock:
            running = [j for j in self._jobs.values() if j.state == "running" and j.finished is None]
        until = time.monotonic() + shutdown.deadline_s()  # a bound for a process without the deadline's thread
        while any(j.finished is None for j in running) and time.monotonic() < until:
            time.sleep(0.05)
