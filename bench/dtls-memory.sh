#!/usr/bin/env bash
# Gateway memory per idle DTLS session, and DTLS notifications against plain ones.
#
#   bench/dtls-memory.sh [DEVICES] [NOTIFY_DEVICES]      (defaults 100000 and 10000)
#
# 1. Memory: a fresh gateway (2 shards, Mosquitto) takes DEVICES plain-UDP
#    registrations, then a fresh one DEVICES DTLS-PSK devices (handshake with the
#    cookie exchange, then register over the session); both then stay idle for
#    IDLE seconds (no Update, no notification). The loadgen reads the gateway's VmRSS
#    before the registrations and at the end of the idle phase; per session is
#       (DTLS growth - plain growth) / DEVICES
#    so the registration itself (the same in both) is not counted.
# 2. Notifications: NOTIFY_DEVICES auto-observed devices send NON notifications at
#    NOTIFY_RATE offered (above capacity), plain then DTLS, each to a fresh gateway;
#    the rate delivered on MQTT in the steady window, and DTLS ÷ plain.
# Prints a Markdown summary on stdout (the machine, its load, the numbers). Env:
# GW and LG (gateway and loadgen binaries), SKIP_BUILD=1, IDLE (s, 15), DTLS_RATE
# (handshakes/s offered, 800: above what the machine takes, handshakes are evicted
# from the half-open table and their devices never register), LG_THREADS (2),
# NOTIFY_RATE (150000), STEADY (s, 10), KEEP (a folder to copy the loadgen's JSON
# reports to).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES=${1:-100000}
NOTIFY_DEVICES=${2:-10000}
IDLE=${IDLE:-15}
DTLS_RATE=${DTLS_RATE:-800}
LG_THREADS=${LG_THREADS:-2}
REG_TIMEOUT=$((DEVICES * 2 / DTLS_RATE + 120))
NOTIFY_RATE=${NOTIFY_RATE:-150000}
STEADY=${STEADY:-10}

. bench/lib.sh
bench_init dtlsmem
start_mosquitto

"$LG" --register "$DEVICES" --prefix lg --psk-file-out "$TMP/psk.txt" >/dev/null

DTLS=
start_dtls_gateway() { # name auto_observe: a plain and a DTLS-PSK listener, no store,
    # the command subscriptions of an external broker's default
    DTLS=$(free_port)
    STORE=none SUBSCRIBE=auto start_gateway "$1" 2 "$2" "" "[listeners.dtls.default]
bind = \"127.0.0.1:$DTLS\"
psk_file = \"$TMP/psk.txt\"
max_conn_rate = 100000000"
}
run() { # name args...
    local name=$1
    shift
    echo "== $name: lwm2m-loadgen $*" >&2
    "$LG" "$@" --threads "$LG_THREADS" --watch-pid "$GW_PID" --json --quiet >"$TMP/$name.json" ||
        echo "   ($name: exit $?)" >&2
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
start_dtls_gateway mem-plain '[]'
run mem-plain --gateway "$GW_UDP" --mqtt "$MQ" --register "$DEVICES" --rate 20000 \
    --steady "$IDLE" --update-fraction 0 --lifetime 3600 --register-timeout 600
stop_gateway
start_dtls_gateway mem-dtls '[]'
run mem-dtls --dtls --gateway "127.0.0.1:$DTLS" --mqtt "$MQ" --register "$DEVICES" \
    --rate "$DTLS_RATE" --steady "$IDLE" --update-fraction 0 --lifetime 3600 \
    --register-timeout "$REG_TIMEOUT" --handshake-timeout 60
stop_gateway
for mode in plain dtls; do
    start_dtls_gateway "notify-$mode" '["/3303/0/5700"]'
    target="$GW_UDP"
    extra=()
    if [ "$mode" = dtls ]; then
        target="127.0.0.1:$DTLS"
        extra=(--dtls --handshake-timeout 60)
    fi
    run "notify-$mode" "${extra[@]}" --gateway "$target" --mqtt "$MQ" \
        --register "$NOTIFY_DEVICES" --rate "$DTLS_RATE" --steady "$STEADY" \
        --update-fraction 0 --notify-rate "$NOTIFY_RATE" --register-timeout 300 \
        --allow-failures
    stop_gateway
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
[ -z "${KEEP:-}" ] || { mkdir -p "$KEEP" && cp "$TMP"/*.json "$KEEP"/; }

python3 - "$TMP" "$DEVICES" "$NOTIFY_DEVICES" "$LOAD_START" "$LOAD_END" <<'PY'
import json, os, platform, subprocess, sys
tmp, devices, ndev, load0, load1 = sys.argv[1:]
devices, ndev = int(devices), int(ndev)
def j(name):
    with open(os.path.join(tmp, name + ".json")) as f:
        return json.load(f)
def growth(r):
    w = r.get("watch") or {}
    end = (w.get("steady_end") or w.get("after_register") or {}).get("rss_kb")
    return (end - w["start"]["rss_kb"]) * 1024 if end is not None else None
def registered(r):
    return (r.get("registration") or {}).get("ok")
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                     capture_output=True, text=True).stdout.strip()
print(f"machine: {platform.node()}, {os.cpu_count()} cores ({cpu}), shared with other "
      f"builds and tests; load average {load0} at the start, {load1} at the end\n")
plain, dtls = j("mem-plain"), j("mem-dtls")
gp, gd = growth(plain), growth(dtls)
rp, rd = registered(plain), registered(dtls)
print("| run | registered | RSS growth, registered then idle | per device |")
print("|---|---|---|---|")
for name, g, n in (("plain UDP", gp, rp), ("DTLS-PSK", gd, rd)):
    per = f"{g / n:,.0f} B" if g is not None and n else "-"
    print(f"| {name} | {n} of {devices} | {g / 2**20 if g else 0:,.1f} MiB | {per} |")
if None not in (gp, gd) and rp and rd:
    print(f"\n**per idle DTLS session: {gd / rd - gp / rp:,.0f} B** "
          f"(DTLS per device - plain per device)\n")
def nrate(r):
    return (r.get("steady") or {}).get("mqtt_notify_rate_per_s")
np_, nd = nrate(j("notify-plain")), nrate(j("notify-dtls"))
print("| notifications, NON, MQTT QoS 0 | devices | observed | sent by the loadgen/s | delivered on MQTT/s | lost |")
print("|---|---|---|---|---|---|")
for name, key in (("plain UDP", "notify-plain"), ("DTLS-PSK", "notify-dtls")):
    r = j(key)
    st = r.get("steady") or {}
    print(f"| {name} | {registered(r)} | {st.get('observations')} | "
          f"{st.get('notify_rate_per_s') or 0:,.0f} | {nrate(r) or 0:,.0f} | {st.get('notify_lost')} |")
if np_ and nd:
    print(f"\n**DTLS ÷ plain: {nd / np_:.2f}**")
PY
