"""Request guards for the web UI: the optional access token and artifact-path checks.

Pure functions (strings in, bools/strings out) so they are tested without a server.
"""

from __future__ import annotations

import hmac
import re

TOKEN_ENV = "SAMSEG_UI_TOKEN"
TOKEN_COOKIE = "samseg_ui_token"

# MLflow run ids are uuid4 hex (32 chars); accept a little more so other backends
# still work, but never a character that could mean a path or a query.
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# The only files the UI serves, relative to one run's own artifact folder. A whitelist
# (not a blacklist of `..`) so that encoded variants (%2e%2e, %252e, backslashes, NUL,
# absolute paths) can never name anything else.
_ARTIFACT_FILES = re.compile(
    r"^(?:overlay\.png|labels\.png|summary\.json|masks\.json|input\.jpg|thumb\.png"
    r"|classes/class_\d{1,5}\.png"
    r"|classes\.json|contact_sheet\.png)$"  # the last two: dataset (batch) runs only, see RunStore
)


class UnsafePathError(ValueError):
    """A requested file name is not one of the run's artifacts."""


def valid_run_id(run_id: str) -> bool:
    return bool(_RUN_ID.match(run_id or ""))


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
