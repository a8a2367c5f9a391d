#!/usr/bin/env bash
# resp3_loss.sh — measures go-redis pub/sub message loss over RESP3 vs RESP2
# with plain go-redis (tests/interop/go/cmd/resp3-loss; issue 22,
# docs/interop.md "Go peers on Redis: RESP3").
#
#   resp3_loss.sh [--versions "v9.20.1 v9.23.0 ..."] [--only-versions] [-- PROGRAM ARGS]
#
# Runs the program built in the interop module (go-redis v9.20.0, the version
# livekit/psrpc v0.8.2 requires), then, for each --versions entry, the same
# source built in a throwaway module under a temp dir that requires that
# go-redis version (the interop module's graph is left alone; needs the Go
# module proxy or a module cache holding that version).
#
# Prints the program's RESULT/TOTAL lines and exits 0 whatever the loss counts
# (they measure the Go anchor, not libpsrpc); exits non-zero when it cannot
# measure: no Redis at PSRPC_TEST_REDIS_URL (default redis://127.0.0.1:6379),
# no Go, a build failure, or a program failure.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
versions= only=0
while [ $# -gt 0 ]; do
    case $1 in
    --versions) versions=$2; shift 2 ;;
    --only-versions) only=1; shift ;;
    --) shift; break ;;
    *) echo "usage: $0 [--versions \"vX ...\"] [--only-versions] [-- PROGRAM ARGS]" >&2; exit 2 ;;
    esac
done

export PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "resp3_loss: go not found (tests/interop/setup.sh)" >&2; exit 1; }
url=${PSRPC_TEST_REDIS_URL:-redis://127.0.0.1:6379}
hostport=${url#*://}
hostport=${hostport#*@}
hostport=${hostport%%/*}
host=${hostport%:*} port=${hostport##*:}
[ "$host" = "$hostport" ] && port=6379
timeout 3 bash -c "exec 3<>/dev/tcp/$host/$port && printf 'PING\r\n' >&3 && head -c 5 <&3" 2>/dev/null |
    grep -q PONG || { echo "resp3_loss: no Redis answers at $url (scripts/brokers.sh start)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
src=$here/go/cmd/resp3-loss

if [ "$only" = 0 ]; then
    (cd "$here/go" && go build -o "$tmp/resp3-loss" ./cmd/resp3-loss)
    "$tmp/resp3-loss" -url "$url" "$@"
fi
for v in $versions; do
    m=$tmp/mod-$v
    mkdir -p "$m"
    cp "$src/main.go" "$m/"
    (
        cd "$m"
        go mod init resp3loss >/dev/null 2>&1
        go mod edit -go=1.25.5 -require=github.com/redis/go-redis/v9@"$v"
        go mod tidy >/dev/null 2>&1 || go mod tidy
        go build -o resp3-loss .
    )
    "$m/resp3-loss" -url "$url" "$@"
done
