#!/usr/bin/env bash
# Side-by-side retries (issue 16): the same failure patterns called through Go
# livekit/psrpc v0.8.2 middleware.WithRPCRetries and through libpsrpc's
# psrpc_client_set_retries, against one C conformance server on the bus. Each
# scenario must end with the same number of attempts and the same outcome code
# on both sides (elapsed times are printed, not compared).
#
#   retry_compare.sh --server CONFORMANCE_SERVER --c-client RETRY_COMPARE --bus URL|redis|nats
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
server= cclient= bus=
while [ $# -gt 0 ]; do
    case $1 in
    --server) server=$2; shift 2 ;;
    --c-client) cclient=$2; shift 2 ;;
    --bus) bus=$2; shift 2 ;;
    *) echo "usage: $0 --server BIN --c-client BIN --bus URL" >&2; exit 2 ;;
    esac
done
[ -n "$server" ] && [ -n "$cclient" ] && [ -n "$bus" ] || { echo "missing arguments" >&2; exit 2; }
# "redis" / "nats": the test brokers (as the other interop tests)
case $bus in
redis) bus=${PSRPC_TEST_REDIS_URL:-redis://127.0.0.1:6379} ;;
nats) bus=${PSRPC_TEST_NATS_URL:-nats://127.0.0.1:4222} ;;
esac
tmp=$(mktemp -d)
srv_pid=
cleanup() { [ -n "$srv_pid" ] && kill "$srv_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
(cd "$here/go" && go build -o "$tmp/retry-compare-go" ./cmd/retry-compare)
"$server" --bus "$bus" --methods Echo > "$tmp/server.out" 2> "$tmp/server.err" &
srv_pid=$!
for _ in $(seq 1 150); do grep -q '^ready' "$tmp/server.out" 2>/dev/null && break; sleep 0.1; done
grep -q '^ready' "$tmp/server.out" || { echo "server not ready" >&2; cat "$tmp/server.err" >&2; exit 1; }
"$tmp/retry-compare-go" --bus "$bus" > "$tmp/go.txt"
"$cclient" --bus "$bus" > "$tmp/c.txt"
echo "Go v0.8.2 middleware:"; sed 's/^/  /' "$tmp/go.txt"
echo "libpsrpc:"; sed 's/^/  /' "$tmp/c.txt"
strip() { sed 's/ ms=[0-9]*$//' "$1"; }
if ! diff <(strip "$tmp/go.txt") <(strip "$tmp/c.txt"); then
    echo "retry_compare: attempts or outcomes differ" >&2
    exit 1
fi
[ "$(wc -l < "$tmp/c.txt")" -ge 5 ] || { echo "retry_compare: scenarios missing" >&2; exit 1; }
echo "retry_compare: $(wc -l < "$tmp/c.txt") scenarios, same attempts and outcomes"
