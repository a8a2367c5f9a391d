"""OpenTelemetry tracing for psrpc, as livekit/psrpc v0.8.2's ``otelpsrpc``
(``pip install psrpc[otel]``: needs ``opentelemetry-api`` only; an SDK and
exporter are yours to set up).

    import psrpc.otel

    client = psrpc.Client(bus, svc, interceptors=[psrpc.otel.ClientTracing()])
    server = psrpc.Server(bus, svc, interceptors=[psrpc.otel.ServerTracing()])
    # or: psrpc.otel.instrument(client), psrpc.otel.instrument(server)

Exactly as otelpsrpc (so a trace crosses Go, C and Python services):

- tracer ``"github.com/livekit/psrpc"``, version ``"v0.8.0"`` (the
  ``version.Version`` constant of the v0.8.2 module);
- a client span ``Sent.<Service>.<Method>`` (kind CLIENT) per unary call,
  child of the current span; its W3C ``traceparent`` (and ``tracestate``
  when not empty) go into the request metadata under those keys;
- a server span ``Recv.<Service>.<Method>`` (kind SERVER) per handled
  request (unary and multi methods), child of the context extracted from the
  request metadata; it is the current span while the handler runs, so the
  calls the handler makes (through a ``ClientTracing`` client) continue the
  trace;
- events "Outbound message" then "Inbound message" on both; status OK, or
  ERROR with the error's message (and the error recorded as an exception
  event); attributes ``rpc.psrpc.status_code`` (the psrpc code, on errors) and
  ``rpc.grpc.status_code`` (the gRPC code of the psrpc code; 0 on success).

Like otelpsrpc, multi calls and streams get no client span (Go's otelpsrpc
installs RPC interceptors only) and stream handlers no server span.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Union

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ._errors import PsrpcError
from ._intercept import ClientCall, ClientInterceptor, Outcome, ServerCall, ServerInterceptor

__all__ = ["ClientTracing", "ServerTracing", "instrument", "TRACER_NAME", "TRACER_VERSION",
           "STATUS_CODE_KEY", "GRPC_STATUS_CODE_KEY"]

TRACER_NAME = "github.com/livekit/psrpc"
#: livekit/psrpc v0.8.2's version.Version, which otelpsrpc reports.
TRACER_VERSION = "v0.8.0"
STATUS_CODE_KEY = "rpc.psrpc.status_code"
GRPC_STATUS_CODE_KEY = "rpc.grpc.status_code"

# psrpc ErrorCode.ToGRPC() of v0.8.2 (anything else: Unknown, 2).
_GRPC = {
    "ok": 0, "": 0, "canceled": 1, "unknown": 2, "invalid_argument": 3, "malformed_request": 3,
    "deadline_exceeded": 4, "not_found": 5, "already_exists": 6, "permission_denied": 7,
    "resource_exhausted": 8, "failed_precondition": 9, "aborted": 10, "out_of_range": 11,
    "unimplemented": 12, "internal": 13, "malformed_result": 13, "unavailable": 14,
    "data_loss": 15, "unauthenticated": 16, "upstream_server_error": 13,
    "upstream_client_error": 3,
}


def grpc_code(code: str) -> int:
    """The gRPC status code of a psrpc error code (as psrpc's ToGRPC)."""
    return _GRPC.get(code, 2)


def _tracer(provider: Optional[trace.TracerProvider]) -> trace.Tracer:
    provider = provider or trace.get_tracer_provider()
    return provider.get_tracer(TRACER_NAME, TRACER_VERSION)


def _set_span_error(span: trace.Span, error: Optional[PsrpcError]) -> None:
    if error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, error.message))
        span.set_attribute(STATUS_CODE_KEY, error.code)
        span.set_attribute(GRPC_STATUS_CODE_KEY, grpc_code(error.code))
    else:
        span.set_status(Status(StatusCode.OK))
        span.set_attribute(GRPC_STATUS_CODE_KEY, 0)


class ClientTracing(ClientInterceptor):
    """otelpsrpc's ClientOptions: a ``Sent.<Service>.<Method>`` span per unary
    call, its trace context sent in the request metadata. ``tracer_provider``
    defaults to the global one, ``propagator`` to W3C TraceContext (as Go's,
    not the global propagator)."""

    def __init__(self, tracer_provider: Optional[trace.TracerProvider] = None,
                 propagator: Optional[TextMapPropagator] = None) -> None:
        self._tracer = _tracer(tracer_provider)
        self._prop = propagator or TraceContextTextMapPropagator()

    def before_call(self, call: ClientCall) -> None:
        if call.kind != "unary":
            return
        span = self._tracer.start_span("Sent." + call.full_method, kind=SpanKind.CLIENT)
        carrier: Dict[str, str] = {}
        self._prop.inject(carrier, context=trace.set_span_in_context(span))
        call.metadata.update(carrier)
        span.add_event("Outbound message")
        call.state[self] = span

    def after_call(self, call: ClientCall, outcome: Outcome) -> None:
        span = call.state.pop(self, None)
        if span is None:
            return
        span.add_event("Inbound message")
        _set_span_error(span, outcome.error)
        span.end()


class ServerTracing(ServerInterceptor):
    """otelpsrpc's ServerOptions: a ``Recv.<Service>.<Method>`` span per
    handled request, the current span while its handler runs."""

    def __init__(self, tracer_provider: Optional[trace.TracerProvider] = None,
                 propagator: Optional[TextMapPropagator] = None) -> None:
        self._tracer = _tracer(tracer_provider)
        self._prop = propagator or TraceContextTextMapPropagator()

    def before_handle(self, call: ServerCall) -> None:
        if call.kind == "stream":
            return
        parent = self._prop.extract(dict(call.metadata))
        span = self._tracer.start_span("Recv." + call.full_method, context=parent,
                                       kind=SpanKind.SERVER)
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        span.add_event("Outbound message")
        call.state[self] = (span, token)

    def after_handle(self, call: ServerCall, outcome: Outcome) -> None:
        st = call.state.pop(self, None)
        if st is None:
            return
        span, token = st
        span.add_event("Inbound message")
        _set_span_error(span, outcome.error)
        span.end()
        otel_context.detach(token)


def instrument(target: Any, tracer_provider: Optional[trace.TracerProvider] = None,
               propagator: Optional[TextMapPropagator] = None) -> Any:
    """Adds tracing to a client or server (``psrpc`` or ``psrpc.aio``, typed
    clients and servers too); returns it."""
    inner: Union[Any, None] = getattr(target, "client", None) or getattr(target, "server", None)
    obj = inner if inner is not None and hasattr(inner, "add_interceptor") else target
    from . import _server

    srv = isinstance(obj, _server.Server) or hasattr(obj, "_s")
    ic: Any = (ServerTracing if srv else ClientTracing)(tracer_provider, propagator)
    obj.add_interceptor(ic)
    return target
