#!/usr/bin/env bash
# scripts/test.sh — the one test command (README.md).
#
#   1. installs the Debian packages (scripts/setup-deps.sh)
#   2. starts redis-server and nats-server on loopback unless they answer
#      already (scripts/brokers.sh; stopped again at exit if started here)
#   3. configures and builds three trees:
#        build       plain (gcc)
#        build-asan  ASan + UBSan (-DPSRPC_SANITIZE=address, clang)
#        build-tsan  TSan (-DPSRPC_SANITIZE=thread, clang)
#   4. runs every ctest test in build (the interop label is the method-table
#      check; the Go side is set up by tests/interop/setup.sh), every test but
#      interop in build-asan (PSRPC_TEST_TIME_FACTOR=3), the Python binding's
#      pytest suite (bindings/python/run_tests.sh), the Rust binding's suite
#      (bindings/rust/run_tests.sh), the Node binding's node:test suite
#      (bindings/node/run_tests.sh), the interop matrix
#      (tests/interop/matrix.sh --ci: every non-Go language against Go both
#      ways on Redis and NATS, plus the mixed cell of every language per
#      broker; results in build/interop-matrix), the "local", "nats" and "redis" labels in
#      build-tsan (any TSan report fails), and valgrind memcheck over the unit
#      and local test executables and the add_value example
#      (PSRPC_TEST_TIME_FACTOR=10), and the release artifacts (scripts/release.sh
#      into dist/, scripts/install-test.sh: each installed outside the tree;
#      its .deb check only with PSRPC_INSTALL_TEST_DEB=1). The out-of-memory sweep (label "oom":
#      test_oom over local, Redis and NATS) runs in build, and over local://
#      in build-asan (its leak check); not under TSan or valgrind
#      The fuzz step runs every libFuzzer target (tests/fuzz/run.sh, built
#      in build-asan with -DPSRPC_FUZZ=ON) for about 60 s in all.
#   5. runs the benchmarks once, short (bench/run.sh --quick, about 1.5
#      minutes): proves they build and every scenario of libpsrpc, Go and the
#      raw transports produces a result; no thresholds (results go to build/bench-quick, not the tree)
#   6. prints a summary; exits non-zero if any step failed.
#
# Environment: PSRPC_TEST_JOBS (parallel ctest jobs, default 2),
# PSRPC_TEST_REDIS_URL / PSRPC_TEST_NATS_URL (passed through to the tests),
# PSRPC_INTEROP_MATRIX_ARGS (tests/interop/matrix.sh options, default
# --parallel --lanes 2: four cells at once, two per broker; set it empty for
# one cell at a time),
# PSRPC_SAN_CC / PSRPC_SAN_CXX (sanitizer compilers, default clang/clang++),
# PSRPC_CMAKE_ARGS (extra configure arguments for all three trees).
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 1

jobs=${PSRPC_TEST_JOBS:-2}
build_jobs=$(nproc 2>/dev/null || echo 2)
san_cc=${PSRPC_SAN_CC:-clang}
san_cxx=${PSRPC_SAN_CXX:-clang++}
read -r -a extra_cmake_args <<<"${PSRPC_CMAKE_ARGS:-}"
logs="$root/build/test-logs"
t_start=$(date +%s)

steps=()
results=()
durations=()
failed=0

# step NAME COMMAND...: runs COMMAND, output to the terminal and to
# build/test-logs/NAME.log, and records PASS/FAIL with the time taken.
step() {
    local name=$1 t0 rc
    shift
    echo
    echo "=== $name: $*"
    mkdir -p "$logs"
    t0=$(date +%s)
    rm -f "$logs/$name.why"
    "$@" 2>&1 | tee "$logs/$name.log"
    rc=${PIPESTATUS[0]}
    steps+=("$name")
    durations+=("$(($(date +%s) - t0))")
    if [ "$rc" -eq 0 ]; then
        results+=("PASS")
    else
        results+=("FAIL (exit $rc, log build/test-logs/$name.log)$(failed_names "$name")")
        failed=1
    fi
    return "$rc"
}

# failed_names NAME: ": a b c" naming what failed in step NAME (a .why file
# the step wrote, else the tests ctest listed as failed), or nothing.
failed_names() {
    local names
    if [ -s "$logs/$1.why" ]; then
        names=$(tr '\n' ' ' <"$logs/$1.why")
    else
        names=$(sed -n 's/^[[:space:]]*[0-9]* - \([^ ]*\) (.*$/\1/p' "$logs/$1.log" | tr '\n' ' ')
    fi
    [ -n "$names" ] && printf ': %s' "${names% }"
}

