"""The blocking API over every transport: every RPC kind, errors, cancellation, threads."""

from __future__ import annotations

import queue
import threading
import time
import uuid

import pytest
from google.protobuf import any_pb2

import psrpc
from conftest import echo_handler, pb


def serve(bus, svc, *methods, **kw):
    server = psrpc.Server(bus, svc, **kw)
    for m in methods or ("Echo",):
        server.register(m, echo_handler)
    return server


# ---------------------------------------------------------------- unary

def test_unary_echo_with_metadata(buses, svc):
    server = serve(buses(), svc)
    client = psrpc.Client(buses(), svc)
    resp = client.call("Echo", pb.EchoRequest(payload=b"hello", tag="t1"),
                       metadata={"k": "v", "traceparent": "00-x"}, timeout=5)
    assert isinstance(resp, pb.EchoResponse)
    assert resp.payload == b"hello" and resp.tag == "t1"
    assert resp.server_id == server.id
    assert dict(resp.metadata) == {"k": "v", "traceparent": "00-x"}


def test_context_fields(buses, svc):
    seen = {}

    def handler(req, ctx):
        seen.update(client_id=ctx.client_id, method=ctx.method.name, remaining=ctx.remaining(),
                    sent_at=ctx.sent_at, request_id=ctx.request_id)
        return pb.EchoResponse()

    server = psrpc.Server(buses(), svc)
    server.register("Echo", handler)
    client = psrpc.Client(buses(), svc, client_id="my-client.1")
    client.call("Echo", pb.EchoRequest(), timeout=4)
    assert seen["client_id"] == "my-client.1" == client.id
    assert seen["method"] == "Echo"
    assert 0 < seen["remaining"] <= 4
    assert abs(seen["sent_at"] - time.time()) < 30
    assert seen["request_id"]


def test_plain_names_and_bytes(buses):
    name = f"PyPlain_{uuid.uuid4().hex[:8]}"
    server = psrpc.Server(buses(), name)
    server.register("Upper", lambda data, ctx: bytes(data).upper())
    client = psrpc.Client(buses(), name)
    assert client.call("Upper", b"abc", timeout=5) == b"ABC"
    assert client.call(psrpc.Method("Upper"), bytearray(b"x"), timeout=5) == b"X"


def test_call_future(buses, svc):
    serve(buses(), svc)
    client = psrpc.Client(buses(), svc)
    futs = [client.call_future("Echo", pb.EchoRequest(payload=bytes([i])), timeout=5)
            for i in range(20)]
    assert [f.result(10).payload for f in futs] == [bytes([i]) for i in range(20)]


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("code,cls", [
    ("not_found", psrpc.NotFound), ("invalid_argument", psrpc.InvalidArgument),
    ("permission_denied", psrpc.PermissionDenied), ("unavailable", psrpc.Unavailable),
    ("upstream_client_error", psrpc.UpstreamClientError), ("internal", psrpc.Internal),
    ("deadline_exceeded", psrpc.DeadlineExceeded), ("canceled", psrpc.Canceled),
])
def test_error_codes(buses, svc, code, cls):
    serve(buses(), svc)
    client = psrpc.Client(buses(), svc)
    with pytest.raises(cls) as ei:
        client.call("Echo", pb.EchoRequest(fail_code=code, fail_message=f"m-{code}"), timeout=5)
    assert ei.value.code == code and ei.value.message == f"m-{code}"
    assert ei.value.status == psrpc.Status.from_code(code)


def test_custom_code_and_details(buses, svc):
    def handler(req, ctx):
        raise psrpc.PsrpcError("custom", code="my_code",
                               details=[pb.Update(seq=3, nonce="n"), ("type.googleapis.com/x.Y", b"\x01")])

    server = psrpc.Server(buses(), svc)
    server.register("Echo", handler)
    client = psrpc.Client(buses(), svc)
    with pytest.raises(psrpc.PsrpcError) as ei:
        client.call("Echo", pb.EchoRequest(), timeout=5)
    e = ei.value
    assert type(e) is psrpc.PsrpcError and e.code == "my_code" and e.message == "custom"
    assert e.status == psrpc.Status.UNKNOWN
    assert len(e.details) == 2 and isinstance(e.details[0], any_pb2.Any)
    u = pb.Update()
    assert e.details[0].Unpack(u) and u.seq == 3 and u.nonce == "n"
    assert e.details[1].type_url == "type.googleapis.com/x.Y" and e.details[1].value == b"\x01"


