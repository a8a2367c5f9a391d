//! Interceptors and retries (libpsrpc's hooks and retry policy, issue 16).
//!
//! A [`ClientInterceptor`] sees every call a [`Client`](crate::Client) makes:
//! `before_send` once per call (not per retry attempt), on the task that
//! started the call, where it may read and change the metadata or fail the
//! call; `on_outcome` once with the final outcome (after every retry), on
//! libpsrpc's loop thread. A [`ServerInterceptor`] sees every request a
//! [`Server`](crate::Server) handles: `before_handle` just before the handler
//! (it may reject the request), `on_outcome` once the request is answered (a
//! stream: once it ended). Interceptors run in the order they were added and
//! must not block: they run inline, never on the runtime.
//!
//! [`RetryOptions`] are livekit/psrpc v0.8.2's `middleware.RetryOptions`:
//! unary calls (and, optionally, stream opens) failing with a recoverable
//! error (by default `deadline_exceeded` or `unavailable`, Go's
//! `isTimeout`) are sent again, each attempt a new request.
use crate::error::{cstr, opt_cstr, to_c, Code, Error, Result};
use psrpc_sys as sys;
use std::ffi::{c_char, c_int, c_void, CString};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What kind of call an interceptor sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// A unary call (queue or affinity routing).
    Unary,
    /// A multi call.
    Multi,
    /// A stream (its open, on the client; the whole stream, on the server).
    Stream,
}

/// Which side an interceptor is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A client's call.
    Client,
    /// A request a server handles.
    Server,
}

/// What an interceptor knows about a call or a handled request.
#[derive(Debug, Clone)]
pub struct CallInfo {
    /// Unary, multi or stream.
    pub kind: CallKind,
    /// Client or server side.
    pub role: Role,
    /// The service's wire name.
    pub service: String,
    /// The method's wire name.
    pub method: String,
    /// The topics of the call.
    pub topics: Vec<String>,
    /// Client side: the call id (the same in `before_send` and `on_outcome`,
    /// a key for per-call state); server side: 0.
    pub call_id: u64,
    /// Client side: this client's id; server side: the caller's.
    pub client_id: String,
    /// Server side: this server's id.
    pub server_id: Option<String>,
    /// Server side: the request (stream open) id.
    pub request_id: Option<String>,
    /// The deadline the request carries (client `before_send` without a
    /// deadline: `None`).
    pub deadline: Option<SystemTime>,
}

/// The outcome of a call (client) or of a handled request (server).
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Client: attempts made (1 without retries, 0 when it failed before
    /// anything was sent); server: 1.
    pub attempts: u32,
    /// Client: from the call to its outcome; server: from the request's
    /// arrival to its answer (a stream: to its end).
    pub duration: Duration,
    /// The answering server, when known.
    pub server_id: Option<String>,
    /// `None` on success (a clean stream close is a success).
    pub error: Option<Error>,
    /// Client multi calls: results delivered.
    pub responses: u64,
    /// Client multi calls: error results delivered.
    pub errors: u64,
}

/// The metadata of the call an interceptor's `before_*` hook sees. Client
/// side it can be changed (the call sends what the hooks leave); server side
/// it is read-only.
pub struct HookMetadata<'a> {
    call: *mut sys::psrpc_hook_call,
    _borrow: PhantomData<&'a mut ()>,
}

impl HookMetadata<'_> {
    /// The value of `key` (the last of duplicates), if any.
    pub fn get(&self, key: &str) -> Option<String> {
        let k = CString::new(key).ok()?;
        unsafe { opt_cstr(sys::psrpc_hook_call_metadata_get(self.call, k.as_ptr())) }
    }
    /// Every entry, in order.
    pub fn to_vec(&self) -> Vec<(String, String)> {
        let n = unsafe { sys::psrpc_hook_call_metadata_count(self.call) };
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let (mut k, mut v): (*const c_char, *const c_char) = (std::ptr::null(), std::ptr::null());
            if unsafe { sys::psrpc_hook_call_metadata_at(self.call, i, &mut k, &mut v) } == sys::PSRPC_OK {
                out.push(unsafe { (cstr(k), cstr(v)) });
            }
        }
        out
    }
    /// Sets `key` to `value`, replacing every entry of `key` (client side
    /// only: a server interceptor gets `failed_precondition`).
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let (k, v) = (to_c(key, "metadata key")?, to_c(value, "metadata value")?);
        crate::error::check(unsafe { sys::psrpc_hook_call_metadata_set(self.call, k.as_ptr(), v.as_ptr()) })
    }
    /// Removes every entry of `key` (client side only).
    pub fn remove(&mut self, key: &str) -> Result<()> {
        let k = to_c(key, "metadata key")?;
        crate::error::check(unsafe { sys::psrpc_hook_call_metadata_set(self.call, k.as_ptr(), std::ptr::null()) })
    }
}

