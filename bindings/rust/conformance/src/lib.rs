//! Shared pieces of the Rust conformance programs: the generated service
//! code of tests/interop/conformance.proto and small text helpers.

/// Messages, clients and server traits of `package psrpc.conformance`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    psrpc::include_proto!("psrpc.conformance");
}

use std::io::Write;
use std::sync::Mutex;

static OUT: Mutex<()> = Mutex::new(());

/// Prints one line on stdout (whole lines, flushed, from any task).
pub fn emit(line: &str) {
    let _g = OUT.lock().unwrap();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Lower-case hex of bytes.
pub fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut o = Vec::with_capacity(b.len() * 2);
    for x in b {
        o.push(D[(x >> 4) as usize]);
        o.push(D[(x & 15) as usize]);
    }
    String::from_utf8(o).unwrap()
}

/// Bytes of a hex string (None: not hex).
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if b.len() % 2 != 0 {
        return None;
    }
    let d = |c: u8| (c as char).to_digit(16).map(|v| v as u8);
    b.chunks(2).map(|p| Some(d(p[0])? << 4 | d(p[1])?)).collect()
}

/// %XX-decoding (as urllib.parse.unquote; invalid UTF-8 replaced).
pub fn unquote(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit() {
            let h = |c: u8| (c as char).to_digit(16).unwrap() as u8;
            out.push(h(b[i + 1]) * 16 + h(b[i + 2]));
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An error as the conformance protocol's JSON object.
pub fn error_json(e: &psrpc::Error) -> String {
    let details: Vec<String> = e
        .details
        .iter()
        .map(|d| format!("{{\"type_url\":{},\"value\":\"{}\"}}", json_str(&d.type_url), hex(&d.value)))
        .collect();
    format!("{{\"code\":{},\"message\":{},\"details\":[{}]}}", json_str(e.code.as_str()), json_str(&e.message), details.join(","))
}

/// Prints the method tables, one line per method, as the C client does.
pub fn print_methods() {
    for t in [pb::conformance_methods::TABLE, pb::conformance_updates_methods::TABLE] {
        for i in t {
            let (affinity, multi, require_claim, queue) = i.register_flags();
            let f = i.method.flags();
            let routing = match i.method.routing() {
                psrpc::Routing::Queue => 0,
                psrpc::Routing::Affinity => 1,
                psrpc::Routing::Multi => 2,
            };
            println!(
                "{}.{} affinity={} multi={} require_claim={} queue={} subscription={} topics={} stream={} routing={} input={} output={}",
                i.service,
                i.method.name(),
                affinity as u8,
                multi as u8,
                require_claim as u8,
                queue as u8,
                f.contains(psrpc::MethodFlags::SUBSCRIPTION) as u8,
                i.topic_params,
                f.contains(psrpc::MethodFlags::STREAM) as u8,
                routing,
                i.input_type,
                i.output_type
            );
        }
    }
}

/// Command-line flags: `--name value` pairs and bare switches.
pub struct Flags {
    args: Vec<String>,
}

impl Flags {
    /// The process's arguments.
    pub fn from_env() -> Flags {
        Flags { args: std::env::args().skip(1).collect() }
    }
    /// Whether a switch is present.
    pub fn has(&self, name: &str) -> bool {
        self.args.iter().any(|a| a == name)
    }
    /// The last value of a flag.
    pub fn get(&self, name: &str) -> Option<String> {
        self.all(name).pop()
    }
    /// Every value of a repeatable flag.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.args.windows(2).filter(|w| w[0] == name).map(|w| w[1].clone()).collect()
    }
}
