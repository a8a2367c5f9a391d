"""Retries (livekit/psrpc middleware.RetryOptions), the C library's logs in
Python logging, per-method metrics and their Prometheus text, and the ABI
gaps closed for the binding (affinity-stage reject, stream deadline)."""

from __future__ import annotations

import logging
import re
import time

import pytest

import psrpc
from conftest import TRANSPORTS, echo_handler, pb


def flaky(fails, code="unavailable"):
    """A handler failing its first `fails` requests with code; counts calls."""
    calls = []

    def handler(req, ctx):
        calls.append(ctx.request_id)
        if len(calls) <= fails:
            raise psrpc.PsrpcError("try again", code=code)
        return pb.EchoResponse(tag=req.tag)

    return handler, calls


def test_retries(buses, svc):
    server = psrpc.Server(buses(), svc)
    h, calls = flaky(2)
    server.register("Echo", h)
    m = psrpc.Metrics()
    seen = []

    class Once(psrpc.ClientInterceptor):
        def after_call(self, call, outcome):
            seen.append(outcome.code)

    client = psrpc.Client(buses(), svc, retry=psrpc.RetryOptions(max_attempts=3), metrics=m,
                          interceptors=[Once()])
    assert client.call("Echo", pb.EchoRequest(tag="ok"), timeout=5).tag == "ok"
    assert len(calls) == 3 and len(set(calls)) == 3  # a new request per attempt
    assert seen == ["ok"]  # interceptors see the call once
    row = next(r for r in m.collect() if r.role == "client")
    assert (row.calls, row.errors, row.attempts) == (1, 0, 3)
    # max_attempts reached: the last attempt's error
    calls.clear()
    client.set_retry(psrpc.RetryOptions(max_attempts=2))
    with pytest.raises(psrpc.Unavailable):
        client.call("Echo", pb.EchoRequest(), timeout=5)
    assert len(calls) == 2


def test_retry_codes(buses, svc):
    server = psrpc.Server(buses(), svc)
    h, calls = flaky(1, "not_found")
    server.register("Echo", h)
    client = psrpc.Client(buses(), svc, retry=psrpc.RetryOptions(max_attempts=5))
    with pytest.raises(psrpc.NotFound):  # not recoverable by default (Go's isTimeout)
        client.call("Echo", pb.EchoRequest(), timeout=5)
    assert len(calls) == 1
    calls.clear()
    client.set_retry(psrpc.RetryOptions(max_attempts=5, codes=["not_found"]))
    h2, calls2 = flaky(1, "not_found")
    server.deregister("Echo")
    server.register("Echo", h2)
    assert client.call("Echo", pb.EchoRequest(tag="t"), timeout=5).tag == "t"
    assert len(calls2) == 2
    client.set_retry(None)
    with pytest.raises(ValueError):
        psrpc.Client(buses(), svc, retry=psrpc.RetryOptions(timeout=-1))


def test_metrics_prometheus(buses, svc):
    m = psrpc.Metrics()
    server = psrpc.Server(buses(), svc, metrics=m)
    server.register("Echo", echo_handler)
    client = m.attach(psrpc.Client(buses(), svc))
    for _ in range(3):
        client.call("Echo", pb.EchoRequest(), timeout=5)
    with pytest.raises(psrpc.NotFound):
        client.call("Echo", pb.EchoRequest(fail_code="not_found"), timeout=5)
    deadline = time.monotonic() + 5  # the server counts once its answer went out
    while time.monotonic() < deadline and sum(r.calls for r in m.collect()) < 8:
        time.sleep(0.01)
    rows = {r.role: r for r in m.collect()}
    for role in ("client", "server"):
        r = rows[role]
        assert (r.kind, r.service, r.method) == ("unary", svc.name, "Echo")
        assert (r.calls, r.errors, r.error_codes) == (4, 1, {"not_found": 1})
        assert r.buckets[-1] == (float("inf"), 4) and r.latency_sum > 0
        assert [n for _, n in r.buckets] == sorted(n for _, n in r.buckets)  # cumulative
    text = m.prometheus_text()
    lab = f'kind="unary",service="{svc.name}",method="Echo"'
    assert f'psrpc_requests_total{{role="client",{lab}}} 4\n' in text
    assert f'psrpc_errors_total{{role="server",{lab},code="not_found"}} 1\n' in text
    assert f'psrpc_attempts_total{{role="client",{lab}}} 4\n' in text
    assert f'psrpc_request_duration_seconds_bucket{{role="client",{lab},le="+Inf"}} 4\n' in text
    assert f'psrpc_request_duration_seconds_count{{role="server",{lab}}} 4\n' in text
    assert "# TYPE psrpc_request_duration_seconds histogram\n" in text
    # every sample line is well formed: name{labels} number
    for line in text.splitlines():
        assert line.startswith("# ") or re.fullmatch(r'[a-z_]+\{[^}]*\} [0-9.e+-]+', line), line


def test_logging_bridge(caplog):
    """Off by default; enable_logging() brings the C library's events to
    the psrpc.<component> loggers (a broker bus logs "connected" at INFO)."""
    url = TRANSPORTS["redis"]
    caplog.set_level(logging.DEBUG, logger="psrpc")
    with psrpc.Bus(url) as bus:
        bus.wait_ready(10)
    assert not [r for r in caplog.records if r.name == "psrpc.bus"]
    psrpc.enable_logging(logging.INFO)
    try:
        with psrpc.Bus(url) as bus:
            bus.wait_ready(10)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not [
                    r for r in caplog.records if r.name == "psrpc.bus"]:
                time.sleep(0.01)
    finally:
        psrpc.disable_logging()
    recs = [r for r in caplog.records if r.name == "psrpc.bus"]
    assert recs and recs[0].levelno == logging.INFO and "connect" in recs[0].getMessage()
    assert all(r.levelno >= logging.INFO for r in caplog.records if r.name.startswith("psrpc."))


def test_affinity_reject_and_stream_deadline(buses, svc):
    server = psrpc.Server(buses(), svc)
    server.register("Claim", echo_handler, affinity=lambda req, ctx: 1.0)
    deadlines = []

    def chat(stream):
        deadlines.append(stream.deadline)
        for msg in stream:
            stream.send(msg)

    server.register("Chat", chat)
    raw = psrpc.Client(buses(), svc.name, methods=[psrpc.Method("Claim", routing="affinity")])
    t0 = time.monotonic()
    with pytest.raises(psrpc.MalformedRequest):  # undecodable: rejected without a claim
        raw.call("Claim", b"\xff\xff\xff", timeout=5)
    assert time.monotonic() - t0 < 2
    client = psrpc.Client(buses(), svc)
    before = time.time()
    with client.open_stream("Chat", timeout=4) as s:
        s.send(pb.ChatMessage(seq=1))
        s.recv(5)
    assert deadlines and before + 3 < deadlines[0] < before + 5
    assert s.deadline is None  # client side
