#!/usr/bin/env python3
"""greeter.py: the typed API (psrpc.codegen) with examples/python/greeter.proto,
blocking and asyncio, checked by mypy --strict.

    greeter.py [--bus URL] [--aio]          a server and a client in one process:
                                            every RPC kind once, then a graceful close
    greeter.py --bus URL [--aio] serve      serve until SIGINT/SIGTERM (prints "ready")
    greeter.py --bus URL hello NAME         one SayHello; prints the reply

greeter_pb2 / greeter_psrpc are imported from sys.path (generate them with
``python -m psrpc.codegen -o DIR examples/python/greeter.proto``) or generated
at start into a temporary directory (needs grpcio-tools or protoc).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading

import psrpc
import psrpc.aio
import psrpc.codegen

HERE = os.path.dirname(os.path.abspath(__file__))

try:
    import greeter_pb2 as pb
    import greeter_psrpc as rpc
except ImportError:  # not generated beforehand: generate now
    _out = tempfile.mkdtemp(prefix="greeter-gen-")
    psrpc.codegen.generate([os.path.join(HERE, "greeter.proto")], _out)
    sys.path.insert(0, _out)
    import greeter_pb2 as pb
    import greeter_psrpc as rpc


class Greeter(rpc.GreeterServicer):
    """The blocking implementation: handlers run on the server's thread pool."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.count = 0

    def SayHello(self, request: pb.HelloRequest, context: psrpc.Context) -> pb.HelloReply:
        if not request.name:
            raise psrpc.InvalidArgument("name is empty")
        with self.lock:
            self.count += 1
        return pb.HelloReply(message=f"Hello, {request.name}!", server_id=context.server_id)

    def HelloAll(self, request: pb.HelloRequest, context: psrpc.Context) -> pb.HelloReply:
        return pb.HelloReply(message=f"{self.name} greets {request.name}",
                             server_id=context.server_id)

    def HelloNearest(self, request: pb.HelloRequest, context: psrpc.Context) -> pb.HelloReply:
        return pb.HelloReply(message=f"nearest: {self.name}", server_id=context.server_id)

    def HelloNearestAffinity(self, request: pb.HelloRequest,
                             context: psrpc.Context) -> float | None:
        return 1.0 if request.name else None  # None declines

    def RegionHello(self, request: pb.HelloRequest, context: psrpc.Context) -> pb.HelloReply:
        return pb.HelloReply(message=f"Hello from {context.topics[0]}, {request.name}")

    def Chat(self, stream: psrpc.Stream[pb.ChatLine, pb.ChatLine]) -> None:
        for line in stream:
            stream.send(pb.ChatLine(seq=line.seq + 1, text=line.text.upper()))


class AsyncGreeter(rpc.AsyncGreeterServicer):
    """The asyncio implementation: handlers run on the event loop."""

    async def SayHello(self, request: pb.HelloRequest, context: psrpc.Context) -> pb.HelloReply:
        if not request.name:
            raise psrpc.InvalidArgument("name is empty")
        await asyncio.sleep(0)
        return pb.HelloReply(message=f"Hello, {request.name}!", server_id=context.server_id)

    async def HelloAll(self, request: pb.HelloRequest, context: psrpc.Context) -> pb.HelloReply:
        return pb.HelloReply(message=f"async greets {request.name}", server_id=context.server_id)

    async def HelloNearest(self, request: pb.HelloRequest,
                           context: psrpc.Context) -> pb.HelloReply:
        return pb.HelloReply(message="nearest: async", server_id=context.server_id)

    async def RegionHello(self, request: pb.HelloRequest,
                          context: psrpc.Context) -> pb.HelloReply:
        return pb.HelloReply(message=f"Hello from {context.topics[0]}, {request.name}")

    async def Chat(self, stream: psrpc.aio.Stream[pb.ChatLine, pb.ChatLine]) -> None:
        async for line in stream:
            await stream.send(pb.ChatLine(seq=line.seq + 1, text=line.text.upper()))