/// Sees every call of a client (see the [module docs](self)).
pub trait ClientInterceptor: Send + Sync + 'static {
    /// Before the call is sent, once per call, on the thread that started it
    /// (inside [`Client::call`](crate::Client::call) and its siblings). An
    /// error fails the call with it: nothing is sent, later interceptors do
    /// not run, the call resolves to the error.
    fn before_send(&self, info: &CallInfo, metadata: &mut HookMetadata<'_>) -> Result<()> {
        let _ = (info, metadata);
        Ok(())
    }
    /// With the call's final outcome, on the loop thread, just before the
    /// call's future is woken (unary: the response; multi: the end; stream:
    /// the open).
    fn on_outcome(&self, info: &CallInfo, outcome: &Outcome) {
        let _ = (info, outcome);
    }
}

/// Sees every request a server handles (see the [module docs](self)).
pub trait ServerInterceptor: Send + Sync + 'static {
    /// Before the handler, on the loop thread. An error rejects the request:
    /// the caller gets it (a stream is closed with it), the handler never
    /// runs.
    fn before_handle(&self, info: &CallInfo, metadata: &HookMetadata<'_>) -> Result<()> {
        let _ = (info, metadata);
        Ok(())
    }
    /// Once the request is answered (a stream: once it ended), on the thread
    /// that answered.
    fn on_outcome(&self, info: &CallInfo, outcome: &Outcome) {
        let _ = (info, outcome);
    }
}

fn ns_time(ns: i64) -> Option<SystemTime> {
    (ns > 0).then(|| UNIX_EPOCH + Duration::from_nanos(ns as u64))
}

unsafe fn call_info(i: *const sys::psrpc_call_info) -> CallInfo {
    let i = &*i;
    let topics = (0..i.topic_count).map(|n| cstr(*i.topics.add(n))).collect();
    CallInfo {
        kind: match i.kind {
            sys::PSRPC_CALL_KIND_MULTI => CallKind::Multi,
            sys::PSRPC_CALL_KIND_STREAM => CallKind::Stream,
            _ => CallKind::Unary,
        },
        role: if i.role == sys::PSRPC_ROLE_SERVER { Role::Server } else { Role::Client },
        service: cstr(i.service),
        method: cstr(i.method),
        topics,
        call_id: i.call_id,
        client_id: cstr(i.client_id),
        server_id: opt_cstr(i.server_id),
        request_id: opt_cstr(i.request_id),
        deadline: ns_time(i.expiry_ns),
    }
}

unsafe fn outcome(o: *const sys::psrpc_call_outcome) -> Outcome {
    let o = &*o;
    Outcome {
        attempts: o.attempts,
        duration: Duration::from_nanos(o.duration_ns.max(0) as u64),
        server_id: opt_cstr(o.server_id),
        error: (!o.error.is_null()).then(|| Error::from_raw(o.error, o.server_id)),
        responses: o.responses,
        errors: o.errors,
    }
}

unsafe fn fail_call(call: *mut sys::psrpc_hook_call, e: &Error) -> c_int {
    let status = match e.code.status() {
        s if s < 0 => s,
        _ => sys::PSRPC_UNKNOWN,
    };
    let msg = CString::new(e.message.replace('\0', " ")).unwrap_or_default();
    sys::psrpc_hook_call_fail(call, status, msg.as_ptr())
}

/// Runs a before-hook, turning an error or a panic into a failed call.
unsafe fn before(call: *mut sys::psrpc_hook_call, f: impl FnOnce(&mut HookMetadata<'_>) -> Result<()>) -> c_int {
    let mut md = HookMetadata { call, _borrow: PhantomData };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut md))) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => fail_call(call, &e),
        Err(p) => fail_call(call, &Error::new(Code::Internal, format!("interceptor panicked: {}", crate::core::panic_message(&*p)))),
    }
}

type ClientBox = Arc<dyn ClientInterceptor>;
type ServerBox = Arc<dyn ServerInterceptor>;

