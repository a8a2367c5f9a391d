#!/usr/bin/env python3
"""bench_overhead.py: what the Python binding adds per request.

One process, one bus, one C server (an echo handler written in C, registered
through the binding's private bench hook, so no Python runs on the server
side). Against it, in the same run and alternating rounds:

  c         psrpc_client_call_sync in a C loop (no Python per request)
  py-bytes  psrpc.Client.call with bytes (binding overhead alone)
  py-proto  psrpc.Client.call with protobuf messages (+ serialize/parse)
  py-aio    await psrpc.aio.Client.call, sequential, bytes

Each figure is the median of the rounds' mean latency per request; the
overhead is py minus c. Usage:

    bench_overhead.py [--bus local://|redis://...|nats://...] [-n 2000] [--rounds 5]
"""

import argparse
import asyncio
import statistics
import sys
import time
import uuid

from google.protobuf import wrappers_pb2

import psrpc
import psrpc.aio
from psrpc import _core


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bus", action="append", help="bus URL (repeatable); default local://")
    ap.add_argument("-n", type=int, default=2000, help="requests per round and mode")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--payload", type=int, default=16, help="request payload bytes")
    args = ap.parse_args()
    for url in args.bus or ["local://"]:
        bench(url, args.n, args.rounds, args.payload)
    return 0


def bench(url: str, n: int, rounds: int, size: int) -> None:
    service = f"PyBench_{uuid.uuid4().hex[:8]}"
    if url.rstrip("/") == "local:":
        url = f"local://{service}"  # a named hub: the two buses below share it
    m = psrpc.Method("Echo", request_type=None, response_type=None)
    mp = psrpc.Method("Echo", request_type=wrappers_pb2.BytesValue,
                      response_type=wrappers_pb2.BytesValue)
    payload = b"x" * size
    msg = wrappers_pb2.BytesValue(value=payload)
    with psrpc.Bus(url) as sbus, psrpc.Bus(url) as cbus:
        sbus.wait_ready(10)
        cbus.wait_ready(10)
        server = psrpc.Server(sbus, service)
        _core._bench_register_echo(server._ptr, m._c)  # the C handler
        server.wait_ready()
        client = psrpc.Client(cbus, service, timeout=10)

        def c_loop(k: int) -> float:
            ns = _core._bench_c_calls(client._ptr, m._c, msg.SerializeToString(), k)
            if ns < 0:
                raise psrpc.PsrpcError(f"C loop failed: {_core.psrpc_status_name(ns)}")
            return ns / 1e9

        def py_bytes(k: int) -> float:
            data = msg.SerializeToString()
            t0 = time.perf_counter()
            for _ in range(k):
                client.call(m, data)
            return time.perf_counter() - t0

        def py_proto(k: int) -> float:
            t0 = time.perf_counter()
            for _ in range(k):
                r = client.call(mp, msg)
            assert r.value == payload
            return time.perf_counter() - t0

        async def aio_loop(k: int) -> float:
            ac = psrpc.aio.Client(cbus, service, timeout=10)
            data = msg.SerializeToString()
            t0 = time.perf_counter()
            for _ in range(k):
                await ac.call(m, data)
            dt = time.perf_counter() - t0
            ac.close()
            return dt

        modes = {"c": c_loop, "py-bytes": py_bytes, "py-proto": py_proto,
                 "py-aio": lambda k: asyncio.run(aio_loop(k))}
        for fn in modes.values():  # warm up: subscriptions, caches
            fn(min(200, n))
        per_req = {name: [] for name in modes}
        for _ in range(rounds):
            for name, fn in modes.items():
                per_req[name].append(fn(n) / n * 1e6)
        med = {k: statistics.median(v) for k, v in per_req.items()}
        c = med["c"]
        print(f"bus {url.split('://')[0]}://  payload {size} B  {rounds} rounds x {n} requests "
              f"(median of round means, us per request)")
        for name in modes:
            extra = "" if name == "c" else f"  overhead {med[name] - c:+7.1f} us ({med[name] / c:4.2f}x)"
            print(f"  {name:9s} {med[name]:8.1f} us{extra}")
        sys.stdout.flush()
        client.close()
        server.close(force=True)


if __name__ == "__main__":
    sys.exit(main())
