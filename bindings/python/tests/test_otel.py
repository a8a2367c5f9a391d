"""psrpc.otel: spans named, attributed and linked as livekit/psrpc's otelpsrpc,
W3C trace context in the request metadata, nested calls continuing the trace
(opentelemetry-sdk's in-memory exporter)."""

from __future__ import annotations

import asyncio
import time

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import psrpc
import psrpc.aio
import psrpc.otel
from conftest import echo_handler, pb


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def by_name(exporter, n=4):
    """The finished spans by name, once n ended (a server span ends after its
    answer was sent, maybe after the caller got it)."""
    deadline = time.monotonic() + 5
    while len(exporter.get_finished_spans()) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return {s.name: s for s in exporter.get_finished_spans()}


def test_spans_and_nested_trace(buses, svc, spans):
    provider, exporter = spans
    tracing_c = psrpc.otel.ClientTracing(provider)
    tracing_s = psrpc.otel.ServerTracing(provider)
    server = psrpc.Server(buses(), svc, interceptors=[tracing_s])
    server.register("RegionEcho", echo_handler, topics="inner")
    inner = psrpc.Client(buses(), svc, interceptors=[tracing_c])
    # the handler's nested call continues the trace through the current span
    server.register("Echo", lambda req, ctx: inner.call("RegionEcho", req, topics="inner",
                                                        deadline=ctx))
    client = psrpc.Client(buses(), svc, interceptors=[tracing_c])
    r = client.call("Echo", pb.EchoRequest(payload=b"x"), timeout=5)
    S = svc.name
    s = by_name(exporter)
    assert set(s) == {f"Sent.{S}.Echo", f"Recv.{S}.Echo", f"Sent.{S}.RegionEcho",
                      f"Recv.{S}.RegionEcho"}
    sent, recv = s[f"Sent.{S}.Echo"], s[f"Recv.{S}.Echo"]
    nsent, nrecv = s[f"Sent.{S}.RegionEcho"], s[f"Recv.{S}.RegionEcho"]
    assert len({x.context.trace_id for x in s.values()}) == 1
    assert sent.parent is None
    assert recv.parent.span_id == sent.context.span_id
    assert nsent.parent.span_id == recv.context.span_id
    assert nrecv.parent.span_id == nsent.context.span_id
    assert [sent.kind, recv.kind, nsent.kind, nrecv.kind] == [
        SpanKind.CLIENT, SpanKind.SERVER, SpanKind.CLIENT, SpanKind.SERVER]
    for x in s.values():
        assert x.instrumentation_scope.name == "github.com/livekit/psrpc"
        assert x.instrumentation_scope.version == "v0.8.0"
        assert [e.name for e in x.events] == ["Outbound message", "Inbound message"]
        assert x.status.status_code == StatusCode.OK
        assert dict(x.attributes) == {"rpc.grpc.status_code": 0}
    # the metadata the innermost handler saw: W3C traceparent of the nested client span
    tid = format(sent.context.trace_id, "032x")
    assert r.metadata["traceparent"] == (f"00-{tid}-{nsent.context.span_id:016x}-"
                                        f"{int(nsent.context.trace_flags):02x}")
    assert "tracestate" not in r.metadata


def test_error_span(buses, svc, spans):
    provider, exporter = spans
    server = psrpc.Server(buses(), svc, interceptors=[psrpc.otel.ServerTracing(provider)])
    server.register("Echo", echo_handler)
    client = psrpc.otel.instrument(psrpc.Client(buses(), svc), provider)
    with pytest.raises(psrpc.NotFound):
        client.call("Echo", pb.EchoRequest(fail_code="not_found", fail_message="gone"),
                    timeout=5)
    spans = by_name(exporter, 2)
    assert len(spans) == 2, exporter.get_finished_spans()
    for x in spans.values():
        assert x.status.status_code == StatusCode.ERROR and x.status.description == "gone"
        assert dict(x.attributes) == {"rpc.psrpc.status_code": "not_found",
                                      "rpc.grpc.status_code": 5}
        assert [e.name for e in x.events] == ["Outbound message", "Inbound message",
                                              "exception"]  # Go: RecordError after


def test_aio_spans(buses, svc, spans):
    provider, exporter = spans

    async def main():
        server = psrpc.aio.Server(buses(), svc)
        psrpc.otel.instrument(server, provider)
        inner = psrpc.otel.instrument(psrpc.aio.Client(buses(), svc), provider)

        async def outer(req, ctx):
            return await inner.call("RegionEcho", req, topics="t", deadline=ctx)

        server.handler("Echo")(outer)
        server.handler("RegionEcho", topics="t")(echo_handler)  # sync: in the executor
        await server.wait_ready()
        client = psrpc.otel.instrument(psrpc.aio.Client(buses(), svc), provider)
        await client.call("Echo", pb.EchoRequest(), timeout=5)
        await server.close()

    asyncio.run(asyncio.wait_for(main(), 60))
    s = by_name(exporter)
    S = svc.name
    assert len(s) == 4 and len({x.context.trace_id for x in s.values()}) == 1
    assert s[f"Recv.{S}.RegionEcho"].parent.span_id == s[f"Sent.{S}.RegionEcho"].context.span_id
    assert s[f"Sent.{S}.RegionEcho"].parent.span_id == s[f"Recv.{S}.Echo"].context.span_id
