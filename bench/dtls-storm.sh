#!/usr/bin/env bash
# A storm of DTLS-PSK handshakes + Registers against a storm of plain Registers of the
# same size at the same offered rate, each to a fresh 2-shard gateway, in one run.
#
#   flock /tmp/bench.lock bench/dtls-storm.sh [DEVICES] [RATE]   (defaults 20000, 10000)
#
# For each storm: registrations answered 2.01, their rate over the registration phase,
# the gateway's CPU µs per registration (its CPU time over the phase / registrations),
# the loadgen's DTLS handshakes (completed, failed, latency) and the gateway's
# lwm2m_dtls_* counters (HelloVerifyRequests sent without state, half-open
# evictions (before the stateless exchange) and drops, handshake timeouts). The ratios DTLS ÷ plain (rate, CPU) close the summary, and
# the CPU µs per DTLS registration gives the rate 2 cores would take.
#
# GW_BASE=path adds a DTLS storm against that gateway binary (a baseline: the same
# loadgen, the same offered rate, in the same run). GW and LG (binaries), SKIP_BUILD=1,
# LG_THREADS (1), HS_TIMEOUT (s, 30: the loadgen's handshake timeout), REG_TIMEOUT (s,
# DEVICES / RATE + 120: the registration phase's limit), SAVE=1 writes
# bench/results/YYYY-MM-DD-HHMM-dtls-storm.md (else only printed).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES=${1:-20000}
RATE=${2:-10000}
LG_THREADS=${LG_THREADS:-1}
HS_TIMEOUT=${HS_TIMEOUT:-30}
REG_TIMEOUT=${REG_TIMEOUT:-$((DEVICES / RATE + 120))}

. bench/lib.sh
bench_init dtlsstorm
start_mosquitto

"$LG" --register "$DEVICES" --prefix lg --psk-file-out "$TMP/psk.txt" >/dev/null

