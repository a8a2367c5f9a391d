"""The ``psrpc`` command: list, call, listen, publish, stream, serve --mock,
sniff and bench any psrpc service (libpsrpc's or Go livekit/psrpc's) from a
shell, given its ``.proto``.

    psrpc list   --proto svc.proto
    psrpc call   --proto svc.proto Service.Method '{"field": 1}'
    psrpc listen --proto svc.proto Updates.Updates
    psrpc sniff  --proto svc.proto [Service]

Exit status: 0 success; 1 a remote error whose code is not a psrpc code;
2 bad usage or input (unknown or ambiguous method, JSON that does not match
the message, a proto that does not compile, a bad bus URL); 10 + n for a
psrpc error code (see ``EXIT_CODES``: canceled 10 ... unavailable 25 —
an unreachable bus too —, deadline_exceeded 14, ...); 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import queue
import signal
import sys
import tempfile
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

#: Exit status per psrpc error code (the C library's status order).
WIRE_CODES = [
    "canceled", "unknown", "invalid_argument", "malformed_request", "deadline_exceeded",
    "not_found", "already_exists", "permission_denied", "resource_exhausted",
    "failed_precondition", "aborted", "out_of_range", "unimplemented", "internal",
    "malformed_result", "unavailable", "data_loss", "unauthenticated", "not_acceptable",
    "unprocessable_entity", "upstream_server_error", "upstream_client_error",
]
EXIT_CODES: Dict[str, int] = {c: 10 + i for i, c in enumerate(WIRE_CODES)}
EXIT_OTHER_CODE = 1
EXIT_USAGE = 2
EXIT_INTERRUPT = 130

DEFAULT_BUS = "nats://127.0.0.1:4222"


class UsageError(Exception):
    """Bad input: printed as one line, exit status 2."""


def exit_status(code: str) -> int:
    return EXIT_CODES.get(code, EXIT_OTHER_CODE)


# ---------------------------------------------------------------- protos

class Protos:
    """The services of the given .proto files, compiled on the fly."""

    def __init__(self, files: Sequence[str], include: Sequence[str]) -> None:
        self.modules: List[Any] = []
        self.services: List[Any] = []  # ServiceDescriptor
        for f in files:
            self.modules.append(_load(f, include))
        for mod in self.modules:
            for svc in mod.DESCRIPTOR.services_by_name.values():
                self.services.append(svc)

    def methods(self) -> Iterator[Tuple[Any, Any]]:
        for s in self.services:
            for m in s.methods:
                yield s, m

    def resolve(self, name: str) -> Tuple[Any, Any]:
        """(ServiceDescriptor, MethodDescriptor) of ``Service.Method``,
        ``pkg.Service.Method`` or a bare ``Method`` (proto or wire names)."""
        from ._options import camel_case

        if not self.services:
            raise UsageError("no service known: pass the service's .proto with --proto FILE")
        found = []
        svc_part, _, meth_part = name.rpartition(".")
        for s, m in self.methods():
            if meth_part not in (m.name, camel_case(m.name)):
                continue
            if svc_part and svc_part not in (s.name, camel_case(s.name), s.full_name):
                continue
            found.append((s, m))
        if len(found) == 1:
            return found[0]
        if not found:
            cands = [f"{s.name}.{m.name}" for s, m in self.methods()]
            close = [c for c in cands if meth_part.lower() in c.lower()] or cands
            raise UsageError(f"unknown method {name!r}; methods: {', '.join(close)}")
        raise UsageError(f"ambiguous method {name!r}; candidates: "
                         + ", ".join(f"{s.full_name}.{m.name}" for s, m in found))

    def service(self, name: str) -> Any:
        from ._options import camel_case

        found = [s for s in self.services if name in (s.name, camel_case(s.name), s.full_name)]
        if len(found) == 1:
            return found[0]
        if not found:
            raise UsageError(f"unknown service {name!r}; services: "
                             + ", ".join(s.full_name for s in self.services))
        raise UsageError(f"ambiguous service {name!r}; candidates: "
                         + ", ".join(s.full_name for s in found))


_proto_dir: Optional[str] = None


def _load(path: str, include: Sequence[str]) -> Any:
    """Compiles and imports one .proto, turning protoc's diagnostics into one
    UsageError line."""
    import importlib

    from .codegen import generate

    global _proto_dir
    if not os.path.isfile(path):
        raise UsageError(f"cannot read proto {path!r}: no such file")
    if _proto_dir is None:
        _proto_dir = tempfile.mkdtemp(prefix="psrpc-cli-")
        sys.path.insert(0, _proto_dir)
        import atexit
        import shutil
        atexit.register(shutil.rmtree, _proto_dir, True)
    # protoc writes its diagnostics to fd 2: capture them.
    with tempfile.TemporaryFile(mode="w+b") as err:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(err.fileno(), 2)
            try:
                generate([path], _proto_dir, list(include))
                failed = None
            except Exception as e:  # protoc failed, or no protoc at all
                failed = e
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        if failed is not None:
            err.seek(0)
            lines = [ln.strip() for ln in err.read().decode("utf-8", "replace").splitlines()
                     if ln.strip() and not ln.startswith("WARNING: All log messages")]
            import re
            real = [ln for ln in lines if not re.match(r"[WIE]\d{4} ", ln)]
            why = (real or lines or [str(failed)])[0]
            raise UsageError(f"cannot compile {path}: {why}")
    name = os.path.splitext(os.path.basename(path))[0] + "_pb2"
    importlib.invalidate_caches()
    try:
        return importlib.import_module(name)
    except Exception as e:
        raise UsageError(f"cannot load {path}: {e}") from None


# ---------------------------------------------------------------- JSON

def to_json(msg: Any) -> Any:
    from google.protobuf import json_format

    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def parse_message(cls: Any, text: str, what: str = "request") -> Any:
    from google.protobuf import json_format

    text = text.strip() or "{}"
    try:
        return json_format.Parse(text, cls())
    except json_format.ParseError as e:
        msg = str(e).splitlines()[0] if str(e) else "invalid JSON"
        raise UsageError(f"{what} does not match {cls.DESCRIPTOR.full_name}: {msg}") from None


def any_to_json(a: Any) -> Any:
    """A google.protobuf.Any (or internal.Any): decoded when its type is in
    the default descriptor pool (the --proto files), else as base64."""
    from google.protobuf import descriptor_pool, json_format

    from ._method import _message_class

    name = a.type_url.rsplit("/", 1)[-1]
    try:
        desc = descriptor_pool.Default().FindMessageTypeByName(name)
        m = _message_class(desc).FromString(a.value)
        d = json_format.MessageToDict(m, preserving_proto_field_name=True)
    except Exception:  # unknown type or undecodable value
        return {"@type": a.type_url, "base64": base64.b64encode(a.value).decode()}
    return {"@type": a.type_url, **d} if isinstance(d, dict) else {"@type": a.type_url, "value": d}


def error_json(e: Any) -> Dict[str, Any]:
    d: Dict[str, Any] = {"code": e.code, "message": e.message}
    if getattr(e, "details", None):
        d["details"] = [any_to_json(x) for x in e.details]
    return d


def print_error(e: Any) -> int:
    """A psrpc error on stderr, one line (details as JSON); returns the exit status."""
    line = f"psrpc: error: {e.code}: {e.message}"
    sid = getattr(e, "server_id", None)
    if sid:
        line += f" (server {sid})"
    if getattr(e, "details", None):
        line += " details=" + dumps([any_to_json(x) for x in e.details])
    print(line, file=sys.stderr)
    return exit_status(e.code)


# ---------------------------------------------------------------- common

def parse_meta(items: Sequence[str]) -> Dict[str, str]:
    md = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep or not k:
            raise UsageError(f"--meta wants KEY=VALUE, not {it!r}")
        md[k] = v
    return md


def open_bus(url: str, timeout: float) -> Any:
    import psrpc

    try:
        return psrpc.Bus(url, connect_timeout=max(timeout, 0.1))
    except psrpc.InvalidArgument as e:
        raise UsageError(f"bad bus URL {url!r}: {e.message}") from None
    except TypeError as e:
        raise UsageError(str(e)) from None


def check_bus(bus: Any, timeout: float) -> None:
    """Fails fast (Unavailable, with the connection error) when the broker
    cannot be reached: waits for the first connection attempt's outcome."""
    import psrpc

    bus._wait_connect(timeout)
    w = bus._watch
    if w.state == psrpc.BusState.CONNECTED:
        return
    if w.error is not None:
        raise psrpc.Unavailable(f"cannot connect to {bus.url}: {w.error.message}")
    try:
        bus.wait_ready(0.05 if w.settled.is_set() else timeout)
    except psrpc.PsrpcError as e:
        why = w.error.message if w.error is not None else e.message
        raise psrpc.Unavailable(f"cannot connect to {bus.url}: {why}") from None


