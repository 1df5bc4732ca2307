"""How a samseg command logs: one format on stderr, WARNING and up (DEBUG with -v), no
credential in any line. The command's own process and samseg's MLflow process
(samseg.edges.mlflow.process) set it up alike."""

from __future__ import annotations

import logging
import sys


class _ScrubSecrets(logging.Filter):
    """No credential in any log line: with -v botocore logs signed headers at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        from samseg.core.secrets import scrub_secrets

        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 — a malformed record is logging's own problem
            return True
        clean = scrub_secrets(text)
        if clean != text:
            record.msg, record.args = clean, None
        return True


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _ScrubSecrets) for f in handler.filters):
            handler.addFilter(_ScrubSecrets())
    if not verbose:
        # MLflow logs a store's database errors at ERROR with ~80 lines of SQLAlchemy traceback
        # before raising them (and its table creation at INFO), and urllib3 a warning per retry
        # of a dead server; samseg reports the error raised at the end in its own one line.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def verbose() -> bool:
    """Whether this process logs at DEBUG (-v)."""
    return logging.getLogger().getEffectiveLevel() <= logging.DEBUG
