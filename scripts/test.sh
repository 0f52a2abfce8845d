#!/usr/bin/env bash
# Builds everything and runs every test (Swift, then the JavaScript client). Installs missing system packages first.
# Tests run one at a time: several start real relays and child processes, and a
# serial run (about half a minute) keeps them from competing for two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"
bash scripts/setup.sh
swift build --build-tests
# The run's output also goes to a log, so that a failure can be repeated at the end: the test
# that failed and what it expected, where a reader of the last lines sees them.
log="$(mktemp)"
status=0
timeout 1200 swift test --skip-build --no-parallel "$@" 2>&1 | tee "$log" || status=$?
if [ "$status" -ne 0 ]; then
  echo "== failed tests (exit $status) =="
  grep -E "✘|recorded an issue|Expectation failed|error:|Fatal error" "$log" | grep -v "✘ Test run with" | head -40 || true
  rm -f "$log"
  exit "$status"
fi
rm -f "$log"
# The browser client (clients/js) on Node's built-in test runner.
node --test clients/js/test/
