//! Compiles tests/interop/conformance.proto (livekit psrpc options) and
//! checks the generated code: method table, client, server trait.
use std::path::PathBuf;

#[test]
fn conformance_proto_generates_typed_services() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../..");
    let interop = root.join("tests/interop");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("psrpc-build-conformance");
    let _ = std::fs::remove_dir_all(&out);
    psrpc_build::Builder::new().out_dir(&out).compile(&[interop.join("conformance.proto")], &[&interop]).unwrap();
    // prost-build formats the code: compare without whitespace.
    let squash = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>().replace(",)", ")");
    let code = squash(&std::fs::read_to_string(out.join("psrpc.conformance.rs")).unwrap());
    for want in [
        "pub const CONFORMANCE_SERVICE: &str = \"Conformance\";",
        "pub const ECHO: ::psrpc::Method = ::psrpc::Method::from_static(c\"Echo\", c\"psrpc.conformance.EchoResponse\", ::psrpc::Routing::Queue, ::psrpc::MethodFlags::NONE);",
        "::psrpc::Routing::Affinity, ::psrpc::MethodFlags::NONE);",
        "pub const REGION_FANOUT: ::psrpc::Method = ::psrpc::Method::from_static(c\"RegionFanout\", c\"psrpc.conformance.EchoResponse\", ::psrpc::Routing::Multi, ::psrpc::MethodFlags::NONE.union(::psrpc::MethodFlags::TOPICS));",
        "pub const CHAT: ::psrpc::Method",
        "::psrpc::MethodFlags::STREAM",
        "pub struct ConformanceClient",
        "pub fn echo(&self, request: EchoRequest, options: ::psrpc::CallOptions) -> ::psrpc::Call<EchoResponse>",
        "pub fn fanout(&self, request: EchoRequest, options: ::psrpc::CallOptions) -> ::psrpc::MultiCall<EchoResponse>",
        "pub async fn chat(&self, options: ::psrpc::CallOptions) -> ::psrpc::Result<::psrpc::Stream<ChatMessage, ChatMessage>>",
        "pub trait Conformance: Send + Sync + 'static",
        "fn claim_affinity(",
        "pub async fn subscribe_region_updates<S: AsRef<str>>",
        "pub fn publish_work<S: AsRef<str>>",
        "pub async fn register_all(&self)",
    ] {
        assert!(code.contains(&squash(want)), "generated code lacks {want:?}");
    }
    // Messages come from prost.
    assert!(code.contains("pubstructEchoRequest"));
    // Only claim methods ask for an affinity.
    assert!(!code.contains("fnecho_affinity("));
}

#[test]
fn protoc_errors_are_reported() {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("psrpc-build-bad");
    let dir = out.join("in");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bad.proto"), "syntax = \"proto3\"; message {").unwrap();
    let e = psrpc_build::Builder::new().out_dir(&out).compile(&[dir.join("bad.proto")], &[&dir]).unwrap_err();
    assert!(e.to_string().contains("protoc failed"), "{e}");
}
