#!/usr/bin/env bash
# The command round trip at a few rates, each against its own floor: for every RATE,
# a fresh Mosquitto and 2-shard gateway (per-endpoint subscriptions), 2,000 devices and
# 10 s of read commands at RATE (round-trip percentiles, and the CPU share of the
# gateway, Mosquitto and the loadgen over 5 s of it), then `lwm2m-loadgen mqtt-relay`
# at RATE on the same broker (the MQTT path alone), whose relay client's CPU per command
# (one MQTT read and one publish) is the CPU floor: a gateway's command is that socket
# work twice (MQTT and CoAP). Prints one line per run.
# Where `perf stat` can count tracepoints, the 5 s window is also counted with it: the
# gateway's syscalls, context switches (wake-ups) and poll returns per command answered
# (counts that do not depend on how busy the machine is; CPU seconds do).
#
#   bench/cmd-latency.sh 2000 5000 15000 | tee bench/results/$(date -u +%F-%H%M)-cmd-latency.txt
#   SKIP_BUILD=1 bench/cmd-latency.sh 7500
#   CONNECTIONS=2 bench/cmd-latency.sh 2000 # mqtt.connections (unset: the default, one
#                                           # connection per 16,384 admitted devices)
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- 2000 5000 15000
. bench/lib.sh
bench_init cmd-latency
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
# Counted per 5 s window when perf can: every syscall, context switches, and the
# syscalls a loop turn makes (epoll_wait: one per turn).
EVENTS=raw_syscalls:sys_enter,context-switches,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_recvmmsg,syscalls:sys_enter_sendmmsg,syscalls:sys_enter_read,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_futex
PERF=0
perf stat -x, -e "$EVENTS" true >/dev/null 2>&1 && PERF=1
window() { # pid file: 5 s, counted when perf can
    if [ "$PERF" = 1 ]; then perf stat -x, -e "$EVENTS" -p "$1" -o "$2" -- sleep 5 >/dev/null 2>&1 || sleep 5
    else sleep 5; fi
}

echo "# $(machine_line)"
for RATE in "$@"; do
    T=$TMP/$RATE
    mkdir -p "$T"
    start_mosquitto
    MP=$MQ_PID
    SUBSCRIBE=per_endpoint MQTT_EXTRA=${CONNECTIONS:+"connections = $CONNECTIONS"} STORE=file \
        GW_RUST_LOG=info start_gateway "gw-$RATE" 2 false
    GP=$GW_PID
    "$LG" run --gateway "$GW_UDP" --mqtt "$MQ" --register 2000 --rate 50000 \
        --steady 10 --update-fraction 0 --commands "$RATE" --watch-pid "$GP" --json >"$T/lg.json" 2>/dev/null &
    LP=$!
    sleep 4
    a1=$(cpu_ticks "$GP"); b1=$(cpu_ticks "$MP"); c1=$(cpu_ticks "$LP")
    window "$GP" "$T/perf.csv"
    a2=$(cpu_ticks "$GP"); b2=$(cpu_ticks "$MP"); c2=$(cpu_ticks "$LP")
    wait "$LP" || true
    kill "$GP" 2>/dev/null; wait "$GP" 2>/dev/null || true
    "$LG" mqtt-relay --mqtt "$MQ" --rate "$RATE" --seconds 10 --json >"$T/floor.json" || true
    kill "$MP" 2>/dev/null; wait "$MP" 2>/dev/null || true
    python3 - "$T" "$RATE" "$a1" "$a2" "$b1" "$b2" "$c1" "$c2" <<'PY'
import json, sys
t, rate = sys.argv[1], sys.argv[2]
a1, a2, b1, b2, c1, c2 = map(int, sys.argv[3:])
def pct(p):
    return " / ".join(str(p.get(k, "-")) for k in ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"])
d = json.load(open(f"{t}/lg.json"))
c = d.get("commands", {})
f = json.load(open(f"{t}/floor.json"))
cpu = d.get("watch", {}).get("cpu_us_per_command")
# The relay client does one MQTT read and one publish per command: half the gateway's
# socket work for a command (which also reads and sends the CoAP side), none of its
# protocol work. Twice it is a floor for the gateway's CPU per command on this machine.
relay = f.get("relay_cpu_us_per_command")
counts = ""
try:
    n = {}
    for line in open(f"{t}/perf.csv"):
        col = line.strip().split(",")
        if len(col) > 2 and col[0].isdigit():
            e = col[2]
            n["syscalls" if e.startswith("raw_") else e.split(":")[-1].replace("sys_enter_", "")] = int(col[0])
    per = float(c.get("rate_per_s") or rate) * 5
    counts = "; per command (perf stat over the 5 s): " + ", ".join(
        f"{k} {v / per:.2f}" for k, v in n.items() if v) if n else ""
except OSError:
    pass
print(f"rate {rate}/s: commands answered {c.get('answered')} of {c.get('sent')} at {c.get('rate_per_s', 0):.0f}/s, "
      f"round trip µs p50/p90/p99/p99.9/max {pct(c.get('rtt', {}))}; floor (mqtt-relay) {f.get('answered')} of "
      f"{f.get('sent')}, µs {pct(f.get('rtt', {}))}; CPU % of a core (ticks over 5 s): gateway {(a2 - a1) / 5:.0f}, "
      f"mosquitto {(b2 - b1) / 5:.0f}, loadgen {(c2 - c1) / 5:.0f}; gateway CPU-µs per command "
      f"{'-' if cpu is None else f'{cpu:.1f}'}; floor's relay client CPU-µs per command "
      f"{'-' if relay is None else f'{relay:.1f}'}{counts}")
PY
    rm -rf "$T"
done
