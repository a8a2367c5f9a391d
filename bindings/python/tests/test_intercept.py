"""Interceptors (psrpc.ClientInterceptor / ServerInterceptor): order, metadata
reaching the server, failing and rejecting calls, one outcome per call, every
call kind, asyncio, and trace context going into nested calls."""

from __future__ import annotations

import asyncio
import contextvars
import time

import pytest

import psrpc
import psrpc.aio
from conftest import async_echo_handler, echo_handler, pb


class Rec(psrpc.ClientInterceptor, psrpc.ServerInterceptor):
    """Records what it sees in a shared log; optionally sets metadata or fails."""

    def __init__(self, name, log, set_md=None, fail=None):
        self.name, self.log, self.set_md, self.fail = name, log, set_md, fail

    def before_call(self, call):
        self.log.append(("before", self.name, call.kind, dict(call.metadata)))
        if self.set_md:
            call.metadata.update(self.set_md)
        if self.fail:
            raise self.fail

    def after_call(self, call, outcome):
        self.log.append(("after", self.name, call.kind, outcome.code, outcome.server_id))
        assert outcome.duration >= 0

    def before_handle(self, call):
        self.log.append(("handle", self.name, call.kind, call.method.name,
                         dict(call.metadata), call.client_id))
        if self.fail:
            raise self.fail

    def after_handle(self, call, outcome):
        self.log.append(("handled", self.name, call.kind, outcome.code))


def test_order_metadata_and_outcomes(buses, svc):
    log = []
    server = psrpc.Server(buses(), svc, interceptors=[Rec("s1", log)])
    server.add_interceptor(Rec("s2", log))
    server.register("Echo", echo_handler)
    client = psrpc.Client(buses(), svc, interceptors=[Rec("a", log, {"x": "1"})])
    client.add_interceptor(Rec("b", log, {"y": "2"}))
    r = client.call("Echo", pb.EchoRequest(payload=b"p"), metadata={"m": "0"}, timeout=5)
    assert dict(r.metadata) == {"m": "0", "x": "1", "y": "2"}  # what the handler saw
    assert log[:2] == [("before", "a", "unary", {"m": "0"}),
                       ("before", "b", "unary", {"m": "0", "x": "1"})]
    md = {"m": "0", "x": "1", "y": "2"}
    rest = sorted(log[2:], key=str)
    assert rest == sorted([("handle", "s1", "unary", "Echo", md, client.id),
                           ("handle", "s2", "unary", "Echo", md, client.id),
                           ("handled", "s1", "unary", "ok"), ("handled", "s2", "unary", "ok"),
                           ("after", "a", "unary", "ok", server.id),
                           ("after", "b", "unary", "ok", server.id)], key=str)
    # registration order on both sides, before and after alike
    assert [e[1] for e in log if e[0] == "after"] == ["a", "b"]
    assert [e[1] for e in log if e[0] == "handled"] == ["s1", "s2"]
    # a handler's error is the outcome on both sides
    log.clear()
    with pytest.raises(psrpc.NotFound):
        client.call("Echo", pb.EchoRequest(fail_code="not_found"), timeout=5)
    assert ("after", "a", "unary", "not_found", server.id) in log
    assert ("handled", "s1", "unary", "not_found") in log


def test_client_interceptor_fails_call(buses, svc):
    log, handled = [], []
    server = psrpc.Server(buses(), svc)
    server.register("Echo", lambda req, ctx: handled.append(1) or pb.EchoResponse())
    client = psrpc.Client(buses(), svc, interceptors=[
        Rec("a", log, fail=psrpc.PermissionDenied("not you")), Rec("b", log)])
    with pytest.raises(psrpc.PermissionDenied, match="not you"):
        client.call("Echo", pb.EchoRequest(), timeout=5)
    with pytest.raises(psrpc.PermissionDenied):
        client.call_future("Echo", pb.EchoRequest(), timeout=5)
    assert not handled
    # b's before_call never ran; every after_call saw the error, once per call
    assert [e[:2] for e in log].count(("before", "b")) == 0
    assert [e for e in log if e[0] == "after"] == [
        ("after", n, "unary", "permission_denied", None) for n in ("a", "b")] * 2


def test_server_interceptor_rejects(buses, svc):
    log, handled = [], []

    class NeedsToken(psrpc.ServerInterceptor):
        def before_handle(self, call):
            if call.metadata.get("token") != "t":
                raise psrpc.Unauthenticated("no token")

    server = psrpc.Server(buses(), svc, interceptors=[NeedsToken(), Rec("s", log)])

    def handler(req, ctx):
        handled.append(req.tag)
        return pb.EchoResponse(tag=req.tag)

    server.register("Echo", handler)
    client = psrpc.Client(buses(), svc)
    with pytest.raises(psrpc.Unauthenticated, match="no token"):
        client.call("Echo", pb.EchoRequest(tag="x"), timeout=5)
    assert client.call("Echo", pb.EchoRequest(tag="y"), metadata={"token": "t"},
                       timeout=5).tag == "y"
    assert handled == ["y"]
    assert [e for e in log if e[0] == "handled"] == [("handled", "s", "unary", "unauthenticated"),
                                                      ("handled", "s", "unary", "ok")]


