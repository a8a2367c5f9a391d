#!/usr/bin/env python3
"""conformance_client.py: the conformance client in Python, with the command
protocol of the C conformance-client (tests/interop/conformance_client.c), so
the interop scenarios can drive a Python client:

    conformance_client.py [--bus URL] [--client-id ID] [--timeout-ms N]
                          [--max-message-size N] [--compress-threshold N]
    conformance_client.py --print-methods   the method table, one line each
    conformance_client.py --has-streams     exit 0 (this binding has streams)

Prints "ready" once the bus is connected, then reads one command per line
(call, multi, cancel, sub, unsub, chat, chat_send, chat_close, quit; a word
followed by key=value pairs, values %-encoded) and prints every outcome as
one JSON line carrying the command's id, exactly as the C client does.
--proto-dir: the directory of conformance.proto and options.proto (default
tests/interop of this source tree).
"""

import argparse
import json
import os
import sys
import threading
import urllib.parse
from typing import Any, Dict, List, Optional, Tuple

import psrpc

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO_DIR = os.path.join(HERE, "..", "..", "tests", "interop")

_out = threading.Lock()


def emit(obj: Dict[str, Any]) -> None:
    line = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    with _out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def error_obj(e: psrpc.PsrpcError) -> Dict[str, Any]:
    return {"code": e.code, "message": e.message,
            "details": [{"type_url": d.type_url, "value": d.value.hex()} for d in e.details]}


def out_error(obj: Dict[str, Any], e: psrpc.PsrpcError) -> Dict[str, Any]:
    obj["ok"] = False
    obj["error"] = error_obj(e)
    if e.local:
        obj["local"] = True
    return obj


def local_error(id_: str, kind: str, code: str, message: str) -> None:
    emit({"id": id_, "kind": kind, "ok": False,
          "error": {"code": code, "message": message, "details": []}, "local": True})


