#!/usr/bin/env bash
# Set up .venv if needed, check ruff + import-linter contracts, then run the test suite. Extra arguments go to pytest,
# e.g. ./scripts/test.sh tests/test_cli.py -x
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test   # the test extras, Label Studio in .venv-ls (tests/servers.py), Chromium
# Contracts first (seconds): lint errors and the layering rules in pyproject.toml.
.venv/bin/ruff check samseg flows tests benchmarks
.venv/bin/lint-imports
exec .venv/bin/python -m pytest -q "$@"
