fn main() {
    psrpc_build::compile_protos(&["../../add_value.proto"], &["../.."]).unwrap();
}
