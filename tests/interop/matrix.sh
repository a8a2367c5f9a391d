#!/usr/bin/env bash
# matrix.sh — the interop matrix (docs/interop.md): runs the interop scenarios
# (tests/interop/go/interop, Go's `go test`) for cells {client language} ×
# {server language} × {redis, nats}, plus a mixed cell per broker (one
# Conformance service served at once by servers of every selected language,
# called at once by a client of every language).
#
#   matrix.sh --all                 every language × every language, both
#                                   brokers, plus the mixed cells; renders the
#                                   results into docs/interop.md
#   matrix.sh --ci                  what the test command runs: every non-Go
#                                   language against Go in both directions,
#                                   both brokers, plus the mixed cells
#   matrix.sh --clients py,c --servers go [--bus nats] [--mixed]
#                                   the cells of these lists (--mixed adds the
#                                   mixed cell over the languages named)
#   matrix.sh --list                the language slots
#
# Options:
#   --langs L,...     the languages of --all / --ci (default: every slot in
#                     tests/interop/languages/, Go always included)
#   --bus B[,B]       redis, nats or both (default both)
#   --mixed / --no-mixed   add / leave out the mixed cell per broker
#   --build-dir DIR   the C build tree (default build); results go to
#                     DIR/interop-matrix unless --out DIR
#   --render / --no-render  write the results into docs/interop.md (the
#                     section between the interop-matrix markers); --all
#                     renders unless --no-render
#   --scenarios a,b   run only these scenarios (debugging; never rendered)
#   --parallel        run the redis cells and the nats cells at the same time
#                     (two lanes: the cells of one broker must run one after
#                     the other, they share the service name Conformance)
#   --lanes N         with --parallel: N lanes per broker (default 1). Lanes
#                     after the first each get a broker of their own, a
#                     redis-server / nats-server started here on a free
#                     loopback port (stopped at exit); a mixed cell counts as
#                     four cells when the cells are shared out.
#
# A language is one file, tests/interop/languages/LANG.sh (the contract is in
# docs/interop.md): adding one needs no change here. Brokers come from
# PSRPC_TEST_REDIS_URL / PSRPC_TEST_NATS_URL (defaults 127.0.0.1:6379/4222);
# one that does not answer fails its cells. Exit status 0 only if every cell
# (and the method table check) passed. Results: OUT/results.json,
# OUT/results.tsv, one log per cell in OUT/logs/.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
slotdir=$here/languages

