#!/usr/bin/env bash
# run_interop.sh — runs one cell of the interop matrix (docs/interop.md).
#
#   run_interop.sh --server PATH --client PATH methods
#       the method table check (C build vs Go descriptor vs generated code)
#   run_interop.sh --server PATH --client PATH BUS DIRECTION
#       BUS: redis | nats; DIRECTION: go_client_c_server | c_client_go_server |
#       mixed_servers (baselines: go_client_go_server | c_client_c_server)
#
# Brokers: PSRPC_TEST_REDIS_URL / PSRPC_TEST_NATS_URL (defaults
# redis://127.0.0.1:6379, nats://127.0.0.1:4222). A broker that does not
# answer fails the run. Needs Go and the module cache or proxy
# (tests/interop/setup.sh). PSRPC_INTEROP_SCENARIOS=a,b runs a subset.
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

export PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "run_interop: go not found (tests/interop/setup.sh)" >&2; exit 1; }
export PSRPC_INTEROP_C_SERVER=$server PSRPC_INTEROP_C_CLIENT=$client
cd "$here/go"

if [ "$1" = methods ]; then
    # The committed generated code must be what gen.sh makes of the .proto.
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    ./gen.sh --out "$tmp"
    for f in conformance.pb.go conformance.psrpc.go; do
        diff -u "conformance/$f" "$tmp/$f" || {
            echo "run_interop: conformance/$f is stale: run tests/interop/go/gen.sh" >&2
            exit 1
        }
    done
    echo "run_interop: generated code is current"
    go test -count=1 -v -run '^TestMethodTable$' ./interop/
    exit
fi

bus=$1 dir=${2:?direction}
case $bus in
redis) url=${PSRPC_TEST_REDIS_URL:-redis://127.0.0.1:6379} ;;
nats) url=${PSRPC_TEST_NATS_URL:-nats://127.0.0.1:4222} ;;
*) echo "run_interop: unknown bus $bus" >&2; exit 2 ;;
esac

# The broker must answer: Redis replies +PONG to PING, NATS greets with INFO.
hostport=${url#*://}
hostport=${hostport#*@}
hostport=${hostport%%/*}
host=${hostport%:*} port=${hostport##*:}
[ "$host" = "$hostport" ] && port=$([ "$bus" = redis ] && echo 6379 || echo 4222)
probe() {
    if [ "$bus" = redis ]; then
        timeout 3 bash -c "exec 3<>/dev/tcp/$host/$port && printf 'PING\r\n' >&3 && head -c 5 <&3" 2>/dev/null | grep -q PONG
    else
        timeout 3 bash -c "exec 3<>/dev/tcp/$host/$port && head -c 4 <&3" 2>/dev/null | grep -q INFO
    fi
}
probe || { echo "run_interop: no $bus broker answers at $url (scripts/brokers.sh start)" >&2; exit 1; }

# The Go conformance server, built next to the C programs (build tree).
goserver=$(dirname "$server")/go-conformance-server
go build -o "$goserver" ./cmd/conformance-server
export PSRPC_INTEROP_GO_SERVER=$goserver PSRPC_INTEROP_BUS=$bus PSRPC_INTEROP_DIRECTION=$dir

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
go test -count=1 -v -timeout 540s -run '^TestInterop$' ./interop/ 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
echo
echo "=== interop $bus $dir: scenario summary"
grep -E '^    --- (PASS|FAIL|SKIP): TestInterop/' "$log" | sed 's/^    --- //' || true
exit "$rc"
