#!/usr/bin/env bash
# run_interop.sh — the method-table check, and single cells with given
# programs in the "c" slot (what the bindings' own scripts use). The matrix of
# every language is tests/interop/matrix.sh (docs/interop.md).
#
#   run_interop.sh --server PATH --client PATH methods
#       the committed generated Go code is what gen.sh makes of
#       conformance.proto, and the method table of the client program
#       (--print-methods) equals the one derived from the Go descriptor and
#       protoc-gen-psrpc's RegisterMethod flags (ctest interop_method_table;
#       no broker)
#   run_interop.sh --server PATH --client PATH BUS DIRECTION
#       BUS: redis | nats; DIRECTION: go_client_c_server | c_client_go_server |
#       mixed_servers | go_client_go_server | c_client_c_server ("c" being the
#       programs given)
#
# Brokers: PSRPC_TEST_REDIS_URL / PSRPC_TEST_NATS_URL (defaults
# redis://127.0.0.1:6379, nats://127.0.0.1:4222). Needs Go and the module
# graph (tests/interop/setup.sh). PSRPC_INTEROP_SCENARIOS=a,b runs a subset.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
server= client=
while [ $# -gt 0 ]; do
    case $1 in
    --server) server=$2; shift 2 ;;
    --client) client=$2; shift 2 ;;
    *) break ;;
    esac
done
[ -n "$server" ] && [ -n "$client" ] && [ $# -ge 1 ] || {
    echo "usage: $0 --server PATH --client PATH (methods | BUS DIRECTION)" >&2
    exit 2
}
abs() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
server=$(abs "$server") client=$(abs "$client")

export PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "run_interop: go not found (tests/interop/setup.sh)" >&2; exit 1; }
cd "$here/go"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
slots() { # GO_SERVER
    python3 -c 'import json, sys; print(json.dumps({"go": {"server": [sys.argv[1]]},
        "c": {"server": [sys.argv[2]], "client": [sys.argv[3]]}}))' "$1" "$server" "$client" >"$tmp/slots.json"
}

if [ "$1" = methods ]; then
    ./gen.sh --out "$tmp"
    for f in conformance.pb.go conformance.psrpc.go; do
        diff -u "conformance/$f" "$tmp/$f" || {
            echo "run_interop: conformance/$f is stale: run tests/interop/go/gen.sh" >&2
            exit 1
        }
    done
    echo "run_interop: generated code is current"
    slots unused
    PSRPC_INTEROP_SLOTS=$tmp/slots.json PSRPC_INTEROP_CLIENTS=c \
        go test -count=1 -v -run '^TestMethodTable$' ./interop/
    exit
fi

bus=$1 dir=${2:?direction}
case $bus in redis | nats) ;; *) echo "run_interop: unknown bus $bus" >&2; exit 2 ;; esac
case $dir in
go_client_c_server) cells=(go c 0) ;;
c_client_go_server) cells=(c go 0) ;;
mixed_servers) cells=(go,c c,go 1) ;;
go_client_go_server) cells=(go go 0) ;;
c_client_c_server) cells=(c c 0) ;;
*) echo "run_interop: unknown direction $dir" >&2; exit 2 ;;
esac
go build -o "$tmp/go-conformance-server" ./cmd/conformance-server
slots "$tmp/go-conformance-server"
log=$tmp/log
set +e
PSRPC_INTEROP_SLOTS=$tmp/slots.json PSRPC_INTEROP_BUS=$bus PSRPC_INTEROP_CLIENTS=${cells[0]} \
    PSRPC_INTEROP_SERVERS=${cells[1]} PSRPC_INTEROP_MIXED=${cells[2]} \
    go test -count=1 -v -timeout 540s -run '^TestInterop$' ./interop/ 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
echo
echo "=== interop $bus $dir: scenario summary"
grep -E '^    --- (PASS|FAIL|SKIP): TestInterop/' "$log" | sed 's/^    --- //' || true
exit "$rc"
