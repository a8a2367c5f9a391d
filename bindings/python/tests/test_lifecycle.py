"""Handles closed, collected and abandoned in any order; interpreter exit."""

from __future__ import annotations

import gc
import itertools
import os
import pickle
import queue
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import psrpc
from psrpc import _core
from conftest import GEN_DIR, echo_handler, pb

ORDERS = list(itertools.permutations(["bus", "server", "client", "sub", "stream"]))[::17]


@pytest.mark.parametrize("order", ORDERS, ids=["-".join(o) for o in ORDERS])
def test_gc_in_any_order(url, svc, upd, order):
    objs = {}
    objs["bus"] = psrpc.Bus(url)
    objs["bus"].wait_ready(10)
    objs["server"] = psrpc.Server(objs["bus"], svc)
    objs["server"].register("Echo", echo_handler)
    objs["server"].register("Chat", lambda st: [st.send(m) for m in st])
    objs["client"] = psrpc.Client(objs["bus"], svc)
    objs["client"].call("Echo", pb.EchoRequest(), timeout=5)
    objs["sub"] = psrpc.Client(objs["bus"], upd).subscribe("Updates")
    objs["stream"] = objs["client"].open_stream("Chat", timeout=5)
    objs["stream"].send(pb.ChatMessage(seq=1))
    objs["pending"] = objs["client"].call_future("Echo", pb.EchoRequest(delay_ms=200), timeout=5)
    for name in order:
        del objs[name]
        gc.collect()
    fut = objs.pop("pending")
    try:  # answered, or canceled if its bus went away first: either way it completes
        fut.result(10)
    except psrpc.PsrpcError:
        pass
    gc.collect()


def test_bus_collected_unclosed(url, svc):
    """A bus nobody references any more (with its server) is closed and freed;
    clients of other buses then see no server."""
    bus = psrpc.Bus(url)
    bus.wait_ready(10)
    server = psrpc.Server(bus, svc)
    server.register("Echo", echo_handler)
    cbus = psrpc.Bus(url)
    client = psrpc.Client(cbus, svc)
    client.call("Echo", pb.EchoRequest(), timeout=5)
    del bus, server
    gc.collect()
    time.sleep(0.3)
    with pytest.raises(psrpc.Unavailable):
        client.call("Echo", pb.EchoRequest(), timeout=2)
    del client, cbus
    gc.collect()


def test_dropped_request_is_failed(buses, svc):
    """A request the handler drops unanswered fails (internal) when collected."""
    sbus = buses()
    server = psrpc.Server(sbus, svc)
    kept = []

    def raw(kind, arg):
        if kind == 0:
            if pb.EchoRequest.FromString(arg.payload).payload == b"keep":
                kept.append(arg)
            # else: dropped here, answered by its finalizer

    _core.psrpc_server_register(server._ptr, server.method("Echo")._c, None, (raw, False))
    server.wait_ready()
    client = psrpc.Client(buses(), svc)
    with pytest.raises(psrpc.Internal, match="dropped"):
        client.call("Echo", pb.EchoRequest(), timeout=5)
    fut = client.call_future("Echo", pb.EchoRequest(payload=b"keep"), timeout=5)
    for _ in range(100):
        if kept:
            break
        time.sleep(0.02)
    req = kept.pop()
    assert not req.answered
    threading.Thread(target=req.respond, args=(pb.EchoResponse(tag="late").SerializeToString(),)).start()
    assert fut.result(5).tag == "late"
    time.sleep(0.05)
    assert req.answered
    with pytest.raises(psrpc.FailedPrecondition):
        req.respond(b"")
    with pytest.raises(psrpc.FailedPrecondition):
        req.claim(1.0)