def test_raising_handler(buses, svc):
    def handler(req, ctx):
        if req.tag == "plain":
            raise ValueError("boom")
        if req.tag == "notimpl":
            raise NotImplementedError
        if req.tag == "wrongtype":
            return pb.Update()
        if req.tag == "subclass":
            raise psrpc.NotFound("no such", details=[pb.Update(seq=1)])
        return pb.EchoResponse()

    server = psrpc.Server(buses(), svc)
    server.register("Echo", handler)
    client = psrpc.Client(buses(), svc)
    with pytest.raises(psrpc.Unknown, match="boom"):
        client.call("Echo", pb.EchoRequest(tag="plain"), timeout=5)
    with pytest.raises(psrpc.Unimplemented):
        client.call("Echo", pb.EchoRequest(tag="notimpl"), timeout=5)
    with pytest.raises(psrpc.MalformedResult):
        client.call("Echo", pb.EchoRequest(tag="wrongtype"), timeout=5)
    with pytest.raises(psrpc.NotFound) as ei:
        client.call("Echo", pb.EchoRequest(tag="subclass"), timeout=5)
    assert len(ei.value.details) == 1
    # the server still serves
    client.call("Echo", pb.EchoRequest(), timeout=5)


def test_timeout_is_timeouterror(buses, svc):
    serve(buses(), svc)
    client = psrpc.Client(buses(), svc)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as ei:
        client.call("Echo", pb.EchoRequest(delay_ms=2000), timeout=0.3)
    assert isinstance(ei.value, psrpc.DeadlineExceeded)
    assert ei.value.code == "deadline_exceeded"
    assert time.monotonic() - t0 < 1.9


def test_no_server_unavailable(bus, svc):
    client = psrpc.Client(bus, svc)
    with pytest.raises(psrpc.Unavailable):
        client.call("Echo", pb.EchoRequest(), timeout=2)


def test_local_misuse_errors(bus, svc):
    with pytest.raises(psrpc.InvalidArgument):
        psrpc.Client(bus, "not an identifier")
    client = psrpc.Client(bus, svc)
    with pytest.raises(psrpc.NotFound):
        client.call("NoSuchMethod", b"")
    with pytest.raises(psrpc.InvalidArgument):
        client.call("Fanout", pb.EchoRequest(), timeout=1)  # multi method, unary call
    with pytest.raises(TypeError):
        client.call("Echo", 12)
    with pytest.raises(psrpc.MalformedRequest):
        client.call("Echo", pb.Update())


# ---------------------------------------------------------------- affinity, selection

def test_affinity_highest_wins(buses, svc):
    low = psrpc.Server(buses(), svc)
    low.register("Claim", echo_handler, affinity=lambda r, c: 0.2)
    high = psrpc.Server(buses(), svc)
    high.register("Claim", echo_handler, affinity=lambda r, c: 0.9)
    client = psrpc.Client(buses(), svc)
    sel = psrpc.SelectionOptions(affinity_timeout=1.0, short_circuit_timeout=0.5)
    for _ in range(3):
        assert client.call("Claim", pb.EchoRequest(), selection=sel, timeout=5).server_id == high.id


def test_affinity_decline_and_select(buses, svc):
    decl = psrpc.Server(buses(), svc)
    decl.register("Claim", echo_handler, affinity=lambda r, c: -1)
    client = psrpc.Client(buses(), svc)
    with pytest.raises(psrpc.Unavailable):
        client.call("Claim", pb.EchoRequest(), timeout=3)
    a = psrpc.Server(buses(), svc)
    a.register("Claim", echo_handler, affinity=lambda r, c: 0.5)
    b = psrpc.Server(buses(), svc)
    b.register("Claim", echo_handler, affinity=lambda r, c: 0.6)
    seen = []

    def select(claims):
        seen.append(sorted(c.server_id for c in claims))
        return a.id  # not the highest

    sel = psrpc.SelectionOptions(affinity_timeout=0.5, select=select)
    assert client.call("Claim", pb.EchoRequest(), selection=sel, timeout=5).server_id == a.id
    assert seen and set(seen[0]) == {a.id, b.id}

    def refuse(claims):
        raise psrpc.PermissionDenied("nobody")

    with pytest.raises(psrpc.PermissionDenied):
        client.call("Claim", pb.EchoRequest(),
                    selection=psrpc.SelectionOptions(affinity_timeout=0.3, select=refuse), timeout=5)


