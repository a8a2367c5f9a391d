//! Clients: unary calls, multi calls, subscriptions.
use crate::bus::{closed_cb, Bus};
use crate::core::{decode, encode, guard, resolve_spawner, CStrings, Codec, Method, Payload, Spawn};
use crate::error::{check, cstr, opt_cstr, to_c, Code, Error, Result};
use crate::hooks::{ClientInterceptor, RetryOptions, RetryState};
use crate::trace::TraceContext;
use futures::channel::{mpsc, oneshot};
use futures::{FutureExt, Stream};
use psrpc_sys as sys;
use std::ffi::{c_char, c_void, CString};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Options of [`Client::new`].
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// Default request timeout (libpsrpc's default: 3 s).
    pub timeout: Option<Duration>,
    /// Default selection timeout of affinity calls (default 1 s).
    pub selection_timeout: Option<Duration>,
    /// The client id on the wire (default "CLI_" + 12 random characters).
    pub client_id: Option<String>,
    /// Where async selection functions run (default: the current tokio runtime).
    pub spawner: Option<Arc<dyn Spawn>>,
    /// Interceptors of every call, in order (more: [`Client::add_interceptor`]).
    pub interceptors: Vec<Arc<dyn ClientInterceptor>>,
    /// The retry policy of unary calls (and stream opens, if it says so);
    /// changed later with [`Client::set_retries`].
    pub retries: Option<RetryOptions>,
}

/// One claim seen during server selection.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// The claiming server.
    pub server_id: String,
    /// Its affinity.
    pub affinity: f32,
}

/// A custom server selection function (livekit/psrpc's `SelectionFunc`):
/// given every eligible claim, names the server to use, or fails the call.
pub type SelectFn = Arc<dyn Fn(Vec<Claim>) -> Pin<Box<dyn Future<Output = Result<String>> + Send>> + Send + Sync>;

/// Server selection options (livekit/psrpc's `SelectionOpts`). Setting them
/// replaces all defaults, as in Go: fields left `None` are off.
#[derive(Clone, Default)]
pub struct SelectionOptions {
    /// Claims below are ineligible.
    pub minimum_affinity: Option<f32>,
    /// An eligible claim at least this high is taken at once.
    pub maximum_affinity: Option<f32>,
    /// Take the first eligible claim.
    pub accept_first_available: bool,
    /// Selection deadline.
    pub affinity_timeout: Option<Duration>,
    /// How long to wait after the first eligible claim.
    pub short_circuit_timeout: Option<Duration>,
    /// Custom choice (runs on the client's spawner, never on the loop thread).
    pub select: Option<SelectFn>,
}

/// Per-call options: timeout or deadline, topics, metadata, selection.
#[derive(Clone, Default)]
pub struct CallOptions {
    /// Timeout (default: the client's).
    pub timeout: Option<Duration>,
    /// Absolute deadline: the call ends by then (e.g. [`crate::Context::deadline`]
    /// of the request being handled).
    pub deadline: Option<SystemTime>,
    /// Topics of a method with topics.
    pub topics: Vec<String>,
    /// Request metadata.
    pub metadata: Vec<(String, String)>,
    /// Server selection.
    pub selection: Option<SelectionOptions>,
    /// Wait for a disconnected bus within the deadline.
    pub wait_for_ready: bool,
}

impl CallOptions {
    /// Default options.
    pub fn new() -> CallOptions {
        CallOptions::default()
    }
    /// Sets the timeout.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
    /// Sets an absolute deadline.
    pub fn deadline(mut self, d: SystemTime) -> Self {
        self.deadline = Some(d);
        self
    }
    /// Adds a topic.
    pub fn topic(mut self, t: impl Into<String>) -> Self {
        self.topics.push(t.into());
        self
    }
    /// Adds a metadata entry.
    pub fn metadata(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.metadata.push((k.into(), v.into()));
        self
    }
    /// Sets the selection options.
    pub fn selection(mut self, s: SelectionOptions) -> Self {
        self.selection = Some(s);
        self
    }
    /// Sends this W3C trace context (`traceparent`, `tracestate`),
    /// replacing any in the metadata.
    pub fn trace(mut self, t: &TraceContext) -> Self {
        self.metadata.retain(|(k, _)| k != crate::trace::TRACEPARENT && k != crate::trace::TRACESTATE);
        self.metadata.extend(t.to_metadata());
        self
    }
}