unsafe extern "C" fn client_before(info: *const sys::psrpc_call_info, call: *mut sys::psrpc_hook_call, ud: *mut c_void) -> c_int {
    let i = &*(ud as *const ClientBox);
    before(call, |md| i.before_send(&call_info(info), md))
}

unsafe extern "C" fn client_outcome(info: *const sys::psrpc_call_info, o: *const sys::psrpc_call_outcome, ud: *mut c_void) {
    let i = &*(ud as *const ClientBox);
    crate::core::guard("interceptor on_outcome", (), || i.on_outcome(&call_info(info), &outcome(o)))
}

unsafe extern "C" fn server_before(info: *const sys::psrpc_call_info, call: *mut sys::psrpc_hook_call, ud: *mut c_void) -> c_int {
    let i = &*(ud as *const ServerBox);
    before(call, |md| i.before_handle(&call_info(info), md))
}

unsafe extern "C" fn server_outcome(info: *const sys::psrpc_call_info, o: *const sys::psrpc_call_outcome, ud: *mut c_void) {
    let i = &*(ud as *const ServerBox);
    crate::core::guard("interceptor on_outcome", (), || i.on_outcome(&call_info(info), &outcome(o)))
}

unsafe extern "C" fn release_client(ud: *mut c_void) {
    drop(Box::from_raw(ud as *mut ClientBox));
}

unsafe extern "C" fn release_server(ud: *mut c_void) {
    drop(Box::from_raw(ud as *mut ServerBox));
}

pub(crate) fn add_client(client: *mut sys::psrpc_client, i: ClientBox) -> Result<()> {
    let mut h: sys::psrpc_client_hooks = unsafe { std::mem::zeroed() };
    crate::error::check(unsafe { sys::psrpc_client_hooks_init(&mut h, std::mem::size_of::<sys::psrpc_client_hooks>()) })?;
    h.before_send = Some(client_before);
    h.on_outcome = Some(client_outcome);
    h.user_data = Box::into_raw(Box::new(i)).cast();
    h.release = Some(release_client);
    let st = unsafe { sys::psrpc_client_add_hooks(client, &h) };
    if st != sys::PSRPC_OK {
        let e = Error::last(st);
        unsafe { release_client(h.user_data) };
        return Err(e);
    }
    Ok(())
}

pub(crate) fn add_server(server: *mut sys::psrpc_server, i: ServerBox) -> Result<()> {
    let mut h: sys::psrpc_server_hooks = unsafe { std::mem::zeroed() };
    crate::error::check(unsafe { sys::psrpc_server_hooks_init(&mut h, std::mem::size_of::<sys::psrpc_server_hooks>()) })?;
    h.before_handle = Some(server_before);
    h.on_outcome = Some(server_outcome);
    h.user_data = Box::into_raw(Box::new(i)).cast();
    h.release = Some(release_server);
    let st = unsafe { sys::psrpc_server_add_hooks(server, &h) };
    if st != sys::PSRPC_OK {
        let e = Error::last(st);
        unsafe { release_server(h.user_data) };
        return Err(e);
    }
    Ok(())
}

/// Decides whether a failed attempt is retried (Go's `IsRecoverable`).
pub type RecoverableFn = Arc<dyn Fn(&Error) -> bool + Send + Sync>;
/// Go's `GetRetryParameters`: after failed attempt `n` (1-based), `None`
/// stops, `Some` retries with those parameters.
pub type RetryParamsFn = Arc<dyn Fn(&Error, u32) -> Option<RetryParams> + Send + Sync>;

/// Parameters of the next attempt (see [`RetryOptions::retry_params`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryParams {
    /// Its timeout (`None`: the client's).
    pub timeout: Option<Duration>,
    /// How long to wait before it.
    pub wait: Duration,
}

