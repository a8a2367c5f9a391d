//! Bidirectional streams: a `Sink` + `Stream` pair over `psrpc_stream`.
use crate::client::{release_box, CallOptions, Client, RawCallOptions};
use crate::core::{decode, encode, guard, Codec, Method, Payload, SendPtr};
use crate::error::{cstr, Code, Error, Result};
use crate::server::{Context, Metadata};
use futures::channel::{mpsc, oneshot};
use futures::{FutureExt, Sink};
use psrpc_sys as sys;
use std::ffi::{c_int, c_void, CString};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

/// Our reference to a `psrpc_stream`; freed (closing cleanly if open) on drop.
pub(crate) struct OwnedStream(pub(crate) SendPtr<sys::psrpc_stream>);

impl Drop for OwnedStream {
    fn drop(&mut self) {
        unsafe { sys::psrpc_stream_free(self.0 .0) }
    }
}

pub(crate) enum Event {
    /// A message and its deferred-ack token: acknowledged when the
    /// application takes it, so the peer's send resolves only then.
    Msg(Payload, Option<u64>),
    Closed(Error),
}

/// Messages acknowledged on arrival while fewer than this many wait unread;
/// beyond, each is acknowledged only when the application takes it (the
/// peer's sends then wait, or time out, instead of piling up here).
pub(crate) const STREAM_BUFFER: usize = 100;

struct CbState {
    tx: mpsc::UnboundedSender<Event>,
    queued: Arc<AtomicUsize>,
    open: Mutex<Option<oneshot::Sender<Result<()>>>>,
    cause: Arc<Mutex<Option<Error>>>,
}

/// What both halves of a stream share.
pub(crate) struct StreamShared {
    stream: OwnedStream,
    queued: Arc<AtomicUsize>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    cause: Arc<Mutex<Option<Error>>>,
}

unsafe extern "C" fn on_message(s: *mut sys::psrpc_stream, msg: *const sys::psrpc_msg, ud: *mut c_void) -> c_int {
    guard("stream message", 1, || {
        let st = &*(ud as *const CbState);
        if st.tx.is_closed() {
            return 1; // nobody reads any more: not acknowledged
        }
        let token = if st.queued.fetch_add(1, Ordering::SeqCst) < STREAM_BUFFER {
            None // buffered: acknowledged now
        } else {
            let mut t = 0u64;
            (sys::psrpc_stream_defer(s, &mut t) == sys::PSRPC_OK).then_some(t)
        };
        match st.tx.unbounded_send(Event::Msg(Payload::retain(msg), token)) {
            Ok(()) => 0,
            Err(_) => {
                if let Some(t) = token {
                    sys::psrpc_stream_ack(s, t, 0);
                }
                1
            }
        }
    })
}

unsafe extern "C" fn on_close(_s: *mut sys::psrpc_stream, cause: *const sys::psrpc_error, ud: *mut c_void) {
    guard("stream close", (), || {
        let st = &*(ud as *const CbState);
        let e = Error::from_raw(cause, std::ptr::null());
        *st.cause.lock().unwrap() = Some(e.clone());
        if let Some(tx) = st.open.lock().unwrap().take() {
            let _ = tx.send(Err(e.clone()));
        }
        let _ = st.tx.unbounded_send(Event::Closed(e));
        st.tx.close_channel();
    })
}

unsafe extern "C" fn on_open(error: *const sys::psrpc_error, ud: *mut c_void) {
    guard("stream open", (), || {
        let st = &*(ud as *const CbState);
        let r = if error.is_null() { Ok(()) } else { Err(Error::from_raw(error, std::ptr::null())) };
        if let Some(tx) = st.open.lock().unwrap().take() {
            let _ = tx.send(r);
        }
    })
}

unsafe extern "C" fn send_done(error: *const sys::psrpc_error, ud: *mut c_void) {
    let tx = Box::from_raw(ud.cast::<oneshot::Sender<Result<()>>>());
    guard("stream send", (), move || {
        let r = if error.is_null() { Ok(()) } else { Err(Error::from_raw(error, std::ptr::null())) };
        let _ = tx.send(r);
    })
}

