#!/usr/bin/env bash
# run_tests.sh — the Rust binding's test suite, from scratch (a step of
# scripts/test.sh). In order, each phase failing the script at the end:
#   1. cargo test of the workspace in bindings/ (psrpc-sys's ABI drift test,
#      psrpc's tests over local://, Redis and NATS, doc tests);
#   2. cargo clippy --all-targets -D warnings; cargo doc -D warnings
#      (psrpc warns on missing docs: every public item documented);
#   3. cargo package of psrpc-sys (with the C sources, vendor-csrc.sh;
#      verified: the packaged crate builds its vendored libpsrpc), psrpc and
#      psrpc-build (packaged against it);
#   4. examples/rust/add_value (a crate of its own depending on psrpc by path,
#      psrpc-build in its build.rs): examples/run_add_value.sh over local,
#      Redis and NATS, then against the C example (build/examples/add_value,
#      if built) in both directions;
#   5. interop: the Rust conformance server and client against Go
#      livekit/psrpc v0.8.2 through the interop matrix's "rust" language slot
#      (tests/interop/languages/rust.sh, tests/interop/matrix.sh): Rust client
#      → Go servers and Go client → Rust servers, Redis and NATS, after the
#      method-table check. Needs the Go side (tests/interop/setup.sh, run
#      here). PSRPC_RUST_INTEROP=0 leaves it to the caller: scripts/test.sh
#      runs the same cells (and the mixed ones) in its interop-matrix step
#      (tests/interop/matrix.sh --ci takes every slot, rust included).
#   6. only with PSRPC_RUST_ASAN=1: psrpc-sys + psrpc tests again against
#      libpsrpc built with ASan + UBSan (clang; target dir bindings/target-asan),
#      the ASan runtime linked into the test programs (leaks checked at exit).
# Brokers: PSRPC_TEST_REDIS_URL / PSRPC_TEST_NATS_URL (defaults
# redis://127.0.0.1:6379, nats://127.0.0.1:4222); a broker that does not
# answer fails the tests. Needs cargo (Rust >= 1.77), the Debian packages of
# scripts/setup-deps.sh (C libraries, cmake, protoc). CARGO_BUILD_JOBS
# defaults to 2; the target directory is bindings/target.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bindings=$(cd "$here/.." && pwd)
root=$(cd "$bindings/.." && pwd)
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$bindings/target}
export PSRPC_TEST_REDIS_URL=${PSRPC_TEST_REDIS_URL:-redis://127.0.0.1:6379}
export PSRPC_TEST_NATS_URL=${PSRPC_TEST_NATS_URL:-nats://127.0.0.1:4222}
export PATH=$PATH:$HOME/.cargo/bin

if ! command -v cargo >/dev/null; then
    echo "run_tests.sh: cargo not found (install a Rust toolchain >= 1.77)" >&2
    exit 1
fi

passed=0 failed=0 failures=()
phase() {
    local name=$1 t0 rc
    shift
    echo
    echo "--- rust: $name"
    t0=$(date +%s)
    "$@"
    rc=$?
    if [ $rc -eq 0 ]; then
        passed=$((passed + 1))
        echo "--- rust: $name: ok ($(($(date +%s) - t0))s)"
    else
        failed=$((failed + 1))
        failures+=("$name")
        echo "--- rust: $name: FAILED (exit $rc, $(($(date +%s) - t0))s)"
    fi
}

cd "$bindings" || exit 1
phase cargo-test nice cargo test --workspace --locked --features psrpc/opentelemetry
phase clippy nice cargo clippy --workspace --all-targets --locked --features psrpc/opentelemetry -- -D warnings
# The runtime-agnostic core builds without the tokio feature.
phase no-tokio nice cargo clippy --locked -p psrpc --no-default-features --lib -- -D warnings
phase doc env RUSTDOCFLAGS="-D warnings" nice cargo doc --no-deps --locked --features psrpc/opentelemetry -p psrpc -p psrpc-sys -p psrpc-build

package() {
    "$bindings/rust-sys/vendor-csrc.sh" || return 1
    nice cargo package --locked --allow-dirty -p psrpc-sys &&
        nice cargo package --locked --allow-dirty --no-verify -p psrpc-sys -p psrpc -p psrpc-build
    local rc=$?
    "$bindings/rust-sys/vendor-csrc.sh" --clean
    return $rc
}
phase package package

add_value=$CARGO_TARGET_DIR/debug/add_value
c_add_value=$root/build/examples/add_value
example() {
    (cd "$root/examples/rust/add_value" && nice cargo build --locked) || return 1
    local mode
    for mode in local redis nats; do
        sh "$root/examples/run_add_value.sh" "$add_value" "$mode" || return 1
    done
    if [ -x "$c_add_value" ]; then
        cross "$add_value" "$c_add_value" "$PSRPC_TEST_REDIS_URL" || return 1
        cross "$c_add_value" "$add_value" "$PSRPC_TEST_NATS_URL" || return 1
        cross "$c_add_value" "$add_value" "$PSRPC_TEST_REDIS_URL" || return 1
        cross "$add_value" "$c_add_value" "$PSRPC_TEST_NATS_URL" || return 1
    else
        echo "rust: $c_add_value not built: the C <-> Rust add_value cells did not run" >&2
        return 1
    fi
}
# cross SERVER CLIENT URL: SERVER serves, CLIENT calls 5 then 7 (-> 5, 12).
cross() {
    local server=$1 client=$2 url=$3 out pid v1 v2 i
    out=$(mktemp)
    "$server" --bus "$url" serve >"$out" 2>&1 &
    pid=$!
    for i in $(seq 100); do
        grep -q '^ready$' "$out" && break
        sleep 0.1
    done
    v1=$("$client" --bus "$url" call 5)
    v2=$("$client" --bus "$url" call 7)
    kill -TERM "$pid"
    wait "$pid"
    local rc=$?
    rm -f "$out"
    echo "add_value: $(basename "$(dirname "$server")")/$(basename "$server") serves, $(basename "$(dirname "$client")")/$(basename "$client") calls over $url: $v1 $v2 (server exit $rc)"
    [ "$v1" = 5 ] && [ "$v2" = 12 ] && [ $rc -eq 0 ]
}
phase add-value example

interop() {
    local rc=0 out=$CARGO_TARGET_DIR/interop-matrix
    "$root/tests/interop/setup.sh" >/dev/null || return 1
    "$root/tests/interop/matrix.sh" --clients rust --servers go --no-mixed --out "$out/rust-go" || rc=1
    "$root/tests/interop/matrix.sh" --clients go --servers rust --no-mixed --out "$out/go-rust" || rc=1
    return $rc
}
if [ "${PSRPC_RUST_INTEROP:-1}" = 1 ]; then
    phase interop interop
else
    echo
    echo "--- rust: interop: not run here (PSRPC_RUST_INTEROP=0): the rust slot's cells run in tests/interop/matrix.sh"
fi

asan() {
    CC=${PSRPC_SAN_CC:-clang} PSRPC_SYS_VENDORED=1 PSRPC_SYS_CMAKE_ARGS="PSRPC_SANITIZE=address" \
        CARGO_TARGET_DIR="$bindings/target-asan" \
        RUSTFLAGS="-Clinker=${PSRPC_SAN_CC:-clang} -Clink-arg=-fsanitize=address,undefined" \
        nice cargo test --locked -p psrpc-sys -p psrpc
}
if [ "${PSRPC_RUST_ASAN:-0}" = 1 ]; then
    phase asan asan
fi

echo
[ $failed -eq 0 ] || echo "rust: failed: ${failures[*]}"
echo "rust: $passed passed, $failed failed"
[ $failed -eq 0 ]
