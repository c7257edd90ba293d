#!/usr/bin/env bash
# The file store's cost against `[store] kind = "none"`, both measured in the same run,
# taking turns ROUNDS times (none, file, none, file, ...):
#
# 1. Registration storm: N devices at RATE/s offered against a fresh gateway
#    (bench/memory.sh: Mosquitto, wildcard subscription, lifetimes of a day, SHARDS
#    shards): registrations/s, gateway CPU µs per registration over the storm (the
#    loadgen's reading) and until the gateway settled (the store writer's last
#    batches included).
# 2. Notifications: NOTIFY_DEVICES devices auto-observed on /3303/0/5700 (one record
#    per device written for the Register and again for the observation) send NON
#    notifications at NOTIFY_RATE/s offered for STEADY s (above what the machine takes,
#    as `bench/run.sh`'s notify-2): the rate delivered on MQTT and the gateway's CPU µs
#    per delivered notification; and what the store did over the whole run: records
#    the shards encoded (`lwm2m_store_records_queued_total`) and records the writer
#    wrote (`lwm2m_store_writes_total`).
#
# Prints a Markdown table of every round, the median per kind and file ÷ none.
#
#   bench/store-cpu.sh [N] [ROUNDS] [SHARDS]      # defaults 200000 3 2
#   GW=path SKIP_BUILD=1 NOTIFY_RATE=150000 STEADY=10 NOTIFY_DEVICES=10000 bench/store-cpu.sh
#   SKIP_NOTIFY=1 / SKIP_STORM=1: one of the two only
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
ROUNDS=${2:-3}
SHARDS=${3:-2}
NOTIFY_DEVICES=${NOTIFY_DEVICES:-10000}
NOTIFY_RATE=${NOTIFY_RATE:-150000}
STEADY=${STEADY:-10}

. bench/lib.sh
bench_init store-cpu
export GW LG SKIP_BUILD=1
echo "# bench/store-cpu.sh $N $ROUNDS $SHARDS (NOTIFY_DEVICES=$NOTIFY_DEVICES NOTIFY_RATE=$NOTIFY_RATE STEADY=$STEADY)"
echo "# start: $(machine_line)"

storm() { # round kind
    bench/memory.sh "$N" wildcard "$2" "$SHARDS" >"$TMP/storm-$1-$2.txt"
    python3 - "$TMP/storm-$1-$2.txt" "$1" "$2" >>"$TMP/rows.jsonl" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
def num(label):
    m = re.search(re.escape(label) + r": ([0-9.]+)", text)
    return float(m.group(1)) if m else None
print(json.dumps({"test": "storm", "round": int(sys.argv[2]), "kind": sys.argv[3],
                  "rate": num("registrations per second"),
                  "cpu": num("gateway CPU µs per registration"),
                  "cpu_settled": num("gateway CPU µs per registration until settled")}))
PY
}

notify() { # round kind
    [ -n "${MQ:-}" ] || start_mosquitto
    STORE=$2 start_gateway "notify-$1-$2" "$SHARDS" '["/3303/0/5700"]'
    "$LG" run --gateway "$GW_UDP" --mqtt "$MQ" --register "$NOTIFY_DEVICES" --rate 50000 \
        --steady "$STEADY" --update-fraction 0 --notify-rate "$NOTIFY_RATE" \
        --watch-pid "$GW_PID" --allow-failures --quiet --json >"$TMP/notify-$1-$2.json" 2>/dev/null ||
        true
    local records writes
    records=$(metric "$GW_API" lwm2m_store_records_queued_total)
    writes=$(metric "$GW_API" lwm2m_store_writes_total)
    stop_gateway
    python3 - "$TMP/notify-$1-$2.json" "$1" "$2" "$records" "$writes" >>"$TMP/rows.jsonl" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
st, w = r.get("steady") or {}, r.get("watch") or {}
print(json.dumps({"test": "notify", "round": int(sys.argv[2]), "kind": sys.argv[3],
                  "rate": st.get("mqtt_notify_rate_per_s"),
                  "sent": st.get("notify_rate_per_s"),
                  "observations": st.get("observations"),
                  "cpu": w.get("cpu_us_per_notification"),
                  "records": float(sys.argv[4]), "writes": float(sys.argv[5])}))
PY
}

: >"$TMP/rows.jsonl"
for r in $(seq 1 "$ROUNDS"); do
    for kind in none file; do
        if [ "${SKIP_STORM:-0}" != 1 ]; then
            storm "$r" "$kind"
            echo "round $r, store $kind: storm $(tail -1 "$TMP/rows.jsonl")" >&2
        fi
        if [ "${SKIP_NOTIFY:-0}" != 1 ]; then
            notify "$r" "$kind"
            echo "round $r, store $kind: notify $(tail -1 "$TMP/rows.jsonl")" >&2
        fi
    done
done
echo "# end: $(machine_line)"
echo
python3 - "$TMP/rows.jsonl" "$N" "$SHARDS" "$NOTIFY_DEVICES" "$NOTIFY_RATE" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
n, shards, ndev, nrate = sys.argv[2:]
def fmt(v, d=0):
    return "-" if v is None else f"{v:,.{d}f}"
def table(test, title, cols):
    rs = [r for r in rows if r["test"] == test]
    if not rs:
        return
    print(f"### {title}\n")
    print("| round | store | " + " | ".join(c[1] for c in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for r in rs:
        print(f"| {r['round']} | {r['kind']} | " + " | ".join(fmt(r.get(k), d) for k, _, d in cols) + " |")
    med = {}
    for kind in ("none", "file"):
        med[kind] = {}
        for k, _, d in cols:
            vals = [r[k] for r in rs if r["kind"] == kind and r.get(k) is not None]
            med[kind][k] = statistics.median(vals) if vals else None
        print(f"| median | {kind} | " + " | ".join(fmt(med[kind][k], d) for k, _, d in cols) + " |")
    ratio = []
    for k, _, d in cols:
        a, b = med["file"][k], med["none"][k]
        ratio.append(f"{a / b:.3f}" if a is not None and b else "-")
    print("| file ÷ none | | " + " | ".join(ratio) + " |\n")
table("storm", f"Registration storm: {int(n):,} devices, {shards} shard(s)",
      [("rate", "registrations/s", 0), ("cpu", "CPU µs/registration (storm)", 2),
       ("cpu_settled", "CPU µs/registration (until settled)", 2)])
table("notify", f"NON notifications: {int(ndev):,} auto-observed devices, {int(nrate):,}/s offered, {shards} shard(s)",
      [("sent", "sent/s", 0), ("rate", "delivered on MQTT/s", 0),
       ("cpu", "CPU µs/notification", 2), ("records", "records encoded (whole run)", 0),
       ("writes", "records written (whole run)", 0)])
PY
