#!/usr/bin/env python3
"""trace_hop.py: the Python hop of the cross-language trace test
(tests/interop/trace/trace_chain.sh): serves Conformance.RegionEcho under
--topic with psrpc.otel (a server span per request); its handler calls
RegionEcho under --next with psrpc.otel (a client span, child of the server
span: the handler's current span) and answers with that answer. Every
finished span is written to --spans as one JSON line (name, trace_id, span_id,
parent_span_id, kind). Prints "ready", serves until SIGTERM/SIGINT.

    trace_hop.py --bus URL --topic T --next T2 --spans FILE --proto-dir DIR --gen DIR
"""

import argparse
import json
import sys
import threading

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

import psrpc
import psrpc.otel


class JsonLines(SpanExporter):
    def __init__(self, path):
        self.f = open(path, "a", buffering=1)
        self.lock = threading.Lock()

    def export(self, spans):
        with self.lock:
            for s in spans:
                self.f.write(json.dumps({
                    "name": s.name, "trace_id": format(s.context.trace_id, "032x"),
                    "span_id": format(s.context.span_id, "016x"),
                    "parent_span_id": format(s.parent.span_id, "016x") if s.parent else "",
                    "kind": s.kind.name}) + "\n")
        return SpanExportResult.SUCCESS


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bus", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--next", required=True)
    ap.add_argument("--spans", required=True)
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--gen", required=True)
    a = ap.parse_args()
    psrpc.compile_protos([f"{a.proto_dir}/conformance.proto"], a.gen, [a.proto_dir])
    sys.path.insert(0, a.gen)
    import conformance_pb2 as pb

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLines(a.spans)))
    svc = pb.DESCRIPTOR.services_by_name["Conformance"]
    with psrpc.Bus(a.bus) as bus:
        client = psrpc.Client(bus, svc, interceptors=[psrpc.otel.ClientTracing(provider)])
        server = psrpc.Server(bus, svc, server_id="py-trace-hop",
                              interceptors=[psrpc.otel.ServerTracing(provider)])

        def region_echo(req, ctx):
            return client.call("RegionEcho", req, topics=a.next, deadline=ctx)

        server.register("RegionEcho", region_echo, topics=a.topic)
        server.serve_forever(on_start=lambda: print("ready", flush=True))


if __name__ == "__main__":
    main()
