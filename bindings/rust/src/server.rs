//! Servers: handlers of unary, multi and stream methods, affinity, publishing.
use crate::bus::{closed_cb, Bus};
use crate::client::{ready_cb, release_box, CallOptions, ReadyState};
use crate::core::{decode, encode, guard, panic_message, resolve_spawner, CStrings, Codec, Method, Payload, SendPtr, Spawn};
use crate::error::{check, cstr, to_c, Code, Error, Result};
use crate::hooks::ServerInterceptor;
use crate::trace::TraceContext;
use crate::stream::{Stream, StreamShared};
use futures::channel::oneshot;
use futures::FutureExt;
use psrpc_sys as sys;
use std::ffi::{c_void, CString};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Options of [`Server::new`].
#[derive(Clone, Default)]
pub struct ServerOptions {
    /// The server id on the wire (default "SRV_" + 12 random characters).
    pub server_id: Option<String>,
    /// Server stream timeout (default 3 s).
    pub timeout: Option<Duration>,
    /// Answer queue requests with an announcement instead of a claim
    /// (livekit/psrpc's `WithServerSkipClaim`).
    pub skip_claim: bool,
    /// Where handlers run (default: the current tokio runtime).
    pub spawner: Option<Arc<dyn Spawn>>,
    /// Interceptors of every request, in order (more: [`Server::add_interceptor`]).
    pub interceptors: Vec<Arc<dyn ServerInterceptor>>,
}

/// A request's metadata: key/value pairs in the order sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata(pub Vec<(String, String)>);

impl Metadata {
    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A request handed to a handler: the decoded message, metadata, topics.
#[derive(Debug, Clone)]
pub struct Request<T> {
    /// The request message.
    pub message: T,
    /// Metadata sent with the request.
    pub metadata: Metadata,
    /// The topics it was sent under.
    pub topics: Vec<String>,
}

impl<T> Request<T> {
    /// The message.
    pub fn into_inner(self) -> T {
        self.message
    }
    /// The message, borrowed.
    pub fn get_ref(&self) -> &T {
        &self.message
    }
}

/// About the request being handled: who sent it, its deadline.
#[derive(Debug, Clone)]
pub struct Context {
    /// The request (or stream) id.
    pub request_id: String,
    /// The caller's client id.
    pub client_id: String,
    /// The method's wire name.
    pub method: String,
    /// This server's id.
    pub server_id: String,
    /// When the caller sent it.
    pub sent_at: SystemTime,
    /// The request's deadline (its expiry).
    pub deadline: SystemTime,
    /// The W3C trace context the request carried (`traceparent`,
    /// `tracestate` metadata), if any.
    pub trace: Option<TraceContext>,
}

impl Context {
    /// Call options for a nested call that must end by this request's
    /// deadline and continues its trace (a child of [`Context::trace`]).
    pub fn call_options(&self) -> CallOptions {
        let o = CallOptions::new().deadline(self.deadline);
        match &self.trace {
            Some(t) => o.trace(&t.child()),
            None => o,
        }
    }
    /// Time left until the deadline (zero once past).
    pub fn remaining(&self) -> Duration {
        self.deadline.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO)
    }
}

fn ns_to_time(ns: i64) -> SystemTime {
    if ns <= 0 {
        UNIX_EPOCH
    } else {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }
}

/// An unanswered request. Dropping it fails the request (`internal`), so a
/// request is always answered exactly once.
struct PendingRequest(SendPtr<sys::psrpc_request>);

impl PendingRequest {
    fn take(&mut self) -> *mut sys::psrpc_request {
        std::mem::replace(&mut self.0 .0, std::ptr::null_mut())
    }

    fn respond(mut self, data: &[u8]) {
        let r = self.take();
        unsafe { sys::psrpc_request_respond(r, data.as_ptr().cast(), data.len()) };
    }

