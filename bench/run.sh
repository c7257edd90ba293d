#!/usr/bin/env bash
# The end-to-end benchmark: builds release, starts Mosquitto and the gateway
# (generated configs in a temp dir), runs the loadgen scenarios and the baselines
# in one run, and writes bench/results/YYYY-MM-DD-HHMM.{md,json} with the machine.
#
#   bench/run.sh                      # the full run: about 3 minutes of scenarios on
#                                     # 2 cores (130-230 s in results/), plus the build
#   SCENARIOS="cmd echo" bench/run.sh # only some groups of scenarios: the summary is
#                                     # printed, not saved (SAVE=1 saves it too)
#   REG_DEVICES=100000 bench/run.sh   # a smaller registration storm
#   GW=path RESULT=prefix bench/run.sh # another gateway binary; the summary also to prefix
#   STORE=none bench/run.sh           # the gateways' [store] kind (default: the file
#                                     # store, in the run's temp dir)
#
# Scenarios that measure a peak offer more than the gateway can take and pass
# --allow-failures to the loadgen; the others fail on any failed request.
#
# Scenarios (each a loadgen run; numbers in the result files):
#   broker      plain MQTT publishers (2 connections, as the gateway) -> Mosquitto ->
#               plain subscriber, QoS 0
#   storm-2/1   registration storm of REG_DEVICES at REG_RATE, 2 shards then 1 shard
#               (gateway CPU per registration, RSS growth per endpoint), Mosquitto,
#               commands subscribed with the wildcard filter
#   storm-pe    the same storm, 2 shards, Mosquitto, subscribe = "per_endpoint" (a filter
#               per device, the default mqtt.connections)
#   storm-emb, storm-emb-pe
#               the same storm, 2 shards, the embedded broker, wildcard then per_endpoint
#               (EMB_PE_DEVICES devices: rumqttd keeps about 4 KB per filter)
#               Every storm reports its MQTT delivered ratio: distinct endpoints whose
#               register message reached an MQTT subscriber / registrations answered 2.01;
#               below 100% the scenario fails (and so does the run, exit 1). A device
#               answered 5.03 (the gateway shedding) registers again after Max-Age, up
#               to REG_RETRIES times (30).
#   cmd-peak    read commands at CMD_PEAK_RATE: the answered rate is the peak
#   cmd-half    read commands at half that peak: round-trip percentiles
#   cmd-mix     read/write/execute/observe at the same rate, every answer checked
#   cmd-floor   the MQTT path of a command alone at that rate: commands through the
#               broker to a trivial relay client and back (no gateway, no device); the
#               command round trip compares against it
#   queue       queue-mode devices: commands held while they sleep, sent on wake-up
#   dtls        DTLS-PSK devices: handshake, registration and updates over DTLS
#   notify-2/1  NOTIFY_DEVICES devices auto-observed on /3303/0/5700, NON notifications
#               offered at NOTIFY_RATE for STEADY s -> MQTT QoS 0: the delivered rate is
#               the peak (gateway CPU per notification), 2 shards then 1 shard
#   notify-half the same at half the 2-shard peak: latency and loss below saturation
#   notify-con  CON notifications at half the 2-shard peak: every one the gateway
#               acknowledged must reach MQTT (delivered ratio 100%, else the run fails)
#   echo        recvmmsg/sendmmsg echo server driven at the rate notify-2 achieved, and
#               at full speed (the UDP limit of this machine)
set -euo pipefail
cd "$(dirname "$0")/.."

REG_DEVICES=${REG_DEVICES:-1000000}
REG_RATE=${REG_RATE:-60000}
# The embedded broker (rumqttd) keeps about 4 KB per distinct filter for good: its
# per-endpoint storm registers fewer devices.
EMB_PE_DEVICES=${EMB_PE_DEVICES:-200000}
NOTIFY_DEVICES=${NOTIFY_DEVICES:-10000}
NOTIFY_RATE=${NOTIFY_RATE:-150000}
STEADY=${STEADY:-10}
CMD_DEVICES=${CMD_DEVICES:-2000}
CMD_PEAK_RATE=${CMD_PEAK_RATE:-60000}
BROKER_COUNT=${BROKER_COUNT:-1000000}
LG_THREADS=${LG_THREADS:-1}
CMD_MIX=${CMD_MIX:-read=6,write=2,execute=1,observe=1}
# Command subscriptions in the command scenarios: per_endpoint (the default with an
# external broker: each command arrives on the shard of its device) or wildcard (one
# filter on shard 0, which hands the other shard's commands over). The other
# scenarios subscribe the wildcard (a million per-endpoint filters would load
# Mosquitto, not the gateway).
CMD_SUBSCRIBE=${CMD_SUBSCRIBE:-per_endpoint}
QUEUE_DEVICES=${QUEUE_DEVICES:-2000}
QUEUE_COMMANDS=${QUEUE_COMMANDS:-500}
DTLS_DEVICES=${DTLS_DEVICES:-10000}
DTLS_RATE=${DTLS_RATE:-2000}

