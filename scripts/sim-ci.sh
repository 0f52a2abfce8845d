#!/usr/bin/env bash
# Runs every scenario in Simulations/ on a small fixed set of seeds and fails
# if any invariant fails. Uses the tern binary from the last build.
set -euo pipefail
cd "$(dirname "$0")/.."
tern=${TERN:-.build/debug/tern}
status=0
for scenario in Simulations/*.yaml; do
  seeds="1..2"
  # The speed benchmark is large; one seed is enough to check it.
  case "$scenario" in *five-regions-10k*) seeds="1..1" ;; esac
  echo "== $scenario (seeds $seeds)"
  if ! "$tern" sim "$scenario" --seeds "$seeds" --check-determinism; then
    status=1
  fi
done
# Swarm seeds that once failed, kept as regression checks (each names what it caught).
# broadcast-25 swarm seed 35: a former failover home kept its own epoch's history after the heal.
for replay in "Simulations/broadcast-25.yaml --swarm 1 --seed 35"; do
  echo "== regression: $replay"
  # shellcheck disable=SC2086
  if ! "$tern" sim $replay; then status=1; fi
done
exit $status