# ---------------------------------------------------------------- multi

def test_multi_call(buses, svc):
    servers = [psrpc.Server(buses(), svc) for _ in range(3)]
    for s in servers[:2]:
        s.register("Fanout", echo_handler)

    def failing(req, ctx):
        raise psrpc.Aborted("no")

    servers[2].register("Fanout", failing)
    client = psrpc.Client(buses(), svc)
    results = client.multi_call("Fanout", pb.EchoRequest(payload=b"m"), timeout=1).results()
    ok = sorted(r.response.server_id for r in results if r.error is None)
    errs = [r for r in results if r.error is not None]
    assert ok == sorted(s.id for s in servers[:2])
    assert len(errs) == 1 and isinstance(errs[0].error, psrpc.Aborted)
    assert errs[0].server_id in (servers[2].id, None)


def test_multi_call_cancel(buses, svc):
    serve(buses(), svc, "Fanout")
    client = psrpc.Client(buses(), svc)
    t0 = time.monotonic()
    with client.multi_call("Fanout", pb.EchoRequest(delay_ms=3000), timeout=10) as mc:
        mc.cancel()
        assert list(mc) == []
    assert time.monotonic() - t0 < 3


# ---------------------------------------------------------------- topics

def test_topics(buses, svc):
    eu = psrpc.Server(buses(), svc)
    eu.register("RegionEcho", echo_handler, topics="eu")
    us = psrpc.Server(buses(), svc)
    us.register("RegionEcho", echo_handler, topics=["us"])
    client = psrpc.Client(buses(), svc)
    for t, s in (("eu", eu), ("us", us)):
        r = client.call("RegionEcho", pb.EchoRequest(), topics=t, timeout=5)
        assert r.server_id == s.id and r.topic == t
    with pytest.raises(psrpc.Unavailable):
        client.call("RegionEcho", pb.EchoRequest(), topics="asia", timeout=2)
    us.deregister("RegionEcho", "us")
    with pytest.raises(psrpc.Unavailable):
        client.call("RegionEcho", pb.EchoRequest(), topics="us", timeout=2)
    # multi per topic, and the single-server kind (no claim)
    for s in (eu, us):
        s.register("RegionFanout", echo_handler, topics="all")
        s.register("Single", echo_handler, topics=s.id)
    res = client.multi_call("RegionFanout", pb.EchoRequest(), topics="all", timeout=1).results()
    assert sorted(r.response.server_id for r in res) == sorted([eu.id, us.id])
    assert client.call("Single", pb.EchoRequest(), topics=us.id, timeout=5).server_id == us.id


# ---------------------------------------------------------------- subscriptions

def test_subscriptions(buses, upd):
    pub = psrpc.Server(buses(), upd)
    c1, c2 = psrpc.Client(buses(), upd), psrpc.Client(buses(), upd)
    with c1.subscribe("Updates") as s1, c2.subscribe("Updates") as s2:
        for i in range(1, 4):
            pub.publish("Updates", pb.Update(seq=i, nonce=uuid.uuid4().hex))
        assert [s1.get(timeout=5).seq for _ in range(3)] == [1, 2, 3]
        assert [s2.get(timeout=5).seq for _ in range(3)] == [1, 2, 3]
    # queue subscription: each update reaches one subscriber
    w1, w2 = c1.subscribe("Work"), c2.subscribe("Work")
    for i in range(10):
        pub.publish("Work", pb.Update(seq=i, nonce=uuid.uuid4().hex))
    got = []
    deadline = time.monotonic() + 5
    while len(got) < 10 and time.monotonic() < deadline:
        for w in (w1, w2):
            try:
                got.append(w.get(timeout=0.05).seq)
            except queue.Empty:
                pass
    time.sleep(0.2)
    for w in (w1, w2):
        with pytest.raises(queue.Empty):
            w.get(timeout=0.05)
    assert sorted(got) == list(range(10))
    w1.close()
    assert list(w1) == []  # ends once closed
    w2.close()
    # topics
    with c1.subscribe("RegionUpdates", "eu") as r:
        pub.publish("RegionUpdates", pb.Update(seq=1, nonce="a"), topics="us")
        pub.publish("RegionUpdates", pb.Update(seq=2, nonce="b"), topics="eu")
        assert r.get(timeout=5).seq == 2


