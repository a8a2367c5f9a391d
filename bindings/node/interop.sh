#!/usr/bin/env bash
# interop.sh BUS DIRECTION — the Node rows of the interop matrix: runs the
# interop scenarios (tests/interop/run_interop.sh, Go's `go test`) with the
# Node conformance programs (examples/node/conformance_{server,client}.mjs) in
# the slots of the C ones.
#
#   BUS        redis | nats  (PSRPC_TEST_REDIS_URL / PSRPC_TEST_NATS_URL)
#   DIRECTION  go_client_node_server   Go client, Node servers
#              node_client_go_server   Node client, Go servers
#              mixed_servers           Go + Node clients, Node + Go servers
#              c_client_node_server    C client, Node servers   } need the C
#              node_client_c_server    Node client, C servers   } programs
#              node_client_node_server Node client, Node servers
#
# The C conformance programs are taken from $PSRPC_C_INTEROP_DIR (default
# build/tests/interop). The binding is built first (run_tests.sh, install
# only). Needs Go (tests/interop/setup.sh).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bus=${1:?usage: interop.sh redis|nats DIRECTION}
dir=${2:?usage: interop.sh redis|nats DIRECTION}
cdir=${PSRPC_C_INTEROP_DIR:-$root/build/tests/interop}
work=$here/build/interop

PSRPC_NODE_INSTALL_ONLY=1 PSRPC_NODE_SKIP_INSTALL_CHECK=1 "$here/run_tests.sh" >/dev/null
mkdir -p "$work"
for prog in server client; do
    cat >"$work/node-conformance-$prog" <<WRAP
#!/bin/sh
exec "$(command -v node)" "$root/examples/node/conformance_$prog.mjs" "\$@"
WRAP
    chmod +x "$work/node-conformance-$prog"
done
nserver=$work/node-conformance-server nclient=$work/node-conformance-client
need_c() {
    [ -x "$cdir/conformance-$1" ] || { echo "interop.sh: no $cdir/conformance-$1 (PSRPC_C_INTEROP_DIR)" >&2; exit 1; }
    echo "$cdir/conformance-$1"
}
case $dir in
go_client_node_server) server=$nserver client=$nclient run=go_client_c_server ;;
node_client_go_server) server=$nserver client=$nclient run=c_client_go_server ;;
mixed_servers) server=$nserver client=$nclient run=mixed_servers ;;
c_client_node_server) server=$nserver client=$(need_c client) run=c_client_c_server ;;
node_client_c_server) server=$(need_c server) client=$nclient run=c_client_c_server ;;
node_client_node_server) server=$nserver client=$nclient run=c_client_c_server ;;
*) echo "interop.sh: unknown direction $dir" >&2; exit 2 ;;
esac
# run_interop.sh builds the Go server next to --server: keep it in our build dir.
if [ "$server" != "$nserver" ]; then
    ln -sf "$server" "$work/c-conformance-server"
    server=$work/c-conformance-server
fi
exec bash "$root/tests/interop/run_interop.sh" --server "$server" --client "$client" "$bus" "$run"
