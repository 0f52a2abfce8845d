#!/usr/bin/env bash
# Runs Tern's benchmark suite on loopback against a Tern relay and nats-server side by side,
# with the same load generator (`tern bench`), and prints one table.
#
#   ./scripts/bench.sh            the full suite (docs/PERFORMANCE.md), a minute or two once built
#   ./scripts/bench.sh --smoke    small numbers, to check that everything works end to end (CI)
#
# It installs nats-server if missing, builds tern in release mode, starts fresh servers for each
# group of benchmarks and stops them afterwards. Figures are ratios measured in one run: on a
# shared machine the absolute numbers move from run to run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"

SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1

if ! command -v nats-server >/dev/null 2>&1; then
  echo "bench: installing nats-server"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nats-server >/dev/null
fi
./scripts/setup.sh

swift build -c release --product tern --scratch-path .build-release >/dev/null
TERN="$PWD/.build-release/release/tern"
export TERN_JWT_SECRET="bench-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
# Thousands of connections on both sides need thousands of descriptors.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

NATS_PORT=7302
cat > "$WORK/nats.conf" <<EOF
listen: 127.0.0.1:4333
websocket {
  listen: "127.0.0.1:$NATS_PORT"
  no_tls: true
}
EOF

wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "bench: nothing listens on port $1" >&2
  return 1
}

start_servers() {
  "$TERN" relay --topology Topology/bench.yaml --region bench --log-level warning >"$WORK/relay.log" 2>&1 &
  RELAY_PID=$!
  nats-server -c "$WORK/nats.conf" >"$WORK/nats.log" 2>&1 &
  NATS_PID=$!
  PIDS+=("$RELAY_PID" "$NATS_PID")
  wait_port 7301
  wait_port "$NATS_PORT"
}

stop_servers() {
  kill "$RELAY_PID" "$NATS_PID" 2>/dev/null || true
  wait "$RELAY_PID" "$NATS_PID" 2>/dev/null || true
}

if [ "$SMOKE" = 1 ]; then
  FAN=(50 200) FAN10K=(200 20) CONNS=200 LAT_SUBS=20 LAT_RATE=200 LAT_SECONDS=2
else
  FAN=(1000 2000) FAN10K=(10000 100) CONNS=5000 LAT_SUBS=100 LAT_RATE=1000 LAT_SECONDS=5
fi
SHORT=250
[ "$SMOKE" = 1 ] && SHORT=50

RESULTS="$WORK/results.txt"
: > "$RESULTS"
row() { printf '%-58s %14s %14s %9s\n' "$1" "$2" "$3" "$4" >> "$RESULTS"; }
json_field() { python3 -c "import json,sys; d=json.load(open('$1')); print($2)"; }

# Idle connections first, on fresh servers: resident memory per connection.
start_servers
"$TERN" bench connections --url ws://127.0.0.1:7301/ws --nats "ws://127.0.0.1:$NATS_PORT" \
  --connections "$CONNS" --pid "$RELAY_PID" --nats-pid "$NATS_PID" --json > "$WORK/conns.json"
stop_servers
row "RSS per idle subscribed connection ($CONNS connections)" \
  "$(json_field "$WORK/conns.json" "'%.1f KB' % (d['results'][0]['bytesPerConnection']/1024)")" \
  "$(json_field "$WORK/conns.json" "'%.1f KB' % (d['results'][1]['bytesPerConnection']/1024)")" \
  "$(json_field "$WORK/conns.json" "'%.2f×' % (d['results'][0]['bytesPerConnection']/d['results'][1]['bytesPerConnection'])")"
