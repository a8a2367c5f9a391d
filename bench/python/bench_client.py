#!/usr/bin/env python3
"""bench_client.py: the Python binding as a client role of bench/bench.py.

Speaks bench.py's line protocol (bench/c/bench_common.h: READY, START, END,
RESULT {json}) and calls the `single` scenario's method (service "Bench",
Echo, queue routing) of bench/c/psrpc_bench.c's C server with a serialized
google.protobuf.BytesValue of --payload bytes, --inflight calls outstanding:

    --mode sync   psrpc.Client.call (blocking) in a loop; --inflight must be 1
    --mode aio    await psrpc.aio.Client.call from --inflight asyncio tasks

    bench_client.py --bus URL --role client|local --scenario single
                    [--inflight N] [--payload B] [--warmup S] [--duration S]
                    [--mode sync|aio]

--role local: the in-process bus. The process also hosts the server: a C
echo handler registered through the binding's bench hook (no Python on the
server side), on its own bus of a named local:// hub that the client's bus
shares. Other flags of bench.py's set are accepted and ignored.
"""

import argparse
import asyncio
import json
import os
import sys
import time

from google.protobuf import wrappers_pb2

import psrpc
import psrpc.aio
from psrpc import _core

SERVICE = "Bench"


def bucket(us):
    """bench_common.h's log-linear histogram: the middle of us's bucket."""
    if us < 1000:
        return int(us) + 0.5
    if us < 10000:
        return 1000 + (int(us) - 1000) // 10 * 10 + 5
    if us < 100000:
        return 10000 + (int(us) - 10000) // 100 * 100 + 50
    if us < 1000000:
        return 100000 + (int(us) - 100000) // 1000 * 1000 + 500
    return 1000000 + min((int(us) - 1000000) // 10000, 899) * 10000 + 5000


def emit(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Meter:
    def __init__(self):
        self.measuring = False
        self.ops = 0
        self.errors = 0
        self.hist = {}

    def record(self, t0_ns, ok=True):
        if not self.measuring:
            return
        b = bucket((time.perf_counter_ns() - t0_ns) / 1000)
        self.hist[b] = self.hist.get(b, 0) + 1
        self.ops += 1
        if not ok:
            self.errors += 1

    def result(self, elapsed):
        emit("RESULT " + json.dumps({"role": "client", "ops": self.ops, "elapsed_s": elapsed,
                                     "errors": self.errors,
                                     "hist": sorted([v, n] for v, n in self.hist.items())}))


def run_sync(client, method, data, args, meter):
    client.call(method, data)  # reply subscriptions up
    emit("READY")
    end_warm = time.monotonic() + args.warmup
    while time.monotonic() < end_warm:
        client.call(method, data)
    meter.measuring = True
    emit("START")
    t0 = time.monotonic()
    end = t0 + args.duration
    while True:
        s = time.perf_counter_ns()
        try:
            client.call(method, data)
            meter.record(s)
        except psrpc.PsrpcError:
            meter.record(s, False)
        if time.monotonic() >= end:
            break
    elapsed = time.monotonic() - t0
    meter.measuring = False
    emit("END")
    meter.result(elapsed)


async def run_aio(bus, method, data, args, meter):
    client = psrpc.aio.Client(bus, SERVICE, timeout=5)
    await client.call(method, data)
    emit("READY")
    stop = False

    async def worker():
        while not stop:
            s = time.perf_counter_ns()
            try:
                await client.call(method, data)
                meter.record(s)
            except psrpc.PsrpcError:
                meter.record(s, False)

    tasks = [asyncio.ensure_future(worker()) for _ in range(args.inflight)]
    await asyncio.sleep(args.warmup)
    meter.measuring = True
    emit("START")
    t0 = time.monotonic()
    await asyncio.sleep(args.duration)
    meter.measuring = False
    elapsed = time.monotonic() - t0
    emit("END")
    stop = True
    await asyncio.gather(*tasks, return_exceptions=True)
    meter.result(elapsed)
    client.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bus", required=True)
    ap.add_argument("--role", default="client")
    ap.add_argument("--scenario", default="single")
    ap.add_argument("--inflight", type=int, default=1)
    ap.add_argument("--payload", type=int, default=64)
    ap.add_argument("--warmup", type=float, default=0.3)
    ap.add_argument("--duration", type=float, default=1.0)
    ap.add_argument("--mode", choices=["sync", "aio"], default="sync")
    args, _ = ap.parse_known_args()
    if args.scenario != "single":
        sys.exit(f"bench_client.py: scenario {args.scenario} not supported")
    if args.mode == "sync" and args.inflight != 1:
        sys.exit("bench_client.py: --mode sync is one call at a time (--inflight 1)")
    method = psrpc.Method("Echo", request_type=None, response_type=None)
    data = wrappers_pb2.BytesValue(value=b"x" * max(args.payload, 16)).SerializeToString()
    keep = []
    url = args.bus
    if args.role == "local":
        url = "local://bench-py"
        sbus = psrpc.Bus(url)
        sbus.wait_ready(10)
        server = psrpc.Server(sbus, SERVICE)
        _core._bench_register_echo(server._ptr, method._c)  # the C echo handler (raises)
        server.wait_ready()
        keep += [sbus, server]
    bus = psrpc.Bus(url)
    bus.wait_ready(10)
    meter = Meter()
    if args.mode == "sync":
        client = psrpc.Client(bus, SERVICE, timeout=5)
        run_sync(client, method, data, args, meter)
    else:
        asyncio.run(run_aio(bus, method, data, args, meter))
    sys.stdin.read()  # bench.py closes stdin after reading peak RSS
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
