"""psrpc: protobuf RPC over pub/sub (in-process, Redis, NATS), wire compatible
with livekit/psrpc (Go) — the Python binding of libpsrpc.

    import psrpc
    from counter_pb2 import DESCRIPTOR, AddRequest

    svc = DESCRIPTOR.services_by_name["Counter"]
    with psrpc.Bus("redis://127.0.0.1:6379") as bus:
        server = psrpc.Server(bus, svc)

        @server.handler("AddValue")
        def add_value(req, ctx):
            ...
            return AddResult(value=...)

        client = psrpc.Client(bus, svc)
        print(client.call("AddValue", AddRequest(increment=1), timeout=2.0).value)

``psrpc.aio`` has the same operations for asyncio.
"""

from __future__ import annotations

from . import _core
from ._bus import Bus, BusState
from ._client import (CallFuture, Claim, Client, MultiCall, MultiResult, SelectionOptions,
                      Subscription)
from ._errors import (Aborted, AlreadyExists, Canceled, DataLoss, DeadlineExceeded,
                      FailedPrecondition, Internal, InvalidArgument, MalformedRequest,
                      MalformedResult, NotAcceptable, NotFound, NotSupported, OutOfRange,
                      PermissionDenied, PsrpcError, ResourceExhausted, Status, Unauthenticated,
                      Unavailable, Unimplemented, Unknown, UnprocessableEntity,
                      UpstreamClientError, UpstreamServerError, WouldDeadlock)
from ._intercept import ClientCall, ClientInterceptor, Outcome, ServerCall, ServerInterceptor
from ._method import Method, Service
from ._observe import Metrics, MethodMetrics, RetryOptions, disable_logging, enable_logging
from ._options import (ROUTING_AFFINITY, ROUTING_MULTI, ROUTING_QUEUE, PsrpcOptions, TopicParams,
                       camel_case, proto_include)
from ._protoc import compile_protos, load_proto
from ._server import Context, Server
from ._stream import Stream

__version__ = "0.1.0"

#: Version of the C library inside this module.
LIBRARY_VERSION: str = _core.psrpc_version_string()
#: The livekit/psrpc release whose wire protocol is spoken.
WIRE_VERSION: str = _core.PSRPC_WIRE_VERSION_STRING

__all__ = [
    "Bus", "BusState", "Client", "Server", "Context", "Method", "Service", "SelectionOptions",
    "Claim", "MultiResult", "MultiCall", "Subscription", "Stream", "CallFuture", "PsrpcOptions",
    "TopicParams", "camel_case", "proto_include", "load_proto", "compile_protos", "ROUTING_QUEUE", "ROUTING_AFFINITY",
    "ROUTING_MULTI", "Status", "PsrpcError", "Canceled", "Unknown", "InvalidArgument",
    "MalformedRequest", "DeadlineExceeded", "NotFound", "AlreadyExists", "PermissionDenied",
    "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange", "Unimplemented",
    "Internal", "MalformedResult", "Unavailable", "DataLoss", "Unauthenticated",
    "NotAcceptable", "UnprocessableEntity", "UpstreamServerError", "UpstreamClientError",
    "WouldDeadlock", "NotSupported", "LIBRARY_VERSION", "WIRE_VERSION",
    "ClientInterceptor", "ServerInterceptor", "ClientCall", "ServerCall", "Outcome",
    "RetryOptions", "Metrics", "MethodMetrics", "enable_logging", "disable_logging",
]
