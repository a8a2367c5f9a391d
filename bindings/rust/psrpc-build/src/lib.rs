//! Typed psrpc services from `.proto` files, for a crate's `build.rs` (as
//! `tonic-build` is for gRPC):
//!
//! ```text
//! // build.rs
//! fn main() {
//!     psrpc_build::compile_protos(&["proto/counter.proto"], &["proto"]).unwrap();
//! }
//! ```
//!
//! and in the crate: `psrpc::include_proto!("example");` (the proto package).
//!
//! It runs `protoc` (`PROTOC` or on `PATH`; google/protobuf/descriptor.proto
//! from `PROTOC_INCLUDE` or /usr/include), generates the messages with
//! `prost-build`, and reads livekit/psrpc's method options (extension 2198 of
//! `google.protobuf.MethodOptions`, `options.proto`, shipped with this crate
//! and importable as `"options.proto"`) to emit, per service `Foo`:
//!
//! - `foo_methods`: one `psrpc::Method` const per rpc (wire name, routing,
//!   flags, output type), derived as protoc-gen-psrpc v0.8.2 does;
//! - `FooClient`: a typed client (unary calls, multi calls, subscriptions,
//!   streams);
//! - trait `Foo`: the handlers to implement (async), with affinity functions
//!   for affinity methods, and `FooServer` to register them and publish.
#![warn(missing_docs)]
use prost::Message;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The psrpc options of one method (protoc-gen-psrpc's view).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MethodInfo {
    /// Wire name of the method (CamelCase of the rpc name).
    pub wire_name: String,
    /// 0 queue, 1 affinity, 2 multi.
    pub routing: i32,
    /// Server publishes, clients subscribe.
    pub subscription: bool,
    /// The method takes topics.
    pub topics: bool,
    /// Bidirectional stream.
    pub stream: bool,
    /// `topic_params.single_server`.
    pub single_server: bool,
    /// Number of topic parameters: len(topic_params.names), or 1 with
    /// topics and no names, 0 without topics.
    pub topic_params: u32,
    /// Full protobuf name of the input type (no leading dot).
    pub input_type: String,
    /// Full protobuf name of the output type (no leading dot).
    pub output_type: String,
}

// Minimal views of descriptor.proto that keep extension 2198 (prost_types
// drops unknown fields).
#[derive(Clone, PartialEq, Message)]
struct Fds {
    #[prost(message, repeated, tag = "1")]
    file: Vec<Fdp>,
}
#[derive(Clone, PartialEq, Message)]
struct Fdp {
    #[prost(string, optional, tag = "2")]
    package: Option<String>,
    #[prost(message, repeated, tag = "6")]
    service: Vec<Sdp>,
}
#[derive(Clone, PartialEq, Message)]
struct Sdp {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(message, repeated, tag = "2")]
    method: Vec<Mdp>,
}
#[derive(Clone, PartialEq, Message)]
struct Mdp {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    input_type: Option<String>,
    #[prost(string, optional, tag = "3")]
    output_type: Option<String>,
    #[prost(message, optional, tag = "4")]
    options: Option<MethodOptions>,
}
#[derive(Clone, PartialEq, Message)]
struct MethodOptions {
    #[prost(message, optional, tag = "2198")]
    psrpc: Option<PsrpcOptions>,
}
#[derive(Clone, PartialEq, Message)]
struct PsrpcOptions {
    #[prost(bool, tag = "1")]
    subscription: bool,
    #[prost(bool, tag = "2")]
    topics: bool,
    #[prost(message, optional, tag = "3")]
    topic_params: Option<TopicParams>,
    #[prost(bool, tag = "4")]
    stream: bool,
    #[prost(bool, optional, tag = "5")]
    multi: Option<bool>,
    #[prost(bool, optional, tag = "6")]
    affinity_func: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    queue: Option<bool>,
    #[prost(int32, tag = "8")]
    r#type: i32,
}
#[derive(Clone, PartialEq, Message)]
struct TopicParams {
    #[prost(string, repeated, tag = "2")]
    names: Vec<String>,
    #[prost(bool, tag = "4")]
    single_server: bool,
}