# The gateways' store: the file store (in the run's temp dir) unless STORE says otherwise.
STORE=${STORE:-file}
. bench/lib.sh
bench_init bench
start_mosquitto

# The machine's CPU time as /proc/stat counts it: "steal total" in ticks. Steal is
# time the hypervisor gave this VM's virtual CPUs to someone else.
cpu_ticks() { awk '/^cpu /{t=0; for(i=2;i<=NF;i++) t+=$i; print $9, t}' /proc/stat; }

loadgen() { # name args...
    local name=$1 before after
    shift
    echo "== $name: lwm2m-loadgen $*" >&2
    before=$(cpu_ticks)
    "$LG" "$@" --json >"$TMP/$name.json" || echo "   ($name: checks failed or error, exit $?)" >&2
    after=$(cpu_ticks)
    [ -s "$TMP/$name.json" ] || echo '{"error":"no report"}' >"$TMP/$name.json"
    echo "$before $after" | awk '{d=$4-$2; printf "{\"steal_pct\": %.1f}\n", (d > 0 ? 100 * ($3 - $1) / d : 0)}' \
        >"$TMP/$name.steal.json"
}

jget() { python3 -c "import json,sys; d=json.load(open('$TMP/$1.json')); print($2)"; }

# SCENARIOS="cmd dtls" runs only those groups (broker storm cmd queue dtls notify
# echo); the summary then reports the others as not run, and is saved in
# bench/results/ only with SAVE=1 (a full run saves unless SAVE=0).
want() { [[ " ${SCENARIOS:-all} " == *" all "* || " ${SCENARIOS:-} " == *" $1 "* ]]; }
if want all; then SAVE=${SAVE:-1}; else SAVE=${SAVE:-0}; fi

START=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# 1. The broker's own rate.
if want broker; then
loadgen broker mqtt-publish --mqtt "$MQ" --qos 0 --count "$BROKER_COUNT" --size 150
fi

# 2. Registration storms: Mosquitto with the wildcard filter, 2 shards then 1 shard;
#    Mosquitto with a filter per endpoint; the embedded broker in both modes.
# PROFILE_DIR=dir: each storm records `perf record -g -e cpu-clock` of the gateway (and
# of Mosquitto when it is the broker) into dir/NAME.gw.perf, dir/NAME.mosquitto.perf;
# PERF_CALLGRAPH="--call-graph dwarf" gives the gateway's call stacks through inlined code.
profile_start() { # name
    PERF_PIDS=()
    [ -n "${PROFILE_DIR:-}" ] || return 0
    mkdir -p "$PROFILE_DIR"
    perf record -q ${PERF_CALLGRAPH:--g} -e cpu-clock -F 499 -p "$GW_PID" -o "$PROFILE_DIR/$1.gw.perf" \
        >/dev/null 2>&1 &
    PERF_PIDS+=("$!")
    if [ "${BROKER:-mosquitto}" != embedded ]; then
        perf record -q -g -e cpu-clock -F 499 -p "$MQ_PID" -o "$PROFILE_DIR/$1.mosquitto.perf" \
            >/dev/null 2>&1 &
        PERF_PIDS+=("$!")
    fi
}
profile_stop() {
    for p in "${PERF_PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; wait "$p" || true; done
}
storm() { # name shards [devices] [more loadgen arguments]
    start_gateway "gw-$1" "$2" false
    profile_start "$1"
    local mq0
    mq0=$(cpu_us "$MQ_PID")
    loadgen "$1" run --gateway "$GW_UDP" --mqtt "$GW_MQTT" --register "${3:-$REG_DEVICES}" \
        --rate "$REG_RATE" --threads "$LG_THREADS" --register-timeout 150 --drain 1 \
        --register-retries "${REG_RETRIES:-30}" \
        --watch-pid "$GW_PID" --allow-failures --quiet ${4:-}
    # Mosquitto's CPU over the scenario (it also carries the loadgen's subscriber).
    local mq_ms=$(( ($(cpu_us "$MQ_PID") - mq0) / 1000 ))
    echo "== $1: mosquitto CPU $mq_ms ms" >&2
    [ "${BROKER:-mosquitto}" = embedded ] || echo "{\"cpu_ms\": $mq_ms}" >"$TMP/$1.mosquitto.json"
    profile_stop
    stop_gateway
}
# After a per-endpoint storm, a read command to each of 1,000 registered devices spread
# over the fleet (200/s for 5 s): answered only if its subscription is in place.
SAMPLE_COMMANDS="--steady 5 --commands 200 --update-fraction 0"
# SCENARIOS=storm runs them all; SCENARIOS="storm-2 storm-pe" only those.
want_storm() { want storm || want "$1"; }
if want_storm storm-2; then storm storm-2 2; fi
if want_storm storm-1; then storm storm-1 1; fi
if want_storm storm-pe; then
    SUBSCRIBE=per_endpoint storm storm-pe 2 "$REG_DEVICES" "$SAMPLE_COMMANDS"
