//! What the Rust binding adds per request over the C client.
//!
//! One process. A C echo server (handlers written against the raw ABI through
//! psrpc-sys: they answer on the loop thread, no Rust runtime involved) on a
//! bus of its own; against it, alternating rounds of:
//!
//!   unary, 1 in flight   c: psrpc_client_call_sync in a loop (raw client)
//!                        rust: `client.call_raw(..).await` in a loop
//!                        rust-proto: `client.call::<BytesValue, BytesValue>`
//!   unary, N in flight   c: psrpc_client_call, each completion (on the loop
//!                        thread) issuing the next call; rust: N tokio tasks
//!                        each awaiting calls in a loop; calls per second
//!   stream, 1 in flight  c: psrpc_stream_send + wait for the ack;
//!                        rust: `stream.send(&m).await`
//!
//! Figures are medians of the rounds' means. Usage:
//!
//!     psrpc-bench-rust [--bus URL]... [-n CALLS] [--rounds R] [--inflight N] [--payload B]
use psrpc::sys;
use psrpc::{Bus, BusOptions, CallOptions, Client, ClientOptions, Method, MethodFlags, RawMessage, Routing};
use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{mpsc, Condvar, Mutex};
use std::time::{Duration, Instant};

fn ok(st: c_int, what: &str) {
    if st != sys::PSRPC_OK {
        let msg = unsafe { std::ffi::CStr::from_ptr(sys::psrpc_last_error()) }.to_string_lossy().into_owned();
        panic!("{what}: {msg} ({st})");
    }
}

fn raw_method(name: &CString, stream: bool) -> sys::psrpc_method {
    sys::psrpc_method {
        struct_size: std::mem::size_of::<sys::psrpc_method>() as u32,
        routing: sys::PSRPC_ROUTING_QUEUE,
        flags: if stream { sys::PSRPC_METHOD_STREAM } else { 0 },
        reserved: 0,
        name: name.as_ptr(),
        output_type: std::ptr::null(),
    }
}

fn raw_bus(url: &CString) -> *mut sys::psrpc_bus {
    let mut bus = std::ptr::null_mut();
    ok(unsafe { sys::psrpc_bus_open(&mut bus, url.as_ptr(), std::ptr::null()) }, "bus open");
    ok(unsafe { sys::psrpc_bus_wait_ready(bus, 10_000) }, "bus ready");
    bus
}

// ---- the C server ------------------------------------------------------------

unsafe extern "C" fn echo(req: *mut sys::psrpc_request, _ud: *mut c_void) {
    let p = sys::psrpc_request_payload(req);
    sys::psrpc_request_respond(req, sys::psrpc_msg_data(p).cast(), sys::psrpc_msg_size(p));
}

unsafe extern "C" fn accept(_s: *mut sys::psrpc_stream, _m: *const sys::psrpc_msg, _ud: *mut c_void) -> c_int {
    0
}
unsafe extern "C" fn closed(_s: *mut sys::psrpc_stream, _e: *const sys::psrpc_error, _ud: *mut c_void) {}
unsafe extern "C" fn free_stream(ud: *mut c_void) {
    sys::psrpc_stream_free(ud.cast());
}
unsafe extern "C" fn chat(s: *mut sys::psrpc_stream, _ud: *mut c_void) {
    sys::psrpc_stream_set_callbacks(s, Some(accept), Some(closed), s.cast(), Some(free_stream));
}

fn c_server(bus: *mut sys::psrpc_bus, service: &CString, echo_m: &CString, chat_m: &CString) -> *mut sys::psrpc_server {
    let mut server = std::ptr::null_mut();
    ok(unsafe { sys::psrpc_server_create(&mut server, bus, service.as_ptr(), std::ptr::null()) }, "server");
    let m = raw_method(echo_m, false);
    ok(
        unsafe { sys::psrpc_server_register(server, &m, std::ptr::null(), 0, Some(echo), None, None, std::ptr::null_mut(), None) },
        "register",
    );
    let m = raw_method(chat_m, true);
    ok(
        unsafe {
            sys::psrpc_server_register_stream(server, &m, std::ptr::null(), 0, Some(chat), None, None, std::ptr::null_mut(), None)
        },
        "register stream",
    );
    ok(unsafe { sys::psrpc_server_wait_ready(server, 10_000) }, "server ready");
    server
}

// ---- the C client modes ------------------------------------------------------

