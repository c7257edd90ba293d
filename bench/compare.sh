#!/usr/bin/env bash
# Before and after: two gateway binaries measured in one sitting on this host by the
# same loadgen and Mosquitto, with the storm, command and notification scenarios of
# run.sh. The binaries take turns (A B A B ...) for ROUNDS rounds, so a drift of the
# shared host hits both; the spread of each side's rounds is the noise a difference
# has to exceed to count (compare.py prints min, median and max of each).
#
#   bench/compare.sh BEFORE_BINARY AFTER_BINARY [ROUNDS] [OUT_DIR]
#
# Build the "before" binary in a worktree of the older commit, e.g.
#   git worktree add /tmp/before <commit> && (cd /tmp/before && cargo build --release --bins)
# and give /tmp/before/target/release/lwm2m-gateway. The loadgen is this checkout's.
set -euo pipefail
cd "$(dirname "$0")/.."
before=$1
after=$2
rounds=${3:-3}
out=${4:-$(mktemp -d /tmp/lwm2m-compare.XXXXXX)}
mkdir -p "$out"
export SCENARIOS=${SCENARIOS:-storm cmd notify}
export REG_DEVICES=${REG_DEVICES:-300000}
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release -p lwm2m-loadgen --bins
export SKIP_BUILD=1 SAVE=0
for r in $(seq 1 "$rounds"); do
    for side in before after; do
        bin=$before
        [ "$side" = after ] && bin=$after
        echo "== round $r: $side ($bin)" >&2
        GW=$bin RESULT=$out/$side-$r bench/run.sh >"$out/$side-$r.log" 2>&1 ||
            echo "   (run.sh failed: $out/$side-$r.log)" >&2
    done
done
python3 bench/compare.py "$out"
