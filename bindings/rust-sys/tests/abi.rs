//! Fails when psrpc-sys's declarations drift from capi/psrpc.h:
//! - struct sizes, alignments and field offsets, and every constant (flags,
//!   `PSRPC_*_SIZE_V1`, status values), compared with what a C compiler says
//!   about the header (a small C program compiled and run here);
//! - the functions: the set the header exports (`PSRPC_API`) must be the set
//!   declared here, and all of them must be in the linked library (the test
//!   takes every declared function's address, so it links only if they exist).
use psrpc_sys::*;
use std::collections::BTreeMap;
use std::mem::{align_of, offset_of, size_of};
use std::path::PathBuf;
use std::process::Command;

fn header_dir() -> PathBuf {
    PathBuf::from(env!("PSRPC_SYS_HEADER_DIR"))
}

macro_rules! layout {
    ($out:ident, $t:ident { $($f:ident),* }) => {{
        $out.push((format!("sizeof {}", stringify!($t)), size_of::<$t>() as i64));
        $out.push((format!("alignof {}", stringify!($t)), align_of::<$t>() as i64));
        $($out.push((format!("offsetof {}.{}", stringify!($t), stringify!($f)), offset_of!($t, $f) as i64));)*
    }};
}

macro_rules! c_layout {
    ($out:ident, $t:ident { $($f:ident),* }) => {{
        $out.push_str(&format!("  P(\"sizeof {t}\", sizeof({t}));\n  P(\"alignof {t}\", _Alignof({t}));\n", t = stringify!($t)));
        $($out.push_str(&format!("  P(\"offsetof {t}.{f}\", offsetof({t}, {f}));\n", t = stringify!($t), f = stringify!($f)));)*
    }};
}

macro_rules! structs {
    ($m:ident, $out:ident) => {
        $m!($out, psrpc_error_detail { type_url, value, value_len });
        $m!($out, psrpc_error { status, reserved, code, message, details, details_count });
        $m!($out, psrpc_kv { key, value });
        $m!($out, psrpc_method { struct_size, routing, flags, reserved, name, output_type });
        $m!($out, psrpc_bus_options { struct_size, flags, max_message_size, queue_capacity, connect_timeout_ms,
            ping_interval_ms, reconnect_wait_ms, reconnect_wait_max_ms, compress_threshold, reconnect_buffer_size,
            tls_ca_file, tls_cert_file, tls_key_file, tls_server_name, nats_creds_file, nats_nkey_seed_file,
            channel_prefix });
        $m!($out, psrpc_bus_stats { struct_size, reserved, connects, disconnects, reconnect_attempts, subscriptions,
            messages_published, messages_received, dropped_malformed, dropped_oversize, dropped_slow_consumer,
            dropped_expired, dropped_unknown, requests_in_flight, streams_open, dropped_held_limit });
        $m!($out, psrpc_client_options { struct_size, flags, timeout_ms, selection_timeout_ms, client_id });
        $m!($out, psrpc_claim { server_id, affinity, reserved });
        $m!($out, psrpc_selection_options { struct_size, flags, minimum_affinity, maximum_affinity,
            affinity_timeout_ms, short_circuit_timeout_ms, select, select_user_data });
        $m!($out, psrpc_call_options { struct_size, flags, timeout_ms, topics, topic_count, metadata,
            metadata_count, selection, deadline_ns });
        $m!($out, psrpc_server_options { struct_size, flags, timeout_ms, server_id });
        $m!($out, psrpc_call_info { struct_size, kind, role, reserved, service, method, topics, topic_count,
            call_id, client_id, server_id, request_id, expiry_ns });
        $m!($out, psrpc_call_outcome { struct_size, attempts, duration_ns, server_id, error, responses, errors });
        $m!($out, psrpc_client_hooks { struct_size, reserved, before_send, on_outcome, user_data, release });
        $m!($out, psrpc_server_hooks { struct_size, reserved, before_handle, on_outcome, user_data, release });
        $m!($out, psrpc_retry_options { struct_size, max_attempts, timeout_ms, backoff_ms, is_recoverable,
            retry_params, user_data });
        $m!($out, psrpc_method_metrics { struct_size, role, kind, reserved, service, method, calls, errors,
            attempts, latency_sum_ns, buckets, error_codes_count });
    };
}

