//! Raw declarations of libpsrpc's C ABI, `capi/psrpc.h`, and nothing else.
//!
//! Every type, constant and function of the header is declared here by hand,
//! with the header's names. `tests/abi.rs` fails when these declarations drift
//! from the header: it compiles a small C program that prints every struct's
//! size and field offsets and every constant, compares them with this crate's,
//! and checks that the set of functions declared here is the set the header
//! exports (and, by linking them all, that the library has them).
//!
//! The thread and ownership rules are the header's (see its THREADS and
//! OWNERSHIP sections): every callback runs on the bus's loop thread and must
//! not block; one-shot callbacks fire exactly once when the call that took them
//! returned `PSRPC_OK`; long-lived registrations release their user data
//! exactly once. The safe layer is the `psrpc` crate.
#![allow(non_camel_case_types)]
#![no_std]

use core::ffi::{c_char, c_int, c_uint, c_void};

// ---------------------------------------------------------------------------
// Version
// ---------------------------------------------------------------------------

/// `PSRPC_VERSION_MAJOR` of the header these declarations follow.
pub const PSRPC_VERSION_MAJOR: c_uint = 0;
/// `PSRPC_VERSION_MINOR`.
pub const PSRPC_VERSION_MINOR: c_uint = 1;
/// `PSRPC_VERSION_PATCH`.
pub const PSRPC_VERSION_PATCH: c_uint = 0;
/// `PSRPC_VERSION_HEX`.
pub const PSRPC_VERSION_HEX: c_uint =
    (PSRPC_VERSION_MAJOR << 16) | (PSRPC_VERSION_MINOR << 8) | PSRPC_VERSION_PATCH;
/// `PSRPC_VERSION_STRING`.
pub const PSRPC_VERSION_STRING: &str = "0.1.0";
/// `PSRPC_WIRE_VERSION_STRING`: the livekit/psrpc release spoken on the wire.
pub const PSRPC_WIRE_VERSION_STRING: &str = "v0.8.2";

// ---------------------------------------------------------------------------
// Status codes (enum psrpc_status)
// ---------------------------------------------------------------------------

/// `psrpc_status`: 0 on success, a negative code on failure.
pub type psrpc_status = c_int;

/// Generates the status constants and [`PSRPC_STATUS_TABLE`].
macro_rules! statuses {
    ($($name:ident = $value:expr, $code:expr;)*) => {
        $(
            #[doc = concat!("`", stringify!($name), "` (wire code `", $code, "`).")]
            pub const $name: psrpc_status = $value;
        )*
        /// Every status of `PSRPC_STATUS_MAP`: (constant name, value, wire
        /// code string; `None` for the local-only codes).
        pub const PSRPC_STATUS_TABLE: &[(&str, psrpc_status, Option<&str>)] = &[
            $((stringify!($name), $value, if $code.is_empty() && $value < -99 { None } else { Some($code) }),)*
        ];
    };
}

statuses! {
    PSRPC_OK = 0, "";
    PSRPC_CANCELED = -1, "canceled";
    PSRPC_UNKNOWN = -2, "unknown";
    PSRPC_INVALID_ARGUMENT = -3, "invalid_argument";
    PSRPC_MALFORMED_REQUEST = -4, "malformed_request";
    PSRPC_DEADLINE_EXCEEDED = -5, "deadline_exceeded";
    PSRPC_NOT_FOUND = -6, "not_found";
    PSRPC_ALREADY_EXISTS = -7, "already_exists";
    PSRPC_PERMISSION_DENIED = -8, "permission_denied";
    PSRPC_RESOURCE_EXHAUSTED = -9, "resource_exhausted";
    PSRPC_FAILED_PRECONDITION = -10, "failed_precondition";
    PSRPC_ABORTED = -11, "aborted";
    PSRPC_OUT_OF_RANGE = -12, "out_of_range";
    PSRPC_UNIMPLEMENTED = -13, "unimplemented";
    PSRPC_INTERNAL = -14, "internal";
    PSRPC_MALFORMED_RESULT = -15, "malformed_result";
    PSRPC_UNAVAILABLE = -16, "unavailable";
    PSRPC_DATA_LOSS = -17, "data_loss";
    PSRPC_UNAUTHENTICATED = -18, "unauthenticated";
    PSRPC_NOT_ACCEPTABLE = -19, "not_acceptable";
    PSRPC_UNPROCESSABLE_ENTITY = -20, "unprocessable_entity";
    PSRPC_UPSTREAM_SERVER_ERROR = -21, "upstream_server_error";
    PSRPC_UPSTREAM_CLIENT_ERROR = -22, "upstream_client_error";
    PSRPC_WOULD_DEADLOCK = -100, "";
    PSRPC_NOT_SUPPORTED = -101, "";
}