fn ms(d: Option<Duration>) -> i64 {
    d.map_or(0, |d| d.as_millis().clamp(1, i64::MAX as u128) as i64)
}

/// Call options converted for libpsrpc; owns everything the pointers point at.
pub(crate) struct RawCallOptions {
    pub(crate) raw: sys::psrpc_call_options,
    _topics: CStrings,
    _md: Vec<(CString, CString)>,
    _kv: Vec<sys::psrpc_kv>,
    _sel: Option<Box<sys::psrpc_selection_options>>,
}

impl RawCallOptions {
    /// `select_ud`: where the selection trampoline finds its state (None: no
    /// custom selection).
    pub(crate) fn new(o: &CallOptions, select_ud: Option<*mut c_void>) -> Result<RawCallOptions> {
        let topics = CStrings::new(&o.topics, "topic")?;
        let md = o
            .metadata
            .iter()
            .map(|(k, v)| Ok((to_c(k, "metadata key")?, to_c(v, "metadata value")?)))
            .collect::<Result<Vec<_>>>()?;
        let kv: Vec<sys::psrpc_kv> = md.iter().map(|(k, v)| sys::psrpc_kv { key: k.as_ptr(), value: v.as_ptr() }).collect();
        let sel = o.selection.as_ref().map(|s| {
            let mut r: sys::psrpc_selection_options = unsafe { std::mem::zeroed() };
            unsafe { sys::psrpc_selection_options_init(&mut r, std::mem::size_of::<sys::psrpc_selection_options>()) };
            r.flags = if s.accept_first_available { sys::PSRPC_SELECT_ACCEPT_FIRST_AVAILABLE } else { 0 };
            r.minimum_affinity = s.minimum_affinity.unwrap_or(0.0);
            r.maximum_affinity = s.maximum_affinity.unwrap_or(0.0);
            r.affinity_timeout_ms = ms(s.affinity_timeout);
            r.short_circuit_timeout_ms = ms(s.short_circuit_timeout);
            if let (Some(_), Some(ud)) = (&s.select, select_ud) {
                r.select = Some(select_trampoline);
                r.select_user_data = ud;
            }
            Box::new(r)
        });
        let mut raw: sys::psrpc_call_options = unsafe { std::mem::zeroed() };
        unsafe { sys::psrpc_call_options_init(&mut raw, std::mem::size_of::<sys::psrpc_call_options>()) };
        raw.flags = if o.wait_for_ready { sys::PSRPC_CALL_WAIT_FOR_READY } else { 0 };
        raw.timeout_ms = ms(o.timeout);
        raw.topics = topics.ptr();
        raw.topic_count = topics.len();
        raw.metadata = if kv.is_empty() { std::ptr::null() } else { kv.as_ptr() };
        raw.metadata_count = kv.len();
        raw.selection = sel.as_ref().map_or(std::ptr::null(), |b| &**b as *const _);
        raw.deadline_ns = o.deadline.map_or(0, |d| {
            d.duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos().clamp(1, i64::MAX as u128) as i64)
        });
        Ok(RawCallOptions { raw, _topics: topics, _md: md, _kv: kv, _sel: sel })
    }
}

/// State of a custom selection; lives as long as the call.
pub(crate) struct SelectState {
    pub(crate) select: SelectFn,
    pub(crate) spawner: Option<Arc<dyn Spawn>>,
}

struct SendSel(*mut sys::psrpc_selection);
unsafe impl Send for SendSel {}

impl SendSel {
    /// Answers the selection (exactly once).
    fn answer(self, r: Result<String>) {
        let sel = self.0;
        std::mem::forget(self);
        unsafe {
            match r.and_then(|id| to_c(&id, "server id")) {
                Ok(id) => {
                    sys::psrpc_selection_choose(sel, id.as_ptr());
                }
                Err(e) => {
                    let msg = CString::new(e.message.replace('\0', " ")).unwrap();
                    sys::psrpc_selection_fail(sel, e.code.status(), msg.as_ptr());
                }
            }
        }
    }
}

