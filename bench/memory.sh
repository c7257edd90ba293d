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
# RSS; then the gateway's CPU time (all threads) per registration, over the
# registrations (the loadgen's reading) and until the RSS settled (the store writer's
# last batches included; `bench/store-cpu.sh` compares it between store kinds).
set -euo pipefail
cd "$(dirname "$0")/.."

N=${1:?usage: bench/memory.sh N [wildcard|per_endpoint] [none|file] [shards]}
MODE=${2:-wildcard}
STORE=${3:-none}
SHARDS=${4:-2}
RATE=${RATE:-60000}

. bench/lib.sh
bench_init memory
start_mosquitto
# The listener admits every device of the run (its default is 1,024,000).
MAX_CONNECTIONS=$((N > 1024000 ? N : 1024000)) SUBSCRIBE=$MODE GW_RUST_LOG=warn,lwm2m_gateway=info start_gateway gw "$SHARDS" false "" ""
sleep 1
BEFORE=$(rss_kb "$GW_PID")
CPU_BEFORE=$(cpu_us "$GW_PID")

TIMEOUT=$(python3 -c "print(int($N / $RATE * 2 + 120))")
/usr/bin/time -f "%M" -o "$TMP/lg.maxrss" "$LG" run --gateway "$GW_UDP" --register "$N" \
    --rate "$RATE" --lifetime 86400 --register-timeout "$TIMEOUT" --update-fraction 0 \
    --observe-wait 0 --drain 1 --watch-pid "$GW_PID" --allow-failures --quiet --json >"$TMP/lg.json"
OK=$(python3 -c "import json; print(json.load(open('$TMP/lg.json'))['registration']['ok'])")
CPU=$(python3 -c "import json; print(json.load(open('$TMP/lg.json'))['watch']['cpu_us_per_registration'])")
REG_RATE=$(python3 -c "import json; r=json.load(open('$TMP/lg.json'))['registration']; print(r['ok'] / r['seconds'] if r['seconds'] else 0)")

# Settle: the MQTT backlog published, freed pages returned.
prev=0
for _ in $(seq 1 60); do
    sleep 2
    now=$(rss_kb "$GW_PID")
    python3 -c "import sys; sys.exit(0 if abs($now - $prev) <= $now * 0.001 else 1)" && break
    prev=$now
done
AFTER=$(rss_kb "$GW_PID")
CPU_SETTLED=$(python3 -c "print(($(cpu_us "$GW_PID") - $CPU_BEFORE) / max($OK, 1))")
python3 - "$N" "$MODE" "$STORE" "$SHARDS" "$OK" "$BEFORE" "$AFTER" "$(hwm_kb "$GW_PID")" \
    "$(cat "$TMP/lg.maxrss")" "$CPU" "$CPU_SETTLED" "$REG_RATE" <<'PY'
import sys
n, mode, store, shards, ok, before, after, hwm, lg, cpu, settled, rate = sys.argv[1:]
ok, before, after = int(ok), int(before), int(after)
per = (after - before) * 1024 / ok if ok else float("nan")
print(f"devices {int(n):,} mode {mode} store {store} shards {shards}: registered {ok:,}; "
      f"gateway RSS {before:,} kB before, {after:,} kB after (peak {int(hwm):,} kB); "
      f"loadgen peak RSS {int(lg):,} kB")
print(f"bytes per endpoint: {per:.0f}")
print(f"registrations per second: {float(rate):.0f}")
print(f"gateway CPU µs per registration: {float(cpu):.2f}")
print(f"gateway CPU µs per registration until settled: {float(settled):.2f}")
PY
echo "gateway log: $(grep -c " WARN \| ERROR " "$GW_LOG" || true) warnings/errors"
