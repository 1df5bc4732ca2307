"""The UI's bound on request threads waiting for the MLflow server.

A stalled tracking server holds every request that asks it for ~21 s (samseg's MLflow timeout
and one retry). Without a bound, a burst of such requests fills the server's whole thread pool
and nothing answers, not even GET /healthz. So at most SLOTS requests wait on MLflow at once;
the others get a 503 after WAIT_S. Once a call got no answer, the client's own short circuit
(samseg.edges.mlflow.client.answering) fails the next calls at once.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator

SLOTS = 8  # of the ~40 threads FastAPI runs sync routes on
WAIT_S = 2.0


class TrackingGate:
    """`with gate.slot(): <MLflow call>`; `unavailable(message)` makes the 503 error."""

    def __init__(self, unavailable: Callable[[str], Exception], slots: int = SLOTS, wait_s: float = WAIT_S) -> None:
        self.unavailable, self.slots, self.wait_s = unavailable, slots, wait_s
        self._free = threading.BoundedSemaphore(slots)

    @contextmanager
    def slot(self) -> Iterator[None]:
        if not self._free.acquire(timeout=self.wait_s):
            raise self.unavailable(f"it is slow to answer: {self.slots} requests are already waiting on it; "
                                   "try again in a moment")
        try:
            yield
        finally:
            self._free.release()