impl Drop for SendSel {
    fn drop(&mut self) {
        // The selection future was dropped (runtime shut down): fail the call.
        let msg = c"selection function dropped";
        unsafe { sys::psrpc_selection_fail(self.0, sys::PSRPC_INTERNAL, msg.as_ptr()) };
    }
}

unsafe extern "C" fn select_trampoline(
    selection: *mut sys::psrpc_selection,
    claims: *const sys::psrpc_claim,
    count: usize,
    ud: *mut c_void,
) {
    let sel = SendSel(selection);
    guard("select", (), move || {
        let state = &*(ud as *const SelectState);
        let claims: Vec<Claim> = (0..count)
            .map(|i| {
                let c = &*claims.add(i);
                Claim { server_id: cstr(c.server_id), affinity: c.affinity }
            })
            .collect();
        let f = state.select.clone();
        let Some(spawner) = state.spawner.clone() else {
            sel.answer(Err(Error::new(Code::Internal, "no spawner for the selection function")));
            return;
        };
        spawner.spawn(Box::pin(async move {
            let r = std::panic::AssertUnwindSafe(async move { f(claims).await }).catch_unwind().await;
            sel.answer(r.unwrap_or_else(|p| {
                Err(Error::new(Code::Internal, format!("selection function panicked: {}", crate::core::panic_message(&*p))))
            }));
        }));
    })
}

pub(crate) struct ClientInner {
    pub(crate) ptr: *mut sys::psrpc_client,
    pub(crate) spawner: Option<Arc<dyn Spawn>>,
    id: String,
    // What retry callbacks point at: kept (every policy ever set, as calls
    // in flight may use an old one) until the client is freed. Boxed: the
    // C side holds their addresses.
    #[allow(clippy::vec_box)]
    retry_states: Mutex<Vec<Box<RetryState>>>,
    _bus: Bus,
}

unsafe impl Send for ClientInner {}
unsafe impl Sync for ClientInner {}

impl Drop for ClientInner {
    fn drop(&mut self) {
        unsafe { sys::psrpc_client_free(self.ptr) }
    }
}

/// A client of one service. Cheap to clone, `Send + Sync`: call it from any
/// task. The last clone closes it when dropped (outstanding calls fail with
/// `canceled`).
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<ClientInner>,
}

/// A response with the id of the server that sent it.
#[derive(Debug, Clone)]
pub struct Reply<T> {
    /// The response message.
    pub message: T,
    /// The answering server.
    pub server_id: String,
}

type CallResult = Result<Reply<Payload>>;

struct CallState {
    tx: Option<oneshot::Sender<CallResult>>,
    _select: Option<Box<SelectState>>,
}

unsafe extern "C" fn call_cb(
    _id: u64,
    response: *const sys::psrpc_msg,
    error: *const sys::psrpc_error,
    server_id: *const c_char,
    ud: *mut c_void,
) {
    let mut state = Box::from_raw(ud.cast::<CallState>());
    guard("call", (), move || {
        let r = if error.is_null() {
            Ok(Reply { message: Payload::retain(response), server_id: opt_cstr(server_id).unwrap_or_default() })
        } else {
            Err(Error::from_raw(error, server_id))
        };
        if let Some(tx) = state.tx.take() {
            let _ = tx.send(r);
        }
    })
}

/// Cancels a call from anywhere (see [`Call::cancel_handle`]).
#[derive(Clone)]
pub struct CancelHandle {
    target: Option<(Arc<ClientInner>, u64)>,
}

impl CancelHandle {
    /// Cancels the call: if still outstanding it completes with `canceled`
    /// "request canceled". Finished calls are not affected.
    pub fn cancel(&self) {
        if let Some((client, id)) = &self.target {
            unsafe { sys::psrpc_client_cancel(client.ptr, *id) };
        }
    }
}

/// A unary call in flight: a future of the response. Dropping it before it
/// completes cancels the request (`psrpc_client_cancel`).
#[must_use = "a call is cancelled when dropped"]
pub struct Call<T> {
    state: CallFuture,
    decode: fn(Reply<Payload>) -> Result<T>,
}

enum CallFuture {
    Failed(Option<Error>),
    Pending { rx: oneshot::Receiver<CallResult>, id: u64, client: Arc<ClientInner>, done: bool },
}

