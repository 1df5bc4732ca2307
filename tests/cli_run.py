"""`run_cli(argv)`: samseg's CLI in-process, its stdout and stderr captured (for the CLI tests)."""

from __future__ import annotations

import contextlib
import io


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `samseg <argv>` run through samseg.apps.cli.main."""
    from samseg.apps import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()