def selection(args: argparse.Namespace) -> Any:
    import psrpc

    kw: Dict[str, Any] = {}
    if args.min_affinity is not None:
        kw["minimum_affinity"] = args.min_affinity
    if args.max_affinity is not None:
        kw["maximum_affinity"] = args.max_affinity
    if args.accept_first:
        kw["accept_first_available"] = True
    if args.affinity_timeout is not None:
        kw["affinity_timeout"] = args.affinity_timeout
    if args.short_circuit_timeout is not None:
        kw["short_circuit_timeout"] = args.short_circuit_timeout
    if kw and args.affinity_timeout is None:
        # SelectionOptions replace every default (as in Go): without an
        # affinity timeout the client would wait out its deadline for bids.
        kw["affinity_timeout"] = min(1.0, args.timeout / 2)
    return psrpc.SelectionOptions(**kw) if kw else None


def kind_of(m: Any) -> str:
    if m.stream:
        return "stream"
    if m.subscription:
        return "subscription"
    return "multi" if m.multi else "unary"


def read_request_text(arg: Optional[str]) -> str:
    if arg is not None:
        return arg
    if sys.stdin is None or sys.stdin.isatty():
        return "{}"
    return sys.stdin.read()


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- list

def cmd_list(args: argparse.Namespace, protos: Protos) -> int:
    import psrpc

    if not protos.services:
        raise UsageError("no service known: pass the service's .proto with --proto FILE")
    routing = {psrpc.ROUTING_QUEUE: "queue", psrpc.ROUTING_AFFINITY: "affinity",
               psrpc.ROUTING_MULTI: "multi"}
    for sd in protos.services:
        svc = psrpc.Service.from_descriptor(sd)
        if args.json:
            out(dumps({"service": sd.full_name, "wire_name": svc.name, "methods": [
                {"name": m.proto_name, "wire_name": m.name, "kind": kind_of(m),
                 "routing": routing[m.routing], "topics": list(m.topic_names) if m.topics else None,
                 "single_server": m.single_server,
                 "request": m.request_type.DESCRIPTOR.full_name if m.request_type else None,
                 "response": m.response_type.DESCRIPTOR.full_name if m.response_type else None}
                for m in svc.methods.values()]}))
            continue
        out(f"service {sd.full_name} (wire name {svc.name})")
        for m in svc.methods.values():
            opts = [routing[m.routing]]
            if m.subscription:
                opts.append("subscription")
            if m.stream:
                opts.append("stream")
            if m.topics:
                opts.append("topics=" + ",".join(m.topic_names))
            if m.single_server:
                opts.append("single_server")
            req = m.request_type.DESCRIPTOR.full_name if m.request_type else "bytes"
            resp = m.response_type.DESCRIPTOR.full_name if m.response_type else "bytes"
            out(f"  {svc.name}.{m.name}({req}) returns ({resp})  [{' '.join(opts)}]")
    return 0