def test_subscription_ends_when_client_closes(buses, upd):
    client = psrpc.Client(buses(), upd)
    sub = client.subscribe("Updates")
    client.close()
    assert list(sub) == []


# ---------------------------------------------------------------- streams

def chat_handler(stream):
    for m in stream:
        if m.close_code:
            stream.close(psrpc.PsrpcError(m.close_message, code=m.close_code))
            return
        if m.close_message:
            return
        stream.send(pb.ChatMessage(seq=m.seq + 1, payload=m.payload))


def test_stream(buses, svc):
    server = psrpc.Server(buses(), svc)
    server.register("Chat", chat_handler)
    client = psrpc.Client(buses(), svc)
    with client.open_stream("Chat", timeout=5, metadata={"who": "py"}) as st:
        assert st.id
        for i in range(5):
            st.send(pb.ChatMessage(seq=i, payload=b"p%d" % i))
            m = st.recv(timeout=5)
            assert m.seq == i + 1 and m.payload == b"p%d" % i
        st.send(pb.ChatMessage(close_message="bye"))
        assert list(st) == []  # the server closed cleanly
        assert st.error is None and st.closed
    # the server closes with an error code
    st = client.open_stream("Chat", timeout=5)
    st.send(pb.ChatMessage(close_code="not_found", close_message="gone"))
    with pytest.raises(psrpc.NotFound, match="gone"):
        st.recv(timeout=5)
    assert isinstance(st.error, psrpc.NotFound)
    # a custom code travels unchanged (psrpc_stream_close_code), both ways
    st = client.open_stream("Chat", timeout=5)
    st.send(pb.ChatMessage(close_code="my_custom_code", close_message="custom"))
    with pytest.raises(psrpc.PsrpcError, match="custom") as ei:
        st.recv(timeout=5)
    assert ei.value.code == "my_custom_code"
    assert st.error is not None and st.error.code == "my_custom_code"


def test_stream_client_closes_with_custom_code(buses, svc):
    seen = queue.SimpleQueue()

    def handler(stream):
        try:
            for _ in stream:
                pass
        except psrpc.PsrpcError as e:
            seen.put((e.code, e.message))
            return
        seen.put(("clean", None))

    server = psrpc.Server(buses(), svc)
    server.register("Chat", handler)
    client = psrpc.Client(buses(), svc)
    st = client.open_stream("Chat", timeout=5)
    st.send(pb.ChatMessage(seq=1))
    st.close(psrpc.PsrpcError("over quota", code="quota_exceeded"))
    assert seen.get(timeout=5) == ("quota_exceeded", "over quota")
    assert st.error is not None and st.error.code == "quota_exceeded"



def test_stream_metadata_and_client_close(buses, svc):
    seen = queue.SimpleQueue()

    def handler(stream):
        seen.put(("open", dict(stream.metadata), stream.node_id))
        try:
            for m in stream:
                seen.put(("msg", m.seq))
        except psrpc.PsrpcError as e:
            seen.put(("err", e.code))
        seen.put(("end", stream.error))

    server = psrpc.Server(buses(), svc)
    server.register("Chat", handler)
    client = psrpc.Client(buses(), svc)
    st = client.open_stream("Chat", timeout=5, metadata={"a": "1"})
    st.send(pb.ChatMessage(seq=7))
    st.close()
    assert seen.get(timeout=5) == ("open", {"a": "1"}, client.id)
    assert seen.get(timeout=5) == ("msg", 7)
    assert seen.get(timeout=5) == ("end", None)
    with pytest.raises(psrpc.PsrpcError):
        st.send(pb.ChatMessage(seq=8))


