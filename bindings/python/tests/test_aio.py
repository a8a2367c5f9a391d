"""psrpc.aio over every transport: every RPC kind as coroutines and async iterators."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

import psrpc
import psrpc.aio
from conftest import async_echo_handler, echo_handler, pb


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_aio_unary_and_errors(buses, svc):
    async def main():
        server = psrpc.aio.Server(buses(), svc)
        server.handler("Echo")(async_echo_handler)
        await server.wait_ready()
        client = psrpc.aio.Client(buses(), svc)
        r = await client.call("Echo", pb.EchoRequest(payload=b"a", tag="t"), metadata={"m": "1"},
                              timeout=5)
        assert r.payload == b"a" and r.server_id == server.id and dict(r.metadata) == {"m": "1"}
        with pytest.raises(psrpc.FailedPrecondition, match="pre"):
            await client.call("Echo", pb.EchoRequest(fail_code="failed_precondition",
                                                     fail_message="pre"), timeout=5)
        with pytest.raises(psrpc.PsrpcError) as ei:
            await client.call("Echo", pb.EchoRequest(fail_code="x_custom", fail_message="c"), timeout=5)
        assert ei.value.code == "x_custom"
        with pytest.raises(TimeoutError):
            await client.call("Echo", pb.EchoRequest(delay_ms=2000), timeout=0.2)
        # many concurrent calls
        rs = await asyncio.gather(*(client.call("Echo", pb.EchoRequest(payload=bytes([i])), timeout=5)
                                    for i in range(50)))
        assert [x.payload for x in rs] == [bytes([i]) for i in range(50)]
        await server.close()

    run(main())


def test_aio_handlers_sync_async_raising(buses, svc):
    async def main():
        server = psrpc.aio.Server(buses(), svc)

        async def boom(req, ctx):
            await asyncio.sleep(0)
            raise KeyError("kaboom")

        await server.register("Echo", boom)
        await server.register("RegionEcho", echo_handler, topics="sync")  # plain function: executor
        client = psrpc.aio.Client(buses(), svc)
        with pytest.raises(psrpc.Unknown, match="kaboom"):
            await client.call("Echo", pb.EchoRequest(), timeout=5)
        r = await client.call("RegionEcho", pb.EchoRequest(delay_ms=10), topics="sync", timeout=5)
        assert r.topic == "sync"
        await server.close()

    run(main())


def test_aio_cancellation_cancels_request(buses, svc):
    async def main():
        started = asyncio.Event()
        finished = []

        async def slow(req, ctx):
            started.set()
            await asyncio.sleep(1.0)
            finished.append(1)
            return pb.EchoResponse()

        server = psrpc.aio.Server(buses(), svc)
        await server.register("Echo", slow)
        cbus = buses()
        client = psrpc.aio.Client(cbus, svc)
        task = asyncio.ensure_future(client.call("Echo", pb.EchoRequest(), timeout=10))
        await asyncio.wait_for(started.wait(), 5)
        t0 = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - t0 < 0.5
        # the library saw the cancel: nothing in flight on the client's bus
        for _ in range(50):
            if cbus.stats()["requests_in_flight"] == 0:
                break
            await asyncio.sleep(0.02)
        assert cbus.stats()["requests_in_flight"] == 0
        await server.close(timeout=5)

    run(main())


def test_aio_affinity_and_multi(buses, svc):
    async def main():
        servers = []
        for aff in (0.3, 0.8):
            s = psrpc.aio.Server(buses(), svc)

            async def affinity(req, ctx, aff=aff):
                return aff

            await s.register("Claim", async_echo_handler, affinity=affinity)
            await s.register("Fanout", async_echo_handler)
            servers.append(s)
        client = psrpc.aio.Client(buses(), svc)
        sel = psrpc.SelectionOptions(affinity_timeout=1.0, short_circuit_timeout=0.5)
        r = await client.call("Claim", pb.EchoRequest(), selection=sel, timeout=5)
        assert r.server_id == servers[1].id
        got = sorted([x.response.server_id async for x in client.multi_call(
            "Fanout", pb.EchoRequest(), timeout=1)])
        assert got == sorted(s.id for s in servers)
        mc = client.multi_call("Fanout", pb.EchoRequest(delay_ms=3000), timeout=10)
        t0 = time.monotonic()
        await mc.aclose()
        assert [x async for x in mc] == []
        assert time.monotonic() - t0 < 2
        for s in servers:
            await s.close(force=True)

    run(main())


def test_aio_subscriptions(buses, upd):
    async def main():
        pub_server = psrpc.aio.Server(buses(), upd)
        client = psrpc.aio.Client(buses(), upd)
        async with await client.subscribe("Updates") as sub:
            for i in range(3):
                pub_server.publish("Updates", pb.Update(seq=i, nonce=uuid.uuid4().hex))
            assert [(await sub.get()).seq for _ in range(3)] == [0, 1, 2]
        sub2 = await client.subscribe("RegionUpdates", ["eu"])
        pub_server.publish("RegionUpdates", pb.Update(seq=5, nonce="x"), topics=["eu"])
        async for m in sub2:
            assert m.seq == 5
            sub2.close()
        assert sub2._ended

    run(main())


def test_aio_streams(buses, svc):
    async def main():
        async def chat(stream):
            async for m in stream:
                if m.close_code:
                    raise psrpc.PsrpcError(m.close_message, code=m.close_code)
                await stream.send(pb.ChatMessage(seq=m.seq + 1, payload=m.payload))

        server = psrpc.aio.Server(buses(), svc)
        await server.register("Chat", chat)
        client = psrpc.aio.Client(buses(), svc)
        st = await client.open_stream("Chat", timeout=5, metadata={"x": "y"})
        for i in range(3):
            await st.send(pb.ChatMessage(seq=i, payload=b"q"))
            assert (await st.recv()).seq == i + 1
        await st.send(pb.ChatMessage(close_code="aborted", close_message="stop"))
        with pytest.raises(psrpc.Aborted, match="stop"):
            await st.recv()
        # a clean client-side close ends the server's loop
        async with await client.open_stream("Chat", timeout=5) as st2:
            await st2.send(pb.ChatMessage(seq=1))
            assert (await st2.recv()).seq == 2
        assert (await st2.wait_closed()) is not None  # canceled "stream closed"
        assert st2.error is None
        await server.close()

    run(main())


def test_aio_sync_server_with_aio_client_and_back(buses, svc):
    """A blocking server answers an asyncio client and vice versa."""
    sync_server = psrpc.Server(buses(), svc)
    sync_server.register("Echo", echo_handler)

    async def main():
        client = psrpc.aio.Client(buses(), svc)
        assert (await client.call("Echo", pb.EchoRequest(payload=b"s"), timeout=5)).payload == b"s"
        aserver = psrpc.aio.Server(buses(), svc)
        await aserver.register("Fanout", async_echo_handler)
        sync_client = psrpc.Client(buses(), svc)
        loop = asyncio.get_running_loop()
        res = await loop.run_in_executor(
            None, lambda: sync_client.multi_call("Fanout", pb.EchoRequest(), timeout=0.5).results())
        assert [r.response.server_id for r in res] == [aserver.id]
        await aserver.close()

    run(main())
    sync_server.close()


def test_aio_loop_closed_before_callback(buses, svc):
    """A completion arriving after its event loop closed is dropped quietly."""
    server = psrpc.Server(buses(), svc)
    server.register("Echo", echo_handler)
    client = psrpc.aio.Client(buses(), svc)

    async def start():
        asyncio.ensure_future(client.call("Echo", pb.EchoRequest(delay_ms=300), timeout=5))
        await asyncio.sleep(0.05)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(start())
    loop.close()
    time.sleep(0.6)  # the completion finds a closed loop
    server.close()
