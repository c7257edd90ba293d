#!/usr/bin/env bash
# The file store's CPU cost per registration: registration storms of N devices against a
# fresh gateway with `[store] kind = "none"` and `"file"`, taking turns ROUNDS times
# (bench/memory.sh each: Mosquitto, wildcard subscription, lifetimes of a day), and the
# median gateway CPU µs per registration (all threads, the store writer's included) of
# each kind with their ratio.
#
#   bench/store-cpu.sh [N] [ROUNDS] [SHARDS]      # defaults 200000 3 2
#   GW=path SKIP_BUILD=1 bench/store-cpu.sh 200000 3 1
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
ROUNDS=${2:-3}
SHARDS=${3:-2}
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release -p lwm2m-gateway -p lwm2m-loadgen --bins
declare -A runs=([none]="" [file]="")
for r in $(seq 1 "$ROUNDS"); do
    for kind in none file; do
        cpu=$(SKIP_BUILD=1 bench/memory.sh "$N" wildcard "$kind" "$SHARDS" |
            awk -F': ' '/CPU µs per registration/{print $2}')
        echo "round $r, store $kind: $cpu µs per registration" >&2
        runs[$kind]="${runs[$kind]} $cpu"
    done
done
python3 - "$N" "$SHARDS" "${runs[none]}" "${runs[file]}" <<'PY'
import statistics, sys
n, shards, none, file = sys.argv[1:]
none = [float(x) for x in none.split()]
file = [float(x) for x in file.split()]
mn, mf = statistics.median(none), statistics.median(file)
print(f"{int(n):,} registrations, {shards} shard(s): gateway CPU µs per registration, "
      f"store none {none} (median {mn:.2f}), file {file} (median {mf:.2f}); "
      f"file / none = {mf / mn:.3f}")
PY