fi
if want_storm storm-emb; then BROKER=embedded storm storm-emb 2; fi
if want_storm storm-emb-pe; then
    BROKER=embedded SUBSCRIBE=per_endpoint storm storm-emb-pe 2 "$EMB_PE_DEVICES" "$SAMPLE_COMMANDS"
fi

# 3. Commands on a fresh 2-shard gateway: the peak, then half of it.
if want cmd; then
SUBSCRIBE=$CMD_SUBSCRIBE start_gateway gw-cmd-2 2 '["/3303/0/5700"]'
loadgen cmd-peak run --gateway "$GW_UDP" --mqtt "$MQ" --register "$CMD_DEVICES" \
    --devices-offset 100000 --rate 50000 --steady 5 --update-fraction 0 \
    --commands "$CMD_PEAK_RATE" --watch-pid "$GW_PID" --allow-failures --quiet
PEAK=$(jget cmd-peak "(d.get('commands') or {}).get('rate_per_s', 0)")
HALF=$(python3 -c "print(max(1, int(float('$PEAK') / 2)))")
loadgen cmd-half run --gateway "$GW_UDP" --mqtt "$MQ" --register "$CMD_DEVICES" \
    --devices-offset 200000 --rate 50000 --steady "$STEADY" --update-fraction 0 \
    --commands "$HALF" --watch-pid "$GW_PID" --quiet
#    Every kind of command at the same rate: each answer matched by reqID to its
#    kind's success code.
loadgen cmd-mix run --gateway "$GW_UDP" --mqtt "$MQ" --register "$CMD_DEVICES" \
    --devices-offset 300000 --rate 50000 --steady "$STEADY" --update-fraction 0 \
    --commands "$HALF" --command-mix "$CMD_MIX" --watch-pid "$GW_PID" --quiet
stop_gateway
#    The floor: the same rate through the broker and a relay that answers at once.
loadgen cmd-floor mqtt-relay --mqtt "$MQ" --rate "$HALF" --seconds "$STEADY"
fi

# 3b. Queue-mode devices (b=UQ, silent between Updates): commands wait in the
#     gateway and go out when the device's Update wakes it.
if want queue; then
start_gateway gw-queue 2 false 'qmode_time_window = "2s"'
loadgen queue run --gateway "$GW_UDP" --mqtt "$MQ" --register "$QUEUE_DEVICES" \
    --devices-offset 400000 --rate 20000 --steady "$STEADY" --lifetime 20 --update-fraction 0.25 \
    --queue-mode --qmode-window 2 --lwm2m 1.0 --commands "$QUEUE_COMMANDS" --command-timeout 20 \
    --drain 8 --watch-pid "$GW_PID" --quiet
stop_gateway
fi

# 3c. DTLS devices: PSK handshakes (TLS_PSK_WITH_AES_128_CCM_8, cookie exchange)
#     followed by the registration over the session, 2 shards.
if want dtls; then
"$LG" run --register "$DTLS_DEVICES" --devices-offset 500000 --psk-file-out "$TMP/psk.txt" >/dev/null
DTLS_PORT=$(free_port)
start_gateway gw-dtls 2 false "" "[listeners.dtls.default]
bind = \"127.0.0.1:$DTLS_PORT\"
psk_file = \"$TMP/psk.txt\"
max_conn_rate = 100000000"
loadgen dtls run --dtls --gateway "127.0.0.1:$DTLS_PORT" --mqtt "$MQ" --register "$DTLS_DEVICES" \
    --devices-offset 500000 --rate "$DTLS_RATE" --steady "$STEADY" --update-fraction 0.5 \
    --lifetime 10 --register-timeout 150 --watch-pid "$GW_PID" --quiet
stop_gateway
fi

# 4. Notifications (NON -> MQTT QoS 0) offered above capacity: the peak rate, with
#    2 and 1 shards; then half of the 2-shard peak for latency and loss below saturation.
if want notify; then
for shards in 2 1; do
    start_gateway "gw-notify-$shards" "$shards" '["/3303/0/5700"]'
    loadgen "notify-$shards" run --gateway "$GW_UDP" --mqtt "$MQ" --register "$NOTIFY_DEVICES" \
        --rate 50000 --steady "$STEADY" --update-fraction 0 --notify-rate "$NOTIFY_RATE" \
        --threads "$LG_THREADS" --watch-pid "$GW_PID" --allow-failures --quiet
    stop_gateway
