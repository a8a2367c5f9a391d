#!/bin/sh
# run.sh BUILD_DIR [NATS_URL] — manual wire-interop check between libpsrpc
# (BUILD_DIR/tests/nats/nats_interop_peer) and the real livekit/psrpc v0.8.2
# natsbus (this directory, built with the Go toolchain; the first build may
# download modules). Not part of ctest. Three rounds over one nats-server
# (default nats://127.0.0.1:4222): a C client against two Go servers, a Go
# client against two C servers, and Go and C clients against one server of
# each (sharing queue group "bus"). Exits 0 if every call held.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "${1:?usage: run.sh BUILD_DIR [NATS_URL]}" && pwd)
url=${2:-nats://127.0.0.1:4222}
cpeer=$build/tests/nats/nats_interop_peer
work=$(mktemp -d "${TMPDIR:-/tmp}/psrpc-interop.XXXXXX")
pids=
cleanup() {
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
(cd "$here" && GOFLAGS=-mod=mod go build -o "$work/gopeer" .)
gopeer=$work/gopeer

start() { # start NAME CMD...: background server, wait for "ready"
    name=$1
    shift
    "$@" serve "$url" >"$work/$name.out" 2>&1 &
    pids="$pids $!"
    i=0
    until grep -qx ready "$work/$name.out"; do
        i=$((i + 1))
        [ "$i" -le 100 ] || { cat "$work/$name.out"; echo "FAIL: $name not ready"; exit 1; }
        sleep 0.1
    done
}
stop_all() {
    for p in $pids; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    pids=
}

echo "== C client, two Go servers"
start go1 "$gopeer"; start go2 "$gopeer"
"$cpeer" call "$url" 2
stop_all
echo "== Go client, two C servers"
start c1 "$cpeer"; start c2 "$cpeer"
"$gopeer" call "$url" 2
stop_all
echo "== Go and C clients, one Go and one C server"
start go1 "$gopeer"; start c1 "$cpeer"
"$gopeer" call "$url" 2
"$cpeer" call "$url" 2
stop_all
echo "ok: libpsrpc and livekit/psrpc v0.8.2 interoperate over $url"
