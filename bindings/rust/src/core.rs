//! Shared pieces: payloads, methods, message codecs, spawning, FFI helpers.
use crate::error::{to_c, Error, Result};
use psrpc_sys as sys;
use std::borrow::Cow;
use std::ffi::{c_char, CStr, CString};
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::Arc;

/// An immutable, reference-counted byte buffer received from libpsrpc
/// (a retained `psrpc_msg`: no copy). Dereferences to `[u8]`.
pub struct Payload {
    ptr: NonNull<sys::psrpc_msg>,
}

// SAFETY: psrpc_msg is immutable with an atomic refcount (header: any thread).
unsafe impl Send for Payload {}
unsafe impl Sync for Payload {}

impl Payload {
    /// Retains a borrowed message.
    pub(crate) unsafe fn retain(msg: *const sys::psrpc_msg) -> Payload {
        if msg.is_null() {
            return Payload::copy_from(&[]);
        }
        Payload { ptr: NonNull::new(sys::psrpc_msg_retain(msg)).expect("psrpc_msg_retain returned NULL") }
    }

    /// A new payload holding a copy of `data`.
    pub fn copy_from(data: &[u8]) -> Payload {
        let mut out = std::ptr::null_mut();
        let st = unsafe { sys::psrpc_msg_new(&mut out, data.as_ptr().cast(), data.len()) };
        assert_eq!(st, sys::PSRPC_OK, "psrpc_msg_new failed (out of memory)");
        Payload { ptr: NonNull::new(out).unwrap() }
    }
}

impl std::ops::Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        unsafe {
            let p = self.ptr.as_ptr();
            std::slice::from_raw_parts(sys::psrpc_msg_data(p), sys::psrpc_msg_size(p))
        }
    }
}

impl Clone for Payload {
    fn clone(&self) -> Payload {
        unsafe { Payload::retain(self.ptr.as_ptr()) }
    }
}

impl Drop for Payload {
    fn drop(&mut self) {
        unsafe { sys::psrpc_msg_release(self.ptr.as_ptr()) }
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Payload({} bytes)", self.len())
    }
}

/// A message type that travels as protobuf bytes: every `prost::Message`, and
/// [`RawMessage`] for bytes passed through unchanged.
pub trait Codec: Sized + Send + 'static {
    /// Serializes the message.
    fn encode_bytes(&self) -> Vec<u8>;
    /// Parses a message; a failure is reported as `malformed_result` (client
    /// side) or `malformed_request` (server side) by the caller.
    fn decode_bytes(bytes: &[u8]) -> std::result::Result<Self, String>;
}

impl<M: prost::Message + Default + 'static> Codec for M {
    fn encode_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
    fn decode_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        M::decode(bytes).map_err(|e| e.to_string())
    }
}

/// Bytes sent and received as they are (no protobuf encoding by this crate).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawMessage(pub Vec<u8>);

impl Codec for RawMessage {
    fn encode_bytes(&self) -> Vec<u8> {
        self.0.clone()
    }
    fn decode_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        Ok(RawMessage(bytes.to_vec()))
    }
}

/// Routing of a method (livekit/psrpc's `psrpc.Routing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// One server of a queue gets each request.
    Queue,
    /// Servers claim requests with an affinity; the client selects one.
    Affinity,
    /// Every server answers (multi calls); every subscriber gets every message.
    Multi,
}

/// Method flags (livekit/psrpc's method options).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MethodFlags(pub u32);

impl MethodFlags {
    /// No flags.
    pub const NONE: MethodFlags = MethodFlags(0);
    /// Server publishes, clients subscribe.
    pub const SUBSCRIPTION: MethodFlags = MethodFlags(sys::PSRPC_METHOD_SUBSCRIPTION);
    /// The method takes topics.
    pub const TOPICS: MethodFlags = MethodFlags(sys::PSRPC_METHOD_TOPICS);
    /// Bidirectional stream.
    pub const STREAM: MethodFlags = MethodFlags(sys::PSRPC_METHOD_STREAM);
    /// `topic_params.single_server`: no claim handshake.
    pub const SINGLE_SERVER: MethodFlags = MethodFlags(sys::PSRPC_METHOD_SINGLE_SERVER);

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: MethodFlags) -> bool {
        self.0 & other.0 == other.0
    }
    /// Both sets of flags (usable in `const`).
    pub const fn union(self, other: MethodFlags) -> MethodFlags {
        MethodFlags(self.0 | other.0)
    }
}

impl std::ops::BitOr for MethodFlags {
    type Output = MethodFlags;
    fn bitor(self, rhs: MethodFlags) -> MethodFlags {
        self.union(rhs)
    }
}

/// What both sides must agree on about a method: its wire name, routing,
/// flags and (for subscriptions) the full protobuf name of its output type.
/// Generated code (`psrpc-build`) defines one `const` per method.
#[derive(Debug, Clone)]
pub struct Method {
    name: Cow<'static, CStr>,
    output_type: Option<Cow<'static, CStr>>,
    routing: Routing,
    flags: MethodFlags,
}

impl Method {
    /// A method from static strings (what generated code uses).
    pub const fn from_static(name: &'static CStr, output_type: &'static CStr, routing: Routing, flags: MethodFlags) -> Method {
        Method { name: Cow::Borrowed(name), output_type: Some(Cow::Borrowed(output_type)), routing, flags }
    }

