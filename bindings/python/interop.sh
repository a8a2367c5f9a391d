#!/usr/bin/env bash
# interop.sh BUS DIRECTION — the Python rows of the interop matrix: runs the
# interop scenarios (tests/interop/run_interop.sh, Go's `go test`) with the
# Python conformance programs (examples/python/conformance_{server,client}.py)
# in the slots of the C ones.
#
#   BUS        redis | nats  (PSRPC_TEST_REDIS_URL / PSRPC_TEST_NATS_URL)
#   DIRECTION  go_client_py_server   Go client, Python servers
#              py_client_go_server   Python client, Go servers
#              mixed_servers         Go + Python clients, Python + Go servers
#              c_client_py_server    C client, Python servers   } need the C
#              py_client_c_server    Python client, C servers   } programs
#              py_client_py_server   Python client, Python servers
#
# The C conformance programs are taken from $PSRPC_C_INTEROP_DIR (default
# build/tests/interop; build them with cmake -DPSRPC_BUILD_TESTS=ON). The
# binding is installed into run_tests.sh's virtualenv first. Needs Go
# (tests/interop/setup.sh).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bus=${1:?usage: interop.sh redis|nats DIRECTION}
dir=${2:?usage: interop.sh redis|nats DIRECTION}
venv=${PSRPC_PY_VENV:-$here/build/venv}
cdir=${PSRPC_C_INTEROP_DIR:-$root/build/tests/interop}
work=$here/build/interop

PSRPC_PY_INSTALL_ONLY=1 "$here/run_tests.sh"
mkdir -p "$work/gen"
"$venv/bin/python" -c "import psrpc, sys; psrpc.compile_protos([sys.argv[1]], sys.argv[2], [sys.argv[3]])" \
    "$root/tests/interop/conformance.proto" "$work/gen" "$root/tests/interop"
for prog in server client; do
    cat >"$work/py-conformance-$prog" <<WRAP
#!/bin/sh
PYTHONPATH="$work/gen\${PYTHONPATH:+:\$PYTHONPATH}" exec "$venv/bin/python" "$root/examples/python/conformance_$prog.py" "\$@"
WRAP
    chmod +x "$work/py-conformance-$prog"
done
pyserver=$work/py-conformance-server pyclient=$work/py-conformance-client
need_c() {
    [ -x "$cdir/conformance-$1" ] || { echo "interop.sh: no $cdir/conformance-$1 (PSRPC_C_INTEROP_DIR)" >&2; exit 1; }
    echo "$cdir/conformance-$1"
}
case $dir in
go_client_py_server) server=$pyserver client=$pyclient run=go_client_c_server ;;
py_client_go_server) server=$pyserver client=$pyclient run=c_client_go_server ;;
mixed_servers) server=$pyserver client=$pyclient run=mixed_servers ;;
c_client_py_server) server=$pyserver client=$(need_c client) run=c_client_c_server ;;
py_client_c_server) server=$(need_c server) client=$pyclient run=c_client_c_server ;;
py_client_py_server) server=$pyserver client=$pyclient run=c_client_c_server ;;
*) echo "interop.sh: unknown direction $dir" >&2; exit 2 ;;
esac
# run_interop.sh builds the Go server next to --server: keep it in our build dir.
if [ "$server" != "$pyserver" ]; then
    ln -sf "$server" "$work/c-conformance-server"
    server=$work/c-conformance-server
fi
exec bash "$root/tests/interop/run_interop.sh" --server "$server" --client "$client" "$bus" "$run"
