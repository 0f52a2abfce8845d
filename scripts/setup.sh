#!/usr/bin/env bash
# Installs the system packages Tern needs on a fresh Debian/Ubuntu machine.
# Safe to run again: it installs only what is missing.
set -euo pipefail

need=()
dpkg -s liblz4-dev >/dev/null 2>&1 || need+=(liblz4-dev)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
# The JavaScript client's unit tests run on Node's built-in test runner (no npm packages).
command -v node >/dev/null 2>&1 || need+=(nodejs)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

command -v swift >/dev/null 2>&1 || [ -x /opt/swift/usr/bin/swift ] || {
  echo "setup: no Swift toolchain found; install Swift 6 and put it on PATH" >&2
  exit 1
}
