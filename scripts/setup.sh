#!/usr/bin/env bash
# Create or update .venv. Two setups:
#   scripts/setup.sh          samseg and its runtime dependencies only (the demo): no test extras,
#                             no system packages, no root
#   scripts/setup.sh --test   also the test extras, Label Studio in its own .venv-ls, and Debian's
#                             Chromium + driver for the browser tests (apt-get when it is there and
#                             we are root; else one line saying what to install)
# Idempotent: each part is skipped while its stamp matches what it installed (the dependency
# lists in pyproject.toml, this script, the Python version), so a changed dependency reinstalls
# and nothing else does.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=runtime
case "${1:-}" in
  --test) MODE=test ;;
  "") ;;
  *) echo "setup: unknown option $1 (use --test for the test setup)" >&2; exit 2 ;;
esac

VENV="${SAMSEG_VENV:-.venv}"
PYTHON="${SAMSEG_PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
  echo "setup: samseg needs Python >= 3.11 as $PYTHON (install it, or set SAMSEG_PYTHON to one)" >&2
  exit 1
fi

# What a stamp keys on: the dependency lists (not the rest of pyproject.toml), this script, the Python.
stamp_of() {
  "$PYTHON" - "$1" <<'EOF'
import hashlib, json, pathlib, sys, tomllib
project = tomllib.loads(pathlib.Path("pyproject.toml").read_text())
deps = {"build": project["build-system"], "runtime": project["project"]["dependencies"],
        "test": project["project"]["optional-dependencies"]["test"] if sys.argv[1] == "test" else None}
blob = json.dumps(deps, sort_keys=True) + pathlib.Path("scripts/setup.sh").read_text() + sys.version
print(hashlib.sha256(blob.encode()).hexdigest())
EOF
}

# --- Python environment ---------------------------------------------------------------
WANT="$(stamp_of "$MODE")"
STAMP="$VENV/.samseg-setup-$MODE"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && "$VENV/bin/python" -c "import samseg, torch" >/dev/null 2>&1; then
  echo "setup: $VENV is up to date ($MODE)"
else
  [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
  # torch first, pinned: the dev machines and CI use this build (any torch >= 2.1 works).
  "$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
  if [[ "$MODE" == test ]]; then
    "$VENV/bin/python" -m pip install -q -e '.[test]'
    stamp_of runtime >"$VENV/.samseg-setup-runtime"  # the test setup holds the runtime one
  else
    "$VENV/bin/python" -m pip install -q -e .
  fi
  echo "$WANT" >"$STAMP"
  echo "setup: $VENV ready ($MODE)"
fi
[[ "$MODE" == test ]] || exit 0

# --- Label Studio, the integration tests' real server -----------------------------------
# In its own venv: label-studio pins its Django stack (and an SDK version) that samseg's need not follow.
LS_VENV="${SAMSEG_LS_VENV:-.venv-ls}"
LABEL_STUDIO="label-studio==1.23.2"
if [[ ! -x "$LS_VENV/bin/label-studio" || "$(cat "$LS_VENV/.samseg-setup" 2>/dev/null)" != "$LABEL_STUDIO" ]]; then
  [[ -x "$LS_VENV/bin/python" ]] || "$PYTHON" -m venv "$LS_VENV"
  "$LS_VENV/bin/python" -m pip install -q "$LABEL_STUDIO"
  echo "$LABEL_STUDIO" >"$LS_VENV/.samseg-setup"
  echo "setup: $LS_VENV ready ($LABEL_STUDIO)"
fi

# --- Chromium + driver for the browser tests (Playwright drives /usr/bin/chromium: a browser
# downloaded by playwright would fail on machines without internet) -------------------------
SYSTEM_PACKAGES=(chromium chromium-driver)
if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
  :
elif command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
  echo "setup: apt-get install ${SYSTEM_PACKAGES[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${SYSTEM_PACKAGES[@]}"
elif command -v apt-get >/dev/null 2>&1; then
  echo "setup: the browser tests need Debian's ${SYSTEM_PACKAGES[*]}: run 'sudo apt-get install ${SYSTEM_PACKAGES[*]}', then this again" >&2
  exit 1
else
  echo "setup: the browser tests need Chromium at /usr/bin/chromium and its driver at /usr/bin/chromedriver (Debian: ${SYSTEM_PACKAGES[*]}; Fedora: chromium chromedriver; Arch: chromium) from your system's package manager, then run this again" >&2
  exit 1
fi