/// Whether a close cause is a clean close ("stream closed").
fn is_clean(e: &Error) -> bool {
    e.code == Code::Canceled && e.message == "stream closed"
}

impl StreamShared {
    /// Takes a server-side stream handed to the stream handler: sets its
    /// callbacks at once (on the loop thread, so nothing is held back).
    pub(crate) fn attach_server(stream: OwnedStream) -> Arc<StreamShared> {
        let (tx, rx) = mpsc::unbounded();
        let cause = Arc::new(Mutex::new(None));
        let queued = Arc::new(AtomicUsize::new(0));
        let ud = Box::into_raw(Box::new(CbState { tx, queued: queued.clone(), open: Mutex::new(None), cause: cause.clone() }))
            .cast::<c_void>();
        let st = unsafe {
            sys::psrpc_stream_set_callbacks(stream.0 .0, Some(on_message), Some(on_close), ud, Some(release_box::<CbState>))
        };
        if st != sys::PSRPC_OK {
            drop(unsafe { Box::from_raw(ud.cast::<CbState>()) });
        }
        Arc::new(StreamShared { stream, queued, rx: Mutex::new(Some(rx)), cause })
    }

    fn ptr(&self) -> *mut sys::psrpc_stream {
        self.stream.0 .0
    }

    /// Closes: cleanly (None) or with an error, whose code string travels
    /// unchanged (`psrpc_stream_close_code`), custom codes included.
    pub(crate) fn close_with(&self, e: Option<&Error>) {
        match e {
            None => unsafe {
                sys::psrpc_stream_close(self.ptr(), 0, std::ptr::null());
            },
            Some(e) => {
                let code = CString::new(e.code.as_str().replace('\0', " ")).unwrap();
                let msg = CString::new(e.message.replace('\0', " ")).unwrap();
                let code = if code.as_bytes().is_empty() { CString::new("unknown").unwrap() } else { code };
                unsafe { sys::psrpc_stream_close_code(self.ptr(), code.as_ptr(), msg.as_ptr()) };
            }
        }
    }

    fn send_bytes(&self, data: &[u8], timeout: Option<Duration>) -> SendFuture {
        let (tx, rx) = oneshot::channel();
        let ud = Box::into_raw(Box::new(tx)).cast::<c_void>();
        let t = timeout.map_or(0, |d| d.as_millis().clamp(1, i64::MAX as u128) as i64);
        let st = unsafe { sys::psrpc_stream_send(self.ptr(), data.as_ptr().cast(), data.len(), t, Some(send_done), ud) };
        if st != sys::PSRPC_OK {
            drop(unsafe { Box::from_raw(ud.cast::<oneshot::Sender<Result<()>>>()) });
            return SendFuture(SendState::Failed(Some(Error::last(st))));
        }
        SendFuture(SendState::Pending(rx))
    }
}

pub(crate) unsafe fn stream_info(s: *const sys::psrpc_stream, server_id: &str) -> (Metadata, Context) {
    let mut md = Vec::new();
    for i in 0..sys::psrpc_stream_metadata_count(s) {
        let (mut k, mut v) = (std::ptr::null(), std::ptr::null());
        if sys::psrpc_stream_metadata_at(s, i, &mut k, &mut v) == sys::PSRPC_OK {
            md.push((cstr(k), cstr(v)));
        }
    }
    let now = SystemTime::now();
    let ctx = Context {
        request_id: cstr(sys::psrpc_stream_id(s)),
        client_id: cstr(sys::psrpc_stream_node_id(s)),
        method: cstr(sys::psrpc_stream_method(s)),
        server_id: server_id.to_string(),
        sent_at: now,
        // A stream has no overall deadline.
        deadline: now + Duration::from_secs(365 * 24 * 3600),
        trace: None,
    };
    let md = Metadata(md);
    let ctx = Context { trace: crate::trace::TraceContext::from_metadata(&md), ..ctx };
    (md, ctx)
}

/// A send in flight: resolves when the peer acknowledged the message, or
/// fails (`deadline_exceeded` when it did not in time, the close cause when
/// the stream closed first).
#[must_use = "the send's outcome is only known by awaiting it"]
pub struct SendFuture(SendState);

enum SendState {
    Failed(Option<Error>),
    Pending(oneshot::Receiver<Result<()>>),
}