struct Pump {
    client: *mut sys::psrpc_client,
    method: sys::psrpc_method,
    data: Vec<u8>,
    left: AtomicI64,
    done: AtomicU64,
    errors: AtomicU64,
    total: u64,
    fin: (Mutex<bool>, Condvar),
}

unsafe fn pump_issue(p: *const Pump) {
    let s = &*p;
    if s.left.fetch_sub(1, Ordering::SeqCst) <= 0 {
        return;
    }
    let st = sys::psrpc_client_call(
        std::ptr::null_mut(),
        s.client,
        &s.method,
        s.data.as_ptr().cast(),
        s.data.len(),
        std::ptr::null(),
        Some(pump_done),
        p as *mut c_void,
    );
    if st != sys::PSRPC_OK {
        pump_finish(p, true);
    }
}

unsafe fn pump_finish(p: *const Pump, err: bool) {
    let s = &*p;
    if err {
        s.errors.fetch_add(1, Ordering::SeqCst);
    }
    if s.done.fetch_add(1, Ordering::SeqCst) + 1 == s.total {
        let mut g = s.fin.0.lock().unwrap();
        *g = true;
        s.fin.1.notify_all();
    }
}

unsafe extern "C" fn pump_done(_id: u64, _r: *const sys::psrpc_msg, e: *const sys::psrpc_error, _s: *const c_char, ud: *mut c_void) {
    let p = ud as *const Pump;
    pump_finish(p, !e.is_null());
    pump_issue(p);
}

/// C client, `inflight` outstanding calls, `n` in all: calls per second.
fn c_throughput(client: *mut sys::psrpc_client, m: &CString, data: &[u8], n: u64, inflight: u64) -> f64 {
    // Leaked: the loop thread may still be inside pump_done when the last
    // completion has woken this thread.
    let p: &'static Pump = Box::leak(Box::new(Pump {
        client,
        method: raw_method(m, false),
        data: data.to_vec(),
        left: AtomicI64::new(n as i64),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        total: n,
        fin: (Mutex::new(false), Condvar::new()),
    }));
    let t0 = Instant::now();
    for _ in 0..inflight {
        unsafe { pump_issue(p) };
    }
    let mut g = p.fin.0.lock().unwrap();
    while !*g {
        g = p.fin.1.wait(g).unwrap();
    }
    let dt = t0.elapsed().as_secs_f64();
    assert_eq!(p.errors.load(Ordering::SeqCst), 0, "C calls failed");
    n as f64 / dt
}

/// C client, 1 in flight: seconds for n calls.
fn c_sequential(client: *mut sys::psrpc_client, m: &CString, data: &[u8], n: u64) -> f64 {
    let method = raw_method(m, false);
    let t0 = Instant::now();
    for _ in 0..n {
        let mut out = std::ptr::null_mut();
        ok(
            unsafe { sys::psrpc_client_call_sync(&mut out, client, &method, data.as_ptr().cast(), data.len(), std::ptr::null()) },
            "call",
        );
        unsafe { sys::psrpc_msg_release(out) };
    }
    t0.elapsed().as_secs_f64()
}

unsafe extern "C" fn send_done(e: *const sys::psrpc_error, ud: *mut c_void) {
    // Owned by this callback: the waiting thread may drop its receiver as
    // soon as the value is in, while this thread is still inside send().
    let tx = Box::from_raw(ud.cast::<mpsc::Sender<bool>>());
    let _ = tx.send(e.is_null());
}
unsafe extern "C" fn nop_msg(_s: *mut sys::psrpc_stream, _m: *const sys::psrpc_msg, _ud: *mut c_void) -> c_int {
    0
}
unsafe extern "C" fn on_open(_e: *const sys::psrpc_error, _ud: *mut c_void) {}

/// C stream, 1 in flight: seconds for n acknowledged sends.
fn c_stream(stream: *mut sys::psrpc_stream, data: &[u8], n: u64) -> f64 {
    let (tx, rx) = mpsc::channel::<bool>();
    let t0 = Instant::now();
    for _ in 0..n {
        let ud = Box::into_raw(Box::new(tx.clone())).cast::<c_void>();
        ok(unsafe { sys::psrpc_stream_send(stream, data.as_ptr().cast(), data.len(), 0, Some(send_done), ud) }, "send");
        assert!(rx.recv().unwrap(), "C stream send failed");
    }
    t0.elapsed().as_secs_f64()
}

// ---- main ----------------------------------------------------------------------