# ---------------------------------------------------------------- call

def _method(protos: Protos, name: str) -> Tuple[Any, Any]:
    import psrpc

    sd, md = protos.resolve(name)
    return sd, psrpc.Service.from_descriptor(sd).method(md.name)


def _need_topics(m: Any, args: argparse.Namespace) -> Optional[List[str]]:
    if m.topics and not args.topic:
        raise UsageError(f"{m.name} is served per topic: pass --topic "
                         + " --topic ".join(f"<{n}>" for n in m.topic_names))
    if not m.topics and args.topic:
        raise UsageError(f"{m.name} takes no topics")
    return list(args.topic) or None


def cmd_call(args: argparse.Namespace, protos: Protos) -> int:
    import psrpc

    sd, m = _method(protos, args.method)
    if m.stream or m.subscription:
        use = "stream" if m.stream else "listen/publish"
        raise UsageError(f"{m.name} is a {kind_of(m)} method: use psrpc {use}")
    topics = _need_topics(m, args)
    req = parse_message(m.request_type, read_request_text(args.request))
    md = parse_meta(args.meta)
    bus = open_bus(args.bus, args.timeout)
    with bus:
        check_bus(bus, args.timeout)
        client = psrpc.Client(bus, sd, timeout=args.timeout)
        if m.multi:
            status = 0
            n = 0
            for r in client.multi_call(m, req, topics=topics, metadata=md):
                n += 1
                if r.error is not None:
                    out(dumps({"server_id": r.server_id, "error": error_json(r.error)}))
                    status = status or exit_status(r.error.code)
                else:
                    out(dumps({"server_id": r.server_id, "response": to_json(r.response)}))
            if n == 0:
                print("psrpc: error: unavailable: no response from servers", file=sys.stderr)
                return EXIT_CODES["unavailable"]
            return status
        resp = client.call(m, req, topics=topics, metadata=md, selection=selection(args))
        out(dumps(to_json(resp)))
    return 0