row "  relay RSS before / open / after they closed" \
  "$(json_field "$WORK/conns.json" "'%d/%d/%d MiB' % tuple(d['results'][0][k]//1024 for k in ('rssBeforeKiB','rssOpenKiB','rssAfterKiB'))")" \
  "$(json_field "$WORK/conns.json" "'%d/%d/%d MiB' % tuple(d['results'][1][k]//1024 for k in ('rssBeforeKiB','rssOpenKiB','rssAfterKiB'))")" ""

# Fan-out, on fresh servers.
start_servers
fanout() {
  local subs=$1 msgs=$2 out=$3
  "$TERN" bench fanout --url ws://127.0.0.1:7301/ws --nats "ws://127.0.0.1:$NATS_PORT" \
    --subscribers "$subs" --messages "$msgs" --size 100 --json > "$out"
  row "fan-out 1 → $subs subscribers, $msgs × 100 B (deliveries/s)" \
    "$(json_field "$out" "'%.0f' % d['results'][0]['deliveriesPerSecond']")" \
    "$(json_field "$out" "'%.0f' % d['results'][1]['deliveriesPerSecond']")" \
    "$(json_field "$out" "'%.3f×' % d['ratio']")"
}
fanout "${FAN[0]}" "$SHORT" "$WORK/fan-short.json"
fanout "${FAN[0]}" "${FAN[1]}" "$WORK/fan-long.json"
row "  run-length stability (long / short, Tern)" \
  "$(python3 -c "import json; a=json.load(open('$WORK/fan-long.json'))['results'][0]['deliveriesPerSecond']; b=json.load(open('$WORK/fan-short.json'))['results'][0]['deliveriesPerSecond']; print('%.2f' % (a/b))")" "" ""
fanout "${FAN10K[0]}" "${FAN10K[1]}" "$WORK/fan-10k.json"
"$TERN" bench latency --url ws://127.0.0.1:7301/ws --nats "ws://127.0.0.1:$NATS_PORT" \
  --subscribers "$LAT_SUBS" --rate "$LAT_RATE" --duration "$LAT_SECONDS" --json > "$WORK/lat.json"
row "latency, one server, $LAT_RATE/s to $LAT_SUBS subscribers: p50 / p99 ms" \
  "$(json_field "$WORK/lat.json" "'%.2f / %.2f' % (d['results'][0]['p50Milliseconds'], d['results'][0]['p99Milliseconds'])")" \
  "$(json_field "$WORK/lat.json" "'%.2f / %.2f' % (d['results'][1]['p50Milliseconds'], d['results'][1]['p99Milliseconds'])")" ""
stop_servers

# Latency across the three-region loopback mesh: published in eu-west, read in us-east. The topic's
# home decides the path (a publication is sequenced at its home, then sent down the tree), so the
# benchmark runs once per home: topic names are picked by asking the relay where each one lives.
MESH_PIDS=()
for r in eu-west us-east ap-south; do
  "$TERN" relay --topology Topology/bench-mesh.yaml --region "$r" --log-level warning >"$WORK/mesh-$r.log" 2>&1 &
  MESH_PIDS+=($!)
  PIDS+=($!)
done
wait_port 7311; wait_port 7312; wait_port 7313
sleep 2
row "latency, 3-region mesh, $LAT_RATE/s to $LAT_SUBS subscribers: p50 / p99 ms" "" "" ""
for home in eu-west us-east ap-south; do
  topic=$(python3 - "$home" <<'PYTHON'
import json, sys, urllib.request
for i in range(1000):
    name = "mesh-%d" % i
    with urllib.request.urlopen("http://127.0.0.1:7311/status?topic=bench:" + name) as r:
        if json.load(r)["topic"]["home"] == sys.argv[1]:
            print(name)
            break
else:
    sys.exit("bench: no topic of mesh-0..mesh-999 has its home in %s (is the region up?)" % sys.argv[1])
PYTHON
)
  case $home in
    eu-west) path="home in the publisher's region (2 relays)" ;;
    us-east) path="home in the subscribers' region (2 relays)" ;;
    *) path="home in a third region (3 relays)" ;;
  esac
  "$TERN" bench latency --url ws://127.0.0.1:7312/ws --publish-url ws://127.0.0.1:7311/ws --topic "$topic" \
    --subscribers "$LAT_SUBS" --rate "$LAT_RATE" --duration "$LAT_SECONDS" --json > "$WORK/lat-mesh-$home.json"
  row "  $path" \
    "$(json_field "$WORK/lat-mesh-$home.json" "'%.2f / %.2f' % (d['results'][0]['p50Milliseconds'], d['results'][0]['p99Milliseconds'])")" "–" ""
done
kill "${MESH_PIDS[@]}" 2>/dev/null || true

echo
echo "Tern $(git rev-parse --short HEAD 2>/dev/null || echo '?') against $(nats-server --version 2>/dev/null), $(nproc) cores, load generator: tern bench (2 event loops)"
printf '%-58s %14s %14s %9s\n' "benchmark" "tern" "nats-server" "tern/nats"
cat "$RESULTS"