    fn fail(mut self, e: &Error) {
        let r = self.take();
        let code = CString::new(e.code.as_str().replace('\0', " ")).unwrap();
        let msg = CString::new(e.message.replace('\0', " ")).unwrap();
        let urls: Vec<CString> = e.details.iter().map(|d| CString::new(d.type_url.replace('\0', " ")).unwrap()).collect();
        let details: Vec<sys::psrpc_error_detail> = e
            .details
            .iter()
            .zip(&urls)
            .map(|(d, u)| sys::psrpc_error_detail { type_url: u.as_ptr(), value: d.value.as_ptr(), value_len: d.value.len() })
            .collect();
        // Always consumes the request.
        unsafe {
            sys::psrpc_request_fail_details(
                r,
                code.as_ptr(),
                msg.as_ptr(),
                if details.is_empty() { std::ptr::null() } else { details.as_ptr() },
                details.len(),
            )
        };
    }

}

/// An unanswered affinity question: dropping it declines
/// (`psrpc_request_abandon` in the affinity stage).
struct PendingClaim(PendingRequest);

impl Drop for PendingRequest {
    fn drop(&mut self) {
        let r = self.take();
        if !r.is_null() {
            // Handler stage: fails with internal; affinity stage: declines.
            let m = c"request dropped without an answer";
            unsafe { sys::psrpc_request_abandon(r, sys::PSRPC_INTERNAL, m.as_ptr()) };
        }
    }
}

unsafe fn request_info(r: *const sys::psrpc_request, server_id: &str) -> (Metadata, Vec<String>, Context) {
    let mut md = Vec::new();
    for i in 0..sys::psrpc_request_metadata_count(r) {
        let (mut k, mut v) = (std::ptr::null(), std::ptr::null());
        if sys::psrpc_request_metadata_at(r, i, &mut k, &mut v) == sys::PSRPC_OK {
            md.push((cstr(k), cstr(v)));
        }
    }
    let topics = (0..sys::psrpc_request_topic_count(r)).map(|i| cstr(sys::psrpc_request_topic(r, i))).collect();
    let ctx = Context {
        request_id: cstr(sys::psrpc_request_id(r)),
        client_id: cstr(sys::psrpc_request_client_id(r)),
        method: cstr(sys::psrpc_request_method(r)),
        server_id: server_id.to_string(),
        sent_at: ns_to_time(sys::psrpc_request_sent_at_ns(r)),
        deadline: ns_to_time(sys::psrpc_request_expiry_ns(r)),
        trace: None,
    };
    let md = Metadata(md);
    let ctx = Context { trace: TraceContext::from_metadata(&md), ..ctx };
    (md, topics, ctx)
}

/// A boxed handler future.
pub type HandlerFuture<T> = Pin<Box<dyn Future<Output = Result<T>> + Send>>;
type RawHandler = Arc<dyn Fn(Request<Payload>, Context) -> HandlerFuture<Vec<u8>> + Send + Sync>;
type RawStreamHandler = Arc<dyn Fn(Arc<StreamShared>, Request<()>, Context) -> HandlerFuture<()> + Send + Sync>;
type AffinityFn = Arc<dyn Fn(Request<Payload>, Context) -> Pin<Box<dyn Future<Output = f32> + Send>> + Send + Sync>;

enum Kind {
    Unary(RawHandler),
    Stream(RawStreamHandler),
}

struct Registration {
    kind: Kind,
    affinity: Option<AffinityFn>,
    spawner: Arc<dyn Spawn>,
    server_id: String,
    ready: Mutex<Option<oneshot::Sender<Result<()>>>>,
}

impl ReadyState for Registration {
    fn ready_slot(&self) -> &Mutex<Option<oneshot::Sender<Result<()>>>> {
        &self.ready
    }
}

unsafe extern "C" fn handler_trampoline(req: *mut sys::psrpc_request, ud: *mut c_void) {
    let pending = PendingRequest(SendPtr(req));
    guard("handler", (), move || {
        let reg = &*(ud as *const Registration);
        let Kind::Unary(h) = &reg.kind else { return };
        let (metadata, topics, ctx) = request_info(req, &reg.server_id);
        let payload = Payload::retain(sys::psrpc_request_payload(req));
        let h = h.clone();
        reg.spawner.spawn(Box::pin(async move {
            let fut = std::panic::AssertUnwindSafe(async move { h(Request { message: payload, metadata, topics }, ctx).await });
            match fut.catch_unwind().await {
                Ok(Ok(bytes)) => pending.respond(&bytes),
                Ok(Err(e)) => pending.fail(&e),
                Err(p) => pending.fail(&Error::new(Code::Internal, format!("handler panicked: {}", panic_message(&*p)))),
            }
        }));
    })
}