# ---------------------------------------------------------------- listen / publish

def cmd_listen(args: argparse.Namespace, protos: Protos) -> int:
    import psrpc

    sd, m = _method(protos, args.method)
    if not m.subscription:
        raise UsageError(f"{m.name} is not a subscription method (it is {kind_of(m)})")
    topics = _need_topics(m, args)
    if args.queue or args.all:
        # A queue subscription: each message reaches one queue subscriber.
        m = psrpc.Method(m.name, routing="queue" if args.queue else "multi", subscription=True,
                         topics=m.topics, single_server=m.single_server,
                         request_type=m.request_type, response_type=m.response_type,
                         output_type=m.output_type, topic_names=m.topic_names,
                         proto_name=m.proto_name, options=m.options)
    bus = open_bus(args.bus, args.timeout)
    n = 0
    with bus:
        check_bus(bus, args.timeout)
        client = psrpc.Client(bus, sd)
        with client.subscribe(m, topics, timeout=args.timeout) as sub:
            if args.ready:
                print("listening", file=sys.stderr, flush=True)
            end = time.monotonic() + args.for_ if args.for_ else None
            while args.count is None or n < args.count:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    break
                try:
                    msg = sub.get(timeout=min(left, 0.5) if left is not None else 0.5)
                except queue.Empty:
                    continue
                except StopIteration:
                    break
                out(dumps(to_json(msg)))
                n += 1
    return 0


def cmd_publish(args: argparse.Namespace, protos: Protos) -> int:
    import psrpc

    sd, m = _method(protos, args.method)
    if not m.subscription:
        raise UsageError(f"{m.name} is not a subscription method (it is {kind_of(m)})")
    topics = _need_topics(m, args)
    msg = parse_message(m.response_type, read_request_text(args.message), "message")
    bus = open_bus(args.bus, args.timeout)
    with bus:
        check_bus(bus, args.timeout)
        server = psrpc.Server(bus, sd)
        server.publish(m, msg, topics)
    return 0


# ---------------------------------------------------------------- stream

def cmd_stream(args: argparse.Namespace, protos: Protos) -> int:
    import psrpc

    from ._stream import is_clean_close

    sd, m = _method(protos, args.method)
    if not m.stream:
        raise UsageError(f"{m.name} is not a stream method (it is {kind_of(m)})")
    topics = _need_topics(m, args)
    md = parse_meta(args.meta)
    lines = sys.stdin.read().splitlines() if args.batch else None
    bus = open_bus(args.bus, args.timeout)
    with bus:
        check_bus(bus, args.timeout)
        client = psrpc.Client(bus, sd, timeout=args.timeout)
        st = client.open_stream(m, topics=topics, metadata=md, selection=selection(args))
        failure: List[BaseException] = []
        eof = threading.Event()

        def sender() -> None:
            try:
                src = lines if lines is not None else sys.stdin
                for ln in src:
                    if not ln.strip():
                        continue
                    st.send(parse_message(m.request_type, ln, "stream message"))
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                failure.append(e)
                with contextlib.suppress(Exception):
                    st.close(e if isinstance(e, psrpc.PsrpcError) else None)
            finally:
                eof.set()

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        # Print what arrives; once stdin ended and nothing came for --linger
        # seconds, close the stream (a server closing it ends it sooner).
        last = time.monotonic()
        while True:
            try:
                msg = st.recv(timeout=0.05)
            except queue.Empty:
                now = time.monotonic()
                if eof.is_set() and now - last >= args.linger:
                    st.close()
                    st.wait_closed(args.timeout)
                    break
                continue
            except psrpc.PsrpcError as e:
                if is_clean_close(e):
                    break  # closed cleanly by the server
                if failure:
                    break
                return print_error(e)
            out(dumps(to_json(msg)))
            last = time.monotonic()
        t.join(args.timeout)
        if failure:
            raise failure[0]
    return 0