class Conformance:
    def __init__(self, pb: Any, client: psrpc.Client, updates: psrpc.Client) -> None:
        self.pb = pb
        self.client = client
        self.updates = updates
        # Bytes-level methods: responses are decoded here ("undecodable").
        self.raw = {name: psrpc.Method(m.name, routing=m.routing, subscription=m.subscription,
                                       topics=m.topics, stream=m.stream,
                                       single_server=m.single_server,
                                       output_type=m.output_type)
                    for name, m in client.service.methods.items()}
        self.calls: Dict[str, Any] = {}   # id -> CallFuture or MultiCall
        self.subs: Dict[str, Any] = {}
        self.chats: Dict[str, "Chat"] = {}
        self.lock = threading.Lock()

    # ---- encoding ----
    def request(self, method: str, a: "Args") -> bytes:
        pb = self.pb
        if a.get("raw") is not None:
            return bytes.fromhex(a.get("raw"))
        if method == "Add":
            return pb.AddRequest(increment=int(a.get("increment", "0"))).SerializeToString()
        payload = bytes.fromhex(a.get("payload", ""))
        if method == "Publish":
            return pb.PublishRequest(method=a.get("pmethod", ""), topic=a.all("ptopic"),
                                     count=int(a.get("count", "0")),
                                     payload=payload).SerializeToString()
        return pb.EchoRequest(payload=payload, delay_ms=int(a.get("delay_ms", "0")),
                              fail_code=a.get("fail_code", ""),
                              fail_message=a.get("fail_message", ""),
                              tag=a.get("tag", "")).SerializeToString()

    def response(self, method: str, data: bytes) -> Dict[str, Any]:
        pb = self.pb
        try:
            if method == "Add":
                return {"value": pb.AddResult.FromString(data).value}
            if method == "Publish":
                return {"published": pb.PublishResult.FromString(data).published}
            r = pb.EchoResponse.FromString(data)
            return {"server_id": r.server_id, "payload": r.payload.hex(), "tag": r.tag,
                    "topic": r.topic, "metadata": dict(r.metadata)}
        except Exception:
            return {"undecodable": True}

    def options(self, a: "Args") -> Dict[str, Any]:
        kw: Dict[str, Any] = {}
        t = int(a.get("timeout_ms", "0"))
        if t:
            kw["timeout"] = t / 1000
        if a.get("topic") is not None:
            kw["topics"] = [a.get("topic")]
        md = {}
        for kv in a.all("md"):
            k, _, v = kv.partition(":")
            md[urllib.parse.unquote(k)] = urllib.parse.unquote(v)
        if md:
            kw["metadata"] = md
        if any(k.startswith("sel_") for k in a.keys()):
            pick = a.get("sel_pick")
            select = None
            if pick is not None:
                lowest = pick == "lowest"

                def select(claims: List[psrpc.Claim]) -> str:
                    if not claims:
                        raise psrpc.Unavailable("no servers available")
                    key = (lambda c: c.affinity)
                    return (min if lowest else max)(claims, key=key).server_id
            kw["selection"] = psrpc.SelectionOptions(
                minimum_affinity=float(a.get("sel_min", "0")),
                maximum_affinity=float(a.get("sel_max", "0")),
                accept_first_available=a.get("sel_afa", "0") == "1",
                affinity_timeout=int(a.get("sel_timeout_ms", "0")) / 1000,
                short_circuit_timeout=int(a.get("sel_short_ms", "0")) / 1000,
                select=select)
        return kw

    # ---- commands ----
    def call(self, id_: str, a: "Args", multi: bool) -> None:
        method = a.get("method", "")
        kind = "done" if multi else "result"
        if method not in self.raw:
            local_error(id_, kind, "invalid_argument", "unknown method")
            return
        m = self.raw[method]
        try:
            data = self.request(method, a)
        except ValueError:
            local_error(id_, kind, "invalid_argument", "bad payload")
            return
        try:
            if multi:
                mc = self.client.multi_call(m, data, **self.options(a))
            else:
                fut = self.client.call_future(m, data, **self.options(a))
        except psrpc.PsrpcError as e:
            emit(out_error({"id": id_, "kind": kind}, e))
            return
        if multi:
            with self.lock:
                self.calls[id_] = mc
            threading.Thread(target=self._multi, args=(id_, method, mc), daemon=True).start()
            return
        with self.lock:
            self.calls[id_] = fut

        def done(f: Any) -> None:
            with self.lock:
                self.calls.pop(id_, None)
            obj: Dict[str, Any] = {"id": id_, "kind": "result"}
            e = f.exception()
            if e is not None:
                out_error(obj, e)
            else:
                obj["ok"] = True
                obj["resp"] = self.response(method, f.result())
            if f.server_id:
                obj["server_id"] = f.server_id
            emit(obj)

        fut.add_done_callback(done)

    def _multi(self, id_: str, method: str, mc: Any) -> None:
        try:
            for r in mc:
                obj: Dict[str, Any] = {"id": id_, "kind": "multi-result"}
                if r.error is not None:
                    out_error(obj, r.error)
                else:
                    obj["ok"] = True
                    obj["resp"] = self.response(method, r.response)
                if r.server_id:
                    obj["server_id"] = r.server_id
                emit(obj)
            emit({"id": id_, "kind": "done", "ok": True})
        except psrpc.PsrpcError as e:
            emit(out_error({"id": id_, "kind": "done"}, e))
        finally:
            with self.lock:
                self.calls.pop(id_, None)

    def cancel(self, id_: str) -> None:
        with self.lock:
            c = self.calls.get(id_)
        if c is None:
            return
        if isinstance(c, psrpc.MultiCall):
            self.client.cancel(c.call_id)  # the done line then carries "canceled"
        else:
            c.cancel()

    def sub(self, id_: str, a: "Args") -> None:
        method = a.get("method", "")
        if method not in self.updates.service.methods:
            local_error(id_, "ready-error", "invalid_argument", "unknown method")
            return
        topic = a.get("topic")

        def run() -> None:
            try:
                sub = self.updates.subscribe(method, [topic] if topic is not None else None,
                                             timeout=30)
            except psrpc.PsrpcError as e:
                emit(out_error({"id": id_, "kind": "ready-error"}, e))
                return
            with self.lock:
                self.subs[id_] = sub
            emit({"id": id_, "kind": "ready"})
            for u in sub:
                emit({"id": id_, "kind": "update", "seq": u.seq, "payload": u.payload.hex(),
                      "server_id": u.server_id, "nonce": u.nonce})
            with self.lock:
                self.subs.pop(id_, None)
            emit({"id": id_, "kind": "unsubscribed"})

        threading.Thread(target=run, daemon=True).start()

    def unsub(self, id_: str) -> None:
        with self.lock:
            sub = self.subs.get(id_)
        if sub is not None:
            sub.close()

    def chat(self, id_: str, a: "Args") -> None:
        c = Chat(self, id_, self.options(a))
        with self.lock:
            self.chats[id_] = c
        threading.Thread(target=c.run, daemon=True).start()

    def chat_send(self, id_: str, a: "Args") -> None:
        with self.lock:
            c = self.chats.get(id_)
        send_id = a.get("send_id", "")
        if c is None:
            emit({"id": id_, "kind": "sent", "send_id": send_id, "ok": False,
                  "error": {"code": "not_found", "message": "no such stream", "details": []},
                  "local": True})
            return
        msg = self.pb.ChatMessage(seq=int(a.get("seq", "0")),
                                  payload=bytes.fromhex(a.get("payload", "")),
                                  close_code=a.get("close_code", ""),
                                  close_message=a.get("close_message", ""))
        threading.Thread(target=c.send, args=(send_id, msg), daemon=True).start()

    def chat_close(self, id_: str, a: "Args") -> None:
        with self.lock:
            c = self.chats.get(id_)
        if c is not None:
            threading.Thread(target=c.close, args=(a.get("code"), a.get("message")),
                             daemon=True).start()