# skip NAME WHY: a step that could not run counts as failed.
skip() {
    steps+=("$1")
    durations+=(0)
    results+=("FAIL (not run: $2)")
    failed=1
}

summary() {
    local i total=$(($(date +%s) - t_start))
    echo
    echo "=== summary ($((total / 60))m$((total % 60))s)"
    for i in "${!steps[@]}"; do
        printf '  %-22s %5ss  %s\n' "${steps[$i]}" "${durations[$i]}" "${results[$i]}"
    done
    if [ "$failed" -eq 0 ]; then
        echo "ALL PASSED"
    else
        echo "FAILED"
    fi
}

# --- dependencies and brokers ------------------------------------------------

if ! "$root/scripts/setup-deps.sh"; then
    echo "test.sh: scripts/setup-deps.sh failed" >&2
    exit 1
fi
# The Go side of the interop tests: protoc, protoc-gen-go, protoc-gen-psrpc,
# the livekit/psrpc v0.8.2 module graph.
if ! "$root/tests/interop/setup.sh"; then
    echo "test.sh: tests/interop/setup.sh failed" >&2
    exit 1
fi

stop_brokers=0
if ! "$root/scripts/brokers.sh" status >/dev/null 2>&1; then
    if ! "$root/scripts/brokers.sh" start; then
        echo "test.sh: the brokers did not start; the redis and nats tests would fail" >&2
        exit 1
    fi
    stop_brokers=1
fi
on_exit() {
    if [ "$stop_brokers" -eq 1 ]; then
        "$root/scripts/brokers.sh" stop || true
    fi
}
trap on_exit EXIT

# --- builds --------------------------------------------------------------------

# configure_build DIR CC CXX CMAKE_ARGS...
configure_build() {
    local dir=$1 cc=$2 cxx=$3
    shift 3
    cmake -S "$root" -B "$root/$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" \
        -DPSRPC_BUILD_TESTS=ON -DPSRPC_BUILD_EXAMPLES=ON -DPSRPC_WITH_REDIS=ON -DPSRPC_WITH_NATS=ON \
        "$@" "${extra_cmake_args[@]}" &&
        cmake --build "$root/$dir" -j "$build_jobs"
}

plain_ok=0 asan_ok=0 tsan_ok=0
step build-plain configure_build build "${CC:-cc}" "${CXX:-c++}" -DPSRPC_SANITIZE= && plain_ok=1
# build-asan also builds the libFuzzer targets (-DPSRPC_FUZZ=ON, clang):
# tests/fuzz, run by the "fuzz" step below.
step build-asan configure_build build-asan "$san_cc" "$san_cxx" -DPSRPC_SANITIZE=address \
    -DPSRPC_FUZZ=ON && asan_ok=1
step build-tsan configure_build build-tsan "$san_cc" "$san_cxx" -DPSRPC_SANITIZE=thread &&
    tsan_ok=1

# --- test runs -----------------------------------------------------------------

if [ "$plain_ok" -eq 1 ]; then
    step ctest-plain ctest --test-dir "$root/build" --output-on-failure --no-tests=error -j "$jobs"
    # go-redis's own RESP3 pub/sub loss (interop_redis_resp3_loss reports,
    # never fails on the counts; docs/interop.md): show them.
    grep -h '^TOTAL go-redis=' "$root/build/Testing/Temporary/LastTest.log" 2>/dev/null |
        sed 's/^/resp3-loss: /' || true
else
    skip ctest-plain "build-plain failed"
fi

if [ "$asan_ok" -eq 1 ]; then
    step ctest-asan env PSRPC_TEST_TIME_FACTOR=3 \
        ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:halt_on_error=1:strict_string_checks=1}" \
        UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}" \
        ctest --test-dir "$root/build-asan" --output-on-failure --no-tests=error -j "$jobs" \
        -LE '^interop$' -E '^(redis|nats)_test_oom_'
else
    skip ctest-asan "build-asan failed"
fi

# The fuzzers (docs/reliability.md section J): every libFuzzer target of
# build-asan for a bounded time, about 60 s in all; any finding fails.
if [ "$asan_ok" -eq 1 ]; then
    step fuzz "$root/tests/fuzz/run.sh" "$root/build-asan" 60