unsafe extern "C" fn affinity_trampoline(req: *mut sys::psrpc_request, ud: *mut c_void) {
    let pending = PendingClaim(PendingRequest(SendPtr(req)));
    guard("affinity", (), move || {
        let reg = &*(ud as *const Registration);
        let Some(f) = reg.affinity.clone() else {
            let mut pending = pending;
            sys::psrpc_request_claim(pending.0.take(), 1.0);
            return;
        };
        let (metadata, topics, ctx) = request_info(req, &reg.server_id);
        let payload = Payload::retain(sys::psrpc_request_payload(req));
        reg.spawner.spawn(Box::pin(async move {
            let fut = std::panic::AssertUnwindSafe(async move { f(Request { message: payload, metadata, topics }, ctx).await });
            if let Ok(a) = fut.catch_unwind().await {
                let mut pending = pending;
                let r = pending.0.take();
                sys::psrpc_request_claim(r, a);
            }
            // A panic: `pending` drops and declines.
        }));
    })
}

unsafe extern "C" fn stream_trampoline(stream: *mut sys::psrpc_stream, ud: *mut c_void) {
    let owned = crate::stream::OwnedStream(SendPtr(stream));
    guard("stream handler", (), move || {
        let reg = &*(ud as *const Registration);
        let Kind::Stream(h) = &reg.kind else { return };
        let shared = StreamShared::attach_server(owned);
        let (metadata, ctx) = crate::stream::stream_info(stream, &reg.server_id);
        let h = h.clone();
        reg.spawner.spawn(Box::pin(async move {
            let s2 = shared.clone();
            let fut = std::panic::AssertUnwindSafe(async move { h(s2, Request { message: (), metadata, topics: Vec::new() }, ctx).await });
            match fut.catch_unwind().await {
                Ok(Ok(())) => shared.close_with(None),
                Ok(Err(e)) => shared.close_with(Some(&e)),
                Err(p) => shared.close_with(Some(&Error::new(Code::Internal, format!("handler panicked: {}", panic_message(&*p))))),
            }
        }));
    })
}

pub(crate) struct ServerInner {
    ptr: *mut sys::psrpc_server,
    spawner: Option<Arc<dyn Spawn>>,
    id: String,
    _bus: Bus,
}

unsafe impl Send for ServerInner {}
unsafe impl Sync for ServerInner {}

impl Drop for ServerInner {
    fn drop(&mut self) {
        unsafe { sys::psrpc_server_free(self.ptr) }
    }
}

/// A server of one service. Cheap to clone, `Send + Sync`; the last clone
/// closes it when dropped.
#[derive(Clone)]
pub struct Server {
    inner: Arc<ServerInner>,
}

impl Server {
    /// Creates a server of `service` (the wire service name).
    pub fn new(bus: &Bus, service: &str, options: ServerOptions) -> Result<Server> {
        let service = to_c(service, "service name")?;
        let id = options.server_id.as_deref().map(|s| to_c(s, "server id")).transpose()?;
        let mut o: sys::psrpc_server_options = unsafe { std::mem::zeroed() };
        check(unsafe { sys::psrpc_server_options_init(&mut o, std::mem::size_of::<sys::psrpc_server_options>()) })?;
        o.flags = if options.skip_claim { sys::PSRPC_SERVER_SKIP_CLAIM } else { 0 };
        o.timeout_ms = options.timeout.map_or(0, |d| d.as_millis().clamp(1, i64::MAX as u128) as i64);
        o.server_id = id.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        let mut out = std::ptr::null_mut();
        check(unsafe { sys::psrpc_server_create(&mut out, bus.inner.ptr, service.as_ptr(), &o) })?;
        let id = unsafe { cstr(sys::psrpc_server_id(out)) };
        let server = Server { inner: Arc::new(ServerInner { ptr: out, spawner: resolve_spawner(options.spawner), id, _bus: bus.clone() }) };
        for i in options.interceptors {
            crate::hooks::add_server(server.inner.ptr, i)?;
        }
        Ok(server)
    }