impl<T> Call<T> {
    /// A handle that cancels this call while the future is still awaited
    /// (the future then resolves with `canceled`).
    pub fn cancel_handle(&self) -> CancelHandle {
        match &self.state {
            CallFuture::Pending { id, client, .. } => CancelHandle { target: Some((client.clone(), *id)) },
            CallFuture::Failed(_) => CancelHandle { target: None },
        }
    }
}

impl<T> Future for Call<T> {
    type Output = Result<T>;
    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<T>> {
        let this = self.get_mut();
        match &mut this.state {
            CallFuture::Failed(e) => Poll::Ready(Err(e.take().unwrap_or_else(|| Error::new(Code::Internal, "polled after completion")))),
            CallFuture::Pending { rx, done, .. } => match rx.poll_unpin(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(r) => {
                    *done = true;
                    Poll::Ready(match r {
                        Ok(r) => r.and_then(this.decode),
                        Err(_) => Err(Error::closed("client")),
                    })
                }
            },
        }
    }
}

impl<T> Drop for Call<T> {
    fn drop(&mut self) {
        if let CallFuture::Pending { id, client, done: false, .. } = &self.state {
            unsafe { sys::psrpc_client_cancel(client.ptr, *id) };
        }
    }
}

/// One result of a multi call: a response or a server's error.
pub type MultiItem<T> = Result<Reply<T>>;

enum MultiEvent {
    Item(CallResult),
    Done(Option<Error>),
}

struct MultiState {
    tx: mpsc::UnboundedSender<MultiEvent>,
    _select: Option<Box<SelectState>>,
}

unsafe extern "C" fn multi_result_cb(
    _id: u64,
    response: *const sys::psrpc_msg,
    error: *const sys::psrpc_error,
    server_id: *const c_char,
    ud: *mut c_void,
) {
    guard("multi result", (), || {
        let state = &*(ud as *const MultiState);
        let r = if error.is_null() {
            Ok(Reply { message: Payload::retain(response), server_id: opt_cstr(server_id).unwrap_or_default() })
        } else {
            Err(Error::from_raw(error, server_id))
        };
        let _ = state.tx.unbounded_send(MultiEvent::Item(r));
    })
}

unsafe extern "C" fn multi_done_cb(
    _id: u64,
    _response: *const sys::psrpc_msg,
    error: *const sys::psrpc_error,
    server_id: *const c_char,
    ud: *mut c_void,
) {
    let state = Box::from_raw(ud.cast::<MultiState>());
    guard("multi done", (), move || {
        let e = if error.is_null() { None } else { Some(Error::from_raw(error, server_id)) };
        let _ = state.tx.unbounded_send(MultiEvent::Done(e));
    })
}

/// A multi call in flight: a stream of every server's response (or error),
/// ending when the call's timeout ends the collection. If the call ended
/// otherwise (cancelled, client closed, refused) [`MultiCall::cause`] says
/// why once the stream has ended. Dropping it cancels the call.
#[must_use = "a multi call is cancelled when dropped"]
pub struct MultiCall<T> {
    rx: Option<mpsc::UnboundedReceiver<MultiEvent>>,
    id: u64,
    client: Arc<ClientInner>,
    failed: Option<Error>,
    cause: Option<Error>,
    done: bool,
    _t: PhantomData<fn() -> T>,
}

impl<T> MultiCall<T> {
    /// Why the call ended early (None while running or after a normal end).
    pub fn cause(&self) -> Option<&Error> {
        self.cause.as_ref()
    }

    /// A handle that cancels this call while it is being consumed (the
    /// stream then ends and [`MultiCall::cause`] is `canceled`).
    pub fn cancel_handle(&self) -> CancelHandle {
        if self.failed.is_some() || self.done {
            CancelHandle { target: None }
        } else {
            CancelHandle { target: Some((self.client.clone(), self.id)) }
        }
    }
}