/// Constants: (C expression, Rust value).
fn constants() -> Vec<(&'static str, i64)> {
    let mut v: Vec<(&'static str, i64)> = vec![
        ("PSRPC_VERSION_MAJOR", PSRPC_VERSION_MAJOR as i64),
        ("PSRPC_VERSION_MINOR", PSRPC_VERSION_MINOR as i64),
        ("PSRPC_VERSION_PATCH", PSRPC_VERSION_PATCH as i64),
        ("PSRPC_VERSION_HEX", PSRPC_VERSION_HEX as i64),
        ("PSRPC_ROUTING_QUEUE", PSRPC_ROUTING_QUEUE as i64),
        ("PSRPC_ROUTING_AFFINITY", PSRPC_ROUTING_AFFINITY as i64),
        ("PSRPC_ROUTING_MULTI", PSRPC_ROUTING_MULTI as i64),
        ("PSRPC_METHOD_SUBSCRIPTION", PSRPC_METHOD_SUBSCRIPTION as i64),
        ("PSRPC_METHOD_TOPICS", PSRPC_METHOD_TOPICS as i64),
        ("PSRPC_METHOD_STREAM", PSRPC_METHOD_STREAM as i64),
        ("PSRPC_METHOD_SINGLE_SERVER", PSRPC_METHOD_SINGLE_SERVER as i64),
        ("PSRPC_METHOD_SIZE_V1", PSRPC_METHOD_SIZE_V1 as i64),
        ("PSRPC_BUS_TLS", PSRPC_BUS_TLS as i64),
        ("PSRPC_BUS_OPTIONS_SIZE_V1", PSRPC_BUS_OPTIONS_SIZE_V1 as i64),
        ("PSRPC_BUS_CONNECTED", PSRPC_BUS_CONNECTED as i64),
        ("PSRPC_BUS_DISCONNECTED", PSRPC_BUS_DISCONNECTED as i64),
        ("PSRPC_BUS_CLOSED", PSRPC_BUS_CLOSED as i64),
        ("PSRPC_BUS_STATS_SIZE_V1", PSRPC_BUS_STATS_SIZE_V1 as i64),
        ("PSRPC_BUS_STATS_SIZE_V2", PSRPC_BUS_STATS_SIZE_V2 as i64),
        ("PSRPC_CLIENT_OPTIONS_SIZE_V1", PSRPC_CLIENT_OPTIONS_SIZE_V1 as i64),
        ("PSRPC_SELECT_ACCEPT_FIRST_AVAILABLE", PSRPC_SELECT_ACCEPT_FIRST_AVAILABLE as i64),
        ("PSRPC_SELECTION_OPTIONS_SIZE_V1", PSRPC_SELECTION_OPTIONS_SIZE_V1 as i64),
        ("PSRPC_CALL_WAIT_FOR_READY", PSRPC_CALL_WAIT_FOR_READY as i64),
        ("PSRPC_CALL_OPTIONS_SIZE_V1", PSRPC_CALL_OPTIONS_SIZE_V1 as i64),
        ("PSRPC_SERVER_SKIP_CLAIM", PSRPC_SERVER_SKIP_CLAIM as i64),
        ("PSRPC_SERVER_OPTIONS_SIZE_V1", PSRPC_SERVER_OPTIONS_SIZE_V1 as i64),
        ("PSRPC_CLOSE_FORCE", PSRPC_CLOSE_FORCE as i64),
        ("PSRPC_CALL_KIND_UNARY", PSRPC_CALL_KIND_UNARY as i64),
        ("PSRPC_CALL_KIND_MULTI", PSRPC_CALL_KIND_MULTI as i64),
        ("PSRPC_CALL_KIND_STREAM", PSRPC_CALL_KIND_STREAM as i64),
        ("PSRPC_ROLE_CLIENT", PSRPC_ROLE_CLIENT as i64),
        ("PSRPC_ROLE_SERVER", PSRPC_ROLE_SERVER as i64),
        ("PSRPC_CLIENT_HOOKS_SIZE_V1", PSRPC_CLIENT_HOOKS_SIZE_V1 as i64),
        ("PSRPC_SERVER_HOOKS_SIZE_V1", PSRPC_SERVER_HOOKS_SIZE_V1 as i64),
        ("PSRPC_RETRY_OPTIONS_SIZE_V1", PSRPC_RETRY_OPTIONS_SIZE_V1 as i64),
        ("PSRPC_METHOD_METRICS_SIZE_V1", PSRPC_METHOD_METRICS_SIZE_V1 as i64),
        ("PSRPC_RETRY_UNARY", PSRPC_RETRY_UNARY as i64),
        ("PSRPC_RETRY_STREAM_OPEN", PSRPC_RETRY_STREAM_OPEN as i64),
        ("PSRPC_LOG_ERROR", PSRPC_LOG_ERROR as i64),
        ("PSRPC_LOG_WARN", PSRPC_LOG_WARN as i64),
        ("PSRPC_LOG_INFO", PSRPC_LOG_INFO as i64),
        ("PSRPC_LOG_DEBUG", PSRPC_LOG_DEBUG as i64),
        ("PSRPC_METRICS_BUCKETS", PSRPC_METRICS_BUCKETS as i64),
        ("PSRPC_TRACEPARENT_SIZE", PSRPC_TRACEPARENT_SIZE as i64),
        ("sizeof(psrpc_status)", size_of::<psrpc_status>() as i64),
    ];
    for (name, value, _) in PSRPC_STATUS_TABLE {
        v.push((name, *value as i64));
    }
    v
}