impl Future for SendFuture {
    type Output = Result<()>;
    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        match &mut self.get_mut().0 {
            SendState::Failed(e) => Poll::Ready(Err(e.take().unwrap_or_else(|| Error::closed("stream")))),
            SendState::Pending(rx) => rx.poll_unpin(cx).map(|r| r.unwrap_or_else(|_| Err(Error::closed("stream")))),
        }
    }
}

/// A bidirectional stream: sends `Out`, receives `In`. As a
/// `futures::Stream` it yields each received message; it ends after a clean
/// close, and yields the cause as an error first when the stream closed with
/// one. Up to 100 received messages are buffered (acknowledged on arrival,
/// as livekit/psrpc's receive channel does); beyond that a message is
/// acknowledged only when it is taken from the stream (deferred acks), so a
/// peer that outruns this side waits in `send().await`, or times out, instead
/// of filling memory. Dropping every handle closes the stream cleanly.
pub struct Stream<Out, In> {
    shared: Arc<StreamShared>,
    rx: Option<mpsc::UnboundedReceiver<Event>>,
    _t: PhantomData<fn(Out) -> In>,
}

impl<Out: Codec, In: Codec> Stream<Out, In> {
    pub(crate) fn from_shared(shared: Arc<StreamShared>) -> Stream<Out, In> {
        let rx = shared.rx.lock().unwrap().take();
        Stream { shared, rx, _t: PhantomData }
    }

    /// Sends a message; resolves on the peer's acknowledgement.
    pub fn send(&self, message: &Out) -> SendFuture {
        self.shared.send_bytes(&encode(message), None)
    }

    /// [`Stream::send`] with a timeout of its own.
    pub fn send_timeout(&self, message: &Out, timeout: Duration) -> SendFuture {
        self.shared.send_bytes(&encode(message), Some(timeout))
    }

    /// Closes the stream, cleanly (`None`: the peer sees `canceled` "stream
    /// closed") or with an error. Idempotent.
    pub fn close(&self, error: Option<&Error>) {
        self.shared.close_with(error)
    }

    /// Why the stream closed, once it has.
    pub fn close_cause(&self) -> Option<Error> {
        self.shared.cause.lock().unwrap().clone()
    }

    /// The stream id.
    pub fn id(&self) -> String {
        unsafe { cstr(sys::psrpc_stream_id(self.shared.ptr())) }
    }

    /// Splits into a sending half (`Sink`, cloneable) and a receiving half.
    pub fn split(self) -> (StreamSender<Out>, StreamReceiver<In>) {
        let mut this = self;
        let rx = this.rx.take();
        let shared = this.shared.clone();
        (
            StreamSender { shared: shared.clone(), pending: None, _t: PhantomData },
            StreamReceiver { shared, rx, _t: PhantomData },
        )
    }
}

fn poll_events<In: Codec>(
    shared: &StreamShared,
    rx: &mut Option<mpsc::UnboundedReceiver<Event>>,
    cx: &mut TaskContext<'_>,
) -> Poll<Option<Result<In>>> {
    let Some(r) = rx.as_mut() else { return Poll::Ready(None) };
    match futures::StreamExt::poll_next_unpin(r, cx) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Some(Event::Msg(p, token))) => {
            shared.queued.fetch_sub(1, Ordering::SeqCst);
            if let Some(t) = token {
                // Taken by the application: the peer's send completes now.
                unsafe { sys::psrpc_stream_ack(shared.ptr(), t, 1) };
            }
            Poll::Ready(Some(decode::<In>(&p, Code::MalformedResult, "stream message")))
        }
        Poll::Ready(Some(Event::Closed(e))) => {
            *rx = None;
            if is_clean(&e) {
                Poll::Ready(None)
            } else {
                Poll::Ready(Some(Err(e)))
            }
        }
        Poll::Ready(None) => {
            *rx = None;
            Poll::Ready(None)
        }
    }
}

impl<Out: Codec, In: Codec> futures::Stream for Stream<Out, In> {
    type Item = Result<In>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<In>>> {
        let this = self.get_mut();
        poll_events(&this.shared, &mut this.rx, cx)
    }
}

