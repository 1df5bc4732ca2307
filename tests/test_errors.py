"""One error taxonomy (samseg.core.errors): each expected error carries its exit code and whether a
retry can help; the CLI decides exit codes from it alone; the README's table is its table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from samseg.core import errors
from samseg.core.errors import EXIT_FAILED, EXIT_USAGE, SamsegError, exit_code_of


def _taxonomy() -> dict[str, type]:
    from samseg.apps.cli.common import UsageError
    from samseg.edges.annotations import ExportError
    from samseg.edges.image_dir import OutputsError
    from samseg.edges.images import ImageError
    from samseg.edges.labelstudio import LabelStudioError
    from samseg.edges.mlflow.client import RunRefError, TrackingError
    from samseg.edges.owned_files import BatchIncomplete, FilesRefused
    from samseg.edges.storage import StorageError, StorageNotFound, StorageRefused
    from samseg.engine.curate import CurateError
    from samseg.engine.recluster import ReclusterError
    from samseg.sam.weights import CheckpointError

    return {c.__name__: c for c in (UsageError, ExportError, OutputsError, ImageError, LabelStudioError, TrackingError,
                                    BatchIncomplete, FilesRefused, StorageError, StorageNotFound, StorageRefused,
                                    ReclusterError, CheckpointError, CurateError, RunRefError)}


@pytest.mark.parametrize("name, code, retry", [
    ("UsageError", EXIT_USAGE, False), ("FilesRefused", EXIT_USAGE, False),
    ("TrackingError", EXIT_FAILED, True), ("RunRefError", EXIT_USAGE, False), ("StorageError", EXIT_FAILED, True),
    ("StorageNotFound", EXIT_FAILED, False), ("StorageRefused", EXIT_FAILED, False),
    ("CheckpointError", EXIT_FAILED, False), ("ImageError", EXIT_FAILED, False),
])
def test_each_error_carries_its_exit_code_and_whether_a_retry_helps(name: str, code: int, retry: bool) -> None:
    cls = _taxonomy()[name]
    assert issubclass(cls, SamsegError) and cls.exit_code == code and cls.retryable is retry


def test_every_expected_error_is_in_the_taxonomy_and_anything_else_exits_1() -> None:
    assert all(issubclass(c, SamsegError) for c in _taxonomy().values())
    assert exit_code_of(KeyError("a bug")) == EXIT_FAILED


def test_the_readmes_exit_codes_are_the_taxonomys() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("## Exit codes", 1)[1].split("\n\n", 2)[1]
    listed = {int(c) for row in table.splitlines()[2:] for c in re.findall(r"\b(\d+)\b", row.split("|")[1])}
    import signal

    ours = {errors.EXIT_OK, errors.EXIT_FAILED, errors.EXIT_USAGE, errors.EXIT_SIGNAL_BASE + signal.SIGINT,
            errors.EXIT_SIGNAL_BASE + signal.SIGTERM, errors.EXIT_SIGNAL_BASE + signal.SIGPIPE}
    assert listed == ours


def test_main_takes_the_exit_code_from_the_error(monkeypatch) -> None:
    from cli_run import run_cli
    from samseg.edges.owned_files import FilesRefused

    def refused(_args):
        raise FilesRefused("out/batch_summary.json: yours,\\nnot samseg's")

    from samseg.apps import cli

    args = cli.build_parser().parse_args(["runs", "list"])
    args.handler = refused  # any command whose handler meets the user's file in its way
    monkeypatch.setattr(cli, "build_parser", lambda *_: type("P", (), {"parse_args": lambda self, argv: args})())
    rc, _, err = run_cli(["runs", "list"])
    assert rc == EXIT_USAGE and err.strip() == "error: out/batch_summary.json: yours,\\nnot samseg's"


def test_a_broken_pipe_that_is_not_stdouts_is_an_error_line_not_a_quiet_141(monkeypatch) -> None:
    """141 is for a reader of stdout that went away; an EPIPE from another pipe or a socket is a failure."""
    from cli_run import run_cli

    from samseg.apps import cli

    def pipe_to_a_child(_args):
        raise BrokenPipeError(32, "Broken pipe")

    args = cli.build_parser().parse_args(["runs", "list"])
    args.handler = pipe_to_a_child
    monkeypatch.setattr(cli, "build_parser", lambda *_: type("P", (), {"parse_args": lambda self, argv: args})())
    rc, _, err = run_cli(["runs", "list"])
    assert rc == EXIT_FAILED and err.strip() == "error: unexpected BrokenPipeError: [Errno 32] Broken pipe", err