# ---------------------------------------------------------------- serve --mock

def cmd_serve(args: argparse.Namespace, protos: Protos) -> int:
    import psrpc

    if not args.mock:
        raise UsageError("serve needs --mock (a server answering every method with a fixed message)")
    sd = protos.service(args.service)
    svc = psrpc.Service.from_descriptor(sd)
    canned: Dict[str, Any] = {}
    for r in args.response:
        name, sep, text = r.partition("=")
        if not sep:
            raise UsageError(f"--response wants Method='{{json}}', not {r!r}")
        m = svc.methods.get(name) or svc._by_proto.get(name)
        if m is None:
            raise UsageError(f"--response: service {svc.name} has no method {name!r}; methods: "
                             + ", ".join(svc.methods))
        canned[m.name] = parse_message(m.response_type, text, f"--response {name}")
    topics = list(args.topic) or None
    bus = open_bus(args.bus, args.timeout)
    with bus:
        check_bus(bus, args.timeout)
        server = psrpc.Server(bus, sd, server_id=args.server_id)
        for m in svc.methods.values():
            if m.subscription:
                continue
            if m.topics and not topics:
                print(f"psrpc: {m.name} not served (a topic method: pass --topic)", file=sys.stderr)
                continue
            resp = canned.get(m.name)
            if resp is None:
                resp = m.response_type() if m.response_type is not None else b""
            handler: Any = (_mock_stream(resp, m.name, args.verbose) if m.stream
                            else _mock_unary(resp, m.name, args.verbose))
            server.register(m, handler, topics=topics if m.topics else None)
        server.serve_forever(on_start=lambda: print(f"serving {svc.name} on {args.bus}",
                                                    file=sys.stderr, flush=True))
    return 0


def _mock_stream(resp: Any, name: str, verbose: bool) -> Any:
    def handler(stream: Any) -> None:
        for msg in stream:
            if verbose:
                print(dumps({"method": name, "stream": True, "request": to_json(msg)}),
                      file=sys.stderr, flush=True)
            stream.send(resp)
    return handler


def _mock_unary(resp: Any, name: str, verbose: bool) -> Any:
    def handler(req: Any, ctx: Any) -> Any:
        if verbose:
            print(dumps({"method": name, "client_id": ctx.client_id, "request": to_json(req)}),
                  file=sys.stderr, flush=True)
        return resp
    return handler


# ---------------------------------------------------------------- bench