fn c_values() -> BTreeMap<String, i64> {
    let mut prog = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include \"psrpc.h\"\n\
         #define P(n, v) printf(\"%s=%lld\\n\", n, (long long)(v))\nint main(void) {\n",
    );
    structs!(c_layout, prog);
    for (expr, _) in constants() {
        prog.push_str(&format!("  P(\"{expr}\", {expr});\n"));
    }
    // Every status of the header's map, so a status added there is noticed.
    prog.push_str(
        "#define PS(name, value, code, desc) P(\"PSRPC_\" #name, value); P(\"code PSRPC_\" #name, code != NULL);\n\
         PSRPC_STATUS_MAP(PS)\n  P(\"version string matches\", sizeof(PSRPC_VERSION_STRING) - 1);\n  return 0;\n}\n",
    );
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("abi-check");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("abi.c");
    let exe = dir.join("abi");
    std::fs::write(&src, prog).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let st = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(&src)
        .arg("-I")
        .arg(header_dir())
        .status()
        .expect("running the C compiler");
    assert!(st.success(), "compiling {} failed", src.display());
    let out = Command::new(&exe).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once('=').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

#[test]
fn struct_layouts_and_constants_match_the_header() {
    let c = c_values();
    let mut rust: Vec<(String, i64)> = Vec::new();
    structs!(layout, rust);
    for (name, value) in constants() {
        rust.push((name.to_string(), value));
    }
    for (name, _, code) in PSRPC_STATUS_TABLE {
        rust.push((format!("code {name}"), code.is_some() as i64));
    }
    rust.push(("version string matches".into(), PSRPC_VERSION_STRING.len() as i64));
    let mut bad = Vec::new();
    for (name, value) in &rust {
        match c.get(name) {
            Some(cv) if cv == value => {}
            other => bad.push(format!("{name}: Rust {value}, C {other:?}")),
        }
    }
    // Statuses present in the header but not in PSRPC_STATUS_TABLE.
    for name in c.keys().filter(|k| k.starts_with("PSRPC_") && !k.ends_with("_SIZE_V1")) {
        if !rust.iter().any(|(n, _)| n == name) {
            bad.push(format!("{name}: in the header, not declared in psrpc-sys"));
        }
    }
    // Every size constant of the header is checked above.
    let text = std::fs::read_to_string(header_dir().join("psrpc.h")).unwrap();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("#define ").and_then(|l| l.split_whitespace().next()) {
            if name.starts_with("PSRPC_") && name.contains("_SIZE_V") && !rust.iter().any(|(n, _)| n == name) {
                bad.push(format!("{name}: in the header, not declared in psrpc-sys"));
            }
        }
    }
    assert!(bad.is_empty(), "psrpc-sys drifted from psrpc.h:\n{}", bad.join("\n"));
}

/// Names of the functions the header exports.
fn header_functions() -> Vec<String> {
    let text = std::fs::read_to_string(header_dir().join("psrpc.h")).unwrap();
    let mut names = Vec::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("PSRPC_API ") {
        rest = &rest[i + "PSRPC_API ".len()..];
        let decl = &rest[..rest.find('(').unwrap()];
        if decl.contains('\n') || decl.starts_with("__") {
            continue; // the #define lines
        }
        let name = decl.rsplit(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap();
        names.push(name.to_string());
    }
    names.sort();
    names
}

#[test]
fn every_exported_function_is_declared_and_linked() {
    let header = header_functions();
    assert!(header.len() > 60, "parsed only {} functions from psrpc.h", header.len());
    let mut declared: Vec<String> = function_table().iter().map(|(n, _)| n.to_string()).collect();
    declared.sort();
    let missing: Vec<_> = header.iter().filter(|n| !declared.contains(n)).collect();
    let extra: Vec<_> = declared.iter().filter(|n| !header.contains(n)).collect();
    assert!(missing.is_empty(), "in psrpc.h, not declared in psrpc-sys: {missing:?}");
    assert!(extra.is_empty(), "declared in psrpc-sys, not in psrpc.h: {extra:?}");
    assert!(function_table().iter().all(|(_, addr)| *addr != 0));
}

#[test]
fn linked_library_is_the_declared_version() {
    let v = unsafe { psrpc_version() };
    assert_eq!(v, PSRPC_VERSION_HEX);
    let s = unsafe { std::ffi::CStr::from_ptr(psrpc_version_string()) };
    assert_eq!(s.to_str().unwrap(), PSRPC_VERSION_STRING);
    for (name, value, code) in PSRPC_STATUS_TABLE {
        let n = unsafe { std::ffi::CStr::from_ptr(psrpc_status_name(*value)) };
        assert_eq!(n.to_str().unwrap(), *name);
        let c = unsafe { std::ffi::CStr::from_ptr(psrpc_status_code(*value)) };
        assert_eq!(c.to_str().unwrap(), code.unwrap_or("internal"));
    }
}
