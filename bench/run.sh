#!/usr/bin/env bash
# bench/run.sh [--quick] [bench.py options, e.g. --only 'redis/single']
#
# Builds the benchmark programs (C: bench/build, against this repository's
# library; Go: bench/go, livekit/psrpc v0.8.2), starts a private redis-server
# and nats-server on free loopback ports (unless PSRPC_TEST_REDIS_URL /
# PSRPC_TEST_NATS_URL name brokers to use), runs every cell (bench/bench.py),
# writes bench/results.json (+ results.meta.json) and renders
# docs/benchmarks.md and bench/results.svg (bench/render.py).
#
#   --quick         one run of ~1 s per cell (CI: proves it works; no thresholds);
#                   each scenario once (64 B, its largest in-flight count) plus
#                   one 16 KiB cell, fewer binding, nats.c and scaling cells; reuses the Python
#                   venv / Node addon the test suite built instead of building
#   default         3 runs per cell, median reported (~20-25 minutes on 2 cores)
#   --out-dir DIR   write results.json, results.meta.json, benchmarks.md and
#                   results.svg into DIR instead of bench/ and docs/ (the test
#                   suite's smoke run uses this, so it leaves the tree alone)
#
# Needs: cmake, a C compiler, the library's build dependencies, hiredis and
# libnats headers, Go >= 1.25.5, python3, redis-server and nats-server.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
export PATH=$PATH:/usr/local/go/bin:$(go env GOPATH 2>/dev/null || echo /root/go)/bin
build=$here/build

out_dir=
quick=
args=()
while [ $# -gt 0 ]; do
    case $1 in
    --quick)
        quick=1
        args+=("$1")
        shift
        ;;
    --out-dir)
        out_dir=${2:?--out-dir needs a directory}
        shift 2
        ;;
    *)
        args+=("$1")
        shift
        ;;
    esac
done
results=$here/results.json meta=$here/results.meta.json
doc=$root/docs/benchmarks.md svg=$here/results.svg
if [ -n "$out_dir" ]; then
    mkdir -p "$out_dir"
    out_dir=$(cd "$out_dir" && pwd)
    results=$out_dir/results.json meta=$out_dir/results.meta.json
    doc=$out_dir/benchmarks.md svg=$out_dir/results.svg
fi

echo "run.sh: building the C programs in $build" >&2
cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j2 --target psrpc_bench raw_bench raw_nats_uv raw_natsc_uv >/dev/null
echo "run.sh: building the Go program" >&2
(cd "$here/go" && go build -o "$build/go_bench" .)

# The bindings' client roles (bench/python/bench_client.py,
# bench/node/bench_client.mjs, bench/rust's bench_client) against the C
# server. A binding that cannot be built here is reported, and its cells are
# missing from the results (meta: "bindings"); the run goes on.
# --quick reuses what exists (the test suite built the Python venv and the
# Node addon in its earlier steps); the full run (re)builds from this tree.
bind_args=()
py=
if [ -z "$quick" ]; then
    echo "run.sh: building the Python binding into $build/venv" >&2
    if { [ -x "$build/venv/bin/python" ] || python3 -m venv "$build/venv"; } &&
        "$build/venv/bin/python" -m pip -q --disable-pip-version-check install protobuf &&
        "$build/venv/bin/python" -m pip -q --disable-pip-version-check install \
            --force-reinstall --no-deps "$root/bindings/python"; then
        py=$build/venv/bin/python
    fi
else
    for v in "${PSRPC_PY_VENV:-}" "$root/bindings/python/build/venv" "$build/venv"; do
        if [ -n "$v" ] && "$v/bin/python" -c 'import psrpc, google.protobuf' 2>/dev/null; then
            py=$v/bin/python
            break
        fi
    done
fi
[ -n "$py" ] && bind_args+=(--python "$py") ||
    echo "run.sh: no Python binding: its cells are missing" >&2
node_dir=$root/bindings/node
if command -v node >/dev/null && [ -z "$quick" ]; then
    echo "run.sh: building the Node binding in $node_dir" >&2
    (cd "$node_dir" && npm install --no-audit --no-fund --ignore-scripts --loglevel=error \
        >/dev/null && PSRPC_NODE_JOBS=2 node scripts/build.js --force >/dev/null) ||
        echo "run.sh: the Node binding did not build" >&2
fi
if command -v node >/dev/null && [ -f "$node_dir/build/Release/psrpc_node.node" ] &&
    [ -f "$node_dir/esm/index.mjs" ] && [ -f "$node_dir/dist/cjs/index.js" ]; then
    bind_args+=(--node "$(command -v node)")
else
    echo "run.sh: no Node binding: its cells are missing" >&2
fi
echo "run.sh: building the Rust client (bench/rust)" >&2
rust_bin=$build/rust-target/release/bench_client
if command -v cargo >/dev/null &&
    (cd "$here/rust" && export CARGO_TARGET_DIR=$build/rust-target &&
        { cargo build -q --release --offline --bin bench_client 2>/dev/null ||
            cargo build -q --release --bin bench_client; }) >&2; then
    bind_args+=(--rust-bin "$rust_bin")
else
    echo "run.sh: no Rust binding: its cells are missing" >&2
fi

tmp=$(mktemp -d /tmp/psrpc-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

redis_url=${PSRPC_TEST_REDIS_URL:-}
flush_args=()
if [ -z "$redis_url" ]; then
    flush_args=(--flush-redis) # our own broker: each Redis cell starts empty
    for _ in 1 2 3 4 5; do
        port=$(free_port)
        redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
            --dir "$tmp" --logfile "$tmp/redis.log" &
        pid=$!
        for _ in $(seq 50); do
            redis-cli -p "$port" ping >/dev/null 2>&1 && break
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if redis-cli -p "$port" ping >/dev/null 2>&1 && kill -0 "$pid" 2>/dev/null; then
            pids+=("$pid")
            redis_url=redis://127.0.0.1:$port
            break
        fi
        kill "$pid" 2>/dev/null || true
    done
    [ -n "$redis_url" ] || { echo "run.sh: cannot start redis-server" >&2; exit 1; }
fi

nats_url=${PSRPC_TEST_NATS_URL:-}
if [ -z "$nats_url" ]; then
    for _ in 1 2 3 4 5; do
        port=$(free_port)
        nats-server -a 127.0.0.1 -p "$port" -l "$tmp/nats.log" &
        pid=$!
        for _ in $(seq 50); do
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            pids+=("$pid")
            nats_url=nats://127.0.0.1:$port
            break
        fi
        kill "$pid" 2>/dev/null || true
    done
    [ -n "$nats_url" ] || { echo "run.sh: cannot start nats-server" >&2; exit 1; }
fi
echo "run.sh: redis $redis_url, nats $nats_url" >&2

redis_v=$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')
nats_v=$(nats-server --version | awk '{print $2}')
status=0
python3 "$here/bench.py" --c-bin "$build" --go-bin "$build/go_bench" \
    --redis "$redis_url" --nats "$nats_url" "${flush_args[@]}" \
    --note "brokers=redis-server $redis_v, nats-server $nats_v (loopback, started by run.sh unless PSRPC_TEST_*_URL set)" \
    --note "toolchains=$(cc --version | head -1), $(go version | cut -d' ' -f3), livekit/psrpc v0.8.2" \
    --out "$results" --meta-out "$meta" ${bind_args[@]+"${bind_args[@]}"} \
    ${args[@]+"${args[@]}"} || status=$?
python3 "$here/render.py" --results "$results" --meta "$meta" --doc "$doc" --svg "$svg"
exit $status
