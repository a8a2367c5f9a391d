"""Fixtures of the binding's tests.

The test service (protos/psrpc_test.proto, importing the package's
options.proto) is compiled at session start with grpc_tools.protoc (or a
`protoc` on PATH). Every transport test runs over local://, Redis and NATS
(PSRPC_TEST_REDIS_URL / PSRPC_TEST_NATS_URL, defaults on 127.0.0.1): a broker
that does not answer fails its tests, nothing is skipped. PSRPC_PY_TRANSPORTS
(comma-separated subset of local,redis,nats) narrows the run by hand.
"""

from __future__ import annotations

import gc
import importlib
import os
import shutil
import sys
import tempfile
import uuid

import pytest

import psrpc

HERE = os.path.dirname(os.path.abspath(__file__))
GEN_DIR = tempfile.mkdtemp(prefix="psrpc-pytest-gen-")


psrpc.compile_protos([os.path.join(HERE, "protos", "psrpc_test.proto")], GEN_DIR)
sys.path.insert(0, GEN_DIR)
pb = importlib.import_module("psrpc_test_pb2")

TRANSPORTS = {
    "local": None,
    "redis": os.environ.get("PSRPC_TEST_REDIS_URL", "redis://127.0.0.1:6379"),
    "nats": os.environ.get("PSRPC_TEST_NATS_URL", "nats://127.0.0.1:4222"),
}
_selected = [t.strip() for t in os.environ.get("PSRPC_PY_TRANSPORTS", "local,redis,nats").split(",")
             if t.strip()]


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(GEN_DIR, ignore_errors=True)


@pytest.fixture(params=_selected)
def url(request):
    """A bus URL; local:// buses of one test share a unique hub name."""
    name = request.param
    if name == "local":
        return f"local://pytest-{uuid.uuid4().hex[:12]}"
    return TRANSPORTS[name]


@pytest.fixture
def buses(url):
    """Open buses on the test's transport, closed at the end of the test.
    ``buses()`` opens another one (ready, or the test fails)."""
    opened = []

    def open_bus(**options):
        bus = psrpc.Bus(url, **options)
        opened.append(bus)
        bus.wait_ready(10.0)
        return bus

    yield open_bus
    for bus in opened:
        bus.close()


@pytest.fixture
def bus(buses):
    return buses()


def _unique(base: psrpc.Service) -> psrpc.Service:
    # A fresh wire name per test: brokers are shared with other test runs.
    return psrpc.Service(f"Py{base.name}_{uuid.uuid4().hex[:10]}", base.methods.values())


@pytest.fixture
def svc():
    return _unique(psrpc.Service.from_descriptor(pb.DESCRIPTOR.services_by_name["PyTestService"]))


@pytest.fixture
def upd():
    return _unique(psrpc.Service.from_descriptor(pb.DESCRIPTOR.services_by_name["PyTestUpdates"]))


@pytest.fixture(autouse=True)
def _collect():
    yield
    gc.collect()


def echo_handler(req, ctx):
    """The conformance Echo behaviour."""
    import time

    if req.delay_ms:
        time.sleep(req.delay_ms / 1000)
    if req.fail_code:
        raise psrpc.PsrpcError(req.fail_message, code=req.fail_code)
    return pb.EchoResponse(payload=req.payload, server_id=ctx.server_id, tag=req.tag,
                           metadata=dict(ctx.metadata),
                           topic=ctx.topics[0] if ctx.topics else "")


async def async_echo_handler(req, ctx):
    import asyncio

    if req.delay_ms:
        await asyncio.sleep(req.delay_ms / 1000)
    if req.fail_code:
        raise psrpc.PsrpcError(req.fail_message, code=req.fail_code)
    return pb.EchoResponse(payload=req.payload, server_id=ctx.server_id, tag=req.tag,
                           metadata=dict(ctx.metadata),
                           topic=ctx.topics[0] if ctx.topics else "")