def test_dropped_affinity_question_declines(buses, svc):
    """An affinity question dropped unanswered declines (psrpc_request_abandon
    in the finalizer): this server is never chosen, another one answers."""
    sbus = buses()
    server = psrpc.Server(sbus, svc)
    asked = []

    def raw(kind, arg):
        if kind == 1:
            asked.append(1)  # the question object is dropped here
        elif kind == 0:
            arg.respond(pb.EchoResponse(tag="dropper").SerializeToString())

    _core.psrpc_server_register(server._ptr, server.method("Claim")._c, None, (raw, True))
    server.wait_ready()
    client = psrpc.Client(buses(), svc)
    sel = psrpc.SelectionOptions(affinity_timeout=0.5)
    with pytest.raises(psrpc.Unavailable):
        client.call("Claim", pb.EchoRequest(), timeout=5, selection=sel)
    assert asked
    other = psrpc.Server(buses(), svc)
    other.register("Claim", lambda r, c: pb.EchoResponse(tag="other"),
                   affinity=lambda r, c: 0.5)
    assert client.call("Claim", pb.EchoRequest(), timeout=5, selection=sel).tag == "other"


def test_blocking_inside_callback_would_deadlock(bus, svc):
    server = psrpc.Server(bus, svc)
    server.register("Echo", echo_handler)
    client = psrpc.Client(bus, svc)
    seen = queue.SimpleQueue()

    def on_state(state, err):
        try:
            client.call("Echo", pb.EchoRequest(), timeout=1)
            seen.put(None)
        except psrpc.PsrpcError as e:
            seen.put(e)

    bus.watch(on_state)
    e = seen.get(timeout=5)
    assert isinstance(e, psrpc.WouldDeadlock)


def test_client_stream_collected_closes_cleanly(buses, svc):
    ends = queue.SimpleQueue()

    def handler(stream):
        for _ in stream:
            pass
        ends.put(stream.error)

    server = psrpc.Server(buses(), svc)
    server.register("Chat", handler)
    client = psrpc.Client(buses(), svc)
    st = client.open_stream("Chat", timeout=5)
    st.send(pb.ChatMessage(seq=1))
    del st
    gc.collect()
    assert ends.get(timeout=5) is None


EXIT_SCRIPT = textwrap.dedent("""
    import sys, threading, time
    sys.path.insert(0, {gen!r})
    import psrpc, psrpc_test_pb2 as pb
    svc = psrpc.Service("PyExit_{tag}", psrpc.Service.from_descriptor(
        pb.DESCRIPTOR.services_by_name["PyTestService"]).methods.values())
    upd = psrpc.Service.from_descriptor(pb.DESCRIPTOR.services_by_name["PyTestUpdates"])
    bus = psrpc.Bus({url!r}); bus.wait_ready(10)
    bus2 = psrpc.Bus({url!r}); bus2.wait_ready(10)
    server = psrpc.Server(bus, svc)
    def slow(req, ctx):
        time.sleep(0.2)
        return pb.EchoResponse(payload=req.payload)
    server.register("Echo", slow)
    server.register("Chat", lambda st: [st.send(m) for m in st])
    client = psrpc.Client(bus2, svc)
    fut = client.call_future("Echo", pb.EchoRequest(), timeout=5)
    sub = psrpc.Client(bus2, upd).subscribe("Updates")
    stream = client.open_stream("Chat", timeout=5)
    stream.send(pb.ChatMessage(seq=1))
    threading.Thread(target=lambda: [m for m in sub], daemon=True).start()
    print("open", flush=True)
    {ending}
""")


@pytest.mark.parametrize("ending", ["pass", "sys.exit(0)", "raise SystemExit(0)"])
def test_interpreter_exit_with_open_handles(url, ending):
    script = EXIT_SCRIPT.format(gen=GEN_DIR, url=url, ending=ending, tag=os.getpid())
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "open"
    assert "Traceback" not in p.stderr and "Fatal" not in p.stderr, p.stderr
    assert time.monotonic() - t0 < 30


def test_errors_pickle_and_hierarchy():
    e = psrpc.DeadlineExceeded("late", details=[pb.Update(seq=1)])
    assert isinstance(e, TimeoutError) and isinstance(e, psrpc.PsrpcError)
    assert str(e) == "deadline_exceeded: late"
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is psrpc.DeadlineExceeded and e2.message == "late" and len(e2.details) == 1
    c = pickle.loads(pickle.dumps(psrpc.PsrpcError("x", code="weird")))
    assert c.code == "weird"
    assert psrpc.Status.NOT_FOUND == -6 and psrpc.Status.code(-6) == "not_found"
    assert psrpc.Status.from_code("nonsense") == psrpc.Status.UNKNOWN