// ---------------------------------------------------------------------------
// Structs
// ---------------------------------------------------------------------------

/// One error detail: a `google.protobuf.Any` (type URL + serialized bytes).
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct psrpc_error_detail {
    pub type_url: *const c_char,
    pub value: *const u8,
    pub value_len: usize,
}

/// An error delivered to a callback; everything is borrowed for the callback.
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct psrpc_error {
    pub status: i32,
    pub reserved: u32,
    pub code: *const c_char,
    pub message: *const c_char,
    pub details: *const psrpc_error_detail,
    pub details_count: usize,
}

/// A string key/value pair (request metadata).
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct psrpc_kv {
    pub key: *const c_char,
    pub value: *const c_char,
}

/// What both sides must agree on about a method.
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct psrpc_method {
    pub struct_size: u32,
    pub routing: u32,
    pub flags: u32,
    pub reserved: u32,
    pub name: *const c_char,
    pub output_type: *const c_char,
}

/// Bus options; initialise with [`psrpc_bus_options_init`].
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct psrpc_bus_options {
    pub struct_size: u32,
    pub flags: u32,
    pub max_message_size: i64,
    pub queue_capacity: i64,
    pub connect_timeout_ms: i64,
    pub ping_interval_ms: i64,
    pub reconnect_wait_ms: i64,
    pub reconnect_wait_max_ms: i64,
    pub compress_threshold: i64,
    pub reconnect_buffer_size: i64,
    pub tls_ca_file: *const c_char,
    pub tls_cert_file: *const c_char,
    pub tls_key_file: *const c_char,
    pub tls_server_name: *const c_char,
    pub nats_creds_file: *const c_char,
    pub nats_nkey_seed_file: *const c_char,
    pub channel_prefix: *const c_char,
}

/// Counters of a bus.
#[repr(C)]
#[derive(Debug, Copy, Clone, Default)]
pub struct psrpc_bus_stats {
    pub struct_size: u32,
    pub reserved: u32,
    pub connects: u64,
    pub disconnects: u64,
    pub reconnect_attempts: u64,
    pub subscriptions: u64,
    pub messages_published: u64,
    pub messages_received: u64,
    pub dropped_malformed: u64,
    pub dropped_oversize: u64,
    pub dropped_slow_consumer: u64,
    pub dropped_expired: u64,
    pub dropped_unknown: u64,
    pub requests_in_flight: u64,
    pub streams_open: u64,
    /// V2: requests dropped instead of claimed (held-request limit).
    pub dropped_held_limit: u64,
}

/// Client options; initialise with [`psrpc_client_options_init`].
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct psrpc_client_options {
    pub struct_size: u32,
    pub flags: u32,
    pub timeout_ms: i64,
    pub selection_timeout_ms: i64,
    pub client_id: *const c_char,
}

/// One claim seen during server selection.
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct psrpc_claim {
    pub server_id: *const c_char,
    pub affinity: f32,
    pub reserved: u32,
}

/// Server selection options (livekit/psrpc's SelectionOpts).
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct psrpc_selection_options {
    pub struct_size: u32,
    pub flags: u32,
    pub minimum_affinity: f32,
    pub maximum_affinity: f32,
    pub affinity_timeout_ms: i64,
    pub short_circuit_timeout_ms: i64,
    pub select: psrpc_select_cb,
    pub select_user_data: *mut c_void,
}

/// Per-call options; initialise with [`psrpc_call_options_init`].
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct psrpc_call_options {
    pub struct_size: u32,
    pub flags: u32,
    pub timeout_ms: i64,
    pub topics: *const *const c_char,
    pub topic_count: usize,
    pub metadata: *const psrpc_kv,
    pub metadata_count: usize,
    pub selection: *const psrpc_selection_options,
    pub deadline_ns: i64,
}

/// Server options; initialise with [`psrpc_server_options_init`].
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct psrpc_server_options {
    pub struct_size: u32,
    pub flags: u32,
    pub timeout_ms: i64,
    pub server_id: *const c_char,
}

/// Declares opaque handle types.
macro_rules! opaque {
    ($($name:ident),*) => {$(
        #[doc = concat!("Opaque `", stringify!($name), "` handle.")]
        #[repr(C)]
        pub struct $name {
            _private: [u8; 0],
            _marker: core::marker::PhantomData<(*mut u8, core::marker::PhantomPinned)>,
        }
    )*};
}
opaque!(psrpc_msg, psrpc_bus, psrpc_client, psrpc_selection, psrpc_sub, psrpc_server, psrpc_request, psrpc_stream);

