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

Needs the binding (pip install ./bindings/python) and grpcio-tools to compile
add_value.proto at start (or an add_value_pb2 module on sys.path).
"""

import argparse
import os
import sys
import threading

import psrpc

HERE = os.path.dirname(os.path.abspath(__file__))


def load_messages():
    try:
        import add_value_pb2  # generated beforehand with protoc --python_out

        return add_value_pb2
    except ImportError:
        return psrpc.load_proto(os.path.join(HERE, "..", "add_value.proto"))


pb = load_messages()
COUNTER = pb.DESCRIPTOR.services_by_name["Counter"]


def make_server(bus):
    """A Counter server: AddValue adds the increment to one counter."""
    lock = threading.Lock()
    total = [0]
    server = psrpc.Server(bus, COUNTER)

    @server.handler("AddValue")
    def add_value(req, ctx):
        with lock:
            total[0] += req.increment
            return pb.AddResult(value=total[0])

    return server


def demo(bus):
    server = make_server(bus)
    client = psrpc.Client(bus, COUNTER)
    for inc in (1, 2, 3):
        res = client.call("AddValue", pb.AddRequest(increment=inc), timeout=5)
        print(f"AddValue(increment={inc}) -> value={res.value}")
    client.close()
    server.close(timeout=10)  # graceful: in-flight requests finish


def serve(bus):
    server = make_server(bus)
    print("ready", flush=True)
    # Until SIGINT/SIGTERM; then a graceful close: requests in flight are
    # answered (up to 10 s) before the bus closes.
    server.serve_forever(grace=10)
    print("add_value: stopped", file=sys.stderr)


def call(bus, n):
    client = psrpc.Client(bus, COUNTER)
    print(client.call("AddValue", pb.AddRequest(increment=n), timeout=5).value)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
