# Language slot "rust": the Rust binding (bindings/rust) with its conformance
# programs, bindings/rust/conformance (crate psrpc-conformance: binaries
# conformance-server and conformance-client, typed by psrpc-build from
# tests/interop/conformance.proto).
# (The slot contract is in docs/interop.md, "Language slots".)
#
# Builds them with cargo (bindings/ workspace, target dir $CARGO_TARGET_DIR,
# default bindings/target; libpsrpc through pkg-config or, when none is
# installed, built from this tree and linked statically by psrpc-sys).
slot_name="Rust (bindings/rust)"

slot_prepare() {
    local target=${CARGO_TARGET_DIR:-$ROOT/bindings/target}
    command -v cargo >/dev/null || PATH=$PATH:$HOME/.cargo/bin
    (cd "$ROOT/bindings" && CARGO_TARGET_DIR=$target CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2} \
        nice cargo build --locked -p psrpc-conformance) || return 1
    slot_server=("$target/debug/conformance-server")
    slot_client=("$target/debug/conformance-client")
}
