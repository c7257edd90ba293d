#!/usr/bin/env bash
# Gateway memory per registered endpoint: RSS of the gateway after N registrations
# minus its RSS before, divided by the registrations answered 2.01.
#
#   bench/memory.sh N [MODE] [STORE] [SHARDS]
#     N       devices to register (each its own 127.x.y.z address: at most 16,000,000)
#     MODE    wildcard (default) or per_endpoint: `mqtt.subscribe`
#     STORE   none (default) or file: `[store] kind` (file: in the run's temp dir)
#     SHARDS  engine.shards (default 2)
#
#   RATE=60000 GW=path SKIP_BUILD=1 bench/memory.sh 1000000 per_endpoint
#
# Mosquitto (`set_tcp_nodelay true`) is the broker; the loadgen does not subscribe
# (its MQTT checks would cost memory and CPU the measurement does not need). Lifetimes
# are a day: nothing expires during the run. The gateway's RSS is read once it
# settles (two readings 2 s apart within 0.1%, the MQTT backlog published) and the
# line `bytes per endpoint` is printed with both readings and the loadgen's own peak
# RSS; then the gateway's CPU time (all threads) over the registrations, per
# registration (`bench/store-cpu.sh` compares it between store kinds).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

N=${1:?usage: bench/memory.sh N [wildcard|per_endpoint] [none|file] [shards]}
MODE=${2:-wildcard}
STORE=${3:-none}
SHARDS=${4:-2}
RATE=${RATE:-60000}

MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[ -x "$MOSQUITTO" ] || {
    echo "bench/memory.sh needs mosquitto" >&2
    exit 1
}
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release -p lwm2m-gateway -p lwm2m-loadgen --bins
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
GW=${GW:-$TARGET/release/lwm2m-gateway}
LG=${LG:-$TARGET/release/lwm2m-loadgen}

TMP=$(mktemp -d /tmp/lwm2m-memory.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
rss_kb() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/{print $2}' "/proc/$1/status"; }

MQ_PORT=$(free_port)
cat >"$TMP/mosquitto.conf" <<CONF
listener $MQ_PORT 127.0.0.1
allow_anonymous true
persistence false
set_tcp_nodelay true
max_queued_messages 1000000
CONF
"$MOSQUITTO" -c "$TMP/mosquitto.conf" 2>"$TMP/mosquitto.log" &
PIDS+=($!)
sleep 0.5

UDP=$(free_port)
API=$(free_port)
cat >"$TMP/gw.toml" <<CONF
xml_dir = "$ROOT/etc/lwm2m_xml"
auto_observe = false

[listeners.udp.default]
bind = "127.0.0.1:$UDP"
max_conn_rate = 100000000

[mqtt]
server = "mqtt://127.0.0.1:$MQ_PORT"
subscribe = "$MODE"

[engine]
shards = $SHARDS
socket_rcvbuf = "32MB"
socket_sndbuf = "32MB"

[api]
bind = "127.0.0.1:$API"
CONF
RUST_LOG=warn,lwm2m_gateway=info "$GW" --config "$TMP/gw.toml" --store "$STORE" \
    --store-path "$TMP/store" 2>"$TMP/gw.log" >/dev/null &
GW_PID=$!
PIDS+=("$GW_PID")
for _ in $(seq 1 600); do
    grep -q "lwm2m-gateway ready udp=" "$TMP/gw.log" && break
    sleep 0.05
done
grep -q "lwm2m-gateway ready udp=" "$TMP/gw.log" || {
    cat "$TMP/gw.log" >&2
    exit 1
}
sleep 1
BEFORE=$(rss_kb "$GW_PID")

TIMEOUT=$(python3 -c "print(int($N / $RATE * 2 + 120))")
/usr/bin/time -f "%M" -o "$TMP/lg.maxrss" "$LG" run --gateway "127.0.0.1:$UDP" --register "$N" \
    --rate "$RATE" --lifetime 86400 --register-timeout "$TIMEOUT" --update-fraction 0 \
    --observe-wait 0 --drain 1 --watch-pid "$GW_PID" --allow-failures --quiet --json >"$TMP/lg.json"
OK=$(python3 -c "import json; print(json.load(open('$TMP/lg.json'))['registration']['ok'])")
CPU=$(python3 -c "import json; print(json.load(open('$TMP/lg.json'))['watch']['cpu_us_per_registration'])")

# Settle: the MQTT backlog published, freed pages returned.
prev=0
for _ in $(seq 1 60); do
    sleep 2
    now=$(rss_kb "$GW_PID")
    python3 -c "import sys; sys.exit(0 if abs($now - $prev) <= $now * 0.001 else 1)" && break
    prev=$now
done
AFTER=$(rss_kb "$GW_PID")
python3 - "$N" "$MODE" "$STORE" "$SHARDS" "$OK" "$BEFORE" "$AFTER" "$(hwm_kb "$GW_PID")" \
    "$(cat "$TMP/lg.maxrss")" "$CPU" <<'PY'
import sys
n, mode, store, shards, ok, before, after, hwm, lg, cpu = sys.argv[1:]
ok, before, after = int(ok), int(before), int(after)
per = (after - before) * 1024 / ok if ok else float("nan")
print(f"devices {int(n):,} mode {mode} store {store} shards {shards}: registered {ok:,}; "
      f"gateway RSS {before:,} kB before, {after:,} kB after (peak {int(hwm):,} kB); "
      f"loadgen peak RSS {int(lg):,} kB")
print(f"bytes per endpoint: {per:.0f}")
print(f"gateway CPU µs per registration: {float(cpu):.2f}")
PY
grep -c " WARN \| ERROR " "$TMP/gw.log" | xargs -I{} echo "gateway log: {} warnings/errors"
