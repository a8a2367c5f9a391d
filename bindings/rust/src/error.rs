//! psrpc errors: a code string as it travels on the wire, a message, details.
use psrpc_sys as sys;
use std::ffi::{c_int, CStr, CString};
use std::fmt;

/// A psrpc error code (livekit/psrpc's `ErrorCode`), or any other code string
/// received on the wire (`Other`), carried unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Code {
    Canceled,
    Unknown,
    InvalidArgument,
    MalformedRequest,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    MalformedResult,
    Unavailable,
    DataLoss,
    Unauthenticated,
    NotAcceptable,
    UnprocessableEntity,
    UpstreamServerError,
    UpstreamClientError,
    /// A code string psrpc does not define (kept as received).
    Other(String),
}

const CODES: [(Code, &str, c_int); 22] = [
    (Code::Canceled, "canceled", sys::PSRPC_CANCELED),
    (Code::Unknown, "unknown", sys::PSRPC_UNKNOWN),
    (Code::InvalidArgument, "invalid_argument", sys::PSRPC_INVALID_ARGUMENT),
    (Code::MalformedRequest, "malformed_request", sys::PSRPC_MALFORMED_REQUEST),
    (Code::DeadlineExceeded, "deadline_exceeded", sys::PSRPC_DEADLINE_EXCEEDED),
    (Code::NotFound, "not_found", sys::PSRPC_NOT_FOUND),
    (Code::AlreadyExists, "already_exists", sys::PSRPC_ALREADY_EXISTS),
    (Code::PermissionDenied, "permission_denied", sys::PSRPC_PERMISSION_DENIED),
    (Code::ResourceExhausted, "resource_exhausted", sys::PSRPC_RESOURCE_EXHAUSTED),
    (Code::FailedPrecondition, "failed_precondition", sys::PSRPC_FAILED_PRECONDITION),
    (Code::Aborted, "aborted", sys::PSRPC_ABORTED),
    (Code::OutOfRange, "out_of_range", sys::PSRPC_OUT_OF_RANGE),
    (Code::Unimplemented, "unimplemented", sys::PSRPC_UNIMPLEMENTED),
    (Code::Internal, "internal", sys::PSRPC_INTERNAL),
    (Code::MalformedResult, "malformed_result", sys::PSRPC_MALFORMED_RESULT),
    (Code::Unavailable, "unavailable", sys::PSRPC_UNAVAILABLE),
    (Code::DataLoss, "data_loss", sys::PSRPC_DATA_LOSS),
    (Code::Unauthenticated, "unauthenticated", sys::PSRPC_UNAUTHENTICATED),
    (Code::NotAcceptable, "not_acceptable", sys::PSRPC_NOT_ACCEPTABLE),
    (Code::UnprocessableEntity, "unprocessable_entity", sys::PSRPC_UNPROCESSABLE_ENTITY),
    (Code::UpstreamServerError, "upstream_server_error", sys::PSRPC_UPSTREAM_SERVER_ERROR),
    (Code::UpstreamClientError, "upstream_client_error", sys::PSRPC_UPSTREAM_CLIENT_ERROR),
];

impl Code {
    /// The code string on the wire ("not_found").
    pub fn as_str(&self) -> &str {
        match self {
            Code::Other(s) => s,
            c => CODES.iter().find(|(k, _, _)| k == c).map(|(_, s, _)| *s).unwrap_or("unknown"),
        }
    }

    /// The code of a wire string; unknown strings become [`Code::Other`]
    /// ("" reads as `Unknown`, as in livekit/psrpc).
    pub fn from_wire(s: &str) -> Code {
        if s.is_empty() {
            return Code::Unknown;
        }
        CODES.iter().find(|(_, w, _)| *w == s).map(|(c, _, _)| c.clone()).unwrap_or_else(|| Code::Other(s.to_string()))
    }

    /// The code of a libpsrpc status; local-only statuses are `Internal`.
    pub fn from_status(status: c_int) -> Code {
        CODES.iter().find(|(_, _, st)| *st == status).map(|(c, _, _)| c.clone()).unwrap_or(Code::Internal)
    }