    /// Adds an interceptor after the others; it sees the requests received
    /// after this returns.
    pub fn add_interceptor(&self, interceptor: impl ServerInterceptor) -> Result<()> {
        crate::hooks::add_server(self.inner.ptr, Arc::new(interceptor))
    }

    /// The server id used on the wire.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    fn spawner(&self) -> Result<Arc<dyn Spawn>> {
        self.inner.spawner.clone().ok_or_else(|| {
            Error::new(Code::FailedPrecondition, "no spawner: create the server inside a tokio runtime or set ServerOptions::spawner")
        })
    }

    async fn register_raw<S: AsRef<str>>(&self, method: &Method, topics: &[S], kind: Kind, affinity: Option<AffinityFn>) -> Result<()> {
        let rx = self.start_register(method, topics, kind, affinity)?;
        rx.await.unwrap_or_else(|_| Err(Error::closed("server")))
    }

    fn start_register<S: AsRef<str>>(
        &self,
        method: &Method,
        topics: &[S],
        kind: Kind,
        affinity: Option<AffinityFn>,
    ) -> Result<oneshot::Receiver<Result<()>>> {
        let topics = CStrings::new(topics, "topic")?;
        let (tx, rx) = oneshot::channel();
        let is_stream = matches!(kind, Kind::Stream(_));
        let has_affinity = affinity.is_some();
        let reg = Box::new(Registration {
            kind,
            affinity,
            spawner: self.spawner()?,
            server_id: self.inner.id.clone(),
            ready: Mutex::new(Some(tx)),
        });
        let ud = Box::into_raw(reg).cast::<c_void>();
        let m = method.raw();
        let aff: sys::psrpc_affinity_cb = if has_affinity { Some(affinity_trampoline) } else { None };
        let st = unsafe {
            if is_stream {
                sys::psrpc_server_register_stream(
                    self.inner.ptr,
                    &m,
                    topics.ptr(),
                    topics.len(),
                    Some(stream_trampoline),
                    aff,
                    Some(ready_cb::<Registration>),
                    ud,
                    Some(release_box::<Registration>),
                )
            } else {
                sys::psrpc_server_register(
                    self.inner.ptr,
                    &m,
                    topics.ptr(),
                    topics.len(),
                    Some(handler_trampoline),
                    aff,
                    Some(ready_cb::<Registration>),
                    ud,
                    Some(release_box::<Registration>),
                )
            }
        };
        if st != sys::PSRPC_OK {
            // Refused: release is never called (the header's rule), free here.
            let e = Error::last(st);
            drop(unsafe { Box::from_raw(ud.cast::<Registration>()) });
            return Err(e);
        }
        Ok(rx)
    }

    /// Registers a handler of a unary or multi method under `topics`
    /// (empty: none); resolves once the broker confirmed the registration.
    /// The handler runs on the server's spawner, never on the loop thread;
    /// its error (code, message, details) is what the caller receives, and
    /// a panic becomes an `internal` error.
    pub async fn register<Req, Resp, F, Fut, S>(&self, method: &Method, topics: &[S], handler: F) -> Result<()>
    where
        Req: Codec,
        Resp: Codec,
        F: Fn(Request<Req>, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp>> + Send + 'static,
        S: AsRef<str>,
    {
        self.register_with_affinity::<Req, Resp, F, Fut, S, fn(Request<Req>, Context) -> std::future::Ready<f32>, std::future::Ready<f32>>(
            method, topics, handler, None,
        )
        .await
    }

    /// [`Server::register`] with an affinity function (AFFINITY routing): the
    /// server claims each request with the affinity it returns (negative:
    /// declines).
    pub async fn register_with_affinity<Req, Resp, F, Fut, S, A, AFut>(
        &self,
        method: &Method,
        topics: &[S],
        handler: F,
        affinity: Option<A>,
    ) -> Result<()>
    where
        Req: Codec,
        Resp: Codec,
        F: Fn(Request<Req>, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp>> + Send + 'static,
        S: AsRef<str>,
        A: Fn(Request<Req>, Context) -> AFut + Send + Sync + 'static,
        AFut: Future<Output = f32> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let raw: RawHandler = Arc::new(move |req: Request<Payload>, ctx: Context| {
            let handler = handler.clone();
            Box::pin(async move {
                let message = decode::<Req>(&req.message, Code::MalformedRequest, "request")?;
                let resp = handler(Request { message, metadata: req.metadata, topics: req.topics }, ctx).await?;
                Ok(encode(&resp))
            })
        });
        let aff = affinity.map(|a| {
            let a = Arc::new(a);
            let f: AffinityFn = Arc::new(move |req: Request<Payload>, ctx: Context| {
                let a = a.clone();
                Box::pin(async move {
                    match decode::<Req>(&req.message, Code::MalformedRequest, "request") {
                        Ok(message) => a(Request { message, metadata: req.metadata, topics: req.topics }, ctx).await,
                        // An undecodable request: claim it so the handler answers malformed_request.
                        Err(_) => 1.0,
                    }
                })
            });
            f
        });
        self.register_raw(method, topics, Kind::Unary(raw), aff).await
    }

    /// Registers a stream method: `handler` gets each accepted stream; when
    /// it returns the stream is closed (cleanly on `Ok`, with the error
    /// otherwise). `affinity` (None: 1.0) is asked per open with the opener's
    /// metadata.
    pub async fn register_stream<Out, In, F, Fut, S, A, AFut>(
        &self,
        method: &Method,
        topics: &[S],
        handler: F,
        affinity: Option<A>,
    ) -> Result<()>
    where
        Out: Codec,
        In: Codec,
        F: Fn(Stream<Out, In>, Request<()>, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
        S: AsRef<str>,
        A: Fn(Request<()>, Context) -> AFut + Send + Sync + 'static,
        AFut: Future<Output = f32> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let raw: RawStreamHandler = Arc::new(move |shared, req, ctx| {
            let handler = handler.clone();
            Box::pin(async move { handler(Stream::from_shared(shared), req, ctx).await })
        });
        let aff = affinity.map(|a| {
            let a = Arc::new(a);
            let f: AffinityFn = Arc::new(move |req: Request<Payload>, ctx: Context| {
                let a = a.clone();
                Box::pin(async move { a(Request { message: (), metadata: req.metadata, topics: req.topics }, ctx).await })
            });
            f
        });
        self.register_raw(method, topics, Kind::Stream(raw), aff).await
    }

    /// Stops serving `method` under `topics`.
    pub fn deregister<S: AsRef<str>>(&self, method: &Method, topics: &[S]) -> Result<()> {
        let topics = CStrings::new(topics, "topic")?;
        check(unsafe { sys::psrpc_server_deregister(self.inner.ptr, method.c_name().as_ptr(), topics.ptr(), topics.len()) })
    }

    /// Publishes `message` on a subscription method under `topics`
    /// (fire and forget, as in Go).
    pub fn publish<M: Codec, S: AsRef<str>>(&self, method: &Method, topics: &[S], message: &M) -> Result<()> {
        let topics = CStrings::new(topics, "topic")?;
        let data = encode(message);
        let m = method.raw();
        check(unsafe { sys::psrpc_server_publish(self.inner.ptr, &m, topics.ptr(), topics.len(), data.as_ptr().cast(), data.len()) })
    }

    /// Closes the server: stops receiving, waits until every request handed
    /// to a handler was answered (unless `force`), then resolves.
    pub async fn close(&self, force: bool) -> Result<()> {
        let (tx, rx) = oneshot::channel::<()>();
        let ud = Box::into_raw(Box::new(tx)).cast::<c_void>();
        let flags = if force { sys::PSRPC_CLOSE_FORCE } else { 0 };
        let st = unsafe { sys::psrpc_server_close(self.inner.ptr, flags, Some(closed_cb), ud) };
        if st != sys::PSRPC_OK {
            drop(unsafe { Box::from_raw(ud.cast::<oneshot::Sender<()>>()) });
            return check(st);
        }
        let _ = rx.await;
        Ok(())
    }
}
