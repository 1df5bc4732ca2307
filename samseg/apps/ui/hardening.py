"""HTTP-level guards of the web UI: CSRF, clickjacking and sniffing headers, token
brute-force limits, access-log redaction, and error messages without server paths.

Pure helpers (strings in, strings/bools out) plus `install(app, ...)`, which adds them as
one middleware so the order is fixed: headers on every answer, then the origin check.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any
from urllib.parse import urlsplit

STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
_TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&\s\"]*", re.IGNORECASE)
# An absolute POSIX path of two or more components that is not part of a URL (no word
# character, ':' or '/' before it): the server's layout is nobody's business.
_ABS_PATH = re.compile(r"(?<![\w:/.])/(?:[^\s/'\"]+/)+(?P<last>[^\s/'\"]*)")


def foreign_origin(method: str, host: str | None, origin: str | None, fetch_site: str | None) -> str | None:
    """Why a state-changing request comes from another site, or None when it may go on.

    Browsers send Sec-Fetch-Site on every request and Origin on every POST; a request
    with neither (curl, scripts) is not a browser being abused and may go on.
    """
    if method.upper() not in STATE_CHANGING:
        return None
    if fetch_site and fetch_site.lower() not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site: {fetch_site})"
    if origin is None:
        return None
    parts = urlsplit(origin)
    if origin == "null" or not parts.netloc or not host or parts.netloc.lower() != host.lower():
        return "cross-origin request refused (Origin does not match this UI's address)"
    return None


def redact_token(text: str) -> str:
    """`?token=secret` → `?token=***` anywhere in `text`."""
    return _TOKEN_IN_QUERY.sub(r"\1***", text)


def public_message(text: str) -> str:
    """`text` without absolute server paths (each becomes …/<last component>)."""
    return _ABS_PATH.sub(lambda m: "…/" + m.group("last"), str(text))


class _RedactTokenFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_token(a) if isinstance(a, str) else a for a in record.args)
        record.msg = redact_token(record.msg) if isinstance(record.msg, str) else record.msg
        return True


def redact_access_log() -> None:
    """uvicorn's access log shows `GET /?token=***`, never the token (idempotent)."""
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _RedactTokenFilter) for f in logger.filters):
        logger.addFilter(_RedactTokenFilter())


class FailureLimiter:
    """At most `limit` wrong tokens per client address in `window_s`; then 429 until the
    window has passed. Guessing a 32-byte token is hopeless anyway; this keeps a scanner
    from filling the log and the CPU."""

    def __init__(self, limit: int = 10, window_s: float = 60.0) -> None:
        self.limit, self.window_s = limit, window_s
        self._fails: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, client: str) -> bool:
        with self._lock:
            recent = self._recent(client)
            return len(recent) >= self.limit

    def failed(self, client: str) -> None:
        with self._lock:
            self._recent(client).append(time.monotonic())
            if len(self._fails) > 10_000:  # bounded memory under a spray of addresses
                self._fails = {k: v for k, v in self._fails.items() if v}

    def _recent(self, client: str) -> list[float]:
        now = time.monotonic()
        kept = [t for t in self._fails.get(client, []) if now - t < self.window_s]
        self._fails[client] = kept
        return kept


def client_address(request: Any) -> str:
    return request.client.host if request.client else "unknown"