// ---------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------

/// `psrpc.Routing` QUEUE.
pub const PSRPC_ROUTING_QUEUE: u32 = 0;
/// `psrpc.Routing` AFFINITY.
pub const PSRPC_ROUTING_AFFINITY: u32 = 1;
/// `psrpc.Routing` MULTI.
pub const PSRPC_ROUTING_MULTI: u32 = 2;
/// Method flag: server publishes, clients subscribe.
pub const PSRPC_METHOD_SUBSCRIPTION: u32 = 0x1;
/// Method flag: the method takes topics.
pub const PSRPC_METHOD_TOPICS: u32 = 0x2;
/// Method flag: bidirectional stream.
pub const PSRPC_METHOD_STREAM: u32 = 0x4;
/// Method flag: topic_params.single_server (no claim handshake).
pub const PSRPC_METHOD_SINGLE_SERVER: u32 = 0x8;
/// `sizeof(psrpc_method)` of ABI version 1.
pub const PSRPC_METHOD_SIZE_V1: usize = 32;
/// Bus flag: use TLS even if the URL scheme does not say so.
pub const PSRPC_BUS_TLS: u32 = 0x1;
/// `sizeof(psrpc_bus_options)` of ABI version 1.
pub const PSRPC_BUS_OPTIONS_SIZE_V1: usize = 128;
/// Bus state: connected and subscribed.
pub const PSRPC_BUS_CONNECTED: c_int = 1;
/// Bus state: lost, reconnecting.
pub const PSRPC_BUS_DISCONNECTED: c_int = 2;
/// Bus state: closed (the last state reported).
pub const PSRPC_BUS_CLOSED: c_int = 3;
/// `sizeof(psrpc_bus_stats)` of ABI version 1.
pub const PSRPC_BUS_STATS_SIZE_V1: usize = 112;
/// `sizeof(psrpc_bus_stats)` of ABI version 2 (`dropped_held_limit`).
pub const PSRPC_BUS_STATS_SIZE_V2: usize = 120;
/// `sizeof(psrpc_client_options)` of ABI version 1.
pub const PSRPC_CLIENT_OPTIONS_SIZE_V1: usize = 32;
/// Selection flag: take the first eligible claim.
pub const PSRPC_SELECT_ACCEPT_FIRST_AVAILABLE: u32 = 0x1;
/// `sizeof(psrpc_selection_options)` of ABI version 1.
pub const PSRPC_SELECTION_OPTIONS_SIZE_V1: usize = 48;
/// Call flag: wait for a disconnected bus within the deadline.
pub const PSRPC_CALL_WAIT_FOR_READY: u32 = 0x1;
/// `sizeof(psrpc_call_options)` of ABI version 1.
pub const PSRPC_CALL_OPTIONS_SIZE_V1: usize = 64;
/// Server flag: answer queue requests with an announcement instead of a claim.
pub const PSRPC_SERVER_SKIP_CLAIM: u32 = 0x1;
/// `sizeof(psrpc_server_options)` of ABI version 1.
pub const PSRPC_SERVER_OPTIONS_SIZE_V1: usize = 24;
/// Server close flag: do not wait for in-flight requests.
pub const PSRPC_CLOSE_FORCE: u32 = 0x1;

// ---------------------------------------------------------------------------
// Callback types
// ---------------------------------------------------------------------------

/// Releases user data; runs once, on the loop thread.
pub type psrpc_release_cb = Option<unsafe extern "C" fn(user_data: *mut c_void)>;
/// A handle finished closing.
pub type psrpc_closed_cb = Option<unsafe extern "C" fn(user_data: *mut c_void)>;
/// A one-shot outcome: error is NULL on success.
pub type psrpc_done_cb = Option<unsafe extern "C" fn(error: *const psrpc_error, user_data: *mut c_void)>;
/// A bus state change.
pub type psrpc_bus_state_cb =
    Option<unsafe extern "C" fn(state: c_int, error: *const psrpc_error, user_data: *mut c_void)>;
/// Custom server selection.
pub type psrpc_select_cb = Option<
    unsafe extern "C" fn(
        selection: *mut psrpc_selection,
        claims: *const psrpc_claim,
        count: usize,
        user_data: *mut c_void,
    ),