/// The receiving half of a [`Stream`].
pub struct StreamReceiver<In> {
    shared: Arc<StreamShared>,
    rx: Option<mpsc::UnboundedReceiver<Event>>,
    _t: PhantomData<fn() -> In>,
}

impl<In> StreamReceiver<In> {
    /// Why the stream closed, once it has.
    pub fn close_cause(&self) -> Option<Error> {
        self.shared.cause.lock().unwrap().clone()
    }
}

impl<In: Codec> futures::Stream for StreamReceiver<In> {
    type Item = Result<In>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<In>>> {
        let this = self.get_mut();
        poll_events(&this.shared, &mut this.rx, cx)
    }
}

/// The sending half of a [`Stream`]: `send().await` resolves on the peer's
/// acknowledgement; as a `Sink` one message is in flight at a time and
/// `close` closes the stream cleanly.
pub struct StreamSender<Out> {
    shared: Arc<StreamShared>,
    pending: Option<SendFuture>,
    _t: PhantomData<fn(Out)>,
}

impl<Out> Clone for StreamSender<Out> {
    fn clone(&self) -> Self {
        StreamSender { shared: self.shared.clone(), pending: None, _t: PhantomData }
    }
}

impl<Out: Codec> StreamSender<Out> {
    /// Sends a message; resolves on the peer's acknowledgement.
    pub fn send(&self, message: &Out) -> SendFuture {
        self.shared.send_bytes(&encode(message), None)
    }
    /// Closes the stream (see [`Stream::close`]).
    pub fn close(&self, error: Option<&Error>) {
        self.shared.close_with(error)
    }
}

impl<Out: Codec> Sink<Out> for StreamSender<Out> {
    type Error = Error;
    fn poll_ready(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        self.poll_flush(cx)
    }
    fn start_send(self: Pin<&mut Self>, item: Out) -> Result<()> {
        let this = self.get_mut();
        this.pending = Some(this.shared.send_bytes(&encode(&item), None));
        Ok(())
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        match this.pending.as_mut() {
            None => Poll::Ready(Ok(())),
            Some(f) => match f.poll_unpin(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(r) => {
                    this.pending = None;
                    Poll::Ready(r)
                }
            },
        }
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        let r = futures::ready!(Pin::new(&mut *this).poll_flush(cx));
        this.shared.close_with(None);
        Poll::Ready(r)
    }
}

impl Client {
    /// Opens a stream to one server of a stream method; resolves once a
    /// server acknowledged the open (or it failed).
    pub async fn open_stream<Out: Codec, In: Codec>(&self, method: &Method, options: &CallOptions) -> Result<Stream<Out, In>> {
        let (shared, opened) = self.start_stream(method, options)?;
        opened.await.unwrap_or_else(|_| Err(Error::closed("stream")))?;
        Ok(Stream::from_shared(shared))
    }

    fn start_stream(&self, method: &Method, options: &CallOptions) -> Result<(Arc<StreamShared>, oneshot::Receiver<Result<()>>)> {
        let raw = RawCallOptions::new(options, None)?;
        let (tx, rx) = mpsc::unbounded();
        let (otx, orx) = oneshot::channel();
        let cause = Arc::new(Mutex::new(None));
        let queued = Arc::new(AtomicUsize::new(0));
        let ud = Box::into_raw(Box::new(CbState { tx, queued: queued.clone(), open: Mutex::new(Some(otx)), cause: cause.clone() }))
            .cast::<c_void>();
        let m = method.raw();
        let mut out = std::ptr::null_mut();
        let st = unsafe {
            sys::psrpc_client_open_stream(
                &mut out,
                self.inner.ptr,
                &m,
                &raw.raw,
                Some(on_open),
                Some(on_message),
                Some(on_close),
                ud,
                Some(release_box::<CbState>),
            )
        };
        if st != sys::PSRPC_OK {
            // Refused: release is never called (the header's rule), free here.
            let e = Error::last(st);
            drop(unsafe { Box::from_raw(ud.cast::<CbState>()) });
            return Err(e);
        }
        Ok((Arc::new(StreamShared { stream: OwnedStream(SendPtr(out)), queued, rx: Mutex::new(Some(rx)), cause }), orx))
    }
}
