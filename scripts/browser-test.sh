#!/usr/bin/env bash
# Builds tern, installs headless Chromium and Playwright (scripts/setup-browser.sh),
# and runs the browser tests in tests/browser against real meshes on loopback.
# Screenshots of the demo and status pages are written to docs/screenshots/.
# Extra arguments go to pytest (e.g. -k status).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"
bash scripts/setup.sh
swift build --product tern
bash scripts/setup-browser.sh
export TERN_BIN="$PWD/.build/debug/tern"
timeout 300 .venv-browser/bin/python -m pytest tests/browser -q "$@"
