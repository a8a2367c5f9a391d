# Language slot "node": the Node binding (bindings/node) with
# examples/node/conformance_{server,client}.mjs.
# (The slot contract is in docs/interop.md, "Language slots".)
#
# Builds the binding (bindings/node/run_tests.sh up to the build: npm install,
# cmake-js with libpsrpc from this tree, tsc) and links examples/node's
# dependencies, so the programs start at once.
slot_name="Node (bindings/node)"

slot_prepare() {
    PSRPC_NODE_INSTALL_ONLY=1 PSRPC_NODE_SKIP_INSTALL_CHECK=1 "$ROOT/bindings/node/run_tests.sh" || return 1
    local node
    node=$(command -v node) || return 1
    slot_server=("$node" "$ROOT/examples/node/conformance_server.mjs")
    slot_client=("$node" "$ROOT/examples/node/conformance_client.mjs")
}
