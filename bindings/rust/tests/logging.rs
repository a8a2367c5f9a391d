//! libpsrpc's log events through psrpc::logging (a process-wide handler:
//! this file is its own test program). Needs Redis (PSRPC_TEST_REDIS_URL,
//! default redis://127.0.0.1:6379).
use psrpc::logging::{self, Level};
use psrpc::{Bus, BusOptions};
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn redis() -> String {
    std::env::var("PSRPC_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

static RECORDS: Mutex<Vec<(log::Level, String, String)>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        RECORDS.lock().unwrap().push((r.level(), r.target().to_string(), r.args().to_string()));
    }
    fn flush(&self) {}
}

async fn wait_for(what: &str, f: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(10), "no {what} within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_events_reach_the_handler_and_the_log_crate() {
    // A handler of our own: a bus connecting logs INFO "bus".
    let seen: std::sync::Arc<Mutex<Vec<(Level, String, String)>>> = Default::default();
    let s2 = seen.clone();
    logging::set_handler(Level::Info, move |l, c, m| s2.lock().unwrap().push((l, c.to_string(), m.to_string())));
    let bus = Bus::open(&redis(), BusOptions::default()).unwrap();
    bus.wait_ready(Duration::from_secs(5)).await.unwrap();
    wait_for("INFO bus event", || seen.lock().unwrap().iter().any(|(l, c, _)| *l == Level::Info && c == "bus")).await;
    let (_, _, m) = seen.lock().unwrap().iter().find(|(l, c, _)| *l == Level::Info && c == "bus").cloned().unwrap();
    assert!(m.contains("connected"), "{m}");
    bus.close().await.unwrap();

    // The log crate, at warn: the INFO events are not forwarded.
    log::set_logger(&Capture).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    logging::forward_to_log();
    let before = seen.lock().unwrap().len();
    let bus = Bus::open(&redis(), BusOptions::default()).unwrap();
    bus.wait_ready(Duration::from_secs(5)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    bus.close().await.unwrap();
    assert!(RECORDS.lock().unwrap().is_empty(), "{:?}", RECORDS.lock().unwrap());
    assert_eq!(seen.lock().unwrap().len(), before, "the first handler was replaced");
    // At info: forwarded under the target psrpc::bus.
    log::set_max_level(log::LevelFilter::Info);
    logging::forward_to_log();
    let bus = Bus::open(&redis(), BusOptions::default()).unwrap();
    bus.wait_ready(Duration::from_secs(5)).await.unwrap();
    wait_for("log record", || RECORDS.lock().unwrap().iter().any(|(l, t, _)| *l == log::Level::Info && t == "psrpc::bus")).await;
    // Cleared: nothing more.
    logging::clear_handler();
    bus.close().await.unwrap();
    let n = RECORDS.lock().unwrap().len();
    let bus = Bus::open(&redis(), BusOptions::default()).unwrap();
    bus.wait_ready(Duration::from_secs(5)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(RECORDS.lock().unwrap().len(), n);
    bus.close().await.unwrap();
}
