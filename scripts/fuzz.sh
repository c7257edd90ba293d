#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS_PER_TARGET (default 60), one after
# the other, and prints a summary line with the executions of each target.
# Exits non-zero when a target crashes (the input is in fuzz/artifacts/<target>/;
# turn it into a test in tests/fuzz_regressions.rs).
#
# Works on stable Rust: the targets are built without a sanitizer (`-s none`), which
# needs no nightly flags. FUZZ_SANITIZER=address uses AddressSanitizer through
# RUSTC_BOOTSTRAP=1 (slower; for unsafe code in dependencies).
# FUZZ_TARGETS="a b" runs only those targets.
set -uo pipefail

secs=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked || exit 2
fi

san=${FUZZ_SANITIZER:-none}
flags=(-s "$san" --release)
if [ "$san" != none ]; then
    export RUSTC_BOOTSTRAP=1
fi

cargo fuzz build "${flags[@]}" || exit 2

targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
summary=""
crashed=""
mkdir -p fuzz/artifacts
for t in $targets; do
    mkdir -p "fuzz/corpus/$t"
    dirs=("fuzz/corpus/$t")
    [ -d "fuzz/seeds/$t" ] && dirs+=("fuzz/seeds/$t")
    log="fuzz/artifacts/$t.log"
    echo "== $t (${secs}s)"
    cargo fuzz run "${flags[@]}" "$t" "${dirs[@]}" -- \
        -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=2048 >"$log" 2>&1
    rc=$?
    execs=$(grep -h 'stat::number_of_executed_units' "$log" | awk '{print $2}' | tail -1)
    summary="$summary $t=${execs:-0}"
    if [ $rc -ne 0 ]; then
        crashed="$crashed $t"
        grep -h -A3 'panicked at\|ERROR: libFuzzer\|Test unit written' "$log" | head -20
    fi
done

echo "summary (${secs}s per target, $(date -u +%Y-%m-%dT%H:%MZ), nproc $(nproc), $(uname -r)):$summary"
if [ -n "$crashed" ]; then
    echo "CRASHED:$crashed (logs in fuzz/artifacts/<target>.log)"
    exit 1
fi