impl<T: Codec> Stream for MultiCall<T> {
    type Item = MultiItem<T>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<MultiItem<T>>> {
        let this = self.get_mut();
        if let Some(e) = this.failed.take() {
            this.done = true;
            this.rx = None;
            this.cause = Some(e);
            return Poll::Ready(None);
        }
        let Some(rx) = this.rx.as_mut() else { return Poll::Ready(None) };
        match futures::StreamExt::poll_next_unpin(rx, cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(MultiEvent::Item(r))) => Poll::Ready(Some(r.and_then(|reply| {
                Ok(Reply {
                    message: decode::<T>(&reply.message, Code::MalformedResult, "response")?,
                    server_id: reply.server_id,
                })
            }))),
            Poll::Ready(Some(MultiEvent::Done(e))) => {
                this.done = true;
                this.rx = None;
                this.cause = e;
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                this.done = true;
                this.rx = None;
                Poll::Ready(None)
            }
        }
    }
}

impl<T> Drop for MultiCall<T> {
    fn drop(&mut self) {
        if !self.done && self.failed.is_none() && self.rx.is_some() {
            unsafe { sys::psrpc_client_cancel(self.client.ptr, self.id) };
        }
    }
}

/// A subscription: a stream of published messages. Dropping it unsubscribes.
pub struct Subscription<T> {
    ptr: *mut sys::psrpc_sub,
    rx: mpsc::UnboundedReceiver<Payload>,
    _client: Arc<ClientInner>,
    _t: PhantomData<fn() -> T>,
}

unsafe impl<T> Send for Subscription<T> {}
unsafe impl<T> Sync for Subscription<T> {}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        unsafe { sys::psrpc_sub_free(self.ptr) }
    }
}

impl<T> Subscription<T> {
    /// Stops delivery; resolves when the subscription is closed.
    pub async fn close(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel::<()>();
        let ud = Box::into_raw(Box::new(tx)).cast::<c_void>();
        let st = unsafe { sys::psrpc_sub_close(self.ptr, Some(closed_cb), ud) };
        if st != sys::PSRPC_OK {
            drop(unsafe { Box::from_raw(ud.cast::<oneshot::Sender<()>>()) });
            return check(st);
        }
        let _ = rx.await;
        Ok(())
    }
}

impl<T: Codec> Stream for Subscription<T> {
    type Item = Result<T>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<T>>> {
        let this = self.get_mut();
        futures::StreamExt::poll_next_unpin(&mut this.rx, cx)
            .map(|o| o.map(|p| decode::<T>(&p, Code::MalformedResult, "published message")))
    }
}

struct SubState {
    tx: mpsc::UnboundedSender<Payload>,
    ready: Mutex<Option<oneshot::Sender<Result<()>>>>,
}

unsafe extern "C" fn sub_message_cb(_sub: *mut sys::psrpc_sub, msg: *const sys::psrpc_msg, ud: *mut c_void) {
    guard("subscription message", (), || {
        let state = &*(ud as *const SubState);
        let _ = state.tx.unbounded_send(Payload::retain(msg));
    })
}

pub(crate) unsafe extern "C" fn ready_cb<S: ReadyState>(error: *const sys::psrpc_error, ud: *mut c_void) {
    guard("ready", (), || {
        let state = &*(ud as *const S);
        let r = if error.is_null() { Ok(()) } else { Err(Error::from_raw(error, std::ptr::null())) };
        if let Some(tx) = state.ready_slot().lock().unwrap().take() {
            let _ = tx.send(r);
        }
    })
}

/// User data holding a one-shot "ready" sender.
pub(crate) trait ReadyState {
    fn ready_slot(&self) -> &Mutex<Option<oneshot::Sender<Result<()>>>>;
}

impl ReadyState for SubState {
    fn ready_slot(&self) -> &Mutex<Option<oneshot::Sender<Result<()>>>> {
        &self.ready
    }
}

pub(crate) unsafe extern "C" fn release_box<T>(ud: *mut c_void) {
    let b = Box::from_raw(ud.cast::<T>());
    guard("release", (), move || drop(b));
}

