# Language slot "c": libpsrpc's public C API (tests/interop/conformance_*.c).
# (The slot contract is in docs/interop.md, "Language slots".)
#
# Builds the two programs in the CMake tree BUILD (configured here with the
# tests on if it is not yet).
slot_name="C (libpsrpc)"

slot_prepare() {
    if [ ! -f "$BUILD/CMakeCache.txt" ]; then
        cmake -S "$ROOT" -B "$BUILD" -DPSRPC_BUILD_TESTS=ON -DPSRPC_WITH_REDIS=ON -DPSRPC_WITH_NATS=ON || return 1
    fi
    nice cmake --build "$BUILD" -j "$(nproc 2>/dev/null || echo 2)" \
        --target conformance-server conformance-client || return 1
    slot_server=("$BUILD/tests/interop/conformance-server")
    slot_client=("$BUILD/tests/interop/conformance-client")
}