>;
/// A call's outcome.
pub type psrpc_call_cb = Option<
    unsafe extern "C" fn(
        call_id: u64,
        response: *const psrpc_msg,
        error: *const psrpc_error,
        server_id: *const c_char,
        user_data: *mut c_void,
    ),
>;
/// A subscription message.
pub type psrpc_message_cb =
    Option<unsafe extern "C" fn(sub: *mut psrpc_sub, msg: *const psrpc_msg, user_data: *mut c_void)>;
/// A request to handle.
pub type psrpc_handler_cb = Option<unsafe extern "C" fn(request: *mut psrpc_request, user_data: *mut c_void)>;
/// An affinity question for a claim method.
pub type psrpc_affinity_cb = Option<unsafe extern "C" fn(request: *mut psrpc_request, user_data: *mut c_void)>;
/// A message received on a stream; return 0 to accept it.
pub type psrpc_stream_message_cb = Option<
    unsafe extern "C" fn(stream: *mut psrpc_stream, msg: *const psrpc_msg, user_data: *mut c_void) -> c_int,
>;
/// The stream ended; cause is never NULL.
pub type psrpc_stream_close_cb =
    Option<unsafe extern "C" fn(stream: *mut psrpc_stream, cause: *const psrpc_error, user_data: *mut c_void)>;
/// A new stream accepted by a server.
pub type psrpc_stream_handler_cb = Option<unsafe extern "C" fn(stream: *mut psrpc_stream, user_data: *mut c_void)>;

// ---------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------

