"""Exceptions keyed by psrpc error code, and the mapping to and from the C core."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Type

from google.protobuf import any_pb2
from google.protobuf.message import Message

from . import _core

__all__ = [
    "PsrpcError",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "MalformedRequest",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "MalformedResult",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
    "NotAcceptable",
    "UnprocessableEntity",
    "UpstreamServerError",
    "UpstreamClientError",
    "WouldDeadlock",
    "NotSupported",
    "Status",
]


class _StatusTable:
    """The C library's status table: value <-> name <-> wire code."""

    OK: int
    CANCELED: int
    UNKNOWN: int
    INVALID_ARGUMENT: int
    MALFORMED_REQUEST: int
    DEADLINE_EXCEEDED: int
    NOT_FOUND: int
    ALREADY_EXISTS: int
    PERMISSION_DENIED: int
    RESOURCE_EXHAUSTED: int
    FAILED_PRECONDITION: int
    ABORTED: int
    OUT_OF_RANGE: int
    UNIMPLEMENTED: int
    INTERNAL: int
    MALFORMED_RESULT: int
    UNAVAILABLE: int
    DATA_LOSS: int
    UNAUTHENTICATED: int
    NOT_ACCEPTABLE: int
    UNPROCESSABLE_ENTITY: int
    UPSTREAM_SERVER_ERROR: int
    UPSTREAM_CLIENT_ERROR: int
    WOULD_DEADLOCK: int
    NOT_SUPPORTED: int

    def __init__(self) -> None:
        rows = _core.status_table()
        self.by_value: Dict[int, Tuple[str, str, str]] = {v: (n, c, d) for v, n, c, d in rows}
        self.by_code: Dict[str, int] = {}
        for v, _n, c, _d in rows:
            if c and c not in self.by_code and v > -100:
                self.by_code[c] = v
        for v, n, _c, _d in rows:
            setattr(self, n[len("PSRPC_"):], v)

    def code(self, status: int) -> str:
        row = self.by_value.get(status)
        return row[1] if row else "unknown"

    def from_code(self, code: str) -> int:
        if not code:
            return 0
        return self.by_code.get(code, self.by_code["unknown"])


Status = _StatusTable()
"""Status values of the C library, e.g. ``Status.NOT_FOUND == -6``."""


def _to_any(detail: Any) -> any_pb2.Any:
    if isinstance(detail, any_pb2.Any):
        return detail
    if isinstance(detail, Message):
        a = any_pb2.Any()
        a.Pack(detail)
        return a
    if isinstance(detail, tuple) and len(detail) == 2:
        return any_pb2.Any(type_url=detail[0], value=bytes(detail[1]))
    raise TypeError(f"an error detail must be a protobuf Message, an Any or (type_url, bytes), not {type(detail).__name__}")