class Chat:
    """One Chat stream: sends and closes wait for the open, as in C."""

    def __init__(self, conf: Conformance, id_: str, opts: Dict[str, Any]) -> None:
        self.conf = conf
        self.id = id_
        self.opts = opts
        self.opened = threading.Event()
        self.stream: Optional[psrpc.Stream] = None
        self.open_error: Optional[psrpc.PsrpcError] = None

    def run(self) -> None:
        try:
            self.stream = self.conf.client.open_stream("Chat", **self.opts)
        except psrpc.PsrpcError as e:
            self.open_error = e
            self.opened.set()
            emit(out_error({"id": self.id, "kind": "open"}, e))
            if not e.local:
                emit(out_error({"id": self.id, "kind": "closed"}, e))
            self._forget()
            return
        self.opened.set()
        emit({"id": self.id, "kind": "open", "ok": True})
        st = self.stream
        try:
            for m in st:
                emit({"id": self.id, "kind": "message", "seq": m.seq, "payload": m.payload.hex(),
                      "close_code": m.close_code, "close_message": m.close_message})
        except psrpc.PsrpcError:
            pass
        st.wait_closed()
        cause = st.cause or psrpc.Canceled("stream closed")
        obj = out_error({"id": self.id, "kind": "closed"}, cause)
        obj.pop("local", None)
        emit(obj)
        self._forget()

    def _forget(self) -> None:
        with self.conf.lock:
            self.conf.chats.pop(self.id, None)

    def send(self, send_id: str, msg: Any) -> None:
        self.opened.wait()
        obj: Dict[str, Any] = {"id": self.id, "kind": "sent", "send_id": send_id}
        if self.stream is None:
            e = self.open_error or psrpc.Canceled("stream closed")
            emit(out_error(obj, e))
            return
        try:
            self.stream.send(msg)
            obj["ok"] = True
        except psrpc.PsrpcError as e:
            out_error(obj, e)
        emit(obj)

    def close(self, code: Optional[str], message: Optional[str]) -> None:
        self.opened.wait()
        if self.stream is not None:
            self.stream.close(psrpc.PsrpcError(message or "", code=code) if code else None)


class Args:
    def __init__(self, pairs: List[Tuple[str, str]]) -> None:
        self.pairs = pairs

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        for k, v in self.pairs:
            if k == key:
                return v
        return default

    def all(self, key: str) -> List[str]:
        return [v for k, v in self.pairs if k == key]

    def keys(self) -> List[str]:
        return [k for k, _ in self.pairs]


