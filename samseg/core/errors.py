"""samseg's errors: one taxonomy that says what a caller does with each.

An expected condition (a bad input, a missing file, a server that does not answer, a user's
file in the way) is a `SamsegError`: its message is one line naming the file or the problem,
`exit_code` is what the CLI exits with (README "Exit codes" — the one table, tested), and
`retryable` says whether the same command again may succeed unchanged (a server or network
that failed) or needs a change first (a bad file, a wrong flag). The CLI's `main` maps errors
to exit codes here and nowhere else; `one_line` is the one formatter of an error line.
Anything else that reaches `main` is a bug: "unexpected <Type>", with its traceback under -v.
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1  # some work failed (each failure printed as one line); the rest finished
EXIT_USAGE = 2  # nothing ran: a bad flag or value, or the user's own files in the way
EXIT_SIGNAL_BASE = 128  # + the signal's number: 130 for Ctrl-C, 143 for SIGTERM (samseg.edges.shutdown), 141 for a closed pipe


class SamsegError(Exception):
    """An expected failure: one line, an exit code, and whether a retry can help."""

    exit_code: int = EXIT_FAILED
    retryable: bool = False


class UsageError(SamsegError):
    """A bad command line or config value found after parsing; nothing ran."""

    exit_code = EXIT_USAGE


class RefusedError(SamsegError):
    """A file of the user's is where samseg would write: refused before anything is written."""

    exit_code = EXIT_USAGE


class UnavailableError(SamsegError):
    """A server or network did not answer as it should; the same command later may succeed."""

    retryable = True


def one_line(value: Any) -> str:
    """`value` as one line: every run of whitespace (newlines included) becomes one space."""
    return " ".join(str(value).split())


def exit_code_of(exc: BaseException) -> int:
    """The exit code an error ends a command with (EXIT_FAILED for anything not in the taxonomy)."""
    return exc.exit_code if isinstance(exc, SamsegError) else EXIT_FAILED
