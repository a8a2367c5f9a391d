#!/usr/bin/env bash
# Regenerates the captured-traffic seeds of the fuzz corpora (cap_* files;
# the golden_* and hand-written seed_* files are kept). Usage:
#   tests/fuzz/make_seeds.sh [BUILD_DIR]   (default build; configured already)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${1:-$root/build}
cmake --build "$build" --target fuzz_gen_seeds -j2 >/dev/null
corpus=$root/tests/fuzz/corpus
for t in fuzz_envelope fuzz_dispatch fuzz_redis fuzz_nats; do
    mkdir -p "$corpus/$t"
    rm -f "$corpus/$t"/cap_* "$corpus/$t"/session_*
done
"$build/tests/fuzz/fuzz_gen_seeds" "$corpus"