def cmd_bench(args: argparse.Namespace, protos: Protos) -> int:
    import psrpc

    sd, m = _method(protos, args.method)
    if m.stream or m.subscription or m.multi:
        raise UsageError(f"bench drives unary methods; {m.name} is a {kind_of(m)} method")
    topics = _need_topics(m, args)
    req = parse_message(m.request_type, read_request_text(args.request))
    md = parse_meta(args.meta)
    if args.inflight < 1 or args.duration <= 0:
        raise UsageError("--inflight must be >= 1 and --duration > 0")
    bus = open_bus(args.bus, args.timeout)
    lat: List[float] = []
    errors: Dict[str, int] = {}
    lock = threading.Lock()
    with bus:
        check_bus(bus, args.timeout)
        client = psrpc.Client(bus, sd, timeout=args.timeout)
        try:  # warm-up: fails fast when nobody serves; other errors are counted below
            client.call(m, req, topics=topics, metadata=md)
        except psrpc.PsrpcError as e:
            if e.code == "unavailable":
                raise
        start = time.monotonic()
        end = start + args.duration

        def worker() -> None:
            mine: List[float] = []
            errs: Dict[str, int] = {}
            while True:
                t0 = time.monotonic()
                if t0 >= end:
                    break
                try:
                    client.call(m, req, topics=topics, metadata=md)
                    mine.append(time.monotonic() - t0)
                except psrpc.PsrpcError as e:
                    errs[e.code] = errs.get(e.code, 0) + 1
            with lock:
                lat.extend(mine)
                for k, v in errs.items():
                    errors[k] = errors.get(k, 0) + v

        ts = [threading.Thread(target=worker, daemon=True) for _ in range(args.inflight)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        elapsed = time.monotonic() - start
    lat.sort()

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3 if lat else 0.0

    res = {"method": f"{sd.name}.{m.name}", "inflight": args.inflight,
           "duration_s": round(elapsed, 3), "ok": len(lat), "errors": errors,
           "throughput_rps": round(len(lat) / elapsed, 1),
           "p50_ms": round(pct(0.50), 3), "p90_ms": round(pct(0.90), 3),
           "p99_ms": round(pct(0.99), 3)}
    if args.json:
        out(dumps(res))
    else:
        out(f"{res['method']}: {res['ok']} ok, {sum(errors.values())} errors in "
            f"{res['duration_s']}s with {args.inflight} in flight")
        out(f"  throughput {res['throughput_rps']} req/s")
        out(f"  latency p50 {res['p50_ms']} ms  p90 {res['p90_ms']} ms  p99 {res['p99_ms']} ms")
        for k, v in sorted(errors.items()):
            out(f"  errors {k}: {v}")
    if not lat and errors:  # nothing succeeded: the exit status of the commonest error
        return exit_status(max(errors.items(), key=lambda kv: kv[1])[0])
    return 0


# ---------------------------------------------------------------- sniff

def cmd_sniff(args: argparse.Namespace, protos: Protos) -> int:
    from ._sniff import sniff

    global _sniff_protos
    _sniff_protos = protos
    services = []
    for name in args.services:
        try:
            services.append(psrpc_wire_name(protos.service(name)))
        except UsageError:
            if protos.services:
                raise
            services.append(name)  # no proto: a wire service name
    return sniff(args.bus, services, args, out)


_sniff_protos: Optional[Protos] = None


def _protos_for_sniff() -> List[Any]:
    return list(_sniff_protos.services) if _sniff_protos is not None else []


def psrpc_wire_name(sd: Any) -> str:
    from ._options import camel_case

    return camel_case(sd.name)


# ---------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bus", default=os.environ.get("PSRPC_BUS") or DEFAULT_BUS,
                        help="redis://HOST:PORT, nats://HOST:PORT or local://NAME "
                             "(default $PSRPC_BUS, else nats://127.0.0.1:4222)")
    common.add_argument("--proto", action="append", default=[], metavar="FILE",
                        help="the service's .proto (repeatable; options.proto is built in)")
    common.add_argument("-I", dest="include", action="append", default=[], metavar="DIR",
                        help="import directory for --proto (repeatable)")
    common.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS")
    common.add_argument("--topic", action="append", default=[], help="topic (repeatable)")
    common.add_argument("--meta", action="append", default=[], metavar="K=V",
                        help="request metadata (repeatable)")

    sel = argparse.ArgumentParser(add_help=False)
    g = sel.add_argument_group("affinity selection")
    g.add_argument("--min-affinity", type=float)
    g.add_argument("--max-affinity", type=float)
    g.add_argument("--accept-first", action="store_true", help="take the first available server")
    g.add_argument("--affinity-timeout", type=float, metavar="SECONDS",
                   help="how long to collect bids (default with other selection flags: "
                        "1s or half the timeout)")
    g.add_argument("--short-circuit-timeout", type=float, metavar="SECONDS")

    p = argparse.ArgumentParser(
        prog="psrpc", description="Call, listen to, publish on, sniff and benchmark psrpc "
        "services (libpsrpc, Go livekit/psrpc v0.8.2) over Redis, NATS or local://.",
        epilog="exit status: 0 ok; 2 bad usage/input; 10+n psrpc error code "
        "(canceled 10, unknown 11, invalid_argument 12, malformed_request 13, "
        "deadline_exceeded 14, not_found 15, already_exists 16, permission_denied 17, "
        "resource_exhausted 18, failed_precondition 19, aborted 20, out_of_range 21, "
        "unimplemented 22, internal 23, malformed_result 24, unavailable 25, data_loss 26, "
        "unauthenticated 27, not_acceptable 28, unprocessable_entity 29, "
        "upstream_server_error 30, upstream_client_error 31); 1 any other code; 130 Ctrl-C")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("list", parents=[common], help="services and methods of the protos")
    s.add_argument("--json", action="store_true", help="one JSON line per service")

    s = sub.add_parser("call", parents=[common, sel], help="call a method, print the response")
    s.add_argument("method", help="Service.Method or package.Service.Method")
    s.add_argument("request", nargs="?", help="request as JSON (default: stdin)")

    s = sub.add_parser("listen", parents=[common], help="print a subscription's messages")
    s.add_argument("method")
    g2 = s.add_mutually_exclusive_group()
    g2.add_argument("--queue", action="store_true",
                    help="queue subscription: each message reaches one --queue listener")
    g2.add_argument("--all", action="store_true", help="every listener gets every message")
    s.add_argument("--count", type=int, help="exit after N messages")
    s.add_argument("--for", dest="for_", type=float, metavar="SECONDS", help="exit after SECONDS")
    s.add_argument("--ready", action="store_true", help="print 'listening' on stderr once joined")

    s = sub.add_parser("publish", parents=[common], help="publish on a subscription method")
    s.add_argument("method")
    s.add_argument("message", nargs="?", help="message as JSON (default: stdin)")

    s = sub.add_parser("stream", parents=[common, sel],
                       help="open a stream: JSON lines on stdin are sent, replies printed")
    s.add_argument("method")
    s.add_argument("--batch", action="store_true", help=argparse.SUPPRESS)
    s.add_argument("--linger", type=float, default=1.0, metavar="SECONDS",
                   help="after stdin ends, close once nothing arrived for SECONDS (default 1)")

    s = sub.add_parser("serve", parents=[common], help="serve --mock SERVICE: canned answers")
    s.add_argument("service")
    s.add_argument("--mock", action="store_true", required=False)
    s.add_argument("--response", action="append", default=[], metavar="METHOD=JSON")
    s.add_argument("--server-id")
    s.add_argument("-v", "--verbose", action="store_true", help="print each request on stderr")

    s = sub.add_parser("sniff", parents=[common], help="print every psrpc message on the bus")
    s.add_argument("services", nargs="*", metavar="SERVICE")
    s.add_argument("--json", action="store_true", help="one JSON object per message")
    s.add_argument("--count", type=int, help="exit after N messages")
    s.add_argument("--for", dest="for_", type=float, metavar="SECONDS", help="exit after SECONDS")
    s.add_argument("--ready", action="store_true", help="print 'sniffing' on stderr once subscribed")

    s = sub.add_parser("bench", parents=[common], help="drive load, print throughput and latency")
    s.add_argument("method")
    s.add_argument("request", nargs="?")
    s.add_argument("--inflight", type=int, default=1, metavar="N")
    s.add_argument("--duration", type=float, default=5.0, metavar="SECONDS")
    s.add_argument("--json", action="store_true")
    return p


