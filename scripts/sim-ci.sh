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
# broadcast-25 seed 35: a former failover home kept its own epoch's history after the heal.
# five-regions-10k seed 2: a cache kept a stale upstream after a failover and served a child from it;
#   a region skipped a re-sequenced publication for subscribers that had joined after the first copy.
# five-regions-10k seed 28: a failover log in regions without subscribers was never re-sequenced.
# five-regions-10k seed 12: a region that stopped following a room kept other regions' members.
# presence-restart seed 52: a home that restarted within failover_after lost what only its replica held.
# partition-heal seed 10: a stale gap from a former parent moved a region's stream backwards.
# lossy-link seed 135: a restarted home that could not reach its successor lost what only the
#   successor (a failover home since, which had forked again) held.
# failover-home-crash seed 6: a region that restarted inside a failover epoch delivered again, after
#   the heal, what its resumed subscribers had received before the crash.
# five-regions-10k seed 227: a region that became a failover home's replica after holding its epoch as
#   a cache did not log what it held, so the home's crash lost it.
# five-regions-10k seed 491: an acknowledgment addressed to a region's earlier incarnation answered
#   another publish (references restarted at 1).
# celebrity-burst seed 5008: a clog drawn just before the final heal outlasted it, so a region's
#   catch-up was still in flight when the run ended (the swarm's schedule, not the relay).
# five-regions-10k seeds 7084 and 7198: after a failover and the merge back, a region delivered
#   again publications from before the position a fresh subscriber started at, going back in its epoch.
# failover-home-crash seed 20024: the home crashed while its usual successor was cut off; the failover
#   home's fork was behind the region that had replicated the home last, which was told of a gap and
#   dropped what only it held.
# home-crash and partition-heal seed 20029: a failover log on its way to the canonical home was taken as
#   a duplicate by a region that had sequenced it in an earlier failover epoch and became a failover
#   home again, so it left every log.
# five-regions-10k seed 20036: a restarted region whose upstream was current but behind its clients
#   answered their subscribes at its own position and then gave them earlier offsets.
# blackhole-home seed 30301 (also failover-home-crash, home-crash and link-flap-storm 30301): a region
#   that asked to start at the fork ignored the epoch switch its upstream answered with, dropped the
#   failover epoch's first publications and, as the failover home's replica, had confirmed them.
# blackhole-home seed 40111: the same switch taken by a restarted region from a failover epoch it never
#   held back to the canonical one delivered a publisher's retry again to a subscriber that had it.
# successor-takes-over seed 30370: a cache that had moved across to a failover epoch at a later point
#   than its child (the fix for 20024 keeps such a region in place) made the child the same switch back
#   after the heal, skipping what lay between the child's fork and its own.
# broadcast-25 seed 30086: a 14-relay path around a grid with links down filled the trace before the
#   delivered hop.
# five-regions-10k seeds 30188 and 30019: a region that restarted inside a failover epoch gave a client
#   a publication in its subscribe reply and delivered it to that client again at the merge.
for replay in "Simulations/broadcast-25.yaml --swarm 1 --seed 35" \
              "Simulations/five-regions-10k.yaml --swarm 1 --seed 2" \
              "Simulations/five-regions-10k.yaml --swarm 1 --seed 28" \
              "Simulations/five-regions-10k.yaml --swarm 1 --seed 12" \
              "Simulations/presence-restart.yaml --swarm 1 --seed 52" \
              "Simulations/partition-heal.yaml --swarm 1 --seed 10" \
              "Simulations/lossy-link.yaml --swarm 1 --seed 135" \
              "Simulations/failover-home-crash.yaml --seed 6" \
              "Simulations/five-regions-10k.yaml --swarm 1 --seed 227" \
              "Simulations/five-regions-10k.yaml --swarm 1 --seed 491" \
              "Simulations/celebrity-burst.yaml --swarm 1 --seed 5008" \
              "Simulations/five-regions-10k.yaml --swarm 1 --seed 7084" \
              "Simulations/five-regions-10k.yaml --swarm 1 --seed 7198" \
              "Simulations/failover-home-crash.yaml --swarm 1 --seed 20024" \
              "Simulations/home-crash.yaml --swarm 1 --seed 20029" \
              "Simulations/partition-heal.yaml --swarm 1 --seed 20029" \
              "Simulations/five-regions-10k.yaml --swarm 1 --seed 20036" \
              "Simulations/blackhole-home.yaml --swarm 1 --seed 30301" \
              "Simulations/blackhole-home.yaml --swarm 1 --seed 40111" \
              "Simulations/successor-takes-over.yaml --swarm 1 --seed 30370" \
              "Simulations/broadcast-25.yaml --swarm 1 --seed 30086" \
              "Simulations/five-regions-10k.yaml --swarm 1 --seed 30188" \
              "Simulations/five-regions-10k.yaml --swarm 1 --seed 30019"; do
  echo "== regression: $replay"
  # shellcheck disable=SC2086
  if ! "$tern" sim $replay; then status=1; fi
done
exit $status
