#!/usr/bin/env python3
"""conformance_server.py: the conformance service (shared/docs/conformance.md,
tests/interop/conformance.proto) served from Python with psrpc.aio, with the
flags and behaviour of the C conformance-server:

    conformance_server.py [--bus URL] [--server-id ID] [--affinity F]
                          [--topic T]... [--methods LIST]
    test hooks:           [--affinity-delay-ms N] [--skip-claim]
                          [--max-message-size N] [--compress-threshold N]

Prints "ready" once every registration is confirmed, serves until SIGTERM or
SIGINT, then closes gracefully (in-flight requests finish) and exits 0. Like
the C and Go servers: fail_code "CODE@SERVER_ID" fails only on that server;
failing Echo-like calls carry details (a google.protobuf.StringValue with the
tag, a BytesValue with the payload); a Chat stream's end is printed as
{"event":"chat-end","code":...,"message":...,"max_seq":"N"}.

Needs grpcio-tools (or protoc) to compile conformance.proto at start;
--proto-dir points at the directory holding conformance.proto and
options.proto (default: tests/interop of this source tree).
"""

import argparse
import asyncio
import json
import os
import sys
import threading

from google.protobuf import wrappers_pb2

import psrpc
import psrpc.aio

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO_DIR = os.path.join(HERE, "..", "..", "tests", "interop")
PLAIN = ("Echo", "Add", "Claim", "Fanout", "Publish", "Chat")
TOPICAL = ("RegionEcho", "RegionFanout")

_out_lock = threading.Lock()


def emit(line: str) -> None:
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Conformance:
    def __init__(self, pb, server_id: str, affinity: float, affinity_delay_ms: int,
                 updates_server) -> None:
        self.pb = pb
        self.server_id = server_id
        self.affinity_value = affinity
        self.affinity_delay = affinity_delay_ms / 1000
        self.updates = updates_server
        self.counter = 0

    def fails_here(self, fail_code: str):
        if not fail_code:
            return None
        code, at, target = fail_code.partition("@")
        return code if not at or target == self.server_id else None

    async def echo(self, req, ctx):
        pb = self.pb
        if req.delay_ms:
            await asyncio.sleep(req.delay_ms / 1000)
        code = self.fails_here(req.fail_code)
        if code is not None:
            details = []
            if req.tag:
                details.append(wrappers_pb2.StringValue(value=req.tag))
            if req.payload:
                details.append(wrappers_pb2.BytesValue(value=req.payload))
            raise psrpc.PsrpcError(req.fail_message, code=code, details=details)
        return pb.EchoResponse(payload=req.payload, server_id=self.server_id, tag=req.tag,
                               metadata=dict(ctx.metadata),
                               topic=ctx.topics[0] if ctx.topics else "")

    async def claim_affinity(self, req, ctx):
        if self.affinity_delay:
            await asyncio.sleep(self.affinity_delay)
        return self.affinity_value

    async def add(self, req, ctx):
        self.counter += req.increment  # one event loop: no lock needed
        return self.pb.AddResult(value=self.counter)

    async def publish(self, req, ctx):
        pb = self.pb
        try:
            method = self.updates.method(req.method)
        except psrpc.NotFound:
            raise psrpc.InvalidArgument("unknown update method") from None
        published = 0
        for seq in range(1, req.count + 1):
            update = pb.Update(seq=seq, payload=req.payload, server_id=self.server_id,
                               nonce=os.urandom(8).hex())
            try:
                self.updates.publish(method, update, topics=list(req.topic) or None)
            except psrpc.PsrpcError as e:
                raise type(e)(f"publish {published + 1} failed: {e.message}") from None
            published += 1
        return pb.PublishResult(published=published)

    async def chat(self, stream):
        pb = self.pb
        max_seq = 0
        try:
            async for m in stream:
                max_seq = max(max_seq, m.seq)
                if m.close_code:
                    stream.close(psrpc.PsrpcError(m.close_message, code=m.close_code))
                    break
                if m.close_message:
                    stream.close()
                    break
                await stream.send(pb.ChatMessage(seq=m.seq + 1, payload=m.payload))
        except psrpc.PsrpcError:
            pass
        cause = await stream.wait_closed()
        emit(json.dumps({"event": "chat-end", "code": cause.code if cause else "",
                         "message": cause.message if cause else "", "max_seq": str(max_seq)},
                        separators=(",", ":")))


async def run(args, pb) -> int:
    conf_desc = pb.DESCRIPTOR.services_by_name["Conformance"]
    upd_desc = pb.DESCRIPTOR.services_by_name["ConformanceUpdates"]
    options = {}
    if args.max_message_size:
        options["max_message_size"] = args.max_message_size
    if args.compress_threshold:
        options["compress_threshold"] = args.compress_threshold
    methods = set(args.methods.split(",")) if args.methods else None

    bus = psrpc.Bus(args.bus, **options)
    try:
        bus.wait_ready(10)
        server = psrpc.aio.Server(bus, conf_desc, server_id=args.server_id,
                                  skip_claim=args.skip_claim)
        updates = psrpc.aio.Server(bus, upd_desc, server_id=args.server_id,
                                   skip_claim=args.skip_claim)
        impl = Conformance(pb, server.id, args.affinity, args.affinity_delay_ms, updates)
        handlers = {"Echo": impl.echo, "Claim": impl.echo, "Fanout": impl.echo,
                    "RegionEcho": impl.echo, "RegionFanout": impl.echo, "Add": impl.add,
                    "Publish": impl.publish, "Chat": impl.chat}
        for name in PLAIN:
            if methods is None or name in methods:
                server.register_nowait(name, handlers[name],
                                       affinity=impl.claim_affinity if name == "Claim" else None)
        for name in TOPICAL:
            if methods is None or name in methods:
                for topic in args.topic:
                    server.register_nowait(name, handlers[name], topics=topic)
        await server.wait_ready(15)
        # Serves until SIGTERM/SIGINT, then closes gracefully: in-flight
        # requests (delayed answers included) finish and are sent. "ready" is
        # printed once the signal handlers are installed: a SIGTERM right
        # after it closes gracefully too (exit 0).
        await server.serve_forever(grace=30, on_start=lambda: emit("ready"))
        await updates.close(timeout=10)
        return 0
    finally:
        bus.close()


def main() -> int:
    ap = argparse.ArgumentParser(description="psrpc conformance server (Python)")
    ap.add_argument("--bus", default="redis://127.0.0.1:6379")
    ap.add_argument("--server-id")
    ap.add_argument("--affinity", type=float, default=1.0)
    ap.add_argument("--topic", action="append", default=[])
    ap.add_argument("--methods")
    ap.add_argument("--affinity-delay-ms", type=int, default=0)
    ap.add_argument("--skip-claim", action="store_true")
    # As the C programs: 16 MiB instead of libpsrpc's 1 MiB default, so that a
    # 1 MiB payload plus its envelope passes, as between Go peers.
    ap.add_argument("--max-message-size", type=int, default=16 << 20)
    ap.add_argument("--compress-threshold", type=int, default=0)
    ap.add_argument("--proto-dir", default=os.environ.get("PSRPC_CONFORMANCE_PROTO_DIR",
                                                          DEFAULT_PROTO_DIR))
    args = ap.parse_args()
    try:
        import conformance_pb2 as pb  # generated beforehand, if on sys.path
    except ImportError:
        pb = psrpc.load_proto(os.path.join(args.proto_dir, "conformance.proto"),
                              include=[args.proto_dir])
    try:
        return asyncio.run(run(args, pb))
    except psrpc.PsrpcError as e:
        print(f"conformance_server.py: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