/// CamelCase as protoc-gen-go names things ("add_value" -> "AddValue").
pub fn camel_case(s: &str) -> String {
    let mut out = String::new();
    let mut up = true;
    for c in s.chars() {
        if c == '_' {
            up = true;
            continue;
        }
        if up {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        up = c.is_ascii_digit();
    }
    out
}

/// Every method's psrpc settings, keyed by ("pkg.Service", "RpcName"), from a
/// serialized FileDescriptorSet.
pub fn method_table(descriptor_set: &[u8]) -> io::Result<HashMap<(String, String), MethodInfo>> {
    let fds = Fds::decode(descriptor_set).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut t = HashMap::new();
    for f in &fds.file {
        let pkg = f.package.clone().unwrap_or_default();
        for s in &f.service {
            let sname = s.name.clone().unwrap_or_default();
            let full = if pkg.is_empty() { sname.clone() } else { format!("{pkg}.{sname}") };
            for m in &s.method {
                let o = m.options.as_ref().and_then(|o| o.psrpc.clone()).unwrap_or_default();
                // The deprecated oneof overrides `type` whenever present.
                let routing = if o.multi.is_some() {
                    2
                } else if o.affinity_func.is_some() {
                    1
                } else if o.queue.is_some() {
                    0
                } else {
                    o.r#type
                };
                if !(0..=2).contains(&routing) {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{full}.{:?}: unknown psrpc routing {routing}", m.name)));
                }
                let name = m.name.clone().unwrap_or_default();
                t.insert(
                    (full.clone(), name.clone()),
                    MethodInfo {
                        wire_name: camel_case(&name),
                        routing,
                        subscription: o.subscription,
                        topics: o.topics,
                        stream: o.stream,
                        single_server: o.topic_params.as_ref().map(|p| p.single_server).unwrap_or(false),
                        topic_params: match (o.topics, o.topic_params.as_ref().map_or(0, |p| p.names.len())) {
                            (false, _) => 0,
                            (true, 0) => 1,
                            (true, n) => n as u32,
                        },
                        input_type: m.input_type.clone().unwrap_or_default().trim_start_matches('.').to_string(),
                        output_type: m.output_type.clone().unwrap_or_default().trim_start_matches('.').to_string(),
                    },
                );
            }
        }
    }
    Ok(t)
}

/// Compiles `protos` (found under `includes`) into `OUT_DIR` with typed
/// psrpc services. See the crate documentation.
pub fn compile_protos(protos: &[impl AsRef<Path>], includes: &[impl AsRef<Path>]) -> io::Result<()> {
    Builder::new().compile(protos, includes)
}

/// Configures code generation; [`compile_protos`] uses the defaults.
#[derive(Default)]
pub struct Builder {
    out_dir: Option<PathBuf>,
    config: Option<prost_build::Config>,
}

impl Builder {
    /// Defaults: output to `OUT_DIR`.
    pub fn new() -> Builder {
        Builder::default()
    }

    /// Writes the generated files to `dir` instead of `OUT_DIR`.
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Builder {
        self.out_dir = Some(dir.into());
        self
    }

    /// Uses this prost-build configuration for the messages.
    pub fn prost_config(mut self, config: prost_build::Config) -> Builder {
        self.config = Some(config);
        self
    }

    /// Runs protoc and writes one `<package>.rs` per proto package.
    pub fn compile(self, protos: &[impl AsRef<Path>], includes: &[impl AsRef<Path>]) -> io::Result<()> {
        let out_dir = match self.out_dir {
            Some(d) => d,
            None => PathBuf::from(std::env::var_os("OUT_DIR").ok_or_else(|| io::Error::other("OUT_DIR is not set (not in a build script?)"))?),
        };
        std::fs::create_dir_all(&out_dir)?;
        // options.proto, importable as "options.proto".
        let opt_dir = out_dir.join("psrpc-build-include");
        std::fs::create_dir_all(&opt_dir)?;
        std::fs::write(opt_dir.join("options.proto"), include_str!("../options.proto"))?;
        let desc = out_dir.join("psrpc-descriptor.bin");
        let protoc = std::env::var_os("PROTOC").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("protoc"));
        let mut cmd = Command::new(&protoc);
        cmd.arg("--include_imports").arg("--include_source_info").arg("-o").arg(&desc);
        for i in includes {
            cmd.arg("-I").arg(i.as_ref());
        }
        cmd.arg("-I").arg(&opt_dir);
        let wk = std::env::var_os("PROTOC_INCLUDE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/include"));
        if wk.join("google/protobuf/descriptor.proto").exists() {
            cmd.arg("-I").arg(&wk);
        }
        for p in protos {
            cmd.arg(p.as_ref());
            println!("cargo:rerun-if-changed={}", p.as_ref().display());
        }
        println!("cargo:rerun-if-env-changed=PROTOC");
        println!("cargo:rerun-if-env-changed=PROTOC_INCLUDE");
        let out = cmd.output().map_err(|e| io::Error::other(format!("running {} (install protoc, Debian protobuf-compiler): {e}", protoc.display())))?;
        if !out.status.success() {
            return Err(io::Error::other(format!("protoc failed: {}", String::from_utf8_lossy(&out.stderr))));
        }
        let bytes = std::fs::read(&desc)?;
        let table = method_table(&bytes)?;
        let fds = prost_types::FileDescriptorSet::decode(&bytes[..]).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut config = self.config.unwrap_or_default();
        config.out_dir(&out_dir);
        config.service_generator(Box::new(Generator { table }));
        config.compile_fds(fds)
    }
}

