# The parts every end-to-end bench script shares, sourced after `cd` to the repository
# root: the binaries (built unless SKIP_BUILD=1), a temporary folder removed at exit with
# every process started through it, free ports, Mosquitto (`set_tcp_nodelay true`) and a
# gateway with a generated configuration, started and waited for.
#
#   cd "$(dirname "$0")/.."
#   . bench/lib.sh
#   bench_init NAME            # ROOT TARGET GW LG MOSQUITTO TMP, the exit trap
#   start_mosquitto            # MQ_PORT MQ MQ_PID
#   start_gateway NAME SHARDS AUTO_OBSERVE [TOP-LEVEL TOML] [MORE TABLES]
#                              # GW_PID GW_UDP GW_API GW_MQTT GW_LOG
#   stop_gateway
#   free_port, wait_line FILE PATTERN, machine_line, rss_kb PID, hwm_kb PID, cpu_us PID,
#   metric API NAME
#
# start_gateway reads SUBSCRIBE (wildcard), BROKER (mosquitto | embedded), STORE (the
# `--store` kind; file: in $TMP/NAME-store; unset: the configuration's, i.e. a table of
# MORE TABLES or the default), MQTT_EXTRA (more lines of the [mqtt] table), MAX_CONNECTIONS
# (the UDP listener's, 1,024,000) and
# GW_RUST_LOG (info,rumqttd=warn).

# bench_init NAME: the binaries, $TMP (/tmp/lwm2m-NAME.XXXXXX) and the cleanup at exit.
bench_init() {
    ROOT=$PWD
    command -v mosquitto >/dev/null || apt-get install -y mosquitto >/dev/null || {
        echo "bench/$1 needs mosquitto" >&2
        exit 1
    }
    MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
    [ "${SKIP_BUILD:-0}" = 1 ] ||
        cargo build --release -p lwm2m-gateway -p lwm2m-loadgen --bins >&2
    TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
    # GW=path runs another gateway binary (bench/compare.sh: before and after a change).
    GW=${GW:-$TARGET/release/lwm2m-gateway}
    LG=${LG:-$TARGET/release/lwm2m-loadgen}
    TMP=$(mktemp -d "/tmp/lwm2m-$1.XXXXXX")
    PIDS=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    # KEEP=1 keeps the configurations and logs (the path is printed).
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_line() { # file pattern
    for _ in $(seq 1 600); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "timed out waiting for '$2' in $1" >&2
    cat "$1" >&2
    return 1
}

# The machine and its load, one line (for the result files).
machine_line() {
    echo "$(date -u +%FT%TZ), $(hostname), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), kernel $(uname -r), commit $(git rev-parse --short HEAD), load average $(cut -d' ' -f1-3 /proc/loadavg)"
}

rss_kb() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/{print $2}' "/proc/$1/status"; }
# A process's CPU time (user + system, all threads) in µs, at the clock tick's resolution.
cpu_us() {
    python3 -c "import os; f=open('/proc/$1/stat').read().rsplit(')', 1)[1].split(); print((int(f[11]) + int(f[12])) * 1000000 // os.sysconf('SC_CLK_TCK'))"
}

# A gateway's metric (one without labels) from its API's /metrics; 0 when absent.
metric() { # api-address name
    curl -s "http://$1/metrics" | awk -v m="$2" '$1 == m {print $2; f=1} END {if (!f) print 0}'
}

# A fresh Mosquitto on a free port: MQ_PORT, MQ (host:port), MQ_PID.
start_mosquitto() {
    MQ_PORT=$(free_port)
    cat >"$TMP/mosquitto-$MQ_PORT.conf" <<CONF
listener $MQ_PORT 127.0.0.1
allow_anonymous true
persistence false
set_tcp_nodelay true
max_queued_messages 1000000
log_dest stderr
CONF
    "$MOSQUITTO" -c "$TMP/mosquitto-$MQ_PORT.conf" 2>"$TMP/mosquitto-$MQ_PORT.log" &
    MQ_PID=$!
    PIDS+=("$MQ_PID")
    MQ=127.0.0.1:$MQ_PORT
    wait_line "$TMP/mosquitto-$MQ_PORT.log" "running"
}

GW_PID=
GW_UDP=
GW_API=
GW_LOG=
# The broker the last gateway publishes to, where the loadgen subscribes: Mosquitto, or
# with BROKER=embedded the gateway's own (its MQTT 3.1.1 listener).
GW_MQTT=
start_gateway() { # name shards auto_observe [top-level TOML] [more tables]
    local name=$1 shards=$2 auto=$3 top=${4:-} tables=${5:-} udp api server
    udp=$(free_port)
    api=$(free_port)
    if [ "${BROKER:-mosquitto}" = embedded ]; then
        local e3 e5
        e3=$(free_port)
        e5=$(free_port)
        server="server = \"embedded\"
embedded_bind = \"127.0.0.1:$e3\"
embedded_bind_v5 = \"127.0.0.1:$e5\""
        GW_MQTT=127.0.0.1:$e3
    else
        server="server = \"mqtt://$MQ\""
        GW_MQTT=$MQ
    fi
    cat >"$TMP/$name.toml" <<CONF
xml_dir = "$ROOT/etc/lwm2m_xml"
auto_observe = $auto
$top

[listeners.udp.default]
bind = "127.0.0.1:$udp"
max_conn_rate = 100000000
max_connections = ${MAX_CONNECTIONS:-1024000}

[mqtt]
$server
subscribe = "${SUBSCRIBE:-wildcard}"
${MQTT_EXTRA:-}

[engine]
shards = $shards
socket_rcvbuf = "32MB"
socket_sndbuf = "32MB"

[api]
bind = "127.0.0.1:$api"

$tables
CONF
    # Each gateway its own store (else a scenario would restore the previous one's
    # devices); a binary from before the store (bench/compare.sh) gets no flags.
    local store=()
    if [ -n "${STORE:-}" ] && "$GW" --help 2>/dev/null | grep -q -- '--store-path'; then
        store=(--store "$STORE" --store-path "$TMP/$name-store")
    fi
    GW_LOG=$TMP/$name.log
    RUST_LOG=${GW_RUST_LOG:-info,rumqttd=warn} "$GW" --config "$TMP/$name.toml" "${store[@]}" \
        2>"$GW_LOG" >/dev/null &
    GW_PID=$!
    PIDS+=("$GW_PID")
    wait_line "$GW_LOG" "lwm2m-gateway ready udp="
    GW_UDP=127.0.0.1:$udp
    GW_API=127.0.0.1:$api
    echo "== gateway $name: pid $GW_PID, $shards shard(s), auto_observe = $auto, broker ${BROKER:-mosquitto}, subscribe ${SUBSCRIBE:-wildcard}, store ${STORE:-as configured}" >&2
}

stop_gateway() {
    kill -TERM "$GW_PID" 2>/dev/null || true
    wait "$GW_PID" 2>/dev/null || true
}
