//! psrpc-bench-client: the Rust binding as a client role of bench/bench.py.
//!
//! Speaks bench.py's line protocol (bench/c/bench_common.h: READY, START,
//! END, RESULT {json}) and calls the `single` scenario's method (service
//! "Bench", Echo, queue routing) of bench/c/psrpc_bench.c's C server:
//! --inflight tokio tasks each `client.call_raw(..).await` in a loop, the
//! payload a serialized google.protobuf.BytesValue of --payload bytes.
//!
//!     psrpc-bench-client --bus URL --role client|local --scenario single
//!         [--inflight N] [--payload B] [--warmup S] [--duration S]
//!
//! --role local: the in-process bus; the process also hosts the server (a C
//! echo handler registered through psrpc-sys: no Rust on the server side) on
//! its own bus of a named local:// hub the client's bus shares. Other flags
//! of bench.py's set are accepted and ignored.
use psrpc::sys;
use psrpc::{Bus, BusOptions, CallOptions, Client, ClientOptions, Method, MethodFlags, Routing};
use std::collections::BTreeMap;
use std::ffi::{c_void, CString};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn emit(line: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

/// bench_common.h's log-linear histogram: the index of the bucket of us.
fn bucket(us: u64) -> u32 {
    match us {
        0..=999 => us as u32,
        1000..=9999 => 1000 + ((us - 1000) / 10) as u32,
        10000..=99999 => 1900 + ((us - 10000) / 100) as u32,
        100000..=999999 => 2800 + ((us - 100000) / 1000) as u32,
        _ => 3700 + ((us - 1000000) / 10000).min(899) as u32,
    }
}

/// The middle of bucket i, in microseconds.
fn bucket_value(i: u32) -> f64 {
    let i = i as f64;
    if i < 1000.0 {
        i + 0.5
    } else if i < 1900.0 {
        1000.0 + (i - 1000.0) * 10.0 + 5.0
    } else if i < 2800.0 {
        10000.0 + (i - 1900.0) * 100.0 + 50.0
    } else if i < 3700.0 {
        100000.0 + (i - 2800.0) * 1000.0 + 500.0
    } else {
        1000000.0 + (i - 3700.0) * 10000.0 + 5000.0
    }
}

unsafe extern "C" fn echo(req: *mut sys::psrpc_request, _ud: *mut c_void) {
    let p = sys::psrpc_request_payload(req);
    sys::psrpc_request_respond(req, sys::psrpc_msg_data(p).cast(), sys::psrpc_msg_size(p));
}

/// The C echo server of --role local, on a bus of its own.
fn c_server(url: &str) {
    let (url, service, name) = (CString::new(url).unwrap(), CString::new("Bench").unwrap(), CString::new("Echo").unwrap());
    let check = |st: i32, what: &str| {
        if st != sys::PSRPC_OK {
            panic!("{what}: status {st}");
        }
    };
    unsafe {
        let mut bus = std::ptr::null_mut();
        check(sys::psrpc_bus_open(&mut bus, url.as_ptr(), std::ptr::null()), "bus open");
        check(sys::psrpc_bus_wait_ready(bus, 10_000), "bus ready");
        let mut server = std::ptr::null_mut();
        check(sys::psrpc_server_create(&mut server, bus, service.as_ptr(), std::ptr::null()), "server");
        let m = sys::psrpc_method {
            struct_size: std::mem::size_of::<sys::psrpc_method>() as u32,
            routing: sys::PSRPC_ROUTING_QUEUE,
            flags: 0,
            reserved: 0,
            name: name.as_ptr(),
            output_type: std::ptr::null(),
        };
        check(
            sys::psrpc_server_register(server, &m, std::ptr::null(), 0, Some(echo), None, None, std::ptr::null_mut(), None),
            "register",
        );
        check(sys::psrpc_server_wait_ready(server, 10_000), "server ready");
    } // server and bus live until the process exits
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |k: &str| args.chunks(2).find(|w| w.len() == 2 && w[0] == k).map(|w| w[1].clone());
    let num = |k: &str, d: f64| get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(d);
    let mut url = get("--bus").expect("--bus URL");
    let role = get("--role").unwrap_or_else(|| "client".into());
    if get("--scenario").as_deref().unwrap_or("single") != "single" {
        eprintln!("psrpc-bench-client: only --scenario single");
        std::process::exit(2);
    }
    let inflight = num("--inflight", 1.0) as usize;
    let payload = (num("--payload", 64.0) as usize).max(16);
    let (warmup, duration) = (num("--warmup", 0.3), num("--duration", 1.0));
    if role == "local" {
        url = "local://bench-rust".into();
        c_server(&url);
    }
    let bus = Bus::open(&url, BusOptions::default()).unwrap();
    bus.wait_ready(Duration::from_secs(10)).await.unwrap();
    let client = Client::new(&bus, "Bench", ClientOptions { timeout: Some(Duration::from_secs(5)), ..Default::default() }).unwrap();
    let m = Method::new("Echo", None, Routing::Queue, MethodFlags::NONE).unwrap();
    let msg: Vec<u8> = prost::Message::encode_to_vec(&vec![b'x'; payload]); // BytesValue
    client.call_raw(&m, &msg, &CallOptions::new()).await.unwrap(); // replies subscribed
    emit("READY");

    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (ops, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let hist = Arc::new(Mutex::new(BTreeMap::<u32, u64>::new()));
    let tasks: Vec<_> = (0..inflight)
        .map(|_| {
            let (client, m, msg) = (client.clone(), m.clone(), msg.clone());
            let (measuring, stop, ops, errors, hist) = (measuring.clone(), stop.clone(), ops.clone(), errors.clone(), hist.clone());
            tokio::spawn(async move {
                let opts = CallOptions::new();
                let mut local = BTreeMap::<u32, u64>::new();
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    let ok = client.call_raw(&m, &msg, &opts).await.is_ok();
                    if measuring.load(Ordering::Relaxed) {
                        *local.entry(bucket(t0.elapsed().as_micros() as u64)).or_default() += 1;
                        ops.fetch_add(1, Ordering::Relaxed);
                        if !ok {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                let mut h = hist.lock().unwrap();
                for (k, v) in local {
                    *h.entry(k).or_default() += v;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
    measuring.store(true, Ordering::SeqCst);
    emit("START");
    let t0 = Instant::now();
    let o0 = ops.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs_f64(duration)).await;
    measuring.store(false, Ordering::SeqCst);
    let n = ops.load(Ordering::SeqCst) - o0;
    let elapsed = t0.elapsed().as_secs_f64();
    emit("END");
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        let _ = t.await;
    }
    let h = hist.lock().unwrap();
    let items: Vec<String> = h.iter().map(|(k, v)| format!("[{:.1},{}]", bucket_value(*k), v)).collect();
    emit(&format!(
        "RESULT {{\"role\":\"client\",\"ops\":{},\"elapsed_s\":{:.6},\"errors\":{},\"hist\":[{}]}}",
        n,
        elapsed,
        errors.load(Ordering::SeqCst),
        items.join(",")
    ));
    // bench.py closes stdin after reading peak RSS
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    std::process::exit(0);
}
