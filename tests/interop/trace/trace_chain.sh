#!/usr/bin/env bash
# trace_chain.sh — the cross-language trace test of issue 16 (ctest
# interop_trace_chain, label interop):
#
#   Go client (otelpsrpc) → C conformance-server --trace-next → Python
#   (psrpc.otel, trace_hop.py) → Go server (otelpsrpc)
#
# over Redis (PSRPC_TEST_REDIS_URL, default redis://127.0.0.1:6379), checked
# by tests/interop/go/cmd/trace-chain: one trace id, parents linked hop by hop.
#
#   trace_chain.sh --c-server PATH
#
# The Python side is the binding in bindings/python/run_tests.sh's venv
# ($PSRPC_PY_VENV); when it does not import psrpc.otel and the OpenTelemetry
# SDK, it is installed first (PSRPC_PY_INSTALL_ONLY=1 run_tests.sh, a few
# minutes). Needs Go and the interop module graph (tests/interop/setup.sh).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
cserver=
while [ $# -gt 0 ]; do
    case $1 in
    --c-server) cserver=$2; shift 2 ;;
    *) echo "usage: $0 --c-server PATH" >&2; exit 2 ;;
    esac
done
[ -x "$cserver" ] || { echo "trace_chain: --c-server PATH required" >&2; exit 2; }
export PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "trace_chain: go not found (tests/interop/setup.sh)" >&2; exit 1; }
url=${PSRPC_TEST_REDIS_URL:-redis://127.0.0.1:6379}
venv=${PSRPC_PY_VENV:-$root/bindings/python/build/venv}
if ! "$venv/bin/python" -c "import psrpc.otel, opentelemetry.sdk" 2>/dev/null; then
    echo "trace_chain: installing the Python binding into $venv"
    PSRPC_PY_INSTALL_ONLY=1 "$root/bindings/python/run_tests.sh"
fi

tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
wait_ready() { # FILE NAME PID
    for _ in $(seq 200); do
        grep -qx ready "$1" 2>/dev/null && return 0
        kill -0 "$3" 2>/dev/null || break
        sleep 0.1
    done
    echo "trace_chain: $2 did not get ready:" >&2
    cat "$1" "$1.err" >&2 2>/dev/null || true
    exit 1
}

(cd "$root/tests/interop/go" && go build -o "$tmp/trace-chain" ./cmd/trace-chain)
suffix=$$-$RANDOM
pytopic=trace-py-$suffix gotopic=trace-go-$suffix
"$cserver" --bus "$url" --server-id "c-trace-$suffix" --methods Echo --trace-next "$pytopic" \
    >"$tmp/c" 2>"$tmp/c.err" &
pids+=($!)
wait_ready "$tmp/c" "C conformance-server" $!
mkdir -p "$tmp/gen"
"$venv/bin/python" "$here/trace_hop.py" --bus "$url" --topic "$pytopic" --next "$gotopic" \
    --spans "$tmp/py-spans" --proto-dir "$root/tests/interop" --gen "$tmp/gen" \
    >"$tmp/py" 2>"$tmp/py.err" &
pids+=($!)
wait_ready "$tmp/py" "Python hop" $!
if ! "$tmp/trace-chain" --bus "$url" --go-topic "$gotopic" --py-spans "$tmp/py-spans"; then
    echo "--- C server stderr:" >&2; cat "$tmp/c.err" >&2
    echo "--- Python hop stderr:" >&2; cat "$tmp/py.err" >&2
    exit 1
fi
grep '^trace:' "$tmp/c.err" || true