impl Client {
    /// Creates a client of `service` (the wire service name, e.g. "Counter").
    pub fn new(bus: &Bus, service: &str, options: ClientOptions) -> Result<Client> {
        let service = to_c(service, "service name")?;
        let id = options.client_id.as_deref().map(|s| to_c(s, "client id")).transpose()?;
        let mut o: sys::psrpc_client_options = unsafe { std::mem::zeroed() };
        check(unsafe { sys::psrpc_client_options_init(&mut o, std::mem::size_of::<sys::psrpc_client_options>()) })?;
        o.timeout_ms = ms(options.timeout);
        o.selection_timeout_ms = ms(options.selection_timeout);
        o.client_id = id.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        let mut out = std::ptr::null_mut();
        check(unsafe { sys::psrpc_client_create(&mut out, bus.inner.ptr, service.as_ptr(), &o) })?;
        let id = unsafe { cstr(sys::psrpc_client_id(out)) };
        let client = Client {
            inner: Arc::new(ClientInner {
                ptr: out,
                spawner: resolve_spawner(options.spawner),
                id,
                retry_states: Mutex::new(Vec::new()),
                _bus: bus.clone(),
            }),
        };
        for i in options.interceptors {
            crate::hooks::add_client(client.inner.ptr, i)?;
        }
        if options.retries.is_some() {
            client.set_retries(options.retries.as_ref())?;
        }
        Ok(client)
    }

    /// Adds an interceptor after the others; it sees the calls started
    /// after this returns.
    pub fn add_interceptor(&self, interceptor: impl ClientInterceptor) -> Result<()> {
        crate::hooks::add_client(self.inner.ptr, Arc::new(interceptor))
    }

    /// Sets (`Some`) or clears (`None`) the retry policy of the calls
    /// started after this returns.
    pub fn set_retries(&self, retries: Option<&RetryOptions>) -> Result<()> {
        if let Some(state) = crate::hooks::set_retries(self.inner.ptr, retries)? {
            self.inner.retry_states.lock().unwrap_or_else(|e| e.into_inner()).push(state);
        }
        Ok(())
    }