def demo(bus: psrpc.Bus) -> None:
    with rpc.GreeterServer(bus, Greeter("server-1")) as server:
        server.RegisterRegionHelloTopic("eu")
        client = rpc.GreeterClient(bus, timeout=5)
        reply = client.SayHello(pb.HelloRequest(name="Ada"))
        print(reply.message)
        for result in client.HelloAll(pb.HelloRequest(name="everyone"), timeout=0.5):
            print(result.result().message)
        print(client.HelloNearest(pb.HelloRequest(name="me")).message)
        print(client.RegionHello(pb.HelloRequest(name="Bob"), topics="eu").message)
        with client.Chat() as chat:
            chat.send(pb.ChatLine(seq=1, text="hi"))
            answer = chat.recv(timeout=5)
            print(f"chat: {answer.seq} {answer.text}")
        with client.SubscribeGreetings() as sub:
            server.PublishGreetings(pb.HelloReply(message="a greeting to all"))
            print(f"subscription: {sub.get(timeout=5).message}")
        try:
            client.SayHello(pb.HelloRequest())
        except psrpc.InvalidArgument as e:
            print(f"error: {e}")


async def ademo(bus: psrpc.Bus) -> None:
    async with rpc.AsyncGreeterServer(bus, AsyncGreeter()) as server:
        await server.RegisterRegionHelloTopic("eu")
        await server.wait_ready()
        client = rpc.AsyncGreeterClient(bus, timeout=5)
        reply = await client.SayHello(pb.HelloRequest(name="Ada"))
        print(reply.message)
        async for result in client.HelloAll(pb.HelloRequest(name="everyone"), timeout=0.5):
            print(result.result().message)
        print((await client.HelloNearest(pb.HelloRequest(name="me"))).message)
        print((await client.RegionHello(pb.HelloRequest(name="Bob"), topics="eu")).message)
        async with await client.Chat() as chat:
            await chat.send(pb.ChatLine(seq=1, text="hi"))
            answer = await chat.recv()
            print(f"chat: {answer.seq} {answer.text}")
        async with await client.SubscribeGreetings() as sub:
            server.PublishGreetings(pb.HelloReply(message="a greeting to all"))
            print(f"subscription: {(await sub.get()).message}")
        try:
            await client.SayHello(pb.HelloRequest())
        except psrpc.InvalidArgument as e:
            print(f"error: {e}")


def serve(bus: psrpc.Bus) -> None:
    server = rpc.GreeterServer(bus, Greeter("server"))
    # until SIGINT/SIGTERM, then a graceful close; "ready" once the handlers are in place
    server.serve_forever(on_start=lambda: print("ready", flush=True))


async def aserve(bus: psrpc.Bus) -> None:
    server = rpc.AsyncGreeterServer(bus, AsyncGreeter())
    await server.wait_ready()
    await server.serve_forever(on_start=lambda: print("ready", flush=True))


def main() -> int:
    ap = argparse.ArgumentParser(description="psrpc typed Greeter example")
    ap.add_argument("--bus", default="local://")
    ap.add_argument("--aio", action="store_true", help="use psrpc.aio")
    ap.add_argument("mode", nargs="?", choices=["serve", "hello"])
    ap.add_argument("name", nargs="?", default="world")
    args = ap.parse_args()
    try:
        with psrpc.Bus(args.bus, wait_ready=10) as bus:
            if args.mode == "serve":
                asyncio.run(aserve(bus)) if args.aio else serve(bus)
            elif args.mode == "hello":
                print(rpc.GreeterClient(bus).SayHello(pb.HelloRequest(name=args.name)).message)
            elif args.aio:
                asyncio.run(ademo(bus))
            else:
                demo(bus)
    except psrpc.PsrpcError as e:
        print(f"greeter: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