    pub(crate) fn status(&self) -> c_int {
        CODES.iter().find(|(c, _, _)| c == self).map(|(_, _, s)| *s).unwrap_or(sys::PSRPC_UNKNOWN)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error: from a server (its code, message, details and id), from the
/// library (deadline, cancellation, a closed handle) or from bad arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    /// The code, exactly as it travelled on the wire.
    pub code: Code,
    /// The message (UTF-8; invalid sequences from the wire are replaced).
    pub message: String,
    /// Details (`google.protobuf.Any` values) the server attached.
    pub details: Vec<prost_types::Any>,
    /// The id of the server that answered with this error, when known.
    pub server_id: Option<String>,
    local: bool,
}

impl Error {
    /// An error with a code and a message.
    pub fn new(code: Code, message: impl Into<String>) -> Error {
        Error { code, message: message.into(), details: Vec::new(), server_id: None, local: false }
    }

    /// Whether libpsrpc refused the operation before anything was sent (bad
    /// argument, closed handle, message too large…), as opposed to an outcome
    /// that came over the bus (a server's error, a timeout, a cancellation).
    pub fn is_local(&self) -> bool {
        self.local
    }

    /// Adds a detail (any prost message, packed as `google.protobuf.Any`).
    pub fn with_detail(mut self, type_url: impl Into<String>, value: Vec<u8>) -> Error {
        self.details.push(prost_types::Any { type_url: type_url.into(), value });
        self
    }

    /// Adds details.
    pub fn with_details(mut self, details: impl IntoIterator<Item = prost_types::Any>) -> Error {
        self.details.extend(details);
        self
    }

    /// Copies a borrowed C error.
    ///
    /// # Safety
    /// `e` must be NULL or a valid `psrpc_error` (as handed to a callback).
    pub(crate) unsafe fn from_raw(e: *const sys::psrpc_error, server_id: *const std::ffi::c_char) -> Error {
        if e.is_null() {
            return Error::new(Code::Unknown, "unknown error");
        }
        let e = &*e;
        let code = if e.code.is_null() { Code::from_status(e.status) } else { Code::from_wire(&cstr(e.code)) };
        let mut details = Vec::with_capacity(e.details_count);
        for i in 0..e.details_count {
            let d = &*e.details.add(i);
            let value =
                if d.value.is_null() || d.value_len == 0 { Vec::new() } else { std::slice::from_raw_parts(d.value, d.value_len).to_vec() };
            details.push(prost_types::Any { type_url: cstr(d.type_url), value });
        }
        Error { code, message: cstr(e.message), details, server_id: opt_cstr(server_id), local: false }
    }

    /// The error of the calling thread's last failed libpsrpc call.
    pub(crate) fn last(status: c_int) -> Error {
        let msg = unsafe { cstr(sys::psrpc_last_error()) };
        let msg = if msg.is_empty() { unsafe { cstr(sys::psrpc_status_str(status)) } } else { msg };
        Error { local: true, ..Error::new(Code::from_status(status), msg) }
    }

    pub(crate) fn closed(what: &str) -> Error {
        Error::new(Code::Canceled, format!("{what} is closed"))
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Error {
        Error { local: true, ..Error::new(Code::InvalidArgument, msg) }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

/// A `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Converts a status into a Result (the thread's last error on failure).
pub(crate) fn check(status: c_int) -> Result<()> {
    if status == sys::PSRPC_OK {
        Ok(())
    } else {
        Err(Error::last(status))
    }
}

/// A borrowed C string as an owned String (NULL: "").
pub(crate) unsafe fn cstr(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

pub(crate) unsafe fn opt_cstr(p: *const std::ffi::c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        Some(CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

/// A Rust string as a C string; interior NUL is an invalid argument.
pub(crate) fn to_c(s: &str, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::invalid(format!("{what} contains a NUL byte")))
}