/// A client's retry policy: livekit/psrpc v0.8.2 `middleware.RetryOptions`
/// (`WithRPCRetries`). Attempt `n` gets the timeout `timeout + (n-1) *
/// backoff` unless the call set its own timeout (which then applies to every
/// attempt); a call's deadline bounds every attempt and the whole call. The
/// next attempt starts at once (as in Go, `backoff` grows the attempt
/// timeout; it is no sleep). Once the deadline passed or the call was
/// cancelled, the call fails with `canceled` "request canceled". Multi calls
/// are never retried (as in Go).
#[derive(Clone, Default)]
pub struct RetryOptions {
    /// Attempts in all; 0 means no limit (Go's zero value): only the
    /// deadline, a cancel or an unrecoverable error ends the call.
    pub max_attempts: u32,
    /// The first attempt's timeout (`None`: the client's).
    pub timeout: Option<Duration>,
    /// Added to the attempt timeout after each failed attempt.
    pub backoff: Duration,
    /// Which errors are retried (default: `deadline_exceeded`,
    /// `unavailable`). Runs on the loop thread: must not block.
    pub is_recoverable: Option<RecoverableFn>,
    /// Overrides all of the above per attempt (Go's `GetRetryParameters`).
    /// Runs on the loop thread: must not block.
    pub retry_params: Option<RetryParamsFn>,
    /// Also retry stream opens (beyond Go, which retries stream sends).
    pub stream_open: bool,
}

impl RetryOptions {
    /// At most `n` attempts, with the defaults otherwise.
    pub fn attempts(n: u32) -> RetryOptions {
        RetryOptions { max_attempts: n, ..RetryOptions::default() }
    }
}

impl std::fmt::Debug for RetryOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryOptions")
            .field("max_attempts", &self.max_attempts)
            .field("timeout", &self.timeout)
            .field("backoff", &self.backoff)
            .field("is_recoverable", &self.is_recoverable.is_some())
            .field("retry_params", &self.retry_params.is_some())
            .field("stream_open", &self.stream_open)
            .finish()
    }
}

/// What the C retry callbacks point at; kept by the client until it is freed.
pub(crate) struct RetryState {
    is_recoverable: Option<RecoverableFn>,
    retry_params: Option<RetryParamsFn>,
}

unsafe extern "C" fn recoverable_cb(e: *const sys::psrpc_error, ud: *mut c_void) -> c_int {
    let s = &*(ud as *const RetryState);
    let f = s.is_recoverable.as_ref().unwrap();
    crate::core::guard("is_recoverable", 0, || f(&Error::from_raw(e, std::ptr::null())) as c_int)
}

unsafe extern "C" fn params_cb(e: *const sys::psrpc_error, attempt: u32, timeout_ms: *mut i64, wait_ms: *mut i64, ud: *mut c_void) -> c_int {
    let s = &*(ud as *const RetryState);
    let f = s.retry_params.as_ref().unwrap();
    crate::core::guard("retry_params", 0, || match f(&Error::from_raw(e, std::ptr::null()), attempt) {
        None => 0,
        Some(p) => {
            *timeout_ms = p.timeout.map_or(0, |d| d.as_millis().clamp(1, i64::MAX as u128) as i64);
            *wait_ms = p.wait.as_millis().min(i64::MAX as u128) as i64;
            1
        }
    })
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// Sets (or clears) the policy; the returned state must outlive the client.
pub(crate) fn set_retries(client: *mut sys::psrpc_client, o: Option<&RetryOptions>) -> Result<Option<Box<RetryState>>> {
    let Some(o) = o else {
        crate::error::check(unsafe {
            sys::psrpc_client_set_retries(client, sys::PSRPC_RETRY_UNARY | sys::PSRPC_RETRY_STREAM_OPEN, std::ptr::null())
        })?;
        return Ok(None);
    };
    let state = Box::new(RetryState { is_recoverable: o.is_recoverable.clone(), retry_params: o.retry_params.clone() });
    let mut r: sys::psrpc_retry_options = unsafe { std::mem::zeroed() };
    crate::error::check(unsafe { sys::psrpc_retry_options_init(&mut r, std::mem::size_of::<sys::psrpc_retry_options>()) })?;
    r.max_attempts = o.max_attempts;
    r.timeout_ms = o.timeout.map_or(0, |d| ms(d).max(1));
    r.backoff_ms = ms(o.backoff);
    r.is_recoverable = o.is_recoverable.as_ref().map(|_| recoverable_cb as _);
    r.retry_params = o.retry_params.as_ref().map(|_| params_cb as _);
    r.user_data = &*state as *const RetryState as *mut c_void;
    let kinds = sys::PSRPC_RETRY_UNARY | if o.stream_open { sys::PSRPC_RETRY_STREAM_OPEN } else { 0 };
    crate::error::check(unsafe { sys::psrpc_client_set_retries(client, kinds, &r) })?;
    if !o.stream_open {
        crate::error::check(unsafe { sys::psrpc_client_set_retries(client, sys::PSRPC_RETRY_STREAM_OPEN, std::ptr::null()) })?;
    }
    Ok(Some(state))
}
