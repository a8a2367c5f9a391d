"""What a Python user sees when things go wrong: handler failures on the
``psrpc`` logger, refused bus URLs and options, connection errors surfaced,
errors naming the Python API, ``await bus.aclose()``."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import pytest

import psrpc
import psrpc.aio
from conftest import echo_handler, pb


def _errors(caplog):
    return [r for r in caplog.records if r.name == "psrpc" and r.levelno >= logging.ERROR]


def _wait_records(caplog, n, timeout=5.0):
    t0 = time.monotonic()
    while len(_errors(caplog)) < n and time.monotonic() - t0 < timeout:
        time.sleep(0.01)
    return _errors(caplog)


def test_handler_failures_logged_once_at_error(buses, svc, caplog):
    caplog.set_level(logging.WARNING, logger="psrpc")

    def handler(req, ctx):
        if req.tag == "raise":
            raise ValueError("boom in handler")
        if req.tag == "dict":
            return {"payload": b"x"}
        if req.tag == "wrongtype":
            return pb.Update()
        if req.tag == "deliberate":
            raise psrpc.NotFound("no such thing")
        return pb.EchoResponse()

    server = psrpc.Server(buses(), svc)
    server.register("Echo", handler)
    client = psrpc.Client(buses(), svc)

    with pytest.raises(psrpc.Unknown, match="boom in handler"):
        client.call("Echo", pb.EchoRequest(tag="raise"), timeout=5)
    recs = _wait_records(caplog, 1)
    assert len(recs) == 1, [r.getMessage() for r in recs]
    assert "Echo" in recs[0].getMessage() and "ValueError" in recs[0].getMessage()
    assert recs[0].exc_info is not None and recs[0].exc_info[0] is ValueError
    assert "boom in handler" in caplog.text and "Traceback" in caplog.text

    caplog.clear()
    with pytest.raises(psrpc.MalformedResult, match="dict"):
        client.call("Echo", pb.EchoRequest(tag="dict"), timeout=5)
    recs = _wait_records(caplog, 1)
    assert len(recs) == 1 and "returned dict" in recs[0].getMessage()
    assert "psrpc.pytest.EchoResponse" in recs[0].getMessage()

    caplog.clear()
    with pytest.raises(psrpc.MalformedResult):
        client.call("Echo", pb.EchoRequest(tag="wrongtype"), timeout=5)
    recs = _wait_records(caplog, 1)
    assert len(recs) == 1 and "returned Update" in recs[0].getMessage()

    # A deliberate psrpc error is an answer, not a failure: nothing at ERROR.
    caplog.clear()
    with pytest.raises(psrpc.NotFound):
        client.call("Echo", pb.EchoRequest(tag="deliberate"), timeout=5)
    client.call("Echo", pb.EchoRequest(), timeout=5)
    time.sleep(0.1)
    assert _errors(caplog) == []


def test_stream_and_async_handler_failures_logged(buses, svc, caplog):
    caplog.set_level(logging.WARNING, logger="psrpc")

    def chat(stream):
        for m in stream:
            raise KeyError(f"chat failed at {m.seq}")

    server = psrpc.Server(buses(), svc)
    server.register("Chat", chat)
    client = psrpc.Client(buses(), svc)
    with client.open_stream("Chat", timeout=5) as st:
        st.send(pb.ChatMessage(seq=7))
        with pytest.raises(psrpc.Unknown, match="chat failed at 7"):
            st.recv(timeout=5)
    recs = _wait_records(caplog, 1)
    assert len(recs) == 1 and "Chat" in recs[0].getMessage()
    assert recs[0].exc_info[0] is KeyError

    caplog.clear()

    async def main():
        aserver = psrpc.aio.Server(buses(), svc)

        @aserver.handler("Fanout")
        async def fanout(req, ctx):
            raise RuntimeError("async boom")

        @aserver.handler("Claim")
        async def claim(req, ctx):
            return {"not": "a message"}

        await aserver.wait_ready()
        aclient = psrpc.aio.Client(buses(), svc)
        results = await aclient.multi_call("Fanout", pb.EchoRequest(), timeout=1).results()
        assert len(results) == 1 and isinstance(results[0].error, psrpc.Unknown)
        with pytest.raises(psrpc.MalformedResult):
            await aclient.call("Claim", pb.EchoRequest(), timeout=5)
        await aserver.close()

    asyncio.run(asyncio.wait_for(main(), 30))
    recs = _wait_records(caplog, 2)
    msgs = sorted(r.getMessage() for r in recs)
    assert len(recs) == 2, msgs
    assert any("RuntimeError" in m and "async boom" in m for m in msgs)
    assert any("returned dict" in m for m in msgs)


def test_empty_bus_url_refused():
    for url in ("", "   "):
        with pytest.raises(psrpc.InvalidArgument, match="bus URL is empty"):
            psrpc.Bus(url)
    with pytest.raises(TypeError, match="must be a str"):
        psrpc.Bus(None)  # type: ignore[arg-type]
    with psrpc.Bus() as bus:  # no argument: a private in-process bus, as documented
        assert bus.url == "local://"


def test_bus_option_types_checked():
    with pytest.raises(TypeError, match=r"connect_timeout must be a number \(seconds\), not str"):
        psrpc.Bus("redis://127.0.0.1:1", connect_timeout="5")
    with pytest.raises(TypeError, match="max_message_size must be a number"):
        psrpc.Bus("local://", max_message_size=None or "1M")
    with pytest.raises(ValueError, match="must not be negative"):
        psrpc.Bus("local://", ping_interval=-1)
    with pytest.raises(TypeError, match="tls_ca_file must be a str"):
        psrpc.Bus("local://", tls_ca_file=3)
    with pytest.raises(TypeError, match="unknown bus options: bogus"):
        psrpc.Bus("local://", bogus=1)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1", "nats://127.0.0.1:1"])
def test_unreachable_broker_fails_first_call_with_connection_error(url, svc):
    """The first call on a fresh bus whose broker refuses connections fails
    with the connection error, not after its whole deadline."""
    with psrpc.Bus(url) as bus:
        client = psrpc.Client(bus, svc)
        t0 = time.monotonic()
        with pytest.raises(psrpc.Unavailable) as ei:
            client.call("Echo", pb.EchoRequest(), timeout=4)
        assert time.monotonic() - t0 < 2.0
        assert "127.0.0.1:1" in ei.value.message
    with psrpc.Bus(url) as bus:
        client = psrpc.Client(bus, svc)
        t0 = time.monotonic()
        with pytest.raises(psrpc.Unavailable):
            list(client.multi_call("Fanout", pb.EchoRequest(), timeout=4))
        assert time.monotonic() - t0 < 2.0

    async def main():
        bus = psrpc.Bus(url)
        client = psrpc.aio.Client(bus, svc)
        t0 = time.monotonic()
        with pytest.raises(psrpc.Unavailable) as ei:
            await client.call("Echo", pb.EchoRequest(), timeout=4)
        assert time.monotonic() - t0 < 2.0 and "127.0.0.1:1" in ei.value.message
        await bus.aclose()

    asyncio.run(asyncio.wait_for(main(), 30))


@pytest.mark.parametrize("scheme", ["redis", "nats"])
def test_call_right_after_open_fails_when_first_attempt_fails(scheme, svc):
    """A call made at once on a fresh bus, while its first connection attempt
    is still under way, fails with that attempt's error as soon as it fails
    (here: a broker that accepts TCP and never speaks, so the attempt ends at
    the 1 s connect timeout), not at the call's 5 s deadline. A call that asked
    to wait for ready keeps waiting until its own deadline."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    url = "%s://127.0.0.1:%d" % (scheme, silent.getsockname()[1])
    try:
        with psrpc.Bus(url, connect_timeout=1.0) as bus:
            client = psrpc.Client(bus, svc)
            patient = client.call_future("Echo", pb.EchoRequest(), timeout=3,
                                         wait_for_ready=True)
            t0 = time.monotonic()
            with pytest.raises(psrpc.Unavailable) as ei:
                client.call("Echo", pb.EchoRequest(), timeout=5)
            took = time.monotonic() - t0
            assert 0.5 < took < 2.5, took
            msg = ei.value.message
            assert "unreachable" in msg and ("timed out" in msg or "Timeout" in msg), msg
            assert not patient.done()
            with pytest.raises(psrpc.DeadlineExceeded):
                patient.result(timeout=10)
    finally:
        silent.close()


