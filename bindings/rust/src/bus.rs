//! The bus: one connection to Redis, NATS or an in-process bus, with its loop thread.
use crate::core::guard;
use crate::error::{check, to_c, Result};
use futures::channel::oneshot;
use psrpc_sys as sys;
use std::ffi::{c_void, CString};
use std::sync::Arc;
use std::time::Duration;

/// Options of [`Bus::open`]; zero / `None` fields take libpsrpc's defaults.
#[derive(Debug, Clone, Default)]
pub struct BusOptions {
    /// Largest message sent or accepted (default 1 MiB).
    pub max_message_size: Option<usize>,
    /// Per-subscription inbound queue (default 10000).
    pub queue_capacity: Option<usize>,
    /// Per connection attempt (default 5 s).
    pub connect_timeout: Option<Duration>,
    /// Health check interval.
    pub ping_interval: Option<Duration>,
    /// First reconnect delay (doubling).
    pub reconnect_wait: Option<Duration>,
    /// Backoff cap.
    pub reconnect_wait_max: Option<Duration>,
    /// gzip outbound payloads at least this large (default: never).
    pub compress_threshold: Option<usize>,
    /// Bytes of publishes buffered while (re)connecting.
    pub reconnect_buffer_size: Option<usize>,
    /// Use TLS even if the URL scheme does not say so.
    pub tls: bool,
    /// PEM CA bundle to verify the server.
    pub tls_ca_file: Option<String>,
    /// PEM client certificate (mutual TLS).
    pub tls_cert_file: Option<String>,
    /// PEM client key.
    pub tls_key_file: Option<String>,
    /// SNI / verification name.
    pub tls_server_name: Option<String>,
    /// NATS: JWT + NKey seed credentials file.
    pub nats_creds_file: Option<String>,
    /// NATS: NKey seed file.
    pub nats_nkey_seed_file: Option<String>,
    /// Redis: prepended to every channel name (Go peers use none).
    pub channel_prefix: Option<String>,
}

/// Counters of a bus (see `psrpc_bus_stats` in psrpc.h).
pub type BusStats = sys::psrpc_bus_stats;

pub(crate) struct BusInner {
    pub(crate) ptr: *mut sys::psrpc_bus,
}

// SAFETY: libpsrpc handles may be used from any thread (header: THREADS).
unsafe impl Send for BusInner {}
unsafe impl Sync for BusInner {}

impl Drop for BusInner {
    fn drop(&mut self) {
        // Never blocks (Drop may run in an async task or on a loop thread):
        // the loop thread finishes the close by itself. Await Bus::close
        // first for a close that has completed (e.g. before the process exits).
        unsafe { sys::psrpc_bus_release(self.ptr) }
    }
}

/// A bus: `local://[NAME]`, `redis://…` or `nats://…`. Cheap to clone; the
/// last clone (and the last client/server/subscription made on it) closes it
/// when dropped, without waiting (`psrpc_bus_release`); await [`Bus::close`]
/// for a close that has completed, e.g. before the process exits.
#[derive(Clone)]
pub struct Bus {
    pub(crate) inner: Arc<BusInner>,
}

fn ms(d: Option<Duration>) -> i64 {
    d.map_or(0, |d| d.as_millis().clamp(1, i64::MAX as u128) as i64)
}

fn n(v: Option<usize>) -> i64 {
    v.map_or(0, |v| v as i64)
}

impl Bus {
    /// Opens a bus. Returns at once: Redis/NATS connect in the background and
    /// calls made meanwhile wait for the connection within their deadline.
    pub fn open(url: &str, options: BusOptions) -> Result<Bus> {
        let url = to_c(url, "bus URL")?;
        let strs: Vec<Option<CString>> = [
            &options.tls_ca_file,
            &options.tls_cert_file,
            &options.tls_key_file,
            &options.tls_server_name,
            &options.nats_creds_file,
            &options.nats_nkey_seed_file,
            &options.channel_prefix,
        ]
        .iter()
        .map(|s| s.as_deref().map(|s| to_c(s, "bus option")).transpose())
        .collect::<Result<_>>()?;
        let p = |i: usize| strs[i].as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        let mut o: sys::psrpc_bus_options = unsafe { std::mem::zeroed() };
        check(unsafe { sys::psrpc_bus_options_init(&mut o, std::mem::size_of::<sys::psrpc_bus_options>()) })?;
        o.flags = if options.tls { sys::PSRPC_BUS_TLS } else { 0 };
        o.max_message_size = n(options.max_message_size);
        o.queue_capacity = n(options.queue_capacity);
        o.connect_timeout_ms = ms(options.connect_timeout);
        o.ping_interval_ms = ms(options.ping_interval);
        o.reconnect_wait_ms = ms(options.reconnect_wait);
        o.reconnect_wait_max_ms = ms(options.reconnect_wait_max);
        o.compress_threshold = n(options.compress_threshold);
        o.reconnect_buffer_size = n(options.reconnect_buffer_size);
        o.tls_ca_file = p(0);
        o.tls_cert_file = p(1);
        o.tls_key_file = p(2);
        o.tls_server_name = p(3);
        o.nats_creds_file = p(4);
        o.nats_nkey_seed_file = p(5);
        o.channel_prefix = p(6);
        let mut out = std::ptr::null_mut();
        check(unsafe { sys::psrpc_bus_open(&mut out, url.as_ptr(), &o) })?;
        Ok(Bus { inner: Arc::new(BusInner { ptr: out }) })
    }

    /// Waits until the bus is connected (local buses: at once). Fails with
    /// `deadline_exceeded` after `timeout`, or the broker's refusal.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let inner = self.inner.clone();
        let t = timeout.as_millis().clamp(1, i64::MAX as u128) as i64;
        blocking(move || check(unsafe { sys::psrpc_bus_wait_ready(inner.ptr, t) })).await
    }

    /// The bus's counters.
    pub fn stats(&self) -> Result<BusStats> {
        let mut s = BusStats { struct_size: std::mem::size_of::<BusStats>() as u32, ..Default::default() };
        check(unsafe { sys::psrpc_bus_get_stats(self.inner.ptr, &mut s) })?;
        Ok(s)
    }

    /// Closes the bus and everything made on it (outstanding calls fail with
    /// `canceled`); resolves after the last callback of the bus returned.
    pub async fn close(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel::<()>();
        let ud = Box::into_raw(Box::new(tx)).cast::<c_void>();
        let st = unsafe { sys::psrpc_bus_close(self.inner.ptr, Some(closed_cb), ud) };
        if st != sys::PSRPC_OK {
            drop(unsafe { Box::from_raw(ud.cast::<oneshot::Sender<()>>()) });
            return check(st);
        }
        let _ = rx.await;
        Ok(())
    }
}

/// A closed callback completing a `oneshot::Sender<()>` (boxed user data).
pub(crate) unsafe extern "C" fn closed_cb(ud: *mut c_void) {
    let tx = Box::from_raw(ud.cast::<oneshot::Sender<()>>());
    guard("closed", (), move || {
        let _ = tx.send(());
    });
}

/// Runs a blocking libpsrpc call (`*_wait_*`) on a thread of its own so that
/// no async task blocks.
pub(crate) async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.await.expect("blocking helper thread panicked")
}
