#!/usr/bin/env bash
# Builds everything and runs every test. Installs missing system packages first.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"
bash scripts/setup.sh
swift build --build-tests
swift test --skip-build "$@"