else
    skip fuzz "build-asan failed"
fi

# The Python binding: its own venv, pip install ./bindings/python (plus pytest,
# grpcio-tools, mypy, types-protobuf from PyPI), pytest over local://, Redis and
# NATS, mypy --strict over the typed example (~3-4 min).
step python-tests "$root/bindings/python/run_tests.sh"

# The Rust binding: cargo test over local://, Redis and NATS, clippy, doc,
# package, the add_value example (also against C). Its Rust <-> Go interop
# cells run in the interop-matrix step (rust slot).
step rust-tests env PSRPC_RUST_INTEROP=0 "$root/bindings/rust/run_tests.sh"

# The Node binding: npm install + cmake-js build in bindings/node, node:test
# over local://, Redis and NATS. Its check of the `npm pack` tarball in a fresh
# project is left to release-install, which installs (and compiles) the
# release tarball the same way, with import and require.
step node-tests env PSRPC_NODE_SKIP_PACK_CHECK=1 "$root/bindings/node/run_tests.sh"

# The release artifacts (issue 15): scripts/release.sh builds dist/ (C source
# tarball, libpsrpc0/libpsrpc-dev .debs, Python sdist + manylinux wheel, npm
# tarball, crates); scripts/install-test.sh installs each outside the tree and
# runs its add_value example against the C example server over Redis. The
# .deb check (dpkg -i, then --purge) only with PSRPC_INSTALL_TEST_DEB=1 (.ci/run
# sets it). Reuses bindings/target for the crates' dependencies (~3 min).
release_install() {
    "$root/scripts/release.sh" &&
        CARGO_TARGET_DIR="$root/bindings/target" "$root/scripts/install-test.sh" \
            --c-example "$root/build/examples/add_value"
}
if [ "$plain_ok" -eq 1 ]; then
    step release-install release_install
else
    skip release-install "build-plain failed"
fi

# The interop matrix: each non-Go language (C, Python, Rust, Node: every slot
# in tests/interop/languages/) against Go in both directions on both brokers,
# plus one mixed cell of every language per broker. Any failing cell fails
# the step. After the bindings' own steps, so their builds are reused.
if [ "$plain_ok" -eq 1 ]; then
    # (The Python slot reuses the venv python-tests installed.)
    # The cells are mostly waiting (claim windows, deadlines: a C -> Go cell
    # uses 0.4 of a core), so they run four at a time: two lanes per broker,
    # the second on a private broker matrix.sh starts (--parallel --lanes 2).
    # PSRPC_INTEROP_MATRIX_ARGS replaces that option list (empty: one cell at
    # a time).
    read -r -a matrix_args <<<"${PSRPC_INTEROP_MATRIX_ARGS---parallel --lanes 2}"
    step interop-matrix env PSRPC_INTEROP_PY_REUSE=1 "$root/tests/interop/matrix.sh" --ci \
        --build-dir "$root/build" "${matrix_args[@]}"
else
    skip interop-matrix "build-plain failed"
fi

if [ "$tsan_ok" -eq 1 ]; then
    tsan_options="halt_on_error=1:exitcode=66:second_deadlock_stack=1"
    if [ -f "$root/tests/tsan.supp" ]; then
        tsan_options="$tsan_options:suppressions=$root/tests/tsan.supp"
    fi
    step ctest-tsan-local env PSRPC_TEST_TIME_FACTOR=3 TSAN_OPTIONS="${TSAN_OPTIONS:-$tsan_options}" \
        ctest --test-dir "$root/build-tsan" --output-on-failure --no-tests=error -j "$jobs" \
        -L '^(local|nats|redis)$' -LE '^oom$'
else
    skip ctest-tsan-local "build-tsan failed"
fi

