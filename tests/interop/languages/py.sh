# Language slot "py": the Python binding (bindings/python) with
# examples/python/conformance_{server,client}.py.
# (The slot contract is in docs/interop.md, "Language slots".)
#
# Installs the binding into bindings/python/run_tests.sh's virtualenv
# ($PSRPC_PY_VENV, default bindings/python/build/venv; pip, libpsrpc compiled
# from this tree) and compiles conformance.proto into WORK/gen once, so the
# programs start without compiling it.
slot_name="Python (bindings/python)"

slot_prepare() {
    local venv=${PSRPC_PY_VENV:-$ROOT/bindings/python/build/venv}
    # PSRPC_INTEROP_PY_REUSE=1 (scripts/test.sh, right after the Python
    # tests installed it): use the venv's binding as it is if it imports.
    if [ "${PSRPC_INTEROP_PY_REUSE:-0}" = 1 ] && "$venv/bin/python" -c "import psrpc" 2>/dev/null; then
        echo "py slot: using the installed binding in $venv"
    else
        PSRPC_PY_INSTALL_ONLY=1 "$ROOT/bindings/python/run_tests.sh" || return 1
    fi
    mkdir -p "$WORK/gen"
    "$venv/bin/python" -c "import psrpc, sys; psrpc.compile_protos([sys.argv[1]], sys.argv[2], [sys.argv[3]])" \
        "$ROOT/tests/interop/conformance.proto" "$WORK/gen" "$ROOT/tests/interop" || return 1
    slot_server=(env "PYTHONPATH=$WORK/gen" "$venv/bin/python" "$ROOT/examples/python/conformance_server.py")
    slot_client=(env "PYTHONPATH=$WORK/gen" "$venv/bin/python" "$ROOT/examples/python/conformance_client.py")
}