    /// A method from run-time strings. `output_type` is the full protobuf
    /// name of the response message ("pkg.Msg"); subscriptions need it.
    pub fn new(name: &str, output_type: Option<&str>, routing: Routing, flags: MethodFlags) -> Result<Method> {
        Ok(Method {
            name: Cow::Owned(to_c(name, "method name")?),
            output_type: match output_type {
                Some(t) => Some(Cow::Owned(to_c(t, "output type")?)),
                None => None,
            },
            routing,
            flags,
        })
    }

    /// The wire name ("AddValue").
    pub fn name(&self) -> &str {
        self.name.to_str().unwrap_or("")
    }
    /// The routing.
    pub fn routing(&self) -> Routing {
        self.routing
    }
    /// The flags.
    pub fn flags(&self) -> MethodFlags {
        self.flags
    }

    pub(crate) fn raw(&self) -> sys::psrpc_method {
        sys::psrpc_method {
            struct_size: std::mem::size_of::<sys::psrpc_method>() as u32,
            routing: match self.routing {
                Routing::Queue => sys::PSRPC_ROUTING_QUEUE,
                Routing::Affinity => sys::PSRPC_ROUTING_AFFINITY,
                Routing::Multi => sys::PSRPC_ROUTING_MULTI,
            },
            flags: self.flags.0,
            reserved: 0,
            name: self.name.as_ptr(),
            output_type: self.output_type.as_ref().map_or(std::ptr::null(), |t| t.as_ptr()),
        }
    }

    pub(crate) fn c_name(&self) -> &CStr {
        &self.name
    }
}

/// One row of a generated method table (what protoc-gen-psrpc derives).
#[derive(Debug, Clone)]
pub struct MethodInfo {
    /// Wire name of the service.
    pub service: &'static str,
    /// The method.
    pub method: Method,
    /// Full protobuf name of the input type.
    pub input_type: &'static str,
    /// Full protobuf name of the output type.
    pub output_type: &'static str,
    /// Number of topic parameters (0 without topics).
    pub topic_params: u32,
}

impl MethodInfo {
    /// livekit/psrpc's RegisterMethod flags: (affinity, multi, require_claim, queue).
    pub fn register_flags(&self) -> (bool, bool, bool, bool) {
        let r = self.method.routing();
        let multi = r == Routing::Multi;
        (r == Routing::Affinity, multi, !multi && !self.method.flags().contains(MethodFlags::SINGLE_SERVER), r == Routing::Queue)
    }
}

/// A boxed, sendable future (what [`Spawn`] runs).
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Runs futures: handlers, affinity and selection functions never run on
/// libpsrpc's loop thread, they are spawned here. With the `tokio` feature
/// (default) a `tokio::runtime::Handle` is one, and the current runtime is
/// taken when none is given.
pub trait Spawn: Send + Sync + 'static {
    /// Runs `fut` to completion somewhere (never blocking the caller).
    fn spawn(&self, fut: BoxFuture);
}

#[cfg(feature = "tokio")]
impl Spawn for tokio::runtime::Handle {
    fn spawn(&self, fut: BoxFuture) {
        drop(tokio::runtime::Handle::spawn(self, fut));
    }
}

/// The spawner to use: the given one, else the current tokio runtime.
pub(crate) fn resolve_spawner(given: Option<Arc<dyn Spawn>>) -> Option<Arc<dyn Spawn>> {
    if given.is_some() {
        return given;
    }
    #[cfg(feature = "tokio")]
    if let Ok(h) = tokio::runtime::Handle::try_current() {
        return Some(Arc::new(h));
    }
    None
}

/// Topics as C strings plus the pointer array libpsrpc takes.
pub(crate) struct CStrings {
    _owned: Vec<CString>,
    ptrs: Vec<*const c_char>,
}

impl CStrings {
    pub(crate) fn new<S: AsRef<str>>(items: &[S], what: &str) -> Result<CStrings> {
        let owned = items.iter().map(|s| to_c(s.as_ref(), what)).collect::<Result<Vec<_>>>()?;
        let ptrs = owned.iter().map(|c| c.as_ptr()).collect();
        Ok(CStrings { _owned: owned, ptrs })
    }
    pub(crate) fn ptr(&self) -> *const *const c_char {
        if self.ptrs.is_empty() {
            std::ptr::null()
        } else {
            self.ptrs.as_ptr()
        }
    }
    pub(crate) fn len(&self) -> usize {
        self.ptrs.len()
    }
}

/// Runs trampoline code, catching any panic: a panic never unwinds into C.
pub(crate) fn guard<R>(what: &str, default: R, f: impl FnOnce() -> R) -> R {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            eprintln!("psrpc: panic in {what} callback: {}", panic_message(&*p));
            default
        }
    }
}

pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

/// A raw pointer that may cross threads (libpsrpc handles are thread-safe).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SendPtr<T>(pub *mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

pub(crate) fn encode<M: Codec>(m: &M) -> Vec<u8> {
    m.encode_bytes()
}

pub(crate) fn decode<M: Codec>(bytes: &[u8], code: crate::Code, what: &str) -> Result<M> {
    M::decode_bytes(bytes).map_err(|e| Error::new(code, format!("bad {what}: {e}")))
}
