#!/usr/bin/env bash
# cluster_interop.sh — Go livekit/psrpc v0.8.2 (on a go-redis ClusterClient)
# and libpsrpc (redis+cluster://) calling each other across a Redis Cluster
# (issue 18). Starts a cluster of 3 masters (redis-server
# --cluster-enabled yes on free loopback ports, in a temp dir; redis-cli
# --cluster create), then runs the interop scenarios (run_interop.sh) with
# PSRPC_TEST_REDIS_URL=redis+cluster://... in the directions given (default
# go_client_c_server, c_client_go_server and mixed_servers: Go and C servers
# of one service competing for the same queue locks), and checks that the queue
# locks (SET NX) reached every master. Removes its servers and temp dir.
#
#   cluster_interop.sh --server PATH --client PATH [DIRECTION...]
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
[ -n "$server" ] && [ -n "$client" ] || { echo "usage: $0 --server PATH --client PATH [DIRECTION...]" >&2; exit 2; }
dirs=("$@")
[ ${#dirs[@]} -gt 0 ] || dirs=(go_client_c_server c_client_go_server mixed_servers)
for p in redis-server redis-cli python3; do
    command -v $p >/dev/null || { echo "cluster_interop: $p not found" >&2; exit 1; }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/psrpc-cluster-interop-XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

# Free loopback ports: a client port and a cluster bus port per node.
read -r -a ports < <(python3 - <<'EOF'
import socket
socks = []
for _ in range(6):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)
addrs=()
for i in 0 1 2; do
    port=${ports[$i]} bus=${ports[$((i + 3))]}
    mkdir -p "$tmp/n$i"
    redis-server --port "$port" --cluster-port "$bus" --bind 127.0.0.1 --cluster-enabled yes \
        --cluster-config-file nodes.conf --cluster-node-timeout 2000 --save '' --appendonly no \
        --daemonize no --dir "$tmp/n$i" --logfile "$tmp/n$i/redis.log" &
    pids+=($!)
    addrs+=("127.0.0.1:$port")
done
cli() { redis-cli -h 127.0.0.1 -p "$1" "${@:2}"; }
for i in 0 1 2; do
    for _ in $(seq 100); do cli "${ports[$i]}" PING >/dev/null 2>&1 && break; sleep 0.1; done
    cli "${ports[$i]}" PING >/dev/null || { echo "cluster_interop: node ${addrs[$i]} did not start" >&2; exit 1; }
done
redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes >"$tmp/create.log" 2>&1 || {
    cat "$tmp/create.log" >&2
    exit 1
}
ok=0
for _ in $(seq 300); do
    ok=1
    for i in 0 1 2; do
        info=$(cli "${ports[$i]}" CLUSTER INFO)
        grep -q 'cluster_state:ok' <<<"$info" && grep -q 'cluster_known_nodes:3' <<<"$info" || ok=0
    done
    [ $ok = 1 ] && break
    sleep 0.1
done
[ $ok = 1 ] || { echo "cluster_interop: cluster not ok after 30 s" >&2; exit 1; }
url="redis+cluster://${addrs[0]},${addrs[1]}"
echo "cluster_interop: 3 masters ${addrs[*]}; bus URL $url"
for i in 0 1 2; do cli "${ports[$i]}" CONFIG RESETSTAT >/dev/null; done

rc=0
for d in "${dirs[@]}"; do
    echo "=== cluster_interop: $d"
    PSRPC_TEST_REDIS_URL=$url "$here/run_interop.sh" --server "$server" --client "$client" redis "$d" || rc=1
done

# The queue locks went to the masters of their slots: every master took some.
echo "=== cluster_interop: SET (queue lock) calls per master"
for i in 0 1 2; do
    n=$(cli "${ports[$i]}" INFO commandstats | tr -d '\r' | sed -n 's/^cmdstat_set:calls=\([0-9]*\),.*/\1/p')
    echo "  ${addrs[$i]}: ${n:-0}"
    [ "${n:-0}" -gt 0 ] || { echo "cluster_interop: no queue lock reached ${addrs[$i]}" >&2; rc=1; }
done
exit $rc
