"""Every request guard of the web UI, in one place: the access token (and a limit on wrong
ones), run-id and artifact-path checks, loopback hosts, CSRF (foreign origins), anti-framing
and sniffing headers, access-log redaction, and error messages without server paths.

Pure helpers (strings in, bools/strings out), tested without a server; samseg.apps.ui.app
installs them as one middleware so the order is fixed: headers on every answer, the origin
check, then the token. What they guarantee: docs/security.md.
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from samseg.edges.layout import CUTOUT_PATTERN

TOKEN_ENV = "SAMSEG_UI_TOKEN"
TOKEN_COOKIE = "samseg_ui_token"

# MLflow run ids are uuid4 hex (32 chars); accept a little more so other backends
# still work, but never a character that could mean a path or a query.
# The only files the UI serves, relative to one run's own artifact folder. A whitelist
# (not a blacklist of `..`) so that encoded variants (%2e%2e, %252e, backslashes, NUL,
# absolute paths) can never name anything else.
_ARTIFACT_FILES = re.compile(
    r"^(?:overlay\.png|labels\.png|summary\.json|masks\.json|input\.jpg|thumb\.png"
    rf"|{CUTOUT_PATTERN}"
    r"|classes\.json|contact_sheet\.png)$"  # the last two: dataset (batch) runs only, see RunStore
)


class UnsafePathError(ValueError):
    """A requested file name is not one of the run's artifacts."""


def valid_run_id(run_id: str) -> bool:
    from samseg.edges.mlflow.tracking import is_run_id  # one rule: a trailing newline is no run id either

    return is_run_id(run_id)


def check_artifact_path(path: str) -> str:
    """Return `path` if it names a servable artifact of a run, else raise UnsafePathError.

    `path` is the already percent-decoded URL tail (Starlette decodes once); anything
    still containing `%`, `\\`, `..`, a leading `/` or a drive letter is refused by the
    whitelist because none of those characters can appear in an allowed name.
    """
    if not isinstance(path, str) or not _ARTIFACT_FILES.match(path):
        raise UnsafePathError(f"not a run artifact: {path!r}")
    return path


def token_ok(expected: str | None, bearer_header: str | None, cookie: str | None) -> bool:
    """True when no token is configured, or the request carries it (header or cookie)."""
    if not expected:
        return True
    candidates = []
    if bearer_header and bearer_header.lower().startswith("bearer "):
        candidates.append(bearer_header[7:].strip())
    if cookie:
        candidates.append(cookie)
    # compare_digest: constant time, so the token cannot be guessed byte by byte.
    return any(hmac.compare_digest(c.encode(), expected.encode()) for c in candidates)


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


# ---------------------------------------------------------------- HTTP-level guards

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