def parse(line: str) -> Tuple[Optional[str], Args]:
    words = line.split()
    if not words:
        return None, Args([])
    pairs = []
    for tok in words[1:]:
        k, eq, v = tok.partition("=")
        if not eq:
            continue
        pairs.append((k, v if k == "md" else urllib.parse.unquote(v)))
    return words[0], Args(pairs)


def print_methods(pb: Any) -> None:
    for sname in ("Conformance", "ConformanceUpdates"):
        svc = psrpc.Service.from_descriptor(pb.DESCRIPTOR.services_by_name[sname])
        desc = pb.DESCRIPTOR.services_by_name[sname]
        for md in desc.methods:
            m = svc.method(md.name)
            print(f"{svc.name}.{m.name} affinity={int(m.affinity)} multi={int(m.multi)} "
                  f"require_claim={int(m.require_claim)} queue={int(m.queue)} "
                  f"subscription={int(m.subscription)} topics={len(m.topic_names)} "
                  f"stream={int(m.stream)} routing={m.routing} input={md.input_type.full_name} "
                  f"output={md.output_type.full_name}")


def main() -> int:
    ap = argparse.ArgumentParser(description="psrpc conformance client (Python)")
    ap.add_argument("--bus", default="redis://127.0.0.1:6379")
    ap.add_argument("--client-id")
    ap.add_argument("--timeout-ms", type=int, default=0)
    # As the C programs: 16 MiB instead of libpsrpc's 1 MiB default, so that a
    # 1 MiB payload plus its envelope passes, as between Go peers.
    ap.add_argument("--max-message-size", type=int, default=16 << 20)
    ap.add_argument("--compress-threshold", type=int, default=0)
    ap.add_argument("--print-methods", action="store_true")
    ap.add_argument("--has-streams", action="store_true")
    ap.add_argument("--proto-dir", default=os.environ.get("PSRPC_CONFORMANCE_PROTO_DIR",
                                                          DEFAULT_PROTO_DIR))
    args = ap.parse_args()
    if args.has_streams:
        return 0
    try:
        import conformance_pb2 as pb  # generated beforehand, if on sys.path
    except ImportError:
        pb = psrpc.load_proto(os.path.join(args.proto_dir, "conformance.proto"),
                              include=[args.proto_dir])
    if args.print_methods:
        print_methods(pb)
        return 0
    options = {}
    if args.max_message_size:
        options["max_message_size"] = args.max_message_size
    if args.compress_threshold:
        options["compress_threshold"] = args.compress_threshold
    try:
        bus = psrpc.Bus(args.bus, **options)
        bus.wait_ready(10)
        timeout = args.timeout_ms / 1000 if args.timeout_ms else None
        client = psrpc.Client(bus, pb.DESCRIPTOR.services_by_name["Conformance"],
                              client_id=args.client_id, timeout=timeout)
        updates = psrpc.Client(bus, pb.DESCRIPTOR.services_by_name["ConformanceUpdates"],
                               timeout=timeout)
    except psrpc.PsrpcError as e:
        print(f"conformance_client.py: {e}", file=sys.stderr)
        return 1
    conf = Conformance(pb, client, updates)
    emit_ready = "ready"
    with _out:
        sys.stdout.write(emit_ready + "\n")
        sys.stdout.flush()
    for line in sys.stdin:
        cmd, a = parse(line)
        if cmd is None:
            continue
        id_ = a.get("id", "")
        if cmd == "quit":
            break
        handler = {"call": lambda: conf.call(id_, a, False), "multi": lambda: conf.call(id_, a, True),
                   "cancel": lambda: conf.cancel(id_), "sub": lambda: conf.sub(id_, a),
                   "unsub": lambda: conf.unsub(id_), "chat": lambda: conf.chat(id_, a),
                   "chat_send": lambda: conf.chat_send(id_, a),
                   "chat_close": lambda: conf.chat_close(id_, a)}.get(cmd)
        if handler is None:
            local_error(id_, "bad-command", "invalid_argument", cmd)
        else:
            handler()
    client.close()
    updates.close()
    bus.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
