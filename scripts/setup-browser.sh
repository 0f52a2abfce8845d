#!/usr/bin/env bash
# Installs what the browser tests need: Debian's Chromium, and Playwright and
# pytest for Python in a virtual environment under .venv-browser/.
# Playwright drives the system Chromium (it never downloads a browser of its own).
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# Fonts, so pages and screenshots render text (Chromium pulls a minimal set only).
dpkg -s fonts-dejavu-core >/dev/null 2>&1 || need+=(fonts-dejavu-core)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup-browser: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

VENV=.venv-browser
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup-browser: making $VENV"
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import playwright, pytest' >/dev/null 2>&1; then
  echo "setup-browser: installing playwright and pytest into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check playwright pytest
fi

chromium_path="$(command -v chromium)"
echo "setup-browser: $("$chromium_path" --version 2>/dev/null | head -1) at $chromium_path; $("$VENV/bin/python" -m pip show playwright 2>/dev/null | grep '^Version' | sed 's/Version: /playwright /')"
