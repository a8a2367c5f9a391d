"""A server process that exits while a handler runs sends that handler's
answer before its bus closes: when the main thread returns, on SIGINT, and
with ``serve_forever()`` (blocking and asyncio) on SIGTERM or SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

import psrpc
from conftest import GEN_DIR, TRANSPORTS, _selected, pb

BROKERS = [t for t in _selected if t != "local"]

PROLOGUE = """
import asyncio, signal, sys, threading, time
# As in a terminal: Ctrl-C raises KeyboardInterrupt even when the test runner
# was started with SIGINT ignored (a background job of a non-interactive
# shell, which the child would inherit).
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, {gen!r})
import psrpc, psrpc.aio, psrpc_test_pb2 as pb
svc = psrpc.Service({name!r}, psrpc.Service.from_descriptor(
    pb.DESCRIPTOR.services_by_name["PyTestService"]).methods.values())

def slow(req, ctx):
    print("handling", flush=True)
    time.sleep(req.delay_ms / 1000)
    return pb.EchoResponse(tag="answer:" + req.tag)

async def aslow(req, ctx):
    print("handling", flush=True)
    await asyncio.sleep(req.delay_ms / 1000)
    return pb.EchoResponse(tag="answer:" + req.tag)
"""

SCRIPTS = {
    # the main thread returns with the handler still running, nothing closed
    "main-returns": """
bus = psrpc.Bus({url!r}, wait_ready=10)
server = psrpc.Server(bus, svc)
server.register("Echo", slow)
print("ready", flush=True)
sys.stdin.readline()
""",
    # SIGINT (KeyboardInterrupt) unwinds the with block while the handler runs
    "sigint-with": """
with psrpc.Bus({url!r}, wait_ready=10) as bus:
    server = psrpc.Server(bus, svc)
    server.register("Echo", slow)
    print("ready", flush=True)
    time.sleep(60)
""",
    "serve-forever": """
with psrpc.Bus({url!r}, wait_ready=10) as bus:
    server = psrpc.Server(bus, svc)
    server.register("Echo", slow)
    server.serve_forever(on_start=lambda: print("ready", flush=True))
    print("closed", server.closed, flush=True)
""",
    "aio-serve-forever": """
async def main():
    async with psrpc.Bus({url!r}, wait_ready=10) as bus:
        server = psrpc.aio.Server(bus, svc)
        server.handler("Echo")(aslow)
        await server.wait_ready()
        await server.serve_forever(on_start=lambda: print("ready", flush=True))
        print("closed", server.closed, flush=True)
asyncio.run(main())
""",
}


def start(kind: str, url: str, name: str) -> subprocess.Popen:
    script = textwrap.dedent(PROLOGUE).format(gen=GEN_DIR, name=name) + \
        SCRIPTS[kind].format(url=url)
    p = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    if line != "ready":
        p.kill()
        raise AssertionError(f"{kind}: {line!r} {p.stderr.read()}")
    return p


def exit_while_handling(kind: str, transport: str, ending) -> tuple:
    url = TRANSPORTS[transport]
    name = f"PyExit_{uuid.uuid4().hex[:10]}"
    p = start(kind, url, name)
    try:
        with psrpc.Bus(url, wait_ready=10) as bus:
            client = psrpc.Client(bus, psrpc.Service(name, psrpc.Service.from_descriptor(
                pb.DESCRIPTOR.services_by_name["PyTestService"]).methods.values()))
            fut = client.call_future("Echo", pb.EchoRequest(tag=kind, delay_ms=1000), timeout=8)
            assert p.stdout.readline().strip() == "handling"
            t0 = time.monotonic()
            ending(p)
            # The answer of the handler that was running arrives (not a
            # timeout after 8 s, not an error).
            resp = fut.result(10)
            assert resp.tag == "answer:" + kind
            assert time.monotonic() - t0 < 5
            # Once closed, nobody serves any more.
            rc = p.wait(20)
            with pytest.raises((psrpc.Unavailable, psrpc.DeadlineExceeded)):
                client.call("Echo", pb.EchoRequest(), timeout=1)
        out, err = p.communicate(timeout=10)
        return rc, out, err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.parametrize("transport", BROKERS)
def test_answer_sent_when_main_thread_returns(transport):
    def end(p):
        p.stdin.write("\n")
        p.stdin.flush()

    rc, out, err = exit_while_handling("main-returns", transport, end)
    assert rc == 0, err
    assert "Traceback" not in err, err


@pytest.mark.parametrize("transport", BROKERS)
def test_answer_sent_on_sigint(transport):
    rc, out, err = exit_while_handling("sigint-with", transport,
                                       lambda p: p.send_signal(signal.SIGINT))
    assert "KeyboardInterrupt" in err  # the program's own choice: it did not catch it


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("kind", ["serve-forever", "aio-serve-forever"])
@pytest.mark.parametrize("transport", BROKERS)
def test_serve_forever_stops_gracefully_on_signal(transport, kind, sig):
    rc, out, err = exit_while_handling(kind, transport, lambda p: p.send_signal(sig))
    assert rc == 0, err
    assert out.strip() == "closed True", (out, err)
    assert "Traceback" not in err, err


@pytest.mark.parametrize("kind", ["serve-forever", "aio-serve-forever"])
def test_signal_right_after_ready_closes_gracefully(kind):
    """"ready" printed from on_start: the signal handlers are in place, so a
    SIGTERM sent at once still ends in a graceful close (exit 0)."""
    url = TRANSPORTS[BROKERS[0]] if BROKERS else "local://"
    for _ in range(3):
        p = start(kind, url, f"PyExit_{uuid.uuid4().hex[:10]}")
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        assert out.strip() == "closed True", (out, err)


def test_serve_forever_returns_when_closed_elsewhere(buses, svc):
    """Off the main thread no signal handler is installed: serve_forever
    waits until the server (or its bus) is closed, then returns."""
    import threading

    bus = buses()
    server = psrpc.Server(bus, svc)
    server.register("Echo", lambda req, ctx: pb.EchoResponse(tag="x"))
    t = threading.Thread(target=server.serve_forever)
    t.start()
    client = psrpc.Client(buses(), svc)
    assert client.call("Echo", pb.EchoRequest(), timeout=5).tag == "x"
    time.sleep(0.3)
    assert t.is_alive()
    bus.close()
    t.join(10)
    assert not t.is_alive() and server.closed
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