COMMANDS = {"list": cmd_list, "call": cmd_call, "listen": cmd_listen, "publish": cmd_publish,
            "stream": cmd_stream, "serve": cmd_serve, "sniff": cmd_sniff, "bench": cmd_bench}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # The JSON argument may come after options (psrpc call M --topic t '{}').
    for name in ("request", "message"):
        if extra and hasattr(args, name) and getattr(args, name) is None \
                and not extra[0].startswith("-"):
            setattr(args, name, extra.pop(0))
    if extra:
        parser.error("unrecognized arguments: " + " ".join(extra))
    try:
        import psrpc
    except Exception as e:  # pragma: no cover - broken install
        print(f"psrpc: error: cannot load the psrpc module: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        protos = Protos(args.proto, args.include)
        return COMMANDS[args.cmd](args, protos)
    except UsageError as e:
        print(f"psrpc: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except psrpc.PsrpcError as e:
        return print_error(e)
    except KeyboardInterrupt:
        return EXIT_INTERRUPT
    except BrokenPipeError:
        with contextlib.suppress(Exception):
            sys.stdout = io.StringIO()
        return 0
    except OSError as e:
        print(f"psrpc: error: {e}", file=sys.stderr)
        return EXIT_OTHER_CODE


def run() -> None:
    """The console-script entry point."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL) if hasattr(signal, "SIGPIPE") else None
    sys.exit(main())


if __name__ == "__main__":
    run()
