#!/usr/bin/env bash
# Soak: the release gateway (embedded broker) under churn for MINUTES (default 30):
# cycles of registrations, updates, notifications and commands, half the devices
# de-registering and half left to expire, while the gateway's RSS is sampled every
# 10 s. Writes bench/results/soak-<date>.csv (time, rss_kib, endpoints) and a summary
# with each cycle's loadgen JSON (latency percentiles); fails if a cycle's checks
# fail or if RSS kept growing after the warm-up (scripts/soak_summary.py).
# SOAK_SUBSCRIBE=per_endpoint: one command subscription per device (each with its
# home shard) instead of the embedded broker's default wildcard.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-30}
cargo build --release -p lwm2m-gateway -p lwm2m-loadgen >/dev/null
dir=$(mktemp -d)
trap 'kill $gw 2>/dev/null || true; rm -rf "$dir"' EXIT
mqtt=$((20000 + RANDOM % 10000)); udp=$((mqtt + 1)); api=$((mqtt + 2))
cat > "$dir/gw.toml" <<TOML
lifetime_min = "1s"
auto_observe = true
[listeners.udp.default]
bind = "127.0.0.1:$udp"
max_conn_rate = 1000000
[mqtt]
subscribe = "${SOAK_SUBSCRIBE:-auto}"
embedded_bind = "127.0.0.1:$mqtt"
embedded_bind_v5 = "127.0.0.1:$((mqtt + 3))"
[api]
bind = "127.0.0.1:$api"
TOML
RUST_LOG=${RUST_LOG:-warn} target/release/lwm2m-gateway --config "$dir/gw.toml" 2> "$dir/gw.log" &
gw=$!
sleep 2
stamp=$(date -u +%Y-%m-%d-%H%M)
out=bench/results/soak-$stamp
mkdir -p bench/results
echo "seconds,rss_kib,endpoints" > "$out.csv"
start=$(date +%s)
(
    while kill -0 $gw 2>/dev/null; do
        rss=$(awk '/VmRSS/ {print $2}' /proc/$gw/status)
        eps=$(curl -s "http://127.0.0.1:$api/metrics" | awk '/^lwm2m_endpoints/ {s += $2} END {print s + 0}')
        echo "$(( $(date +%s) - start )),$rss,$eps" >> "$out.csv"
        sleep 10
    done
) &
sampler=$!
cycle=0
: > "$out.jsonl"
while [ $(( $(date +%s) - start )) -lt $(( minutes * 60 )) ]; do
    cycle=$((cycle + 1))
    # Even cycles de-register at the end; odd ones leave their devices to expire (lt 20 s).
    dereg=""; [ $((cycle % 2)) -eq 0 ] && dereg="--deregister"
    target/release/lwm2m-loadgen --gateway "127.0.0.1:$udp" --mqtt "127.0.0.1:$mqtt" \
        --register 2000 --rate 2000 --lifetime 20 --steady 40 --notify-rate 500 \
        --commands 50 --command-mix read=6,write=2,execute=1,observe=1 --devices-offset $(( (cycle % 4) * 5000 )) --prefix "soak$((cycle % 4))-" \
        $dereg --json >> "$out.jsonl" || {
        # The summary reports the failed cycle; keep what explains it.
        curl -s "http://127.0.0.1:$api/metrics" > "$out.cycle$cycle.metrics" || true
    }
done
kill $sampler 2>/dev/null || true
status=0
python3 scripts/soak_summary.py "$out.csv" "$out.jsonl" > "$out.md" || status=$?
cat "$out.md"
# A failed run keeps the gateway's log next to its results.
[ $status -eq 0 ] || cp "$dir/gw.log" "$out.gateway.log"
exit $status