/// Declares the functions and [`function_table`] (every declared function's
/// name and address: taking the addresses makes a program that calls it link
/// only against a library that exports them all).
macro_rules! functions {
    ($($(#[$meta:meta])* pub fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?;)*) => {
        extern "C" {
            $($(#[$meta])* pub fn $name($($arg: $ty),*) $(-> $ret)?;)*
        }
        /// Name and address of every function declared by this crate.
        #[doc(hidden)]
        pub fn function_table() -> &'static [(&'static str, usize)] {
            const N: usize = [$(stringify!($name)),*].len();
            static TABLE: [(&str, unsafe extern "C" fn()); N] = [$((stringify!($name), unsafe {
                core::mem::transmute::<*const (), unsafe extern "C" fn()>($name as *const ())
            })),*];
            // SAFETY: (&str, fn pointer) and (&str, usize) have the same layout.
            unsafe { core::mem::transmute::<&[(&str, unsafe extern "C" fn())], &[(&str, usize)]>(&TABLE[..]) }
        }
    };
}

functions! {
    pub fn psrpc_version() -> c_uint;
    pub fn psrpc_version_string() -> *const c_char;
    pub fn psrpc_status_name(status: c_int) -> *const c_char;
    pub fn psrpc_status_str(status: c_int) -> *const c_char;
    pub fn psrpc_status_code(status: c_int) -> *const c_char;
    pub fn psrpc_status_from_code(code: *const c_char) -> c_int;
    pub fn psrpc_last_error() -> *const c_char;
    pub fn psrpc_last_error_status() -> c_int;
    pub fn psrpc_clear_error();
    pub fn psrpc_error_copy(out: *mut *mut psrpc_error, error: *const psrpc_error) -> psrpc_status;
    pub fn psrpc_error_free(error: *mut psrpc_error);

    pub fn psrpc_msg_new(out: *mut *mut psrpc_msg, data: *const c_void, len: usize) -> psrpc_status;
    pub fn psrpc_msg_data(msg: *const psrpc_msg) -> *const u8;
    pub fn psrpc_msg_size(msg: *const psrpc_msg) -> usize;
    pub fn psrpc_msg_retain(msg: *const psrpc_msg) -> *mut psrpc_msg;
    pub fn psrpc_msg_release(msg: *const psrpc_msg);

    pub fn psrpc_bus_options_init(opts: *mut psrpc_bus_options, struct_size: usize) -> psrpc_status;
    pub fn psrpc_bus_open(out: *mut *mut psrpc_bus, url: *const c_char, opts: *const psrpc_bus_options) -> psrpc_status;
    pub fn psrpc_bus_close(bus: *mut psrpc_bus, closed_cb: psrpc_closed_cb, user_data: *mut c_void) -> psrpc_status;
    pub fn psrpc_bus_free(bus: *mut psrpc_bus);
    pub fn psrpc_bus_release(bus: *mut psrpc_bus);
    pub fn psrpc_bus_watch(bus: *mut psrpc_bus, cb: psrpc_bus_state_cb, user_data: *mut c_void, release: psrpc_release_cb) -> psrpc_status;
    pub fn psrpc_bus_wait_ready(bus: *mut psrpc_bus, timeout_ms: i64) -> psrpc_status;
    pub fn psrpc_bus_get_stats(bus: *mut psrpc_bus, out: *mut psrpc_bus_stats) -> psrpc_status;

    pub fn psrpc_client_options_init(opts: *mut psrpc_client_options, struct_size: usize) -> psrpc_status;
    pub fn psrpc_selection_choose(selection: *mut psrpc_selection, server_id: *const c_char) -> psrpc_status;
    pub fn psrpc_selection_fail(selection: *mut psrpc_selection, status: c_int, message: *const c_char) -> psrpc_status;
    pub fn psrpc_call_options_init(opts: *mut psrpc_call_options, struct_size: usize) -> psrpc_status;
    pub fn psrpc_selection_options_init(opts: *mut psrpc_selection_options, struct_size: usize) -> psrpc_status;
    pub fn psrpc_client_create(out: *mut *mut psrpc_client, bus: *mut psrpc_bus, service: *const c_char, opts: *const psrpc_client_options) -> psrpc_status;
    pub fn psrpc_client_id(client: *const psrpc_client) -> *const c_char;
    pub fn psrpc_client_call(call_id_out: *mut u64, client: *mut psrpc_client, method: *const psrpc_method, data: *const c_void, len: usize, opts: *const psrpc_call_options, cb: psrpc_call_cb, user_data: *mut c_void) -> psrpc_status;
    pub fn psrpc_client_call_multi(call_id_out: *mut u64, client: *mut psrpc_client, method: *const psrpc_method, data: *const c_void, len: usize, opts: *const psrpc_call_options, on_result: psrpc_call_cb, on_done: psrpc_call_cb, user_data: *mut c_void) -> psrpc_status;
    pub fn psrpc_client_cancel(client: *mut psrpc_client, call_id: u64) -> psrpc_status;
    pub fn psrpc_client_call_sync(out: *mut *mut psrpc_msg, client: *mut psrpc_client, method: *const psrpc_method, data: *const c_void, len: usize, opts: *const psrpc_call_options) -> psrpc_status;
    pub fn psrpc_client_call_sync_ex(out: *mut *mut psrpc_msg, error_out: *mut *mut psrpc_error, client: *mut psrpc_client, method: *const psrpc_method, data: *const c_void, len: usize, opts: *const psrpc_call_options) -> psrpc_status;
    pub fn psrpc_client_subscribe(out: *mut *mut psrpc_sub, client: *mut psrpc_client, method: *const psrpc_method, topics: *const *const c_char, topic_count: usize, on_message: psrpc_message_cb, on_ready: psrpc_done_cb, user_data: *mut c_void, release: psrpc_release_cb) -> psrpc_status;
    pub fn psrpc_sub_wait_ready(sub: *mut psrpc_sub, timeout_ms: i64) -> psrpc_status;
    pub fn psrpc_sub_close(sub: *mut psrpc_sub, closed_cb: psrpc_closed_cb, user_data: *mut c_void) -> psrpc_status;
    pub fn psrpc_sub_free(sub: *mut psrpc_sub);
    pub fn psrpc_client_close(client: *mut psrpc_client, closed_cb: psrpc_closed_cb, user_data: *mut c_void) -> psrpc_status;
    pub fn psrpc_client_free(client: *mut psrpc_client);

    pub fn psrpc_server_options_init(opts: *mut psrpc_server_options, struct_size: usize) -> psrpc_status;
    pub fn psrpc_server_create(out: *mut *mut psrpc_server, bus: *mut psrpc_bus, service: *const c_char, opts: *const psrpc_server_options) -> psrpc_status;
    pub fn psrpc_server_id(server: *const psrpc_server) -> *const c_char;
    pub fn psrpc_server_register(server: *mut psrpc_server, method: *const psrpc_method, topics: *const *const c_char, topic_count: usize, handler: psrpc_handler_cb, affinity: psrpc_affinity_cb, on_ready: psrpc_done_cb, user_data: *mut c_void, release: psrpc_release_cb) -> psrpc_status;
    pub fn psrpc_server_deregister(server: *mut psrpc_server, method: *const c_char, topics: *const *const c_char, topic_count: usize) -> psrpc_status;
    pub fn psrpc_server_wait_ready(server: *mut psrpc_server, timeout_ms: i64) -> psrpc_status;
    pub fn psrpc_server_publish(server: *mut psrpc_server, method: *const psrpc_method, topics: *const *const c_char, topic_count: usize, data: *const c_void, len: usize) -> psrpc_status;
    pub fn psrpc_server_close(server: *mut psrpc_server, flags: u32, closed_cb: psrpc_closed_cb, user_data: *mut c_void) -> psrpc_status;
    pub fn psrpc_server_free(server: *mut psrpc_server);

    pub fn psrpc_request_payload(request: *const psrpc_request) -> *const psrpc_msg;
    pub fn psrpc_request_id(request: *const psrpc_request) -> *const c_char;
    pub fn psrpc_request_client_id(request: *const psrpc_request) -> *const c_char;
    pub fn psrpc_request_method(request: *const psrpc_request) -> *const c_char;
    pub fn psrpc_request_topic_count(request: *const psrpc_request) -> usize;
    pub fn psrpc_request_topic(request: *const psrpc_request, index: usize) -> *const c_char;
    pub fn psrpc_request_metadata_count(request: *const psrpc_request) -> usize;
    pub fn psrpc_request_metadata_at(request: *const psrpc_request, index: usize, key: *mut *const c_char, value: *mut *const c_char) -> psrpc_status;
    pub fn psrpc_request_metadata_get(request: *const psrpc_request, key: *const c_char) -> *const c_char;
    pub fn psrpc_request_sent_at_ns(request: *const psrpc_request) -> i64;
    pub fn psrpc_request_expiry_ns(request: *const psrpc_request) -> i64;
    pub fn psrpc_request_remaining_ms(request: *const psrpc_request) -> i64;
    pub fn psrpc_request_respond(request: *mut psrpc_request, data: *const c_void, len: usize) -> psrpc_status;
    pub fn psrpc_request_fail(request: *mut psrpc_request, status: c_int, message: *const c_char) -> psrpc_status;
    pub fn psrpc_request_fail_details(request: *mut psrpc_request, code: *const c_char, message: *const c_char, details: *const psrpc_error_detail, details_count: usize) -> psrpc_status;
    pub fn psrpc_request_claim(request: *mut psrpc_request, affinity: f32) -> psrpc_status;
    pub fn psrpc_request_abandon(request: *mut psrpc_request, status: c_int, message: *const c_char);

    pub fn psrpc_client_open_stream(out: *mut *mut psrpc_stream, client: *mut psrpc_client, method: *const psrpc_method, opts: *const psrpc_call_options, on_open: psrpc_done_cb, on_message: psrpc_stream_message_cb, on_close: psrpc_stream_close_cb, user_data: *mut c_void, release: psrpc_release_cb) -> psrpc_status;
    pub fn psrpc_server_register_stream(server: *mut psrpc_server, method: *const psrpc_method, topics: *const *const c_char, topic_count: usize, handler: psrpc_stream_handler_cb, affinity: psrpc_affinity_cb, on_ready: psrpc_done_cb, user_data: *mut c_void, release: psrpc_release_cb) -> psrpc_status;
    pub fn psrpc_stream_set_callbacks(stream: *mut psrpc_stream, on_message: psrpc_stream_message_cb, on_close: psrpc_stream_close_cb, user_data: *mut c_void, release: psrpc_release_cb) -> psrpc_status;
    pub fn psrpc_stream_send(stream: *mut psrpc_stream, data: *const c_void, len: usize, timeout_ms: i64, on_done: psrpc_done_cb, user_data: *mut c_void) -> psrpc_status;
    pub fn psrpc_stream_close(stream: *mut psrpc_stream, status: c_int, message: *const c_char) -> psrpc_status;
    pub fn psrpc_stream_close_code(stream: *mut psrpc_stream, code: *const c_char, message: *const c_char) -> psrpc_status;
    pub fn psrpc_stream_defer(stream: *mut psrpc_stream, token_out: *mut u64) -> psrpc_status;
    pub fn psrpc_stream_ack(stream: *mut psrpc_stream, token: u64, accept: c_int) -> psrpc_status;
    pub fn psrpc_stream_free(stream: *mut psrpc_stream);
    pub fn psrpc_stream_id(stream: *const psrpc_stream) -> *const c_char;
    pub fn psrpc_stream_node_id(stream: *const psrpc_stream) -> *const c_char;
    pub fn psrpc_stream_method(stream: *const psrpc_stream) -> *const c_char;
    pub fn psrpc_stream_metadata_count(stream: *const psrpc_stream) -> usize;
    pub fn psrpc_stream_metadata_at(stream: *const psrpc_stream, index: usize, key: *mut *const c_char, value: *mut *const c_char) -> psrpc_status;
    pub fn psrpc_stream_metadata_get(stream: *const psrpc_stream, key: *const c_char) -> *const c_char;

    // issue 16: hooks, retries, logs, metrics, trace context
    pub fn psrpc_client_hooks_init(hooks: *mut psrpc_client_hooks, struct_size: usize) -> psrpc_status;
    pub fn psrpc_client_add_hooks(client: *mut psrpc_client, hooks: *const psrpc_client_hooks) -> psrpc_status;
    pub fn psrpc_server_hooks_init(hooks: *mut psrpc_server_hooks, struct_size: usize) -> psrpc_status;
    pub fn psrpc_server_add_hooks(server: *mut psrpc_server, hooks: *const psrpc_server_hooks) -> psrpc_status;
    pub fn psrpc_hook_call_metadata_count(call: *const psrpc_hook_call) -> usize;
    pub fn psrpc_hook_call_metadata_at(call: *const psrpc_hook_call, index: usize, key: *mut *const c_char, value: *mut *const c_char) -> psrpc_status;
    pub fn psrpc_hook_call_metadata_get(call: *const psrpc_hook_call, key: *const c_char) -> *const c_char;
    pub fn psrpc_hook_call_metadata_set(call: *mut psrpc_hook_call, key: *const c_char, value: *const c_char) -> psrpc_status;
    pub fn psrpc_hook_call_fail(call: *mut psrpc_hook_call, status: c_int, message: *const c_char) -> c_int;
    pub fn psrpc_retry_options_init(opts: *mut psrpc_retry_options, struct_size: usize) -> psrpc_status;
    pub fn psrpc_client_set_retries(client: *mut psrpc_client, kinds: u32, opts: *const psrpc_retry_options) -> psrpc_status;
    pub fn psrpc_set_log_callback(cb: psrpc_log_cb, max_level: c_int, user_data: *mut c_void) -> psrpc_status;
    pub fn psrpc_metrics_new(out: *mut *mut psrpc_metrics) -> psrpc_status;
    pub fn psrpc_metrics_attach_client(m: *mut psrpc_metrics, client: *mut psrpc_client) -> psrpc_status;
    pub fn psrpc_metrics_attach_server(m: *mut psrpc_metrics, server: *mut psrpc_server) -> psrpc_status;
    pub fn psrpc_metrics_bucket_bound_ms(index: usize) -> f64;
    pub fn psrpc_metrics_read(m: *mut psrpc_metrics, cb: psrpc_metrics_row_cb, code_cb: psrpc_metrics_code_cb, user_data: *mut c_void) -> psrpc_status;
    pub fn psrpc_metrics_free(m: *mut psrpc_metrics);
    pub fn psrpc_trace_child(out: *mut c_char, parent: *const c_char) -> psrpc_status;
    pub fn psrpc_trace_forward(kv: *mut psrpc_kv, buf: *mut c_char, traceparent: *const c_char, tracestate: *const c_char) -> usize;
    pub fn psrpc_request_reject(request: *mut psrpc_request, code: *const c_char, message: *const c_char, details: *const psrpc_error_detail, details_count: usize) -> psrpc_status;
    pub fn psrpc_stream_expiry_ns(stream: *const psrpc_stream) -> i64;
}

// ---------------------------------------------------------------------------
// Issue 16: hooks, retries, logs, metrics, trace context (capi/psrpc.h)
// ---------------------------------------------------------------------------

/// `psrpc_call_info.kind`: a unary call.
pub const PSRPC_CALL_KIND_UNARY: u32 = 1;
/// `psrpc_call_info.kind`: a multi call.
pub const PSRPC_CALL_KIND_MULTI: u32 = 2;
/// `psrpc_call_info.kind`: a stream.
pub const PSRPC_CALL_KIND_STREAM: u32 = 3;
/// Client side (hooks, metrics).
pub const PSRPC_ROLE_CLIENT: u32 = 1;
/// Server side (hooks, metrics).
pub const PSRPC_ROLE_SERVER: u32 = 2;
/// `sizeof(psrpc_client_hooks)` of its first version (LP64).
pub const PSRPC_CLIENT_HOOKS_SIZE_V1: usize = 40;
/// `sizeof(psrpc_server_hooks)` of its first version (LP64).
pub const PSRPC_SERVER_HOOKS_SIZE_V1: usize = 40;
/// `sizeof(psrpc_retry_options)` of its first version (LP64).
pub const PSRPC_RETRY_OPTIONS_SIZE_V1: usize = 48;
/// `sizeof(psrpc_method_metrics)` of its first version (LP64).
pub const PSRPC_METHOD_METRICS_SIZE_V1: usize = 168;
/// Retries for unary calls.
pub const PSRPC_RETRY_UNARY: u32 = 0x1;
/// Retries for stream opens.
pub const PSRPC_RETRY_STREAM_OPEN: u32 = 0x2;
/// Log level.
pub const PSRPC_LOG_ERROR: c_int = 1;
/// Log level.
pub const PSRPC_LOG_WARN: c_int = 2;
/// Log level.
pub const PSRPC_LOG_INFO: c_int = 3;
/// Log level.
pub const PSRPC_LOG_DEBUG: c_int = 4;
/// Latency buckets of `psrpc_method_metrics`.
pub const PSRPC_METRICS_BUCKETS: usize = 12;
/// Bytes of a traceparent buffer (55 + NUL).
pub const PSRPC_TRACEPARENT_SIZE: usize = 56;

opaque!(psrpc_hook_call, psrpc_metrics);

/// What a hook knows about a call (library-sized; borrowed).
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct psrpc_call_info {
    pub struct_size: u32,
    pub kind: u32,
    pub role: u32,
    pub reserved: u32,
    pub service: *const c_char,
    pub method: *const c_char,
    pub topics: *const *const c_char,
    pub topic_count: usize,
    pub call_id: u64,
    pub client_id: *const c_char,
    pub server_id: *const c_char,
    pub request_id: *const c_char,
    pub expiry_ns: i64,
}

/// A call's outcome (library-sized; borrowed).
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct psrpc_call_outcome {
    pub struct_size: u32,
    pub attempts: u32,
    pub duration_ns: i64,
    pub server_id: *const c_char,
    pub error: *const psrpc_error,
    pub responses: u64,
    pub errors: u64,
}

/// A before-hook (client before_send, server before_handle).
pub type psrpc_before_cb = Option<
    unsafe extern "C" fn(info: *const psrpc_call_info, call: *mut psrpc_hook_call, user_data: *mut c_void) -> c_int,
>;
/// An outcome hook.
pub type psrpc_outcome_cb = Option<
    unsafe extern "C" fn(info: *const psrpc_call_info, outcome: *const psrpc_call_outcome, user_data: *mut c_void),
>;

/// Client hooks; initialise with [`psrpc_client_hooks_init`].
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct psrpc_client_hooks {
    pub struct_size: u32,
    pub reserved: u32,
    pub before_send: psrpc_before_cb,
    pub on_outcome: psrpc_outcome_cb,
    pub user_data: *mut c_void,
    pub release: psrpc_release_cb,
}

/// Server hooks; initialise with [`psrpc_server_hooks_init`].
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct psrpc_server_hooks {
    pub struct_size: u32,
    pub reserved: u32,
    pub before_handle: psrpc_before_cb,
    pub on_outcome: psrpc_outcome_cb,
    pub user_data: *mut c_void,
    pub release: psrpc_release_cb,
}

/// Retry policy; initialise with [`psrpc_retry_options_init`].
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct psrpc_retry_options {
    pub struct_size: u32,
    pub max_attempts: u32,
    pub timeout_ms: i64,
    pub backoff_ms: i64,
    pub is_recoverable: Option<unsafe extern "C" fn(error: *const psrpc_error, user_data: *mut c_void) -> c_int>,
    pub retry_params: Option<
        unsafe extern "C" fn(
            error: *const psrpc_error,
            attempt: u32,
            timeout_ms: *mut i64,
            wait_ms: *mut i64,
            user_data: *mut c_void,
        ) -> c_int,
    >,
    pub user_data: *mut c_void,
}

/// The log callback.
pub type psrpc_log_cb = Option<
    unsafe extern "C" fn(level: c_int, component: *const c_char, message: *const c_char, user_data: *mut c_void),
>;

/// One metrics row.
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct psrpc_method_metrics {
    pub struct_size: u32,
    pub role: u32,
    pub kind: u32,
    pub reserved: u32,
    pub service: *const c_char,
    pub method: *const c_char,
    pub calls: u64,
    pub errors: u64,
    pub attempts: u64,
    pub latency_sum_ns: u64,
    pub buckets: [u64; PSRPC_METRICS_BUCKETS],
    pub error_codes_count: u64,
}

/// `psrpc_metrics_read`'s row callback.
pub type psrpc_metrics_row_cb = Option<unsafe extern "C" fn(row: *const psrpc_method_metrics, user_data: *mut c_void)>;
/// `psrpc_metrics_read`'s per-code callback.
pub type psrpc_metrics_code_cb = Option<
    unsafe extern "C" fn(row: *const psrpc_method_metrics, code: *const c_char, count: u64, user_data: *mut c_void),
>;
