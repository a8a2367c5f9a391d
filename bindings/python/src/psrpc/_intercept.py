"""Interceptors: code that sees every call a client makes and every request a
server handles (livekit/psrpc's client and server interceptors, the C ABI's
hooks).

    class Auth(psrpc.ClientInterceptor):
        def before_call(self, call):
            call.metadata["authorization"] = token()          # reaches the server

    class Timing(psrpc.ServerInterceptor):
        def before_handle(self, call):
            if "authorization" not in call.metadata:
                raise psrpc.Unauthenticated("no token")        # the handler never runs
        def after_handle(self, call, outcome):
            print(call.method, outcome.code, outcome.duration)

    client = psrpc.Client(bus, svc, interceptors=[Auth()])
    server = psrpc.Server(bus, svc, interceptors=[Timing()])

They run at the Python level, not as C hooks: ``before_call`` on the thread
(or asyncio task) making the call, ``before_handle`` and ``after_handle`` on
the handler's thread (or task), right around the handler, so they see the
decoded messages and the handler's ``contextvars`` (OpenTelemetry's current
span), may block like a handler, and cost nothing on the bus's loop thread.
A C hook would run Python on the loop thread with the GIL taken for every
call. ``after_call`` runs where the outcome is delivered: after a blocking
call returns, in the awaiting task (asyncio), or in the future's completion
(``call_future``: the loop thread).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

from ._errors import PsrpcError, Unknown

__all__ = ["ClientInterceptor", "ServerInterceptor", "ClientCall", "ServerCall", "Outcome"]

log = logging.getLogger("psrpc")


class Outcome:
    """How a call (client) or a handled request (server) ended."""

    __slots__ = ("error", "server_id", "duration", "responses", "errors")

    def __init__(self, error: Optional[PsrpcError], server_id: Optional[str], duration: float,
                 responses: int = 0, errors: int = 0) -> None:
        #: None on success (a clean stream close included), else the error.
        self.error = error
        #: The answering server (client side, when known); the server's own id (server side).
        self.server_id = server_id
        #: Seconds from the call (client) / the handler's start (server) to the outcome.
        self.duration = duration
        #: Multi calls: results and error results received.
        self.responses = responses
        self.errors = errors

    @property
    def code(self) -> str:
        """The psrpc error code ("not_found", ...), "ok" on success."""
        return "ok" if self.error is None else self.error.code

    def __repr__(self) -> str:
        return (f"Outcome(code={self.code!r}, server_id={self.server_id!r}, "
                f"duration={self.duration:.6f})")


class ClientCall:
    """One call as client interceptors see it. ``metadata`` may be changed in
    ``before_call`` (it is what is sent); ``state`` is a dict for the
    interceptors' own per-call data (a span, a start time)."""

    __slots__ = ("service", "method", "kind", "client_id", "request", "metadata", "topics",
                 "timeout", "deadline", "state", "_chain", "_t0", "_done")

    def __init__(self, service: str, method: Any, kind: str, client_id: str, request: Any,
                 metadata: Dict[str, str], topics: Tuple[str, ...], timeout: Optional[float],
                 deadline: Optional[float], chain: Tuple[Any, ...]) -> None:
        self.service = service
        #: The ``psrpc.Method`` (``.name`` is the wire name).
        self.method = method
        #: "unary", "multi" or "stream".
        self.kind = kind
        self.client_id = client_id
        #: The request message (None for streams).
        self.request = request
        self.metadata = metadata
        self.topics = topics
        self.timeout = timeout
        self.deadline = deadline
        self.state: Dict[Any, Any] = {}
        self._chain = chain
        self._t0 = time.monotonic()
        self._done = False

    @property
    def full_method(self) -> str:
        """``Service.Method``, as otelpsrpc names spans."""
        return f"{self.service}.{self.method.name}"

    def finish(self, error: Optional[BaseException], server_id: Optional[str] = None,
               responses: int = 0, errors: int = 0) -> None:
        """Runs every ``after_call`` once (later calls are ignored)."""
        if self._done:
            return
        self._done = True
        outcome = Outcome(as_psrpc(error), server_id, time.monotonic() - self._t0, responses,
                          errors)
        for ic in self._chain:
            after = getattr(ic, "after_call", None)
            if after is None:
                continue
            try:
                after(self, outcome)
            except Exception:
                log.exception("psrpc: after_call of interceptor %r raised", ic)

    def __repr__(self) -> str:
        return f"ClientCall({self.full_method!r}, kind={self.kind!r})"


class ServerCall:
    """One handled request (or accepted stream) as server interceptors see
    it: ``metadata`` is read-only (what the caller sent); ``context`` is the
    handler's ``psrpc.Context`` (None for streams: ``stream`` is set)."""

    __slots__ = ("service", "method", "kind", "client_id", "server_id", "request_id",
                 "request", "metadata", "topics", "deadline", "context", "stream", "state",
                 "_t0")

    def __init__(self, service: str, method: Any, kind: str, client_id: str, server_id: str,
                 request_id: str, request: Any, metadata: Mapping[str, str],
                 topics: Sequence[str], deadline: Optional[float], context: Any = None,
                 stream: Any = None) -> None:
        self.service = service
        self.method = method
        self.kind = kind
        self.client_id = client_id
        self.server_id = server_id
        self.request_id = request_id
        self.request = request
        self.metadata = metadata
        self.topics = tuple(topics)
        self.deadline = deadline
        self.context = context
        self.stream = stream
        self.state: Dict[Any, Any] = {}
        self._t0 = time.monotonic()

    @property
    def full_method(self) -> str:
        return f"{self.service}.{self.method.name}"

    def __repr__(self) -> str:
        return f"ServerCall({self.full_method!r}, kind={self.kind!r})"