# valgrind over the unit and local test executables of the plain tree: the
# commands, working directories and environments ctest would use, each under
# memcheck, $jobs at a time (each one's output in build/test-logs/valgrind/,
# printed when it ends). A test case that hangs is aborted by the harness's
# watchdog (30 s scaled by the time factor: 300 s); the names of the failed
# executables go to the summary.
valgrind_one() {
    local name=$1 wd=$2 envs=$3 cmd=$4 out=$logs/valgrind/$1.log t0 rc
    local -a argv=() envv=()
    eval "argv=($cmd)"
    [ -n "$envs" ] && read -r -a envv <<<"$envs"
    t0=$(date +%s)
    (cd "${wd:-$(dirname "${argv[0]}")}" &&
        env "${envv[@]}" PSRPC_TEST_TIME_FACTOR=10 PSRPC_TEST_WATCHDOG_S=30 valgrind -q --error-exitcode=99 \
            --leak-check=full --errors-for-leak-kinds=definite,indirect \
            --show-leak-kinds=definite,indirect "${argv[@]}") >"$out" 2>&1
    rc=$?
    {
        echo "--- valgrind $name ($(($(date +%s) - t0)) s)"
        cat "$out"
        if [ "$rc" -ne 0 ]; then
            echo "--- valgrind $name: FAILED (exit $rc)"
            echo "$name" >>"$logs/valgrind-tests.why"
        fi
    } | flock "$logs/valgrind" cat
    return "$rc"
}

valgrind_tests() {
    local list name wd envs cmd n=0 bad running=0
    list=$(ctest --test-dir "$root/build" -N -V -L '^(unit|local)$' -LE '^oom$' | awk '
        /^[0-9]+: Test command: / { sub(/^[0-9]+: Test command: /, ""); cmd = $0; inenv = 0; next }
        /^[0-9]+: Working Directory: / { sub(/^[0-9]+: Working Directory: /, ""); wd = $0; next }
        /^[0-9]+: Environment variables:/ { inenv = 1; next }
        inenv && /^[0-9]+:  [A-Za-z_][A-Za-z0-9_]*=/ {
            sub(/^[0-9]+:  /, ""); envs = envs (envs == "" ? "" : " ") $0; next
        }
        /^ *Test +#[0-9]+: / {
            sub(/^ *Test +#[0-9]+: /, "")
            if (cmd != "") print $1 "\037" wd "\037" envs "\037" cmd
            cmd = wd = envs = ""; inenv = 0
        }
    ')
    if [ -z "$list" ]; then
        echo "valgrind: ctest lists no unit or local tests" >&2
        return 1
    fi
    rm -rf "$logs/valgrind" "$logs/valgrind-tests.why"
    mkdir -p "$logs/valgrind"
    while IFS=$'\037' read -r name wd envs cmd; do
        # Only programs built in this tree are test executables; a test run
        # through sh or a compiler (the example wrapper) is not, and the
        # example itself is checked by the next step.
        case $cmd in
        "$root/build/"* | \""$root/build/"*) ;;
        *)
            echo "--- $name: runs ${cmd%% *}, not a test executable of this tree"
            continue
            ;;
        esac
        n=$((n + 1))
        if [ "$running" -ge "$jobs" ]; then
            wait -n
            running=$((running - 1))
        fi
        valgrind_one "$name" "$wd" "$envs" "$cmd" &
        running=$((running + 1))
    done <<<"$list"
    wait
    bad=0
    [ -f "$logs/valgrind-tests.why" ] && bad=$(wc -l <"$logs/valgrind-tests.why")
    echo "valgrind: $n executables, $bad failed"
    [ "$n" -gt 0 ] && [ "$bad" -eq 0 ]
}

valgrind_example() {
    local out
    out=$(PSRPC_TEST_TIME_FACTOR=10 valgrind -q --error-exitcode=99 --leak-check=full \
        --errors-for-leak-kinds=definite,indirect "$root/build/examples/add_value") || return 1
    printf '%s\n' "$out"
    printf '%s\n' "$out" | grep -qx 'AddValue(increment=3) -> value=6'
}

if [ "$plain_ok" -eq 1 ]; then
    step valgrind-tests valgrind_tests
    step valgrind-example valgrind_example
else
    skip valgrind-tests "build-plain failed"
    skip valgrind-example "build-plain failed"
fi

# The benchmarks, once and short: they must run, not be fast (issue 8: no
# timing thresholds in tests). run.sh fails if a libpsrpc or raw cell has no
# result; the rendered page must exist.
bench_quick() {
    local out="$root/build/bench-quick"
    rm -rf "$out"
    PSRPC_TEST_REDIS_URL= PSRPC_TEST_NATS_URL= "$root/bench/run.sh" --quick --out-dir "$out" &&
        [ -s "$out/results.json" ] && grep -q '^## Targets' "$out/benchmarks.md"
}
step bench-quick bench_quick

summary
exit "$failed"
