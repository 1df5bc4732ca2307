#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite. Extra arguments go to pytest,
# e.g. ./scripts/test.sh tests/test_cli.py -x
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