DTLS=
start_dtls_gateway() { # name binary (per-endpoint subscriptions, as with any external broker)
    DTLS=$(free_port)
    GW=$2 STORE=none SUBSCRIBE=${SUBSCRIBE:-per_endpoint} start_gateway "$1" 2 false "" "[listeners.dtls.default]
bind = \"127.0.0.1:$DTLS\"
psk_file = \"$TMP/psk.txt\"
max_conn_rate = 100000000"
}
stop_dtls_gateway() { # name: keeps the gateway's DTLS counters first
    curl -s "http://$GW_API/metrics" | grep '^lwm2m_dtls_' >"$TMP/$1.metrics" || true
    stop_gateway
}
storm() { # name binary udp|dtls args...
    local name=$1 bin=$2 kind=$3 target
    shift 3
    start_dtls_gateway "$name" "$bin"
    target=$GW_UDP
    [ "$kind" = udp ] || target=127.0.0.1:$DTLS
    echo "== $name: lwm2m-loadgen --gateway $target $*" >&2
    # Bounded: the loadgen's phases each have their own limit, and a run that
    # outlives all of them together is killed (its report is then missing).
    timeout "$((3 * REG_TIMEOUT + 60))" "$LG" --gateway "$target" --mqtt "$MQ" --register "$DEVICES" --prefix lg --rate "$RATE" \
        --steady 1 --update-fraction 0 --lifetime 3600 --register-timeout "$REG_TIMEOUT" \
        --threads "$LG_THREADS" --watch-pid "$GW_PID" --json --quiet --allow-failures "$@" \
        >"$TMP/$name.json" || echo "   ($name: exit $?)" >&2
    stop_dtls_gateway "$name"
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
START=$(date +%s)
storm plain "$GW" udp
storm dtls "$GW" dtls --dtls --handshake-timeout "$HS_TIMEOUT"
NAMES="plain dtls"
if [ -n "${GW_BASE:-}" ]; then
    storm dtls-base "$GW_BASE" dtls --dtls --handshake-timeout "$HS_TIMEOUT"
    NAMES="$NAMES dtls-base"
fi
END=$(date +%s)
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

STAMP=$(date -u +%Y-%m-%d-%H%M)
OUT=$TMP/summary.md
python3 - "$TMP" "$DEVICES" "$RATE" "$LOAD_START" "$LOAD_END" "$((END - START))" \
    "${GW_BASE:-}" $NAMES >"$OUT" <<'PY'
import json, os, platform, subprocess, sys
tmp, devices, rate, load0, load1, secs, base = sys.argv[1:8]
names = sys.argv[8:]
def j(name):
    try:
        with open(os.path.join(tmp, name + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}
def metrics(name):
    m = {}
    try:
        for line in open(os.path.join(tmp, name + ".metrics")):
            k, v = line.rsplit(" ", 1)
            m[k] = float(v)
    except OSError:
        pass
    return m
def msum(m, prefix):
    return int(sum(v for k, v in m.items() if k.split("{")[0] == prefix))
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                     capture_output=True, text=True).stdout.strip()
print(f"# DTLS-PSK handshake + Register storm vs plain Register storm\n")
print(f"machine: {platform.node()}, {os.cpu_count()} cores ({cpu}), shared with other "
      f"builds and tests; load average {load0} at the start, {load1} at the end; {secs} s\n")
print(f"{devices} devices per storm offered at {rate}/s, each storm to a fresh 2-shard "
      f"gateway (Mosquitto, no store); the loadgen on the same machine"
      + (f"; dtls-base: {base}" if base else "") + ".\n")
print("| storm | registered | rate /s | gateway CPU µs / registration | handshakes ok / failed | handshake µs p50 / p99 | reg. retransmissions |")
print("|---|---|---|---|---|---|---|")
rows = {}
for n in names:
    r = j(n)
    reg = r.get("registration") or {}
    w = r.get("watch") or {}
    d = r.get("dtls") or {}
    lat = d.get("handshake_latency") or {}
    rows[n] = (reg.get("rate_per_s"), w.get("cpu_us_per_registration"))
    hs = f"{d.get('handshakes_ok', '-')} / {d.get('handshakes_failed', '-')}" if d else "-"
    hl = f"{lat.get('p50_us', '-')} / {lat.get('p99_us', '-')}" if d else "-"
    cpu_us = w.get("cpu_us_per_registration")
    print(f"| {n} | {reg.get('ok', 0)} of {devices} | {reg.get('rate_per_s', 0):,.0f} | "
          f"{cpu_us if cpu_us is None else round(cpu_us, 1)} | {hs} | {hl} | {reg.get('retransmissions', '-')} |")
print()
for n in names:
    m = metrics(n)
    if not m or n == "plain":
        continue
    print(f"- {n} gateway counters: handshakes started {msum(m, 'lwm2m_dtls_handshakes_started_total')}, "
          f"stateless HelloVerifyRequests {msum(m, 'lwm2m_dtls_hello_verify_requests_total')}, "
          f"half-open evicted {msum(m, 'lwm2m_dtls_half_open_evicted_total')}, "
          f"dropped {msum(m, 'lwm2m_dtls_half_open_dropped_total')}, "
          f"timeouts {msum(m, 'lwm2m_dtls_handshake_timeouts_total')}, "
          f"failed {msum(m, 'lwm2m_dtls_handshakes_failed_total')}")
print()
pr, pc = rows.get("plain", (None, None))
for n in names:
    if n == "plain":
        continue
    dr, dc = rows.get(n, (None, None))
    if pr and dr:
        print(f"**{n} ÷ plain, registration rate: {dr / pr:.2f}**", end="")
    if pc and dc:
        print(f"; gateway CPU per registration: {dc / pc:.1f}×", end="")
    if dc:
        print(f"; {dc:.0f} µs of gateway CPU per DTLS registration: about "
              f"{2e6 / dc:,.0f}/s on 2 cores with the gateway alone", end="")
    print()
PY
cat "$OUT"
if [ "${SAVE:-0}" = 1 ]; then
    mkdir -p bench/results
    cp "$OUT" "bench/results/$STAMP-dtls-storm.md"
    echo "wrote bench/results/$STAMP-dtls-storm.md" >&2
fi