def test_future_multi_and_stream_kinds(buses, svc):
    log = []
    server = psrpc.Server(buses(), svc, interceptors=[Rec("s", log)])
    server.register("Echo", echo_handler)
    server.register("Fanout", echo_handler)

    def chat(stream):
        for msg in stream:
            stream.send(msg)

    server.register("Chat", chat)
    client = psrpc.Client(buses(), svc, interceptors=[Rec("c", log, {"k": "v"})])
    assert client.call_future("Echo", pb.EchoRequest(tag="f"), timeout=5).result(5).tag == "f"
    results = client.multi_call("Fanout", pb.EchoRequest(), timeout=0.5).results()
    assert [r.server_id for r in results] == [server.id]
    with client.open_stream("Chat", timeout=5) as s:
        s.send(pb.ChatMessage(seq=1))
        assert s.recv(5).seq == 1
    deadline = time.monotonic() + 5  # the stream handler ends once it saw the close
    while ("handled", "s", "stream", "ok") not in log and time.monotonic() < deadline:
        time.sleep(0.01)
    afters = [e for e in log if e[0] == "after"]
    assert ("after", "c", "unary", "ok", server.id) in afters
    assert ("after", "c", "multi", "ok", None) in afters
    assert ("after", "c", "stream", "ok", None) in afters
    assert len(afters) == 3
    kinds = sorted(e[2] for e in log if e[0] == "handle")
    assert kinds == ["multi", "stream", "unary"]
    assert all(e[4] == {"k": "v"} for e in log if e[0] == "handle")
    assert sorted(e[2] for e in log if e[0] == "handled") == ["multi", "stream", "unary"]


def test_interceptors_bad_object(bus, svc):
    with pytest.raises(TypeError, match="before_call"):
        psrpc.Client(bus, svc, interceptors=[object()])


VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


def test_aio_interceptors_and_contextvars(buses, svc):
    """asyncio: the same hooks; a contextvar set by before_handle is seen by
    a plain (executor) handler, as OpenTelemetry's current span is."""

    class SetVar(psrpc.ServerInterceptor):
        def before_handle(self, call):
            call.state["token"] = VAR.set(call.metadata.get("who", "?"))

        def after_handle(self, call, outcome):
            VAR.reset(call.state["token"])

    async def main():
        log = []
        server = psrpc.aio.Server(buses(), svc, interceptors=[SetVar(), Rec("s", log)])
        server.handler("Echo")(async_echo_handler)
        server.handler("RegionEcho", topics="t")(
            lambda req, ctx: pb.EchoResponse(tag=VAR.get()))  # runs in the executor
        await server.wait_ready()
        client = psrpc.aio.Client(buses(), svc, interceptors=[Rec("c", log, {"who": "me"})])
        r = await client.call("Echo", pb.EchoRequest(tag="a"), timeout=5)
        assert r.tag == "a" and r.metadata["who"] == "me"
        r = await client.call("RegionEcho", pb.EchoRequest(), topics="t", timeout=5)
        assert r.tag == "me"
        with pytest.raises(psrpc.DataLoss):
            await client.call("Echo", pb.EchoRequest(fail_code="data_loss"), timeout=5)
        await server.close()
        assert [e[3] for e in log if e[0] == "after"] == ["ok", "ok", "data_loss"]
        assert [e[3] for e in log if e[0] == "handled"] == ["ok", "ok", "data_loss"]

    asyncio.run(asyncio.wait_for(main(), 60))


def test_nested_call_forwards_trace_context(buses, svc):
    """deadline=ctx hands a nested call its caller's deadline and W3C trace
    context (traceparent, tracestate), unchanged, without OpenTelemetry."""
    server = psrpc.Server(buses(), svc)
    server.register("RegionEcho", echo_handler, topics="inner")
    inner = psrpc.Client(buses(), svc)

    def outer(req, ctx):
        return inner.call("RegionEcho", req, topics="inner", deadline=ctx,
                          metadata={"own": "1"})

    server.register("Echo", outer)
    client = psrpc.Client(buses(), svc)
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    r = client.call("Echo", pb.EchoRequest(), timeout=5,
                    metadata={"traceparent": tp, "tracestate": "k=v", "other": "x"})
    assert dict(r.metadata) == {"traceparent": tp, "tracestate": "k=v", "own": "1"}