struct Generator {
    table: HashMap<(String, String), MethodInfo>,
}

fn snake(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 && !out.ends_with('_') {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn upper(s: &str) -> String {
    snake(s).to_uppercase()
}

impl prost_build::ServiceGenerator for Generator {
    fn generate(&mut self, service: prost_build::Service, buf: &mut String) {
        let full = if service.package.is_empty() { service.proto_name.clone() } else { format!("{}.{}", service.package, service.proto_name) };
        let wire_service = camel_case(&service.proto_name);
        let name = &service.name;
        let mods = format!("{}_methods", snake(name));
        let mut methods = Vec::new();
        for m in &service.methods {
            let info = self.table.get(&(full.clone(), m.proto_name.clone())).cloned().unwrap_or_else(|| MethodInfo {
                wire_name: camel_case(&m.proto_name),
                input_type: m.input_proto_type.trim_start_matches('.').to_string(),
                output_type: m.output_proto_type.trim_start_matches('.').to_string(),
                ..Default::default()
            });
            methods.push((m, info));
        }
        let b = buf;
        let _ = writeln!(b, "/// Wire name of service `{full}`.");
        let _ = writeln!(b, "#[allow(dead_code)]\npub const {}_SERVICE: &str = {:?};", upper(name), wire_service);
        let _ = writeln!(b, "/// The psrpc methods of service `{full}` (what protoc-gen-psrpc derives from the method options).");
        let _ = writeln!(b, "#[allow(dead_code)]\npub mod {mods} {{");
        for (m, i) in &methods {
            let routing = ["Queue", "Affinity", "Multi"][i.routing as usize];
            let mut flags = vec!["::psrpc::MethodFlags::NONE".to_string()];
            for (on, f) in [(i.subscription, "SUBSCRIPTION"), (i.topics, "TOPICS"), (i.stream, "STREAM"), (i.single_server, "SINGLE_SERVER")] {
                if on {
                    flags.push(format!("::psrpc::MethodFlags::{f}"));
                }
            }
            let flags = flags.iter().skip(1).fold(flags[0].clone(), |acc, f| format!("{acc}.union({f})"));
            let _ = writeln!(b, "    /// rpc `{}`.", m.proto_name);
            let _ = writeln!(
                b,
                "    pub const {}: ::psrpc::Method = ::psrpc::Method::from_static(c{:?}, c{:?}, ::psrpc::Routing::{routing}, {flags});",
                upper(&m.proto_name),
                i.wire_name,
                i.output_type
            );
        }
        let _ = writeln!(b, "    /// Every method of the service, in .proto order.");
        let _ = writeln!(b, "    pub const TABLE: &[::psrpc::MethodInfo] = &[");
        for (m, i) in &methods {
            let _ = writeln!(
                b,
                "        ::psrpc::MethodInfo {{ service: super::{}_SERVICE, method: {}, input_type: {:?}, output_type: {:?}, topic_params: {} }},",
                upper(name),
                upper(&m.proto_name),
                i.input_type,
                i.output_type,
                i.topic_params
            );
        }
        let _ = writeln!(b, "    ];");
        let _ = writeln!(b, "}}");

        // Client.
        let client = format!("{name}Client");
        let _ = writeln!(b, "/// Typed client of service `{full}`.");
        let _ = writeln!(b, "#[derive(Clone)]\n#[allow(dead_code)]\npub struct {client} {{\n    client: ::psrpc::Client,\n}}");
        let _ = writeln!(b, "#[allow(dead_code)]\nimpl {client} {{");
        let _ = writeln!(b, "    /// Creates a client on `bus`.");
        let _ = writeln!(
            b,
            "    pub fn new(bus: &::psrpc::Bus, options: ::psrpc::ClientOptions) -> ::psrpc::Result<Self> {{\n        Ok(Self {{ client: ::psrpc::Client::new(bus, {}_SERVICE, options)? }})\n    }}",
            upper(name)
        );
        let _ = writeln!(b, "    /// The untyped client.\n    pub fn client(&self) -> &::psrpc::Client {{\n        &self.client\n    }}");
        for (m, i) in &methods {
            let (inp, out) = (&m.input_type, &m.output_type);
            let c = format!("{mods}::{}", upper(&m.proto_name));
            let f = &m.name;
            if i.subscription {
                let _ = writeln!(b, "    /// Subscribes to `{}` (published `{out}`s) under `topics`.", m.proto_name);
                let _ = writeln!(
                    b,
                    "    pub async fn subscribe_{f}<S: AsRef<str>>(&self, topics: &[S]) -> ::psrpc::Result<::psrpc::Subscription<{out}>> {{\n        self.client.subscribe(&{c}, topics).await\n    }}"
                );
            } else if i.stream {
                let _ = writeln!(b, "    /// Opens a `{}` stream (sends `{inp}`, receives `{out}`).", m.proto_name);
                let _ = writeln!(
                    b,
                    "    pub async fn {f}(&self, options: ::psrpc::CallOptions) -> ::psrpc::Result<::psrpc::Stream<{inp}, {out}>> {{\n        self.client.open_stream(&{c}, &options).await\n    }}"
                );
            } else if i.routing == 2 {
                let _ = writeln!(b, "    /// Calls `{}` on every server: each response as it arrives.", m.proto_name);
                let _ = writeln!(
                    b,
                    "    pub fn {f}(&self, request: {inp}, options: ::psrpc::CallOptions) -> ::psrpc::MultiCall<{out}> {{\n        self.client.call_multi(&{c}, &request, &options)\n    }}"
                );
            } else {
                let _ = writeln!(b, "    /// Calls `{}`; dropping the future cancels the request.", m.proto_name);
                let _ = writeln!(
                    b,
                    "    pub fn {f}(&self, request: {inp}, options: ::psrpc::CallOptions) -> ::psrpc::Call<{out}> {{\n        self.client.call(&{c}, &request, &options)\n    }}"
                );
            }
        }
        let _ = writeln!(b, "}}");

        // Server trait.
        let _ = writeln!(b, "/// The handlers of service `{full}`.");
        let _ = writeln!(b, "#[allow(dead_code)]\npub trait {name}: Send + Sync + 'static {{");
        for (m, i) in &methods {
            let (inp, out) = (&m.input_type, &m.output_type);
            let f = &m.name;
            if i.subscription {
                continue;
            }
            if i.stream {
                let _ = writeln!(b, "    /// Handles a `{}` stream; returning closes it (with the error, if any).", m.proto_name);
                let _ = writeln!(b, "    fn {f}(&self, stream: ::psrpc::Stream<{out}, {inp}>, request: ::psrpc::Request<()>, ctx: ::psrpc::Context) -> impl ::std::future::Future<Output = ::psrpc::Result<()>> + Send;");
            } else {
                let _ = writeln!(b, "    /// Handles `{}`.", m.proto_name);
                let _ = writeln!(b, "    fn {f}(&self, request: ::psrpc::Request<{inp}>, ctx: ::psrpc::Context) -> impl ::std::future::Future<Output = ::psrpc::Result<{out}>> + Send;");
            }
            if i.routing == 1 {
                let req = if i.stream { "()".to_string() } else { inp.clone() };
                let _ = writeln!(b, "    /// Affinity of this server for a `{}` request (negative: decline). Default 1.0.", m.proto_name);
                let _ = writeln!(b, "    fn {f}_affinity(&self, request: ::psrpc::Request<{req}>, ctx: ::psrpc::Context) -> impl ::std::future::Future<Output = f32> + Send {{\n        let _ = (request, ctx);\n        async {{ 1.0 }}\n    }}");
            }
        }
        let _ = writeln!(b, "}}");

        // Server.
        let server = format!("{name}Server");
        let _ = writeln!(b, "/// Serves a [`{name}`] implementation: registers its handlers, publishes.");
        let _ = writeln!(b, "#[allow(dead_code)]\npub struct {server}<T: {name}> {{\n    server: ::psrpc::Server,\n    service: ::std::sync::Arc<T>,\n}}");
        let _ = writeln!(b, "#[allow(dead_code)]\nimpl<T: {name}> {server}<T> {{");
        let _ = writeln!(
            b,
            "    /// Creates the server on `bus` (nothing registered yet).\n    pub fn new(bus: &::psrpc::Bus, service: T, options: ::psrpc::ServerOptions) -> ::psrpc::Result<Self> {{\n        Ok(Self {{ server: ::psrpc::Server::new(bus, {}_SERVICE, options)?, service: ::std::sync::Arc::new(service) }})\n    }}",
            upper(name)
        );
        let _ = writeln!(b, "    /// The untyped server.\n    pub fn server(&self) -> &::psrpc::Server {{\n        &self.server\n    }}");
        let _ = writeln!(b, "    /// The service implementation.\n    pub fn service(&self) -> &::std::sync::Arc<T> {{\n        &self.service\n    }}");
        let mut all = Vec::new();
        for (m, i) in &methods {
            let (inp, out) = (&m.input_type, &m.output_type);
            let f = &m.name;
            let c = format!("{mods}::{}", upper(&m.proto_name));
            if i.subscription {
                let _ = writeln!(b, "    /// Publishes a `{}` update under `topics`.", m.proto_name);
                let _ = writeln!(
                    b,
                    "    pub fn publish_{f}<S: AsRef<str>>(&self, topics: &[S], message: &{out}) -> ::psrpc::Result<()> {{\n        self.server.publish(&{c}, topics, message)\n    }}"
                );
                continue;
            }
            let aff = if i.routing == 1 {
                let req = if i.stream { "()" } else { inp.as_str() };
                format!("Some({{ let s = self.service.clone(); move |r: ::psrpc::Request<{req}>, c: ::psrpc::Context| {{ let s = s.clone(); async move {{ s.{f}_affinity(r, c).await }} }} }})")
            } else {
                let req = if i.stream { "()" } else { inp.as_str() };
                format!("None::<fn(::psrpc::Request<{req}>, ::psrpc::Context) -> ::std::future::Ready<f32>>")
            };
            let _ = writeln!(b, "    /// Registers the `{}` handler under `topics` (empty: none).", m.proto_name);
            if i.stream {
                let _ = writeln!(
                    b,
                    "    pub async fn register_{f}<S: AsRef<str>>(&self, topics: &[S]) -> ::psrpc::Result<()> {{\n        let s = self.service.clone();\n        self.server.register_stream(&{c}, topics, move |st: ::psrpc::Stream<{out}, {inp}>, r, c| {{ let s = s.clone(); async move {{ s.{f}(st, r, c).await }} }}, {aff}).await\n    }}"
                );
            } else {
                let _ = writeln!(
                    b,
                    "    pub async fn register_{f}<S: AsRef<str>>(&self, topics: &[S]) -> ::psrpc::Result<()> {{\n        let s = self.service.clone();\n        self.server.register_with_affinity(&{c}, topics, move |r: ::psrpc::Request<{inp}>, c| {{ let s = s.clone(); async move {{ s.{f}(r, c).await }} }}, {aff}).await\n    }}"
                );
            }
            if !i.topics {
                all.push(f.clone());
            }
        }
        let _ = writeln!(b, "    /// Registers every handler of a method without topics (methods with topics: `register_<method>`).");
        let _ = writeln!(b, "    pub async fn register_all(&self) -> ::psrpc::Result<()> {{");
        for f in &all {
            let _ = writeln!(b, "        self.register_{f}(&[] as &[&str]).await?;");
        }
        let _ = writeln!(b, "        Ok(())\n    }}");
        let _ = writeln!(b, "}}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fds(opts: Option<PsrpcOptions>) -> Vec<u8> {
        Fds {
            file: vec![Fdp {
                package: Some("pkg".into()),
                service: vec![Sdp {
                    name: Some("my_service".into()),
                    method: vec![Mdp {
                        name: Some("do_thing".into()),
                        input_type: Some(".pkg.In".into()),
                        output_type: Some(".pkg.Out".into()),
                        options: Some(MethodOptions { psrpc: opts }),
                    }],
                }],
            }],
        }
        .encode_to_vec()
    }

    fn one(opts: Option<PsrpcOptions>) -> MethodInfo {
        let t = method_table(&fds(opts)).unwrap();
        t[&("pkg.my_service".to_string(), "do_thing".to_string())].clone()
    }

    #[test]
    fn defaults_are_a_queue_method() {
        let i = one(None);
        assert_eq!((i.wire_name.as_str(), i.routing, i.topic_params), ("DoThing", 0, 0));
        assert_eq!((i.input_type.as_str(), i.output_type.as_str()), ("pkg.In", "pkg.Out"));
    }

    #[test]
    fn deprecated_oneof_overrides_type() {
        let o = PsrpcOptions { r#type: 1, multi: Some(false), ..Default::default() };
        assert_eq!(one(Some(o)).routing, 2, "multi present (even false) wins");
        let o = PsrpcOptions { r#type: 2, queue: Some(true), ..Default::default() };
        assert_eq!(one(Some(o)).routing, 0);
        let o = PsrpcOptions { affinity_func: Some(true), ..Default::default() };
        assert_eq!(one(Some(o)).routing, 1);
        let o = PsrpcOptions { r#type: 7, ..Default::default() };
        assert!(method_table(&fds(Some(o))).is_err(), "unknown routing refused");
    }

    #[test]
    fn topic_parameters_and_flags() {
        let o = PsrpcOptions {
            topics: true,
            subscription: true,
            stream: true,
            topic_params: Some(TopicParams { names: vec!["a".into(), "b".into()], single_server: true }),
            ..Default::default()
        };
        let i = one(Some(o));
        assert!(i.subscription && i.topics && i.stream && i.single_server);
        assert_eq!(i.topic_params, 2);
        let o = PsrpcOptions { topics: true, ..Default::default() };
        assert_eq!(one(Some(o)).topic_params, 1);
        let o = PsrpcOptions { topic_params: Some(TopicParams { names: vec!["a".into()], single_server: false }), ..Default::default() };
        assert_eq!(one(Some(o)).topic_params, 0, "no topics: no parameters");
    }

    #[test]
    fn camel_case_as_protoc_gen_go() {
        assert_eq!(camel_case("add_value"), "AddValue");
        assert_eq!(camel_case("AddValue"), "AddValue");
        assert_eq!(camel_case("region_2_echo"), "Region2Echo");
    }
}