done
NOTIFY_HALF=$(jget notify-2 "int(((d.get('steady') or {}).get('mqtt_notify_rate_per_s') or 2 * $NOTIFY_RATE) / 2)")
start_gateway gw-notify-half 2 '["/3303/0/5700"]'
loadgen notify-half run --gateway "$GW_UDP" --mqtt "$MQ" --register "$NOTIFY_DEVICES" \
    --rate 50000 --steady "$STEADY" --update-fraction 0 --notify-rate "$NOTIFY_HALF" \
    --threads "$LG_THREADS" --watch-pid "$GW_PID" --allow-failures --quiet
stop_gateway
#    CON notifications: the gateway acknowledges each one only once it holds it for
#    MQTT, so every acknowledged one must arrive (timeouts are the devices' to retry).
start_gateway gw-notify-con 2 '["/3303/0/5700"]'
loadgen notify-con run --gateway "$GW_UDP" --mqtt "$MQ" --register "$NOTIFY_DEVICES" \
    --rate 50000 --steady "$STEADY" --update-fraction 0 --notify-rate "$NOTIFY_HALF" --notify-con \
    --threads "$LG_THREADS" --watch-pid "$GW_PID" --allow-failures --quiet
stop_gateway
fi

# 5. The UDP baseline: the same loadgen against a recvmmsg/sendmmsg echo server.
if want echo; then
ECHO_PORT=$(free_port)
"$LG" echo-server --bind "127.0.0.1:$ECHO_PORT" --threads 2 2>"$TMP/echo.log" &
ECHO_PID=$!
PIDS+=("$ECHO_PID")
wait_line "$TMP/echo.log" "echo-server ready"
ECHO_RATE=$(jget notify-2 "int(d.get('steady',{}).get('mqtt_notify_rate_per_s') or $NOTIFY_RATE)")
loadgen echo-rate run --echo --gateway "127.0.0.1:$ECHO_PORT" --devices "$NOTIFY_DEVICES" \
    --rate "$ECHO_RATE" --duration "$STEADY" --threads "$LG_THREADS" --watch-pid "$ECHO_PID" --allow-failures --quiet
loadgen echo-max run --echo --gateway "127.0.0.1:$ECHO_PORT" --devices "$NOTIFY_DEVICES" \
    --rate 0 --window 512 --duration 5 --threads "$LG_THREADS" --watch-pid "$ECHO_PID" --allow-failures --quiet
kill "$ECHO_PID" 2>/dev/null || true
fi

END=$(date +%s)
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# 6. The result files (in the temporary directory when not saved).
STAMP=$(date -u +%Y-%m-%d-%H%M)
OUT=$TMP/$STAMP
if [ "$SAVE" = 1 ]; then
    mkdir -p bench/results
    OUT=bench/results/$STAMP
fi
# RESULT=prefix writes the summary there too (.md and .json), saved or not.
OUT_COPY=${RESULT:-}
STATUS=0
python3 bench/summarize.py "$TMP" "$OUT" "$((END - START))" \
    "SCENARIOS=${SCENARIOS:-all} STORE=${STORE:-file} REG_DEVICES=$REG_DEVICES REG_RATE=$REG_RATE EMB_PE_DEVICES=$EMB_PE_DEVICES NOTIFY_DEVICES=$NOTIFY_DEVICES NOTIFY_RATE=$NOTIFY_RATE STEADY=$STEADY CMD_DEVICES=$CMD_DEVICES CMD_PEAK_RATE=$CMD_PEAK_RATE CMD_MIX=$CMD_MIX CMD_SUBSCRIBE=$CMD_SUBSCRIBE SUBSCRIBE=${SUBSCRIBE:-wildcard} QUEUE_DEVICES=$QUEUE_DEVICES QUEUE_COMMANDS=$QUEUE_COMMANDS DTLS_DEVICES=$DTLS_DEVICES DTLS_RATE=$DTLS_RATE BROKER_COUNT=$BROKER_COUNT LG_THREADS=$LG_THREADS" \
    "$LOAD_START" "$LOAD_END" || STATUS=$?
if [ -n "$OUT_COPY" ]; then
    cp "$OUT.md" "$OUT_COPY.md"
    cp "$OUT.json" "$OUT_COPY.json"
fi
if [ "$SAVE" = 1 ]; then
    echo "wrote $OUT.md and .json" >&2
else
    echo "not saved (SCENARIOS=$SCENARIOS, a partial run): SAVE=1 writes bench/results/$STAMP.md and .json" >&2
fi
if [ "$STATUS" != 0 ]; then
    echo "FAILED: a scenario delivered less to MQTT than the gateway acknowledged, or a command to a sampled device went unanswered (see the summary)" >&2
    exit "$STATUS"
fi
