#!/usr/bin/env bash
# brokers.sh start|stop|status — the test brokers on loopback.
#
#   start   starts redis-server on 127.0.0.1:6379 and nats-server on
#           127.0.0.1:4222, each only if nothing answers there already,
#           daemonized, with pid files and logs under a state directory; then
#           waits until both answer (fails after 20 s).
#   stop    stops only the brokers this script started (pid files), never a
#           broker that was already running.
#   status  exits 0 if both ports answer.
#
# State directory: $PSRPC_BROKERS_DIR, default ${TMPDIR:-/tmp}/psrpc-brokers-$UID.
set -euo pipefail

host=127.0.0.1
redis_port=6379
nats_port=4222
state=${PSRPC_BROKERS_DIR:-${TMPDIR:-/tmp}/psrpc-brokers-$(id -u)}

# Redis answers PING with +PONG.
redis_up() {
    local reply
    reply=$(timeout 2 bash -c "exec 3<>/dev/tcp/$host/$redis_port && printf 'PING\r\n' >&3 && head -c 5 <&3" 2>/dev/null) || return 1
    [ "$reply" = "+PONG" ]
}

# NATS greets every connection with INFO {...}.
nats_up() {
    local reply
    reply=$(timeout 2 bash -c "exec 3<>/dev/tcp/$host/$nats_port && head -c 4 <&3" 2>/dev/null) || return 1
    [ "$reply" = "INFO" ]
}

# pid from a pid file if that process is alive and is the expected program.
live_pid() {
    local file=$1 prog=$2 pid
    [ -f "$file" ] || return 1
    pid=$(cat "$file" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    grep -q "$prog" "/proc/$pid/comm" 2>/dev/null || return 1
    echo "$pid"
}

wait_up() {
    local name=$1 check=$2 log=$3 i
    for ((i = 0; i < 200; i++)); do
        "$check" && return 0
        sleep 0.1
    done
    echo "brokers: $name does not answer on $host after 20 s" >&2
    [ -f "$log" ] && tail -n 20 "$log" >&2
    return 1
}

start() {
    mkdir -p "$state"
    if redis_up; then
        echo "brokers: redis already answering on $host:$redis_port"
    else
        command -v redis-server >/dev/null || { echo "brokers: redis-server not installed (scripts/setup-deps.sh)" >&2; exit 1; }
        rm -f "$state/redis.pid"
        redis-server --bind "$host" --port "$redis_port" --daemonize yes \
            --pidfile "$state/redis.pid" --logfile "$state/redis.log" --dir "$state" \
            --save '' --appendonly no --protected-mode yes </dev/null
        wait_up redis redis_up "$state/redis.log"
        echo "brokers: started redis-server on $host:$redis_port (pid $(cat "$state/redis.pid"))"
    fi
    if nats_up; then
        echo "brokers: nats already answering on $host:$nats_port"
    else
        command -v nats-server >/dev/null || { echo "brokers: nats-server not installed (scripts/setup-deps.sh)" >&2; exit 1; }
        rm -f "$state/nats.pid"
        # nats-server has no daemon mode: detach it into its own session.
        setsid nats-server -a "$host" -p "$nats_port" -P "$state/nats.pid" \
            -l "$state/nats.log" </dev/null >/dev/null 2>&1 &
        wait_up nats nats_up "$state/nats.log"
        echo "brokers: started nats-server on $host:$nats_port (pid $(cat "$state/nats.pid"))"
    fi
}

stop_one() {
    local name=$1 prog=$2 file=$3 pid i
    if ! pid=$(live_pid "$file" "$prog"); then
        rm -f "$file"
        return 0
    fi
    kill -TERM "$pid"
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
    echo "brokers: stopped $name (pid $pid)"
}

stop() {
    stop_one redis-server redis-server "$state/redis.pid"
    stop_one nats-server nats-server "$state/nats.pid"
}

status() {
    local rc=0
    if redis_up; then echo "redis: up ($host:$redis_port)"; else echo "redis: down"; rc=1; fi
    if nats_up; then echo "nats: up ($host:$nats_port)"; else echo "nats: down"; rc=1; fi
    return $rc
}

case ${1:-} in
start) start ;;
stop) stop ;;
status) status ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