usage() {
    sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

all_langs() {
    local f l out=(go)
    for f in "$slotdir"/*.sh; do
        l=$(basename "$f" .sh)
        [ "$l" = go ] || out+=("$l")
    done
    echo "${out[*]}"
}

mode= clients= servers= langs= buses=redis,nats mixed= render= scenarios= parallel=0 lanes=1
build=$root/build out=
while [ $# -gt 0 ]; do
    case $1 in
    --all) mode=all; shift ;;
    --ci) mode=ci; shift ;;
    --list) mode=list; shift ;;
    --clients) clients=$2; shift 2 ;;
    --servers) servers=$2; shift 2 ;;
    --langs) langs=$2; shift 2 ;;
    --bus) buses=$2; shift 2 ;;
    --mixed) mixed=1; shift ;;
    --no-mixed) mixed=0; shift ;;
    --build-dir) build=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --render) render=1; shift ;;
    --no-render) render=0; shift ;;
    --scenarios) scenarios=$2; shift 2 ;;
    --parallel) parallel=1; shift ;;
    --lanes) lanes=$2; shift 2 ;;
    -h | --help) usage ;;
    *) echo "matrix.sh: unknown argument $1" >&2; usage ;;
    esac
done

[[ $lanes =~ ^[1-9][0-9]?$ ]] || { echo "matrix.sh: --lanes wants a number from 1 to 99" >&2; exit 2; }

if [ "$mode" = list ]; then
    for l in $(all_langs); do
        # shellcheck disable=SC1090
        printf '%-6s %s\n' "$l" "$(slot_name=; . "$slotdir/$l.sh"; echo "$slot_name")"
    done
    exit 0
fi

mkdir -p "$build"
build=$(cd "$build" && pwd)
out=${out:-$build/interop-matrix}
mkdir -p "$out/logs" "$out/work"
out=$(cd "$out" && pwd)

csv() { tr ',' ' ' <<<"$1"; }
has() { local x; for x in $2; do [ "$x" = "$1" ] && return 0; done; return 1; }

# --- the cells -------------------------------------------------------------------

cells=() # "bus client server" (client "mixed": the mixed cell, server = langs joined by ,)
case $mode in
all | ci)
    [ -n "$clients$servers" ] && { echo "matrix.sh: --$mode takes no --clients/--servers" >&2; exit 2; }
    sel=$(all_langs)
    if [ -n "$langs" ]; then
        sel=go
        for l in $(csv "$langs"); do [ "$l" = go ] || sel="$sel $l"; done
    fi
    for bus in $(csv "$buses"); do
        for c in $sel; do
            for s in $sel; do
                if [ "$mode" = all ] || { [ "$c" = go ] && [ "$s" != go ]; } || { [ "$s" = go ] && [ "$c" != go ]; }; then
                    cells+=("$bus $c $s")
                fi
            done
        done
        [ "${mixed:-1}" = 1 ] && cells+=("$bus mixed $(tr ' ' ',' <<<"$sel")")
    done
    [ "$mode" = all ] && [ -z "$render" ] && render=1
    ;;
"")
    [ -n "$clients" ] && [ -n "$servers" ] || { [ "$mixed" = 1 ] && [ -n "$langs$clients$servers" ]; } || usage
    sel=
    for l in $(csv "$clients") $(csv "$servers") $(csv "$langs"); do has "$l" "$sel" || sel="$sel $l"; done
    has go "$sel" || sel="go $sel"
    sel=$(echo $sel)
    for bus in $(csv "$buses"); do
        for c in $(csv "$clients"); do
            for s in $(csv "$servers"); do cells+=("$bus $c $s"); done
        done
        [ "$mixed" = 1 ] && cells+=("$bus mixed $(tr ' ' ',' <<<"$sel")")
    done
    ;;
esac
for bus in $(csv "$buses"); do
    case $bus in redis | nats) ;; *) echo "matrix.sh: unknown bus $bus" >&2; exit 2 ;; esac
done
for l in $sel; do
    [ -f "$slotdir/$l.sh" ] || { echo "matrix.sh: no language slot $l ($slotdir/$l.sh)" >&2; exit 2; }
done
[ -n "$scenarios" ] && render=0

t_start=$(date +%s)
echo "matrix.sh: languages: $sel; ${#cells[@]} cells; results in $out"

# --- the brokers -------------------------------------------------------------------

bus_url() {
    case $1 in
    redis) echo "${PSRPC_TEST_REDIS_URL:-redis://127.0.0.1:6379}" ;;
    nats) echo "${PSRPC_TEST_NATS_URL:-nats://127.0.0.1:4222}" ;;
    esac
}
# The broker must answer: Redis replies +PONG to PING, NATS greets with INFO.
broker_answers() {
    local url hostport host port
    url=$(bus_url "$1")
    hostport=${url#*://}
    hostport=${hostport#*@}
    hostport=${hostport%%/*}
    host=${hostport%:*} port=${hostport##*:}
    [ "$host" = "$hostport" ] && port=$([ "$1" = redis ] && echo 6379 || echo 4222)
    if [ "$1" = redis ]; then
        timeout 3 bash -c "exec 3<>/dev/tcp/$host/$port && printf 'PING\r\n' >&3 && head -c 5 <&3" 2>/dev/null | grep -q PONG
    else
        timeout 3 bash -c "exec 3<>/dev/tcp/$host/$port && head -c 4 <&3" 2>/dev/null | grep -q INFO
    fi
}

# --- the language slots ---------------------------------------------------------------

# json_array ARGS...: a JSON array of strings.
json_array() { python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@"; }

slots_json=$out/slots.json
prep_tsv=$out/prepare.tsv
: >"$prep_tsv"
declare -A prepared=()
{
    echo "{"
    first=1
    for l in $sel; do
        t0=$(date +%s)
        echo "matrix.sh: preparing $l ..." >&2
        mkdir -p "$out/work/$l"
        if entry=$(
            ROOT=$root BUILD=$build WORK=$out/work/$l
            slot_server=() slot_client=()
            # shellcheck disable=SC1090
            . "$slotdir/$l.sh"
            slot_prepare >"$out/logs/prepare-$l.log" 2>&1 || exit 1
            [ ${#slot_server[@]} -gt 0 ] || { echo "slot $l: no slot_server" >>"$out/logs/prepare-$l.log"; exit 1; }
            [ "$l" = go ] || [ ${#slot_client[@]} -gt 0 ] ||
                { echo "slot $l: no slot_client" >>"$out/logs/prepare-$l.log"; exit 1; }
            printf '"%s": {"name": %s, "server": %s, "client": %s}' "$l" \
                "$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$slot_name")" \
                "$(json_array "${slot_server[@]}")" "$(json_array "${slot_client[@]}")"
        ); then
            [ $first = 1 ] || echo ","
            first=0
            echo "  $entry"
            prepared[$l]=1
            printf '%s\tok\t%s\n' "$l" "$(($(date +%s) - t0))" >>"$prep_tsv"
            echo "matrix.sh: $l ready ($(($(date +%s) - t0)) s)" >&2
        else
            printf '%s\tFAILED\t%s\n' "$l" "$(($(date +%s) - t0))" >>"$prep_tsv"
            echo "matrix.sh: preparing $l FAILED (log $out/logs/prepare-$l.log):" >&2
            tail -20 "$out/logs/prepare-$l.log" >&2
        fi
    done
    echo "}"
} >"$slots_json"

# The scenarios, compiled once.
export PATH=$PATH:/usr/local/go/bin
testbin=$out/interop.test
if ! (cd "$here/go" && go test -c -o "$testbin" ./interop/) >"$out/logs/compile.log" 2>&1; then
    echo "matrix.sh: the scenarios do not compile:" >&2
    cat "$out/logs/compile.log" >&2
    exit 1
fi

# --- running cells ------------------------------------------------------------------

# run_cell BUS CLIENT SERVER: one cell, its log, and one TSV line in $out/cells/.
mkdir -p "$out/cells"
rm -f "$out/cells/"*.tsv "$out/cells/"*.scen
cell_seq=0
run_cell() {
    local bus=$1 client=$2 server=$3 name log t0 rc l missing=
    if [ "$client" = mixed ]; then
        name=${bus}_mixed
    else
        name=${bus}_${client}_client_${server}_server
    fi
    log=$out/logs/$name.log
    t0=$(date +%s)
    for l in $([ "$client" = mixed ] && csv "$server" || echo "$client $server"); do
        [ -n "${prepared[$l]:-}" ] || missing="$missing $l"
    done
    if [ -n "$missing" ]; then
        echo "not run: language(s)$missing could not be prepared (logs/prepare-*.log)" >"$log"
        rc=1
    elif ! broker_answers "$bus"; then
        echo "not run: no $bus broker answers at $(bus_url "$bus") (scripts/brokers.sh start)" >"$log"
        rc=1
    else
        local envs=(PSRPC_INTEROP_SLOTS="$slots_json" PSRPC_INTEROP_BUS="$bus")
        if [ "$client" = mixed ]; then
            envs+=(PSRPC_INTEROP_MIXED=1 PSRPC_INTEROP_CLIENTS="$server" PSRPC_INTEROP_SERVERS="$server")
        else
            envs+=(PSRPC_INTEROP_MIXED=0 PSRPC_INTEROP_CLIENTS="$client" PSRPC_INTEROP_SERVERS="$server")
        fi
        [ -n "$scenarios" ] && envs+=(PSRPC_INTEROP_SCENARIOS="$scenarios")
        (cd "$here/go/interop" && env "${envs[@]}" \
            "$testbin" -test.count=1 -test.v -test.timeout 600s -test.run '^TestInterop$') >"$log" 2>&1
        rc=$?
    fi
    local secs=$(($(date +%s) - t0)) pass fail status
    # Scenario lines: "    --- PASS: TestInterop/NAME (1.23s)".
    grep -E '^    --- (PASS|FAIL): TestInterop/[^/ ]+ ' "$log" |
        sed -E 's/^    --- (PASS|FAIL): TestInterop\/([^ ]+) \(([0-9.]+)s\)/\2\t\1\t\3/' >"$out/cells/$name.scen"
    pass=$(grep -c $'\tPASS\t' "$out/cells/$name.scen")
    fail=$(grep -c $'\tFAIL\t' "$out/cells/$name.scen")
    if [ "$rc" -eq 0 ] && [ "$fail" -eq 0 ] && [ "$pass" -gt 0 ]; then status=pass; else status=fail; fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$bus" "$client" "$server" "$status" "$pass" "$fail" \
        "$secs" "logs/$name.log" >"$out/cells/$name.tsv"
    printf 'matrix.sh: %-5s %-6s → %-12s %s  %d/%d scenarios  %ds\n' "$bus" "$client" "$server" \
        "$([ $status = pass ] && echo PASS || echo FAIL)" "$pass" "$((pass + fail))" "$secs"
    if [ "$status" = fail ]; then
        grep -E '^\s+--- FAIL|^\s+\S+_test\.go:[0-9]+:|^not run' "$log" | head -30 | sed 's/^/    /'
    fi
}

# The method tables of the client programs against the Go descriptor.
methods_rc=0
(cd "$here/go/interop" && env PSRPC_INTEROP_SLOTS="$slots_json" \
    PSRPC_INTEROP_CLIENTS="$(for l in $sel; do [ -n "${prepared[$l]:-}" ] && printf '%s,' "$l"; done)" \
    "$testbin" -test.count=1 -test.v -test.run '^TestMethodTable$') >"$out/logs/method_table.log" 2>&1 ||
    methods_rc=1
echo "matrix.sh: method tables $([ $methods_rc = 0 ] && echo agree || echo "DIFFER (logs/method_table.log)")"

# Lane brokers (--lanes): a private redis-server / nats-server per extra lane.
lane_pids=()
stop_lane_brokers() {
    local p
    for p in "${lane_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${lane_pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap stop_lane_brokers EXIT
# start_lane_broker BUS: sets lane_url to a new broker's URL once it answers.
start_lane_broker() {
    local port i
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    case $1 in
    redis)
        redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
            --logfile "$out/logs/lane-redis-$port.log" </dev/null >/dev/null 2>&1 &
        lane_url=redis://127.0.0.1:$port
        ;;
    nats)
        nats-server -a 127.0.0.1 -p "$port" -l "$out/logs/lane-nats-$port.log" </dev/null >/dev/null 2>&1 &
        lane_url=nats://127.0.0.1:$port
        ;;
    esac
    lane_pids+=($!)
    for i in $(seq 100); do
        with_url "$1" "$lane_url" broker_answers "$1" && return 0
        sleep 0.1
    done
    echo "matrix.sh: the $1 broker of an extra lane did not start on port $port" >&2
    return 1
}
# with_url BUS URL CMD...: CMD with that bus's test URL set to URL.
with_url() {
    local bus=$1 url=$2
    shift 2
    if [ "$bus" = redis ]; then PSRPC_TEST_REDIS_URL=$url "$@"; else PSRPC_TEST_NATS_URL=$url "$@"; fi
}

run_lane() { # BUS URL INDEX...: cells[INDEX] in order; URL "" = the bus's default broker
    local bus=$1 url=$2 i
    shift 2
    for i in "$@"; do
        # shellcheck disable=SC2086
        if [ -n "$url" ]; then with_url "$bus" "$url" run_cell ${cells[i]}; else run_cell ${cells[i]}; fi
    done
    return 0
}
if [ "$parallel" = 1 ]; then
    pids=()
    for bus_lane in $(csv "$buses"); do
        # Share this broker's cells out over its lanes: mixed cells first
        # (they take about four times as long), each to the least loaded lane.
        lane_cells=() lane_load=()
        for ((k = 0; k < lanes; k++)); do lane_cells[k]= lane_load[k]=0; done
        for pass in mixed pair; do
            for i in "${!cells[@]}"; do
                set -- ${cells[i]}
                [ "$1" = "$bus_lane" ] || continue
                [ "$2" = mixed ] && kind=mixed || kind=pair
                [ "$kind" = "$pass" ] || continue
                best=0
                for ((k = 1; k < lanes; k++)); do
                    [ "${lane_load[k]}" -lt "${lane_load[best]}" ] && best=$k
                done
                lane_cells[best]+=" $i"
                if [ "$kind" = mixed ]; then w=4; else w=1; fi
                lane_load[best]=$((lane_load[best] + w))
            done
        done
        for ((k = 0; k < lanes; k++)); do
            [ -n "${lane_cells[k]}" ] || continue
            lane_url=
            if [ "$k" -gt 0 ] && ! start_lane_broker "$bus_lane"; then
                lane_url=unavailable://
            fi
            # shellcheck disable=SC2086
            run_lane "$bus_lane" "$lane_url" ${lane_cells[k]} &
            pids+=($!)
        done
    done
    wait "${pids[@]}"
else
    for c in "${cells[@]}"; do
        # shellcheck disable=SC2086
        run_cell $c
    done
fi

# --- results --------------------------------------------------------------------------

total=$(($(date +%s) - t_start))
commit=$(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(cd "$root" && git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    commit="$commit (with uncommitted changes)"
fi
cmdline="tests/interop/matrix.sh"
[ "$mode" = all ] && cmdline="$cmdline --all"
[ "$mode" = ci ] && cmdline="$cmdline --ci"
[ -n "$langs" ] && cmdline="$cmdline --langs $langs"
[ "$buses" != redis,nats ] && cmdline="$cmdline --bus $buses"
python3 "$here/matrix_results.py" --out "$out" --total "$total" --commit "$commit" \
    --command "$cmdline" --langs "$sel" --methods "$methods_rc" --parallel "$parallel" \
    $([ "${render:-0}" = 1 ] && echo --render "$root/docs/interop.md") || exit 1
