#!/bin/sh
# run_add_value.sh ADD_VALUE local|redis|nats — the add_value example as a test.
#   local: `add_value` alone (server + client on local://) prints the values
#          1, 3, 6 and exits 0.
#   redis, nats: the same one-process run over the broker, then `serve` in the
#          background until it prints "ready", two `call`s from other processes
#          (5 -> 5, 7 -> 12), SIGTERM, and the server must exit 0.
# Brokers: PSRPC_TEST_REDIS_URL (default redis://127.0.0.1:6379) and
# PSRPC_TEST_NATS_URL (default nats://127.0.0.1:4222). A broker that does not
# answer fails the test.
set -eu

bin=${1:?usage: run_add_value.sh ADD_VALUE local|redis|nats}
mode=${2:?usage: run_add_value.sh ADD_VALUE local|redis|nats}
factor=${PSRPC_TEST_TIME_FACTOR:-1}
factor=${factor%%.*}
[ "$factor" -ge 1 ] 2>/dev/null || factor=1

fail() { echo "FAIL: $*"; exit 1; }

expect_demo() {
    out=$("$bin" "$@") || fail "add_value $* exited with status $?"
    printf '%s\n' "$out"
    want="AddValue(increment=1) -> value=1
AddValue(increment=2) -> value=3
AddValue(increment=3) -> value=6"
    [ "$(printf '%s\n' "$out" | grep '^AddValue')" = "$want" ] ||
        fail "add_value $* printed unexpected values"
}

case $mode in
local)
    expect_demo
    echo "ok: add_value on local://"
    exit 0
    ;;
redis) url=${PSRPC_TEST_REDIS_URL:-redis://127.0.0.1:6379} ;;
nats) url=${PSRPC_TEST_NATS_URL:-nats://127.0.0.1:4222} ;;
*) fail "unknown mode $mode" ;;
esac

expect_demo --bus "$url"

work=$(mktemp -d "${TMPDIR:-/tmp}/psrpc-add-value.XXXXXX")
pid=
cleanup() {
    [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

"$bin" --bus "$url" serve >"$work/serve.out" 2>"$work/serve.err" &
pid=$!
i=0
limit=$((200 * factor)) # 50 ms steps: 10 s, scaled
until grep -qx ready "$work/serve.out"; do
    if ! kill -0 "$pid" 2>/dev/null; then
        cat "$work/serve.err"
        wait "$pid" || true
        pid=
        fail "add_value serve exited before it was ready"
    fi
    i=$((i + 1))
    [ "$i" -le "$limit" ] || { cat "$work/serve.err"; fail "add_value serve not ready after $((limit / 20)) s"; }
    sleep 0.05
done
echo "serve: ready"

v=$("$bin" --bus "$url" call 5) || fail "add_value call 5 exited with status $?"
[ "$v" = 5 ] || fail "call 5 printed '$v', expected 5"
echo "call 5 -> $v"
v=$("$bin" --bus "$url" call 7) || fail "add_value call 7 exited with status $?"
[ "$v" = 12 ] || fail "call 7 printed '$v', expected 12"
echo "call 7 -> $v"

kill -TERM "$pid"
st=0
wait "$pid" || st=$?
pid=
cat "$work/serve.err"
[ "$st" -eq 0 ] || fail "add_value serve exited with status $st after SIGTERM"
echo "ok: add_value over $url"
