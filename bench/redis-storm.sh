#!/usr/bin/env bash
# Registration storm throughput with the Redis store (`[store] kind = "redis"`) on one
# node and on two nodes sharing one Redis and one Mosquitto (`set_tcp_nodelay true`),
# against the same storm on one node with `kind = "none"` as the baseline of the run.
# Each run gets a fresh Mosquitto, Redis and gateways. Each node gets its own load
# generator with its own devices (distinct names: prefix `nI-`, and distinct addresses:
# `--devices-offset`); a run's rate is the devices answered 2.01 over the longest
# loadgen's registration phase; the register messages the loadgens saw on MQTT against
# the devices answered 2.01 is the delivered ratio (below 100%: the script fails). The
# records in Redis are counted after each Redis run, once the writers are idle (every
# acknowledged registration must be there).
#
#   bench/redis-storm.sh [DEVICES] [RATE] [ROUNDS]  # defaults 200000 60000 1 (per run, all nodes)
#   SKIP_BUILD=1 SHARDS=1 bench/redis-storm.sh 100000 40000 2
#
# ROUNDS > 1 repeats the three runs (none, redis 1, redis 2) in turn.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
RATE=${2:-60000}
ROUNDS=${3:-1}
SHARDS=${SHARDS:-1}
REDIS=$(command -v redis-server || echo /usr/bin/redis-server)
REDIS_CLI=$(command -v redis-cli || echo /usr/bin/redis-cli)
[ -x "$REDIS" ] && [ -x "$REDIS_CLI" ] || {
    echo "bench/redis-storm.sh needs redis-server and redis-cli (Debian's redis-server)" >&2
    exit 1
}

. bench/lib.sh
bench_init redis-storm

echo "# bench/redis-storm.sh $N $RATE $ROUNDS, SHARDS=$SHARDS"
echo "# start: $(machine_line)"
echo "# $N devices per run at $RATE/s offered in all (split evenly between the nodes), $SHARDS shard(s) per node, wildcard subscriptions"

# Waits until every node's writer is idle (nothing queued), at most 30 s.
wait_written() { # api...
    for _ in $(seq 1 300); do
        local busy=0 a
        for a in "$@"; do
            [ "$(metric "$a" lwm2m_store_queued)" = 0 ] || busy=1
        done
        [ "$busy" = 0 ] && return 0
        sleep 0.1
    done
    echo "store writers still busy after 30 s" >&2
}

# run ROUND KIND NODES: one table row
run() {
    local round=$1 kind=$2 nodes=$3 rp="" rpid=""
    start_mosquitto
    local mqpid=$MQ_PID
    if [ "$kind" = redis ]; then
        rp=$(free_port)
        "$REDIS" --port "$rp" --bind 127.0.0.1 --save "" --appendonly no \
            >"$TMP/redis-$rp.log" 2>&1 &
        rpid=$!
        PIDS+=("$rpid")
        wait_line "$TMP/redis-$rp.log" "Ready to accept connections"
    fi
    local gws=() udps=() apis=()
    for i in $(seq 1 "$nodes"); do
        start_gateway "r$round-$kind-$nodes-g$i" "$SHARDS" false "" "[store]
kind = \"$kind\"
url = \"redis://127.0.0.1:${rp:-6379}\"

[cluster]
node = \"bench-$i\""
        gws+=("$GW_PID")
        udps+=("$GW_UDP")
        apis+=("$GW_API")
    done
    local per=$((N / nodes)) lgs=() i
    for i in $(seq 1 "$nodes"); do
        "$LG" run --gateway "${udps[$((i - 1))]}" --register "$per" \
            --devices-offset $(((i - 1) * per)) --prefix "n$i-" \
            --mqtt "$MQ" --rate $((RATE / nodes)) --lifetime 86400 --register-timeout 120 \
            --update-fraction 0 --observe-wait 0 --drain 1 --allow-failures --quiet \
            --json >"$TMP/lg-$round-$kind-$nodes-$i.json" 2>"$TMP/lg-$round-$kind-$nodes-$i.log" &
        lgs+=($!)
    done
    # A loadgen's own check (its register messages on MQTT) fails it; the table says why.
    for p in "${lgs[@]}"; do wait "$p" || true; done
    local stored="" written=0
    if [ "$kind" = redis ]; then
        wait_written "${apis[@]}"
        stored=$("$REDIS_CLI" -p "$rp" --scan --pattern 'lwm2m:reg:*' | wc -l)
        for a in "${apis[@]}"; do
            written=$((written + $(metric "$a" lwm2m_store_writes_total | cut -d. -f1)))
        done
    fi
    local status=0
    python3 - "$kind" "$nodes" "$stored" "$written" "$TMP"/lg-"$round-$kind-$nodes"-*.json <<'PY' || status=$?
import json, sys
kind, nodes, stored, written, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
ok = 0; secs = 0.0; seen = 0; timeouts = 0; shed = 0
for f in files:
    r = json.load(open(f))["registration"]
    ok += r["ok"]
    timeouts += r.get("timed_out") or 0
    shed += r.get("service_unavailable") or 0
    seen += r.get("mqtt_registered_endpoints") or 0
    secs = max(secs, r["seconds"])
rate = ok / secs if secs else float("nan")
delivered = f"{seen / ok:.1%}" if ok else "-"
in_redis = f"{int(stored):,}" if stored else "-"
wr = f"{int(written):,}" if kind == "redis" else "-"
print(f"| {kind} | {nodes} | {ok:,} | {timeouts:,} / {shed:,} | {rate:,.0f}/s | {seen:,} ({delivered}) | {wr} | {in_redis} |")
if seen < ok:
    sys.exit(f"{ok - seen} acknowledged registrations without a register message on MQTT")
if stored and int(stored) < ok:
    sys.exit(f"{ok - int(stored)} acknowledged registrations missing in Redis")
PY
    for p in "${gws[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${gws[@]}"; do wait "$p" 2>/dev/null || true; done
    kill "$mqpid" ${rpid:+"$rpid"} 2>/dev/null || true
    wait "$mqpid" ${rpid:+"$rpid"} 2>/dev/null || true
    return "$status"
}

echo
echo "| store | nodes | registered (2.01) | timed out / 5.03 | rate | register messages on MQTT | records written | records in Redis |"
echo "|---|---|---|---|---|---|---|---|"
STATUS=0
for r in $(seq 1 "$ROUNDS"); do
    run "$r" none 1 || STATUS=1
    run "$r" redis 1 || STATUS=1
    run "$r" redis 2 || STATUS=1
done
echo
echo "# end: $(machine_line)"
exit "$STATUS"
