"""`python -m samseg.apps.cli`: the `samseg` command."""

from samseg.apps.cli import run

if __name__ == "__main__":  # not when a child process started by spawn imports it
    run()
