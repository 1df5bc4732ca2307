"""`python -m samseg.apps.cli`: the `samseg` command."""

from samseg.apps.cli import run

run()
