#!/usr/bin/env bash
# Create .venv and install samseg with its test extras. Idempotent: skipped when .venv is
# already complete for the current pyproject.toml and this script.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${SAMSEG_VENV:-.venv}"
STAMP="$VENV/.samseg-setup"
WANT="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"

# --- system packages hook -------------------------------------------------------------
# Debian packages the tests need: Chromium + driver for the UI browser test (Playwright drives
# /usr/bin/chromium; a browser downloaded by playwright would fail on machines without internet).
SYSTEM_PACKAGES=(chromium chromium-driver)
install_system_packages() {
  local missing=()
  for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    echo "setup: apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
}
if ((${#SYSTEM_PACKAGES[@]})); then install_system_packages; fi

# --- Python environment ---------------------------------------------------------------
venv_complete() {
  [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] &&
    "$VENV/bin/python" -c "import samseg, torch, torchvision, segment_anything, pytest" >/dev/null 2>&1
}

# --- Label Studio, the integration tests' real server (scripts/test.sh asks for it) ----------
# In its own venv: label-studio pins its Django stack (and an SDK version) that samseg's need not follow.
LS_VENV="${SAMSEG_LS_VENV:-.venv-ls}"
LABEL_STUDIO="label-studio==1.23.2"
if [[ "${SAMSEG_TEST_SERVERS:-0}" == 1 ]] && [[ ! -x "$LS_VENV/bin/label-studio" || "$(cat "$LS_VENV/.samseg-setup" 2>/dev/null)" != "$LABEL_STUDIO" ]]; then
  [[ -x "$LS_VENV/bin/python" ]] || python3 -m venv "$LS_VENV"
  "$LS_VENV/bin/python" -m pip install -q "$LABEL_STUDIO"
  echo "$LABEL_STUDIO" >"$LS_VENV/.samseg-setup"
  echo "setup: $LS_VENV ready ($LABEL_STUDIO)"
fi

if venv_complete; then
  echo "setup: $VENV is up to date"
else
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
  # torch first, pinned: the dev machines and CI use this build (any torch >= 2.1 works).
  "$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
  "$VENV/bin/python" -m pip install -q -e '.[test]'
  echo "$WANT" >"$STAMP"
  echo "setup: $VENV ready"
fi
