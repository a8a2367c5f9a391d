#!/usr/bin/env bash
# Line coverage of the library from the committed fuzz corpora (clang
# source-based coverage): configures BUILD_DIR (default build-cov) with
# -fprofile-instr-generate -fcoverage-mapping, replays every corpus with the
# replay main, and prints llvm-cov's per-file report for impl/.
#   tests/fuzz/coverage.sh [BUILD_DIR]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${1:-$root/build-cov}
profdata=${LLVM_PROFDATA:-llvm-profdata}
cov=${LLVM_COV:-llvm-cov}
targets=(fuzz_envelope fuzz_channel fuzz_url fuzz_dispatch fuzz_redis fuzz_nats)
CC=clang CXX=clang++ cmake -S "$root" -B "$build" -DPSRPC_BUILD_EXAMPLES=OFF -DPSRPC_FUZZ=OFF \
    -DCMAKE_BUILD_TYPE=Debug "-DCMAKE_C_FLAGS=-fprofile-instr-generate -fcoverage-mapping" \
    "-DCMAKE_EXE_LINKER_FLAGS=-fprofile-instr-generate" >/dev/null
cmake --build "$build" -j2 --target "${targets[@]}" >/dev/null
rm -rf "$build/cov" && mkdir -p "$build/cov"
objs=()
for t in "${targets[@]}"; do
    LLVM_PROFILE_FILE="$build/cov/$t.profraw" "$build/tests/fuzz/$t" \
        "$root/tests/fuzz/corpus/$t" >/dev/null
    objs+=(-object "$build/tests/fuzz/$t")
done
"$profdata" merge -sparse "$build"/cov/*.profraw -o "$build/cov/all.profdata"
"$cov" report "${objs[@]:1}" -instr-profile="$build/cov/all.profdata" \
    "$root/impl" "$root/capi"