def test_bus_watch_still_reports_and_replaces(url):
    seen = []
    with psrpc.Bus(url) as bus:
        bus.wait_ready(10)
        ev = threading.Event()
        bus.watch(lambda s, e: (seen.append(("first", s)), ev.set()))
        assert ev.wait(5)
        ev2 = threading.Event()
        bus.watch(lambda s, e: (seen.append(("second", s)), ev2.set()))
        assert ev2.wait(5)
        n_first = sum(1 for w, _ in seen if w == "first")
    assert ("first", psrpc.BusState.CONNECTED) in seen
    assert ("second", psrpc.BusState.CONNECTED) in seen
    assert ("second", psrpc.BusState.CLOSED) in seen
    assert sum(1 for w, _ in seen if w == "first") == n_first  # replaced: no more calls


def test_wrong_method_kind_names_the_python_method(bus, svc, upd):
    client = psrpc.Client(bus, svc)
    with pytest.raises(psrpc.InvalidArgument, match=r"Chat is a stream method.*open_stream\(\)"):
        client.call("Chat", pb.ChatMessage())
    with pytest.raises(psrpc.InvalidArgument, match=r"Fanout is a multi method.*multi_call\(\)"):
        client.call_future("Fanout", pb.EchoRequest())
    with pytest.raises(psrpc.InvalidArgument, match=r"Echo is a unary method.*use call\(\)"):
        client.multi_call("Echo", pb.EchoRequest())
    with pytest.raises(psrpc.InvalidArgument, match="Echo is a unary method, not a stream"):
        client.open_stream("Echo")
    with pytest.raises(psrpc.InvalidArgument, match="not a subscription method"):
        client.subscribe("Echo")
    uclient = psrpc.Client(bus, upd)
    with pytest.raises(psrpc.InvalidArgument, match=r"Updates is a subscription method.*subscribe"):
        uclient.call("Updates", pb.Ignored())

    async def main():
        aclient = psrpc.aio.Client(bus, svc)
        with pytest.raises(psrpc.InvalidArgument, match="not a stream method"):
            await aclient.open_stream("Echo")
        with pytest.raises(psrpc.InvalidArgument, match="use multi_call"):
            await aclient.call("Fanout", pb.EchoRequest())

    asyncio.run(main())


