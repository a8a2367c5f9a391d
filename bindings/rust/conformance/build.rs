fn main() {
    psrpc_build::compile_protos(&["../../../tests/interop/conformance.proto"], &["../../../tests/interop"]).unwrap();
}
