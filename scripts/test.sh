#!/usr/bin/env bash
# Builds everything and runs every test (Swift, then the JavaScript client). Installs missing system packages first.
# Tests run one at a time: several start real relays and child processes, and a
# serial run (about half a minute) keeps them from competing for two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"
bash scripts/setup.sh
swift build --build-tests
timeout 1200 swift test --skip-build --no-parallel "$@"
# The browser client (clients/js) on Node's built-in test runner.
node --test clients/js/test/