def test_library_texts_use_python_names():
    from psrpc._errors import from_status, python_names

    assert python_names("psrpc_client_call_multi needs a MULTI method") == \
        "Client.multi_call needs a MULTI method"
    e = from_status(psrpc.Status.INVALID_ARGUMENT,
                    "stream methods are opened with psrpc_client_open_stream, not called")
    assert isinstance(e, psrpc.InvalidArgument)
    assert "psrpc_" not in e.message and "Client.open_stream" in e.message
    # Through the binding: a raw bytes method of the wrong kind refused by the library.
    with psrpc.Bus() as bus:
        server = psrpc.Server(bus, "S")
        with pytest.raises(psrpc.InvalidArgument) as ei:
            server.register(psrpc.Method("U", subscription=True), lambda r, c: None)
        assert "psrpc_" not in str(ei.value)


def test_oversize_message_error_names_the_limit(buses, svc):
    """The sender refuses a message over its own limit, saying so; one within
    its limit but over the receiving server's is dropped there (counted in
    dropped_oversize) and the caller sees no answer: the limit includes the
    envelope and must be the same on both sides (README)."""
    sbus = buses(max_message_size=64 * 1024)
    server = psrpc.Server(sbus, svc)
    server.register("Echo", echo_handler)
    small = psrpc.Client(buses(max_message_size=64 * 1024), svc)
    with pytest.raises(psrpc.ResourceExhausted, match="exceeds the maximum of 65536 bytes"):
        small.call("Echo", pb.EchoRequest(payload=b"x" * 65536), timeout=5)
    big = psrpc.Client(buses(max_message_size=1 << 20), svc)
    before = sbus.stats()["dropped_oversize"]
    with pytest.raises((psrpc.Unavailable, psrpc.DeadlineExceeded)):
        big.call("Echo", pb.EchoRequest(payload=b"x" * 100_000), timeout=2)
    if sbus.url.startswith("local://"):
        return  # in-process: the one hub has no per-bus receive limit to exceed
    assert sbus.stats()["dropped_oversize"] > before


def test_async_with_bus_closes_without_blocking_the_loop(url, svc):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        t = asyncio.get_running_loop().create_task(ticker())
        async with psrpc.Bus(url) as bus:
            bus.wait_ready(10)
            server = psrpc.aio.Server(bus, svc)

            @server.handler("Echo")
            async def echo(req, ctx):
                await asyncio.sleep(0.3)  # needs the event loop while the bus closes
                return pb.EchoResponse(tag="late")

            await server.wait_ready()
            client = psrpc.aio.Client(psrpc.Bus(url, wait_ready=10), svc)
            call = asyncio.ensure_future(client.call("Echo", pb.EchoRequest(), timeout=5))
            await asyncio.sleep(0.1)
            before = ticks
        # The handler finished on the running loop while the bus closed.
        assert (await call).tag == "late"
        assert ticks > before
        assert bus.closed
        await bus.aclose()  # idempotent
        t.cancel()

    asyncio.run(asyncio.wait_for(main(), 30))


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1", "nats://127.0.0.1:1"])
def test_unconfirmed_registration_names_the_connection_error(url, svc, upd):
    with psrpc.Bus(url) as bus:
        server = psrpc.Server(bus, svc)
        with pytest.raises(psrpc.Unavailable,
                           match=r"registration of Echo was not confirmed in time: bus .* "
                                 r"is not connected: .*127\.0\.0\.1:1"):
            server.register("Echo", echo_handler, timeout=1)
        client = psrpc.Client(bus, upd)
        with pytest.raises(psrpc.Unavailable, match="subscription to Updates .*127.0.0.1:1"):
            client.subscribe("Updates", timeout=1)

    async def main():
        bus = psrpc.Bus(url)
        server = psrpc.aio.Server(bus, svc)
        with pytest.raises(psrpc.Unavailable, match="not connected"):
            await server.register("Echo", echo_handler, timeout=1)
        with pytest.raises(psrpc.Unavailable, match="not connected"):
            await psrpc.aio.Client(bus, upd).subscribe("Updates", timeout=1)
        await bus.aclose()

    asyncio.run(asyncio.wait_for(main(), 30))
