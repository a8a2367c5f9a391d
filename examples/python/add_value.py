#!/usr/bin/env python3
"""add_value.py: the Counter.AddValue service of examples/add_value.proto in
Python, talking to the C example (examples/add_value.c) and to Go services
generated from the same .proto, over the same Redis or NATS.

    add_value.py [--bus URL]            a server and a client in one process
                                        (default local://): three calls, each
                                        value printed, then a graceful close
    add_value.py --bus URL serve        serve until SIGINT/SIGTERM; prints
                                        "ready" once the registration is confirmed
    add_value.py --bus URL call N       one call AddValue(increment=N); prints
                                        the counter's new value

Needs the binding (pip install ./bindings/python). Uses the typed modules of
``python -m psrpc.codegen examples/add_value.proto`` (add_value_pb2,
add_value_psrpc) when on sys.path, else generates them at start (needs
grpcio-tools or protoc). Checked by mypy --strict in the binding's tests.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading

import psrpc
import psrpc.codegen

HERE = os.path.dirname(os.path.abspath(__file__))

try:
    import add_value_pb2 as pb
    import add_value_psrpc as rpc
except ImportError:  # not generated beforehand: generate now
    _out = tempfile.mkdtemp(prefix="add-value-gen-")
    psrpc.codegen.generate([os.path.join(HERE, "..", "add_value.proto")], _out)
    sys.path.insert(0, _out)
    import add_value_pb2 as pb
    import add_value_psrpc as rpc


class Counter(rpc.CounterServicer):
    """AddValue adds the increment to one counter (handlers run on a thread pool)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.total = 0

    def AddValue(self, request: pb.AddRequest, context: psrpc.Context) -> pb.AddResult:
        with self.lock:
            self.total += request.increment
            return pb.AddResult(value=self.total)


def demo(bus: psrpc.Bus) -> None:
    server = rpc.CounterServer(bus, Counter())
    client = rpc.CounterClient(bus, timeout=5)
    for inc in (1, 2, 3):
        res = client.AddValue(pb.AddRequest(increment=inc))
        print(f"AddValue(increment={inc}) -> value={res.value}")
    client.close()
    server.close(timeout=10)  # graceful: in-flight requests finish


def serve(bus: psrpc.Bus) -> None:
    server = rpc.CounterServer(bus, Counter())
    # Until SIGINT/SIGTERM; then a graceful close: requests in flight are
    # answered (up to 10 s) before the bus closes. "ready" once the signal
    # handlers are installed.
    server.serve_forever(grace=10, on_start=lambda: print("ready", flush=True))
    print("add_value: stopped", file=sys.stderr)


def call(bus: psrpc.Bus, n: int) -> None:
    client = rpc.CounterClient(bus, timeout=5)
    print(client.AddValue(pb.AddRequest(increment=n)).value)


def main() -> int:
    ap = argparse.ArgumentParser(description="add_value: the Counter example")
    ap.add_argument("--bus", default="local://", help="local://, redis://HOST:PORT, nats://HOST:PORT")
    ap.add_argument("mode", nargs="?", choices=["serve", "call"])
    ap.add_argument("n", nargs="?", type=int)
    args = ap.parse_args()
    try:
        with psrpc.Bus(args.bus) as bus:
            bus.wait_ready(10)
            if args.mode is None:
                demo(bus)
            elif args.mode == "serve":
                serve(bus)
            else:
                if args.n is None:
                    ap.error("call needs N")
                call(bus, args.n)
    except psrpc.PsrpcError as e:
        print(f"add_value: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
