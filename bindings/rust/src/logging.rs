//! libpsrpc's log events: bus connected / lost / reconnected, messages
//! dropped (first of a reason, then at most one summary per reason per 10 s),
//! slow stream consumers. Off by default; one handler per process.
//!
//! With the `log` feature (default), [`forward_to_log`] sends them to the
//! [`log`](https://docs.rs/log) crate under the targets `psrpc::bus`,
//! `psrpc::drop` and `psrpc::stream`:
//!
//! ```no_run
//! # #[cfg(feature = "log")]
//! psrpc::logging::forward_to_log(); // after installing your logger
//! ```
use psrpc_sys as sys;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::{Arc, RwLock};

/// Severity of a log event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Errors (e.g. authentication refused by the broker).
    Error = 1,
    /// Warnings (connection lost, messages dropped).
    Warn = 2,
    /// Information (connected, reconnected).
    Info = 3,
    /// Details (every single drop).
    Debug = 4,
}

type Handler = Arc<dyn Fn(Level, &str, &str) + Send + Sync>;

static HANDLER: RwLock<Option<Handler>> = RwLock::new(None);

unsafe extern "C" fn log_trampoline(level: c_int, component: *const c_char, message: *const c_char, _ud: *mut c_void) {
    let h = match HANDLER.read() {
        Ok(g) => g.clone(),
        Err(_) => return,
    };
    let Some(h) = h else { return };
    let level = match level {
        sys::PSRPC_LOG_ERROR => Level::Error,
        sys::PSRPC_LOG_WARN => Level::Warn,
        sys::PSRPC_LOG_INFO => Level::Info,
        _ => Level::Debug,
    };
    let s = |p: *const c_char| if p.is_null() { std::borrow::Cow::Borrowed("") } else { CStr::from_ptr(p).to_string_lossy() };
    let (component, message) = (s(component), s(message));
    crate::core::guard("log", (), || h(level, &component, &message));
}

/// Sends libpsrpc's log events up to `max_level` to `handler(level,
/// component, message)` ("bus", "drop", "stream"), replacing any handler.
/// It runs on the thread of the event (mostly libpsrpc's loop thread):
/// it must not block or call libpsrpc.
pub fn set_handler(max_level: Level, handler: impl Fn(Level, &str, &str) + Send + Sync + 'static) {
    *HANDLER.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(handler));
    unsafe { sys::psrpc_set_log_callback(Some(log_trampoline), max_level as c_int, std::ptr::null_mut()) };
}

/// Turns libpsrpc's logging off again.
pub fn clear_handler() {
    unsafe { sys::psrpc_set_log_callback(None, 0, std::ptr::null_mut()) };
    *HANDLER.write().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Forwards libpsrpc's log events to the `log` crate (targets
/// `psrpc::bus`, `psrpc::drop`, `psrpc::stream`), up to `log::max_level()`
/// as it is now: call it after installing the logger.
#[cfg(feature = "log")]
pub fn forward_to_log() {
    let max = match log::max_level() {
        log::LevelFilter::Off => {
            clear_handler();
            return;
        }
        log::LevelFilter::Error => Level::Error,
        log::LevelFilter::Warn => Level::Warn,
        log::LevelFilter::Info => Level::Info,
        _ => Level::Debug,
    };
    set_handler(max, |level, component, message| {
        let level = match level {
            Level::Error => log::Level::Error,
            Level::Warn => log::Level::Warn,
            Level::Info => log::Level::Info,
            Level::Debug => log::Level::Debug,
        };
        let target = match component {
            "bus" => "psrpc::bus",
            "drop" => "psrpc::drop",
            "stream" => "psrpc::stream",
            _ => "psrpc",
        };
        log::log!(target: target, level, "{message}");
    });
}