class PsrpcError(Exception):
    """A psrpc error: ``code`` is the wire code string (``"not_found"``),
    ``status`` the C status value (negative), ``message`` the text and
    ``details`` a list of ``google.protobuf.any_pb2.Any``.

    Raise it (or a subclass) from a handler to answer with that code and
    details: ``raise psrpc.PsrpcError("nope", code="my_code")`` travels with
    the code string unchanged.
    """

    code: str = "unknown"
    status: int = -2
    #: The answering server, when known.
    server_id: Optional[str] = None
    #: True when the library refused the call itself (nothing was sent).
    local: bool = False

    def __init__(
        self,
        message: str = "",
        *,
        code: Optional[str] = None,
        details: Iterable[Any] = (),
        status: Optional[int] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
            self.status = Status.from_code(code) if status is None else status
        elif status is not None:
            self.status = status
        self.details: List[any_pb2.Any] = [_to_any(d) for d in details]

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"

    def __reduce__(self) -> Tuple[Any, ...]:  # picklable despite keyword-only arguments
        return (_rebuild, (type(self), self.message, self.code, self.status,
                           [(d.type_url, d.value) for d in self.details]))


def _rebuild(cls: Type[PsrpcError], message: str, code: str, status: int,
             details: List[Tuple[str, bytes]]) -> PsrpcError:
    e = cls.__new__(cls)
    PsrpcError.__init__(e, message, code=code, status=status, details=details)
    return e


class Canceled(PsrpcError):
    """The request was canceled, or its client/server closed."""

    code = "canceled"
    status = -1


class Unknown(PsrpcError):
    """An error without a psrpc code, or an unknown code."""

    code = "unknown"
    status = -2


class InvalidArgument(PsrpcError):
    """Invalid argument."""

    code = "invalid_argument"
    status = -3


class MalformedRequest(PsrpcError):
    """The request could not be decoded."""

    code = "malformed_request"
    status = -4


class DeadlineExceeded(PsrpcError, TimeoutError):
    """The request timed out (also a builtin ``TimeoutError``)."""

    code = "deadline_exceeded"
    status = -5

    def __init__(self, message: str = "", *, code: Optional[str] = None,
                 details: Iterable[Any] = (), status: Optional[int] = None) -> None:
        PsrpcError.__init__(self, message, code=code, details=details, status=status)

    __str__ = PsrpcError.__str__


class NotFound(PsrpcError):
    """Not found."""

    code = "not_found"
    status = -6


class AlreadyExists(PsrpcError):
    """Already exists."""

    code = "already_exists"
    status = -7


class PermissionDenied(PsrpcError):
    """Permission denied."""

    code = "permission_denied"
    status = -8


class ResourceExhausted(PsrpcError):
    """Resource exhausted."""

    code = "resource_exhausted"
    status = -9


class FailedPrecondition(PsrpcError):
    """Failed precondition."""

    code = "failed_precondition"
    status = -10


class Aborted(PsrpcError):
    """Aborted."""

    code = "aborted"
    status = -11


class OutOfRange(PsrpcError):
    """Out of range."""

    code = "out_of_range"
    status = -12


class Unimplemented(PsrpcError):
    """Not implemented."""

    code = "unimplemented"
    status = -13


class Internal(PsrpcError):
    """Internal error."""

    code = "internal"
    status = -14


class MalformedResult(PsrpcError):
    """The response could not be encoded or decoded."""

    code = "malformed_result"
    status = -15


class Unavailable(PsrpcError):
    """No server answered, or the bus is unavailable."""

    code = "unavailable"
    status = -16


class DataLoss(PsrpcError):
    """Data loss."""

    code = "data_loss"
    status = -17


class Unauthenticated(PsrpcError):
    """Unauthenticated."""

    code = "unauthenticated"
    status = -18


class NotAcceptable(PsrpcError):
    """Not acceptable."""

    code = "not_acceptable"
    status = -19


class UnprocessableEntity(PsrpcError):
    """Unprocessable entity."""

    code = "unprocessable_entity"
    status = -20


class UpstreamServerError(PsrpcError):
    """Upstream server error."""

    code = "upstream_server_error"
    status = -21


class UpstreamClientError(PsrpcError):
    """Upstream client error."""

    code = "upstream_client_error"
    status = -22


class WouldDeadlock(PsrpcError):
    """A blocking call on a bus loop thread (inside a callback) would deadlock."""

    code = "internal"
    status = -100


class NotSupported(PsrpcError):
    """Not supported by this library version."""

    code = "internal"
    status = -101


_BY_CODE: Dict[str, Type[PsrpcError]] = {}
_BY_STATUS: Dict[int, Type[PsrpcError]] = {}
for _cls in (Canceled, Unknown, InvalidArgument, MalformedRequest, DeadlineExceeded, NotFound,
             AlreadyExists, PermissionDenied, ResourceExhausted, FailedPrecondition, Aborted,
             OutOfRange, Unimplemented, Internal, MalformedResult, Unavailable, DataLoss,
             Unauthenticated, NotAcceptable, UnprocessableEntity, UpstreamServerError,
             UpstreamClientError, WouldDeadlock, NotSupported):
    _BY_STATUS[_cls.status] = _cls
    if _cls.status > -100:
        _BY_CODE[_cls.code] = _cls


# The C library's texts name its functions and types; a Python user knows
# these names instead (longest names first: prefixes of others).
_PY_NAMES = (
    ("psrpc_client_call_sync", "Client.call"),
    ("psrpc_client_call_multi", "Client.multi_call"),
    ("psrpc_client_call", "Client.call"),
    ("psrpc_client_open_stream", "Client.open_stream"),
    ("psrpc_client_subscribe", "Client.subscribe"),
    ("psrpc_server_register_stream", "Server.register"),
    ("psrpc_server_register", "Server.register"),
    ("psrpc_server_wait_ready", "Server.wait_ready"),
    ("psrpc_server_publish", "Server.publish"),
    ("psrpc_sub_wait_ready", "Client.subscribe"),
    ("psrpc_bus_wait_ready", "Bus.wait_ready"),
    ("psrpc_bus_options", "the Bus options"),
    ("psrpc_call_options", "the call options"),
    ("psrpc_client_options", "the Client options"),
    ("psrpc_server_options", "the Server options"),
    ("psrpc_selection_options", "SelectionOptions"),
    ("psrpc_selection", "selection"),
    ("psrpc_method", "psrpc.Method"),
    ("psrpc_client", "Client"),
    ("psrpc_server", "Server"),
    ("psrpc_stream", "Stream"),
    ("psrpc_sub", "Subscription"),
    ("psrpc_bus", "Bus"),
    ("psrpc_request", "request"),
    ("PSRPC_METHOD_STREAM", "stream=True"),
    ("PSRPC_METHOD_SUBSCRIPTION", "subscription=True"),
)


def python_names(message: str) -> str:
    """message with the C library's function and type names replaced by the
    binding's."""
    if "psrpc_" not in message and "PSRPC_" not in message:
        return message
    for c_name, py_name in _PY_NAMES:
        message = message.replace(c_name, py_name)
    return message


def from_status(status: int, message: str) -> PsrpcError:
    """The exception for a failed C call (the core's error hook)."""
    message = python_names(message)
    cls = _BY_STATUS.get(status)
    e = PsrpcError(message, code=Status.code(status), status=status) if cls is None else cls(message)
    e.local = True
    return e


def from_wire(err: Tuple[int, str, str, Sequence[Tuple[str, bytes]]],
              server_id: Optional[str] = None) -> PsrpcError:
    """The exception for an error delivered to a callback: (status, code, message, details)."""
    status, code, message, details = err
    cls = _BY_CODE.get(code)
    if cls is None:
        # An unknown code string travels unchanged.
        e = PsrpcError(message, code=code or "unknown", status=status, details=details)
    else:
        e = cls(message, details=details)
    if server_id is not None:
        e.server_id = server_id
    return e


def to_failure(exc: BaseException) -> Tuple[str, str, List[Tuple[str, bytes]]]:
    """How a handler's exception travels: (code, message, details)."""
    if isinstance(exc, PsrpcError):
        msg = exc.message or Status.by_value.get(exc.status, ("", "", exc.code))[2] or exc.code
        code = exc.code if exc.status > -100 else "internal"
        return code, msg, [(d.type_url, d.value) for d in exc.details]
    if isinstance(exc, NotImplementedError):
        return "unimplemented", str(exc) or "method is not implemented", []
    # Like a Go handler returning a plain error: code unknown, the error's text.
    return "unknown", str(exc) or type(exc).__name__, []


_core.set_error_hook(from_status)