def test_stream_no_server(bus, svc):
    client = psrpc.Client(bus, svc)
    with pytest.raises(psrpc.PsrpcError):
        client.open_stream("Chat", timeout=1)


# ---------------------------------------------------------------- threads

def test_eight_threads_calling(buses, svc):
    server = serve(buses(), svc, max_workers=8)
    client = psrpc.Client(buses(), svc)
    errors = []
    n = 40

    def worker(k):
        try:
            for i in range(n):
                payload = b"%d-%d" % (k, i)
                assert client.call("Echo", pb.EchoRequest(payload=payload), timeout=10).payload == payload
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    server.close()


# ---------------------------------------------------------------- lifecycle

def test_close_idempotent_and_closed_use(buses, svc):
    b = buses()
    server = serve(b, svc)
    client = psrpc.Client(buses(), svc)
    client.call("Echo", pb.EchoRequest(), timeout=5)
    client.close()
    client.close()
    with pytest.raises(psrpc.Canceled):
        client.call("Echo", pb.EchoRequest(), timeout=5)
    server.close()
    server.close(force=True)
    with pytest.raises(psrpc.Canceled):
        server.register("Fanout", echo_handler)
    b.close()
    b.close()
    with pytest.raises(psrpc.Canceled):
        psrpc.Client(b, svc)


def test_graceful_server_close_waits_for_handlers(buses, svc):
    server = serve(buses(), svc)
    client = psrpc.Client(buses(), svc)
    fut = client.call_future("Echo", pb.EchoRequest(delay_ms=300, payload=b"late"), timeout=5)
    time.sleep(0.15)
    server.close(timeout=5)
    assert fut.result(5).payload == b"late"


def test_calls_in_flight_when_bus_closes(buses, svc):
    serve(buses(), svc)
    cbus = buses()
    client = psrpc.Client(cbus, svc)
    fut = client.call_future("Echo", pb.EchoRequest(delay_ms=2000), timeout=5)
    time.sleep(0.1)
    cbus.close()
    with pytest.raises(psrpc.Canceled):
        fut.result(5)


def test_cancel_future(buses, svc):
    serve(buses(), svc)
    client = psrpc.Client(buses(), svc)
    fut = client.call_future("Echo", pb.EchoRequest(delay_ms=2000), timeout=5)
    t0 = time.monotonic()
    assert fut.cancel()
    with pytest.raises(psrpc.Canceled):
        fut.result(5)
    assert time.monotonic() - t0 < 1.5


def test_bus_stats_and_watch(bus, svc):
    states = queue.SimpleQueue()
    bus.watch(lambda state, err: states.put(state))
    assert states.get(timeout=5) == psrpc.BusState.CONNECTED
    serve(bus, svc)
    psrpc.Client(bus, svc).call("Echo", pb.EchoRequest(), timeout=5)
    st = bus.stats()
    assert st["messages_published"] > 0 and st["messages_received"] > 0
    with pytest.raises(TypeError):
        psrpc.Bus("local://", no_such_option=1)


def test_nested_call_inherits_deadline(buses, svc):
    inner = {}
    sbus = buses()
    server = psrpc.Server(sbus, svc)
    server.register("RegionEcho", echo_handler, topics="slow")
    nested = psrpc.Client(sbus, svc)

    def outer(req, ctx):
        t0 = time.monotonic()
        try:
            nested.call("RegionEcho", pb.EchoRequest(delay_ms=3000), topics="slow", timeout=10,
                        deadline=ctx)
        except psrpc.DeadlineExceeded:
            inner["timed_out_after"] = time.monotonic() - t0
        return pb.EchoResponse()

    server.register("Echo", outer)
    client = psrpc.Client(buses(), svc)
    try:  # the answer races the caller's own timer: both end at the same deadline
        client.call("Echo", pb.EchoRequest(), timeout=0.6)
    except psrpc.DeadlineExceeded:
        pass
    for _ in range(100):
        if inner:
            break
        time.sleep(0.02)
    assert inner["timed_out_after"] < 1.5