    /// The client id used on the wire.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    fn select_state(&self, opts: &CallOptions) -> Option<Box<SelectState>> {
        let f = opts.selection.as_ref()?.select.clone()?;
        Some(Box::new(SelectState { select: f, spawner: self.inner.spawner.clone() }))
    }

    /// A unary call with raw bytes; the reply names the answering server.
    pub fn call_raw(&self, method: &Method, request: &[u8], options: &CallOptions) -> Call<Reply<Payload>> {
        self.start_call(method, request, options, Ok)
    }

    /// A unary call: encodes `request`, decodes the response.
    pub fn call<Req: Codec, Resp: Codec>(&self, method: &Method, request: &Req, options: &CallOptions) -> Call<Resp> {
        self.start_call(method, &encode(request), options, |r| decode::<Resp>(&r.message, Code::MalformedResult, "response"))
    }

    fn start_call<T>(
        &self,
        method: &Method,
        request: &[u8],
        options: &CallOptions,
        decode: fn(Reply<Payload>) -> Result<T>,
    ) -> Call<T> {
        let (tx, rx) = oneshot::channel();
        let select = self.select_state(options);
        let sel_ud = select.as_ref().map(|b| &**b as *const SelectState as *mut c_void);
        let raw = match RawCallOptions::new(options, sel_ud) {
            Ok(r) => r,
            Err(e) => return Call { state: CallFuture::Failed(Some(e)), decode },
        };
        let m = method.raw();
        let ud = Box::into_raw(Box::new(CallState { tx: Some(tx), _select: select })).cast::<c_void>();
        let mut id = 0u64;
        let st = unsafe {
            sys::psrpc_client_call(&mut id, self.inner.ptr, &m, request.as_ptr().cast(), request.len(), &raw.raw, Some(call_cb), ud)
        };
        if st != sys::PSRPC_OK {
            let e = Error::last(st);
            drop(unsafe { Box::from_raw(ud.cast::<CallState>()) });
            return Call { state: CallFuture::Failed(Some(e)), decode };
        }
        Call { state: CallFuture::Pending { rx, id, client: self.inner.clone(), done: false }, decode }
    }

    /// A blocking unary call for code outside any async runtime (never call
    /// it from a handler or another async task: it blocks the thread until
    /// the response or the deadline; a custom `select` function is not used).
    /// Fails with `internal` on a loop thread.
    pub fn call_blocking<Req: Codec, Resp: Codec>(&self, method: &Method, request: &Req, options: &CallOptions) -> Result<Resp> {
        let raw = RawCallOptions::new(options, None)?;
        let data = encode(request);
        let m = method.raw();
        let mut out = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        let st = unsafe {
            sys::psrpc_client_call_sync_ex(&mut out, &mut err, self.inner.ptr, &m, data.as_ptr().cast(), data.len(), &raw.raw)
        };
        if st != sys::PSRPC_OK {
            if err.is_null() {
                return Err(Error::last(st));
            }
            let e = unsafe { Error::from_raw(err, std::ptr::null()) };
            unsafe { sys::psrpc_error_free(err) };
            return Err(e);
        }
        let payload = unsafe { Payload::retain(out) };
        unsafe { sys::psrpc_msg_release(out) };
        decode::<Resp>(&payload, Code::MalformedResult, "response")
    }

    /// A multi call (MULTI routing): every server's response as it arrives.
    pub fn call_multi<Req: Codec, Resp: Codec>(&self, method: &Method, request: &Req, options: &CallOptions) -> MultiCall<Resp> {
        let (tx, rx) = mpsc::unbounded();
        let select = self.select_state(options);
        let sel_ud = select.as_ref().map(|b| &**b as *const SelectState as *mut c_void);
        let mut call = MultiCall { rx: Some(rx), id: 0, client: self.inner.clone(), failed: None, cause: None, done: false, _t: PhantomData };
        let raw = match RawCallOptions::new(options, sel_ud) {
            Ok(r) => r,
            Err(e) => {
                call.failed = Some(e);
                return call;
            }
        };
        let data = encode(request);
        let m = method.raw();
        let ud = Box::into_raw(Box::new(MultiState { tx, _select: select })).cast::<c_void>();
        let st = unsafe {
            sys::psrpc_client_call_multi(
                &mut call.id,
                self.inner.ptr,
                &m,
                data.as_ptr().cast(),
                data.len(),
                &raw.raw,
                Some(multi_result_cb),
                Some(multi_done_cb),
                ud,
            )
        };
        if st != sys::PSRPC_OK {
            call.failed = Some(Error::last(st));
            drop(unsafe { Box::from_raw(ud.cast::<MultiState>()) });
        }
        call
    }

    /// Subscribes to a subscription method under `topics`; resolves once the
    /// broker confirmed the subscription.
    pub async fn subscribe<T: Codec, S: AsRef<str>>(&self, method: &Method, topics: &[S]) -> Result<Subscription<T>> {
        let (sub, ready) = self.start_subscribe(method, topics)?;
        ready.await.unwrap_or_else(|_| Err(Error::closed("subscription")))?;
        Ok(sub)
    }

    #[allow(clippy::type_complexity)]
    fn start_subscribe<T: Codec, S: AsRef<str>>(
        &self,
        method: &Method,
        topics: &[S],
    ) -> Result<(Subscription<T>, oneshot::Receiver<Result<()>>)> {
        let (tx, rx) = mpsc::unbounded();
        let (rtx, rrx) = oneshot::channel();
        let topics = CStrings::new(topics, "topic")?;
        let m = method.raw();
        let ud = Box::into_raw(Box::new(SubState { tx, ready: Mutex::new(Some(rtx)) })).cast::<c_void>();
        let mut out = std::ptr::null_mut();
        let st = unsafe {
            sys::psrpc_client_subscribe(
                &mut out,
                self.inner.ptr,
                &m,
                topics.ptr(),
                topics.len(),
                Some(sub_message_cb),
                Some(ready_cb::<SubState>),
                ud,
                Some(release_box::<SubState>),
            )
        };
        if st != sys::PSRPC_OK {
            // Refused: release is never called (the header's rule), free here.
            let e = Error::last(st);
            drop(unsafe { Box::from_raw(ud.cast::<SubState>()) });
            return Err(e);
        }
        Ok((Subscription { ptr: out, rx, _client: self.inner.clone(), _t: PhantomData }, rrx))
    }

    /// Closes the client: outstanding calls fail with `canceled`
    /// "client is closed"; resolves when closed.
    pub async fn close(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel::<()>();
        let ud = Box::into_raw(Box::new(tx)).cast::<c_void>();
        let st = unsafe { sys::psrpc_client_close(self.inner.ptr, Some(closed_cb), ud) };
        if st != sys::PSRPC_OK {
            drop(unsafe { Box::from_raw(ud.cast::<oneshot::Sender<()>>()) });
            return check(st);
        }
        let _ = rx.await;
        Ok(())
    }
}
