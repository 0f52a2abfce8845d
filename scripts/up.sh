#!/usr/bin/env bash
# Installs what is missing, builds tern, and runs every region of a topology
# on this machine (default: the three-region loopback mesh in Topology/local.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"
bash scripts/setup.sh
swift build --product tern
exec .build/debug/tern up "${1:-Topology/local.yaml}"
