#!/usr/bin/env bash
# Runs every libFuzzer target of a PSRPC_FUZZ=ON build for a bounded time,
# starting from its checked-in corpus (copied: the tree is not written).
# Fails on any finding (crash, sanitizer report, leak, timeout, out of
# memory); the reproducer lands in BUILD_DIR/fuzz-findings/.
#
#   tests/fuzz/run.sh [BUILD_DIR [TOTAL_SECONDS]]   (default build-fuzz, 60)
#
# The time is shared by weight: the fast, pure targets (envelope, channel,
# url; ~100k exec/s) get 1 part each, the ones that drive a live bus
# (dispatch, redis, nats; ~100-1000 exec/s) 3 parts each.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${1:-$root/build-fuzz}
total=${2:-60}
bin=$build/tests/fuzz
corpus=$root/tests/fuzz/corpus
findings=$build/fuzz-findings
mkdir -p "$findings"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

declare -A weight=([fuzz_envelope]=1 [fuzz_channel]=1 [fuzz_url]=1 [fuzz_dispatch]=3
    [fuzz_redis]=3 [fuzz_nats]=3)
targets=()
parts=0
for t in fuzz_envelope fuzz_channel fuzz_url fuzz_dispatch fuzz_redis fuzz_nats; do
    [ -x "$bin/$t" ] || continue
    help=$("$bin/$t" -help=1 2>&1)
    if [[ $help != *max_total_time* ]]; then
        echo "run.sh: $bin/$t is not a libFuzzer binary (configure with -DPSRPC_FUZZ=ON)" >&2
        exit 1
    fi
    targets+=("$t")
    parts=$((parts + weight[$t]))
done
if [ ${#targets[@]} -eq 0 ]; then
    echo "run.sh: no fuzz targets in $bin (configure with -DPSRPC_FUZZ=ON and build)" >&2
    exit 1
fi

export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$root/tests/lsan.supp}
failed=0
for t in "${targets[@]}"; do
    secs=$((total * weight[$t] / parts))
    [ "$secs" -lt 1 ] && secs=1
    mkdir -p "$work/$t"
    cp "$corpus/$t"/* "$work/$t"/ 2>/dev/null || true
    echo "--- $t: ${secs}s from $(ls "$work/$t" | wc -l) seeds"
    "$bin/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=1024 -malloc_limit_mb=64 \
        -max_len=65536 -print_final_stats=1 -artifact_prefix="$findings/${t}-" \
        "$work/$t" >"$work/$t.log" 2>&1
    rc=$?
    grep -E '^stat::number_of_executed_units|^Done|^#[0-9]+ *DONE' "$work/$t.log" | tail -2
    if [ $rc -ne 0 ]; then
        echo "--- $t: FINDING (exit $rc); log follows, reproducer in $findings"
        tail -60 "$work/$t.log"
        failed=1
    fi
done
if [ $failed -ne 0 ]; then
    echo "fuzz: FAILED"
    exit 1
fi
echo "fuzz: ${#targets[@]} targets, no finding"