/// CPU time of the whole process (every thread: both clients, the server,
/// the loop threads), user + system, in seconds; from /proc/self/stat.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0 // USER_HZ is 100 on Linux
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Cfg {
    n: u64,
    rounds: usize,
    inflight: u64,
    payload: usize,
}

async fn bench(url: &str, cfg: &Cfg) {
    let tag = format!("RustBench_{}", std::process::id());
    let url = if url.trim_end_matches('/') == "local:" { format!("local://{tag}") } else { url.to_string() };
    let curl = CString::new(url.clone()).unwrap();
    let (service, echo_m, chat_m) = (CString::new(tag.clone()).unwrap(), CString::new("Echo").unwrap(), CString::new("Chat").unwrap());
    let sbus = raw_bus(&curl);
    let server = c_server(sbus, &service, &echo_m, &chat_m);

    // The C client: its own bus.
    let cbus = raw_bus(&curl);
    let mut craw = std::ptr::null_mut();
    ok(unsafe { sys::psrpc_client_create(&mut craw, cbus, service.as_ptr(), std::ptr::null()) }, "client");
    let mut cstream = std::ptr::null_mut();
    let sm = raw_method(&chat_m, true);
    ok(
        unsafe {
            sys::psrpc_client_open_stream(&mut cstream, craw, &sm, std::ptr::null(), Some(on_open), Some(nop_msg), Some(closed), std::ptr::null_mut(), None)
        },
        "open stream",
    );

    // The Rust client: its own bus.
    let bus = Bus::open(&url, BusOptions::default()).unwrap();
    bus.wait_ready(Duration::from_secs(10)).await.unwrap();
    let client = Client::new(&bus, &tag, ClientOptions { timeout: Some(Duration::from_secs(10)), ..Default::default() }).unwrap();
    let m = Method::new("Echo", None, Routing::Queue, MethodFlags::NONE).unwrap();
    let chat = Method::new("Chat", None, Routing::Queue, MethodFlags::STREAM).unwrap();
    let stream = client.open_stream::<RawMessage, RawMessage>(&chat, &CallOptions::new()).await.unwrap();

    let data = vec![b'x'; cfg.payload];
    let msg: Vec<u8> = prost::Message::encode_to_vec(&data); // BytesValue
    let opts = CallOptions::new();
    let raw = RawMessage(data.clone());

    let rust_seq = |k: u64| {
        let (client, m, msg, opts) = (client.clone(), m.clone(), msg.clone(), opts.clone());
        async move {
            let t0 = Instant::now();
            for _ in 0..k {
                client.call_raw(&m, &msg, &opts).await.unwrap();
            }
            t0.elapsed().as_secs_f64()
        }
    };
    let rust_proto = |k: u64| {
        let (client, m, data, opts) = (client.clone(), m.clone(), data.clone(), opts.clone());
        async move {
            let t0 = Instant::now();
            for _ in 0..k {
                let r: Vec<u8> = client.call(&m, &data, &opts).await.unwrap();
                assert_eq!(r.len(), data.len());
            }
            t0.elapsed().as_secs_f64()
        }
    };
    let rust_tp = |k: u64, inflight: u64| {
        let (client, m, msg) = (client.clone(), m.clone(), msg.clone());
        async move {
            let t0 = Instant::now();
            let tasks: Vec<_> = (0..inflight)
                .map(|i| {
                    let (client, m, msg) = (client.clone(), m.clone(), msg.clone());
                    let share = k / inflight + u64::from(i < k % inflight);
                    tokio::spawn(async move {
                        for _ in 0..share {
                            client.call_raw(&m, &msg, &CallOptions::new()).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            k as f64 / t0.elapsed().as_secs_f64()
        }
    };

    // Warm-up.
    let w = cfg.n.min(200);
    let _ = c_sequential(craw, &echo_m, &msg, w);
    let _ = rust_seq(w).await;
    let _ = rust_proto(w).await;
    let _ = c_stream(cstream, &data, w);
    for _ in 0..w {
        stream.send(&raw).await.unwrap();
    }

    let (mut c1, mut r1, mut p1, mut ct, mut rt, mut cs, mut rs) = (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    // CPU seconds per mode, summed over the rounds (process-wide).
    let mut cpu = [0f64; 7];
    let n = cfg.n;
    for _ in 0..cfg.rounds {
        let craw2 = craw as usize;
        let (em, m2) = (echo_m.clone(), msg.clone());
        let c0 = cpu_secs();
        c1.push(tokio::task::spawn_blocking(move || c_sequential(craw2 as *mut _, &em, &m2, n)).await.unwrap() / n as f64 * 1e6);
        let c_a = cpu_secs();
        r1.push(rust_seq(n).await / n as f64 * 1e6);
        let c_b = cpu_secs();
        p1.push(rust_proto(n).await / n as f64 * 1e6);
        let c_c = cpu_secs();
        let (em, m2, inf) = (echo_m.clone(), msg.clone(), cfg.inflight);
        ct.push(tokio::task::spawn_blocking(move || c_throughput(craw2 as *mut _, &em, &m2, n * 4, inf)).await.unwrap());
        let c_d = cpu_secs();
        rt.push(rust_tp(n * 4, cfg.inflight).await);
        let c_e = cpu_secs();
        let (cs2, d2) = (cstream as usize, data.clone());
        cs.push(tokio::task::spawn_blocking(move || c_stream(cs2 as *mut _, &d2, n)).await.unwrap() / n as f64 * 1e6);
        let c_f = cpu_secs();
        let t0 = Instant::now();
        for _ in 0..n {
            stream.send(&raw).await.unwrap();
        }
        rs.push(t0.elapsed().as_secs_f64() / n as f64 * 1e6);
        let c_g = cpu_secs();
        for (i, d) in [c_a - c0, c_b - c_a, c_c - c_b, c_d - c_c, c_e - c_d, c_f - c_e, c_g - c_f].into_iter().enumerate() {
            cpu[i] += d;
        }
    }
    let per = |secs: f64, calls: u64| secs / (calls * cfg.rounds as u64) as f64 * 1e6;
    let (c1, r1, p1, ct, rt, cs, rs) = (median(c1), median(r1), median(p1), median(ct), median(rt), median(cs), median(rs));
    println!(
        "bus {}  payload {} B  {} rounds x {} calls (median of round means)",
        url.split("://").next().unwrap_or("?"),
        cfg.payload,
        cfg.rounds,
        n
    );
    println!("  unary, 1 in flight   c {c1:8.1} us   rust {r1:8.1} us ({:+6.1} us)   rust-proto {p1:8.1} us ({:+6.1} us)", r1 - c1, p1 - c1);
    println!(
        "  unary, {:3} in flight c {ct:8.0} /s   rust {rt:8.0} /s ({:5.1} % of C)",
        cfg.inflight,
        rt / ct * 100.0
    );
    println!("  stream, 1 in flight  c {cs:8.1} us   rust {rs:8.1} us ({:+6.1} us)", rs - cs);
    let cpu: Vec<f64> = cpu
        .iter()
        .enumerate()
        .map(|(i, s)| per(*s, if i == 3 || i == 4 { n * 4 } else { n }))
        .collect();
    println!(
        "  CPU per call (whole process, us): unary@1 c {:.1} rust {:.1} ({:+.1}) proto {:.1}; unary@{} c {:.1} rust {:.1} ({:+.1}); stream c {:.1} rust {:.1} ({:+.1})",
        cpu[0],
        cpu[1],
        cpu[1] - cpu[0],
        cpu[2],
        cfg.inflight,
        cpu[3],
        cpu[4],
        cpu[4] - cpu[3],
        cpu[5],
        cpu[6],
        cpu[6] - cpu[5]
    );

    drop(stream);
    client.close().await.unwrap();
    bus.close().await.unwrap();
    unsafe {
        sys::psrpc_stream_free(cstream);
        sys::psrpc_client_free(craw);
        sys::psrpc_server_close(server, sys::PSRPC_CLOSE_FORCE, None, std::ptr::null_mut());
        sys::psrpc_server_free(server);
        sys::psrpc_bus_free(cbus);
        sys::psrpc_bus_free(sbus);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |k: &str| args.windows(2).filter(|w| w[0] == k).map(|w| w[1].clone()).collect::<Vec<_>>();
    let num = |k: &str, d: u64| get(k).last().and_then(|v| v.parse().ok()).unwrap_or(d);
    let cfg = Cfg { n: num("-n", 2000), rounds: num("--rounds", 5) as usize, inflight: num("--inflight", 256), payload: num("--payload", 16) as usize };
    let mut buses = get("--bus");
    if buses.is_empty() {
        buses.push("local://".into());
    }
    for url in buses {
        bench(&url, &cfg).await;
    }
}
