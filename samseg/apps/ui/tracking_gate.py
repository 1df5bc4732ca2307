"""The UI's guard between its request threads and the MLflow server.

A stalled tracking server holds every request that asks it for ~21 s (samseg's MLflow timeout
and one retry). Without a bound, a burst of such requests fills the server's whole thread pool
and nothing answers, not even GET /healthz. So at most SLOTS requests wait on MLflow at once;
the others get a 503 after WAIT_S. And once a call failed to reach the server, the next
COOLDOWN_S answer 503 at once instead of each waiting out its own timeout.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

SLOTS = 8  # of the ~40 threads FastAPI runs sync routes on
WAIT_S = 2.0
COOLDOWN_S = 10.0


class TrackingGate:
    """`with gate.slot(): <MLflow call>`; `unavailable(message)` makes the 503 error."""

    def __init__(self, unavailable: Callable[[str], Exception], slots: int = SLOTS, wait_s: float = WAIT_S,
                 cooldown_s: float = COOLDOWN_S) -> None:
        self.unavailable, self.slots, self.wait_s, self.cooldown_s = unavailable, slots, wait_s, cooldown_s
        self._free = threading.BoundedSemaphore(slots)
        self._down_until = 0.0

    @contextmanager
    def slot(self) -> Iterator[None]:
        self._check_up()
        if not self._free.acquire(timeout=self.wait_s):
            raise self.unavailable(f"it is slow to answer: {self.slots} requests are already waiting on it; "
                                   "try again in a moment")
        try:
            self._check_up()  # again: the call this one waited behind may have found the server gone
            yield
        except Exception as exc:
            if unreachable(exc):
                self._down_until = time.monotonic() + self.cooldown_s
            raise
        finally:
            self._free.release()


    def _check_up(self) -> None:
        if time.monotonic() < self._down_until:
            raise self.unavailable("it did not answer a moment ago; try again in a few seconds")


def unreachable(exc: BaseException) -> bool:
    """The call never got an answer (timeout, refused or reset connection), as opposed to an
    answer that was an error (unknown run, bad filter, a locked SQLite file)."""
    import requests

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (requests.ConnectionError, requests.Timeout)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class GatedClient:
    """An MlflowClient whose every method call takes a slot of `gate` first."""

    def __init__(self, client: Any, gate: TrackingGate) -> None:
        self._client, self._gate = client, gate

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def gated(*args: Any, **kwargs: Any) -> Any:
            with self._gate.slot():
                return attr(*args, **kwargs)

        return gated