class ClientInterceptor:
    """Base class of client interceptors (both methods optional; any object
    with either method will do). Interceptors run in the order given, for
    ``before_call`` and for ``after_call`` alike (as the C hooks)."""

    def before_call(self, call: ClientCall) -> None:
        """Before the call is sent, on the calling thread / task: change
        ``call.metadata``, or raise (a ``psrpc.PsrpcError``) to fail the
        call: nothing is sent, later ``before_call``s do not run, every
        ``after_call`` runs with the error and the caller gets it."""

    def after_call(self, call: ClientCall, outcome: Outcome) -> None:
        """Once per call with its outcome (after the library's retries)."""


class ServerInterceptor:
    """Base class of server interceptors; see ``ClientInterceptor``."""

    def before_handle(self, call: ServerCall) -> None:
        """On the handler's thread (asyncio: in its task), just before the
        handler. Raise to reject the request: the caller gets the error (a
        ``psrpc.PsrpcError`` with its code, anything else as unknown), the
        handler does not run, every ``after_handle`` runs with it."""

    def after_handle(self, call: ServerCall, outcome: Outcome) -> None:
        """Once the request was answered (a stream: once its handler ended)."""


def as_psrpc(error: Optional[BaseException]) -> Optional[PsrpcError]:
    if error is None or isinstance(error, PsrpcError):
        return error
    from ._errors import Canceled, Unimplemented

    if isinstance(error, NotImplementedError):
        return Unimplemented(str(error) or "method is not implemented")
    if not isinstance(error, Exception):
        return Canceled(f"{type(error).__name__}")
    return Unknown(str(error) or type(error).__name__)


def check_interceptors(items: Iterable[Any], side: str) -> Tuple[Any, ...]:
    names = ("before_call", "after_call") if side == "client" else ("before_handle",
                                                                    "after_handle")
    out = tuple(items)
    for ic in out:
        if not any(callable(getattr(ic, n, None)) for n in names):
            raise TypeError(f"a {side} interceptor needs a {names[0]} or {names[1]} method, "
                            f"got {type(ic).__name__}")
    return out


def trace_metadata(metadata: Optional[Mapping[str, str]],
                   parent: Any) -> Optional[Mapping[str, str]]:
    """The metadata of a nested call made with ``deadline=ctx``: the W3C
    trace context of the request ctx serves (traceparent, tracestate) is
    forwarded unchanged, so the trace goes on even without OpenTelemetry;
    the caller's own entries win."""
    if parent is None or isinstance(parent, (int, float)):
        return metadata
    md = getattr(parent, "metadata", None)
    tp = md.get("traceparent") if md else None
    if not tp:
        return metadata
    out = {"traceparent": tp}
    ts = md.get("tracestate")  # type: ignore[union-attr]
    if ts:
        out["tracestate"] = ts
    if metadata:
        out.update(metadata)
    return out


def start_call(client: Any, method: Any, kind: str, request: Any,
               metadata: Optional[Mapping[str, str]], topics: Any, timeout: Optional[float],
               deadline: Any) -> Tuple[Optional[ClientCall], Optional[Mapping[str, str]]]:
    """Runs the client's ``before_call``s; returns (the call or None when the
    client has no interceptors, the metadata to send). Raises what a
    ``before_call`` raised, after every ``after_call`` saw it."""
    metadata = trace_metadata(metadata, deadline)
    chain = client._interceptors
    if not chain:
        return None, metadata
    from ._method import topic_list

    if deadline is not None and not isinstance(deadline, (int, float)):
        deadline = getattr(deadline, "deadline", None)
    call = ClientCall(client._service.name, method, kind, client.id, request,
                      dict(metadata or {}), topic_list(topics) or (), timeout, deadline, chain)
    for ic in chain:
        before = getattr(ic, "before_call", None)
        if before is None:
            continue
        try:
            before(call)
        except BaseException as e:
            err = as_psrpc(e)
            if err is not None:
                err.local = True
            call.finish(err)
            raise
    return call, call.metadata


def run_before_handle(chain: Tuple[Any, ...], call: ServerCall) -> None:
    for ic in chain:
        before = getattr(ic, "before_handle", None)
        if before is not None:
            before(call)


def run_after_handle(chain: Tuple[Any, ...], call: ServerCall,
                     error: Optional[BaseException]) -> None:
    outcome = Outcome(as_psrpc(error), call.server_id, time.monotonic() - call._t0)
    for ic in chain:
        after = getattr(ic, "after_handle", None)
        if after is None:
            continue
        try:
            after(call, outcome)
        except Exception:
            log.exception("psrpc: after_handle of interceptor %r raised", ic)
