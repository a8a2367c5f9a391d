"""``psrpc sniff``: a passive tap on a Redis or NATS bus that decodes every
psrpc message (libpsrpc's and Go livekit/psrpc v0.8.2's, gzip included).

The tap lives in the command, not in the C library: it needs no client or
server of the bus (it must see traffic addressed to other processes' clients,
which a psrpc bus never subscribes to), it subscribes to everything with a
plain broker client (Redis ``PSUBSCRIBE *``, NATS ``SUB >``), and it decodes
the envelopes with its own copy of the wire schema (``_wire_desc``) in a
private descriptor pool. An in-process ``local://`` bus cannot be tapped from
another process.
"""

from __future__ import annotations

import base64
import gzip
import json
import socket
import sys
import time
import urllib.parse
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import _wire_desc


class _Wire:
    Msg: Any
    Request: Any
    Response: Any
    ClaimRequest: Any
    ClaimResponse: Any
    Stream: Any

    def __init__(self) -> None:
        from google.protobuf import descriptor_pb2, descriptor_pool

        from ._method import _message_class

        pool = descriptor_pool.DescriptorPool()
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(_wire_desc.SERIALIZED))
        for name in ("Msg", "Request", "Response", "ClaimRequest", "ClaimResponse", "Stream"):
            setattr(self, name, _message_class(pool.FindMessageTypeByName("internal." + name)))


def sanitize(s: str) -> str:
    """Go psrpc's channel-part sanitizing (wire spec 5.3)."""
    outp = []
    for ch in s:
        o = ord(ch)
        if ch == "_" or ("0" <= ch <= "9") or ("A" <= ch <= "Z") or ("a" <= ch <= "z"):
            outp.append(ch)
        elif o < 0x10000:
            outp.append("u+%04x" % o)
        else:
            outp.append("U+%08x" % o)
    return "".join(outp)


# ---------------------------------------------------------------- raw broker clients

class _Conn:
    def __init__(self, host: str, port: int, timeout: float) -> None:
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            from . import Unavailable
            raise Unavailable(f"cannot connect to {host}:{port}: {e.strerror or e}") from None
        self.sock.settimeout(0.5)
        self.buf = b""

    def fill(self) -> bool:
        """Reads more; False on timeout."""
        try:
            data = self.sock.recv(1 << 16)
        except socket.timeout:
            return False
        if not data:
            from . import Unavailable
            raise Unavailable("the broker closed the connection")
        self.buf += data
        return True

    def line(self) -> Optional[bytes]:
        i = self.buf.find(b"\r\n")
        if i < 0:
            return None
        ln, self.buf = self.buf[:i], self.buf[i + 2:]
        return ln

    def take(self, n: int) -> Optional[bytes]:
        if len(self.buf) < n + 2:
            return None
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data


class RedisTap:
    def __init__(self, url: urllib.parse.SplitResult, timeout: float) -> None:
        self.c = _Conn(url.hostname or "127.0.0.1", url.port or 6379, timeout)
        if url.password is not None:
            auth = [b"AUTH"] + ([url.username.encode()] if url.username else []) + \
                [urllib.parse.unquote(url.password).encode()]
            self._send(auth)
        self._send([b"PSUBSCRIBE", b"*"])
        deadline = time.monotonic() + timeout
        while True:  # wait for the psubscribe confirmation
            for item in self._items():
                if isinstance(item, Exception):
                    from . import Unavailable
                    raise Unavailable(f"redis: {item}")
                if isinstance(item, list) and item and item[0] == b"psubscribe":
                    return
            if time.monotonic() > deadline:
                from . import Unavailable
                raise Unavailable("redis: no PSUBSCRIBE confirmation")
            self.c.fill()

    def _send(self, parts: List[bytes]) -> None:
        msg = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        self.c.sock.sendall(msg)

    def _parse(self) -> Any:
        """One RESP value from the buffer, or None (incomplete; buffer untouched)."""
        saved = self.c.buf
        v = self._value()
        if v is _INCOMPLETE:
            self.c.buf = saved
            return None
        return v

    def _value(self) -> Any:
        ln = self.c.line()
        if ln is None:
            return _INCOMPLETE
        t, rest = ln[:1], ln[1:]
        if t == b"+" or t == b":":
            return rest
        if t == b"-":
            return Exception(rest.decode("utf-8", "replace"))
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            d = self.c.take(n)
            return _INCOMPLETE if d is None else d
        if t == b"*" or t == b">":  # array, RESP3 push
            n = int(rest)
            items = []
            for _ in range(max(n, 0)):
                v = self._value()
                if v is _INCOMPLETE:
                    return _INCOMPLETE
                items.append(v)
            return items
        return Exception(f"unexpected reply {ln[:40]!r}")

    def _items(self) -> List[Any]:
        out: List[Any] = []
        while True:
            v = self._parse()
            if v is None:
                return out
            out.append(v)

    def messages(self) -> List[Tuple[str, bytes]]:
        got = self.c.fill()
        res = []
        for item in self._items() if got or self.c.buf else []:
            if isinstance(item, list) and len(item) == 4 and item[0] == b"pmessage":
                res.append((item[2].decode("utf-8", "replace"), item[3]))
        return res


_INCOMPLETE = object()


class NatsTap:
    def __init__(self, url: urllib.parse.SplitResult, timeout: float) -> None:
        self.c = _Conn(url.hostname or "127.0.0.1", url.port or 4222, timeout)
        deadline = time.monotonic() + timeout
        info = self._line(deadline)
        if not info.startswith(b"INFO"):
            from . import Unavailable
            raise Unavailable(f"nats: unexpected greeting {info[:40]!r}")
        opts: Dict[str, Any] = {"verbose": False, "pedantic": False, "name": "psrpc-sniff",
                                "lang": "python", "version": "0", "protocol": 1}
        if url.username and url.password is None:
            opts["auth_token"] = urllib.parse.unquote(url.username)
        elif url.username:
            opts["user"] = urllib.parse.unquote(url.username)
            opts["pass"] = urllib.parse.unquote(url.password or "")
        self.c.sock.sendall(b"CONNECT " + json.dumps(opts).encode() + b"\r\nSUB > 1\r\nPING\r\n")
        self.pending: List[Tuple[str, bytes]] = []
        while True:  # PONG: the subscription is active at the server
            ln = self._line(deadline)
            if ln.startswith(b"-ERR"):
                from . import Unavailable
                raise Unavailable(f"nats: {ln[5:].decode('utf-8', 'replace')}")
            if ln == b"PONG":
                return

    def _line(self, deadline: float) -> bytes:
        while True:
            ln = self.c.line()
            if ln is not None:
                return ln
            if time.monotonic() > deadline:
                from . import Unavailable
                raise Unavailable("nats: no answer from the server")
            self.c.fill()

    def messages(self) -> List[Tuple[str, bytes]]:
        self.c.fill()
        res = []
        while True:
            saved = self.c.buf
            ln = self.c.line()
            if ln is None:
                break
            if ln.startswith(b"MSG "):
                parts = ln.split()
                n = int(parts[-1])
                data = self.c.take(n)
                if data is None:
                    self.c.buf = saved
                    break
                res.append((parts[1].decode("utf-8", "replace"), data))
            elif ln == b"PING":
                self.c.sock.sendall(b"PONG\r\n")
        return res


# ---------------------------------------------------------------- decoding

KINDS = {"internal.Request": "request", "internal.Response": "response",
         "internal.ClaimRequest": "claim request", "internal.ClaimResponse": "claim response"}


class Decoder:
    def __init__(self, nats: bool) -> None:
        from . import Service
        from .cli import _protos_for_sniff  # the loaded services

        self.w = _Wire()
        self.nats = nats
        self.services: Dict[str, Any] = {}
        for sd in _protos_for_sniff():
            s = Service.from_descriptor(sd)
            self.services[s.name] = s
        # request id / stream id -> (service, method)
        self.req_method: Dict[str, Tuple[Optional[str], Optional[str]]] = {}
        self.stream_method: Dict[str, Tuple[Optional[str], Optional[str]]] = {}

    def _channel(self, channel: str, local: str) -> Dict[str, Any]:
        """service, method, topics, side ("server"/"client"), client id, suffix."""
        info: Dict[str, Any] = {}
        if self.nats:
            parts = channel.split(".")
            if len(parts) < 2 or parts[0] not in ("SRV", "CLI"):
                return {}
            info["service"] = parts[1]
            if parts[0] == "CLI":
                info["side"] = "client"
                if len(parts) >= 4:
                    info["client_id"] = parts[2]
                    info["suffix"] = parts[3]
            else:
                info["side"] = "server"
                topics = parts[2:]
                meth, _, suffix = local.rpartition(".")
                if suffix == "REQ" and topics and topics[-1] == "Q":
                    topics = topics[:-1]
                info["method"] = meth
                info["suffix"] = suffix
                if topics:
                    info["topics"] = topics
            return info
        parts = channel.split("|")
        if len(parts) < 3:
            return {}
        info["service"] = parts[0]
        info["suffix"] = parts[-1]
        svc = self.services.get(parts[0])
        if parts[-1] in ("RES", "CLAIM") and len(parts) == 3:
            info["side"] = "client"
            info["client_id"] = parts[1]
        elif parts[-1] == "STR" and len(parts) == 3 and not (svc and parts[1] in svc.methods):
            info["side"] = "client"  # S|node|STR (a server stream channel names a method)
            info["client_id"] = parts[1]
        else:
            info["side"] = "server"
            info["method"] = parts[1]
            if len(parts) > 3:
                info["topics"] = parts[2:-1]
        return info

    def _method(self, service: Optional[str], method: Optional[str]) -> Any:
        svc = self.services.get(service or "")
        return svc.methods.get(method or "") if svc else None

    def _payload(self, data: bytes, cls: Any) -> Any:
        if cls is None:
            return {"base64": base64.b64encode(data).decode()}
        from .cli import to_json
        try:
            return to_json(cls.FromString(data))
        except Exception as e:  # noqa: BLE001
            return {"undecodable": str(e), "base64": base64.b64encode(data).decode()}

    def decode(self, channel: str, body: bytes) -> Optional[Dict[str, Any]]:
        w = self.w
        try:
            env = w.Msg.FromString(body)
        except Exception:
            return {"channel": channel, "kind": "not psrpc", "size": len(body)}
        info = self._channel(channel, env.channel)
        if not info:
            return None
        value = env.value
        comp = "gzip" if env.compression == 1 else ("none" if env.compression == 0 else str(env.compression))
        now = time.time()
        ev: Dict[str, Any] = {"time": time.strftime("%H:%M:%S", time.localtime(now)) +
                              (".%03d" % int((now % 1) * 1000)), "channel": channel}
        if env.compression == 1:
            try:
                value = gzip.decompress(value)
            except Exception as e:  # noqa: BLE001
                ev.update(kind="undecodable", error=f"gzip: {e}")
                return ev
        tname = env.type_url.rsplit("/", 1)[-1]
        svc_name: Optional[str] = info.get("service")
        meth_name: Optional[str] = info.get("method")
        out: Dict[str, Any] = {}
        try:
            if tname == "internal.Request":
                r = w.Request.FromString(value)
                self.req_method[r.request_id] = (svc_name, meth_name)
                m = self._method(svc_name, meth_name)
                out.update(kind="request", request_id=r.request_id, client_id=r.client_id)
                if r.multi:
                    out["multi"] = True
                if r.metadata:
                    out["metadata"] = dict(r.metadata)
                if r.expiry:
                    out["timeout_ms"] = max(0, (r.expiry - r.sent_at) // 1_000_000)
                if r.skip_claim:
                    out["skip_claim"] = True
                out["payload"] = self._payload(r.raw_request, m.request_type if m else None)
            elif tname == "internal.Response":
                r = w.Response.FromString(value)
                svc_name, meth_name = self.req_method.get(r.request_id, (svc_name, None))
                m = self._method(svc_name, meth_name)
                out.update(kind="response", request_id=r.request_id, server_id=r.server_id)
                if r.error or r.code:
                    from .cli import any_to_json
                    out["error"] = {"code": r.code or "unknown", "message": r.error}
                    if r.error_details:
                        out["error"]["details"] = [any_to_json(d) for d in r.error_details]
                else:
                    out["payload"] = self._payload(r.raw_response, m.response_type if m else None)
            elif tname == "internal.ClaimRequest":
                r = w.ClaimRequest.FromString(value)
                svc_name, meth_name = self.req_method.get(r.request_id, (svc_name, None))
                out.update(kind="claim request", request_id=r.request_id, server_id=r.server_id,
                           affinity=round(r.affinity, 6))
                if r.handling:
                    out["handling"] = True
            elif tname == "internal.ClaimResponse":
                r = w.ClaimResponse.FromString(value)
                out.update(kind="claim response", request_id=r.request_id, server_id=r.server_id)
            elif tname == "internal.Stream":
                r = w.Stream.FromString(value)
                which: Optional[str] = str(r.WhichOneof("body") or "") or None
                out.update(kind=f"stream {which or 'empty'}", stream_id=r.stream_id,
                           request_id=r.request_id)
                if info.get("side") == "server" and meth_name:
                    self.stream_method[r.stream_id] = (svc_name, meth_name)
                    if which == "open":
                        self.req_method[r.request_id] = (svc_name, meth_name)
                else:
                    svc_name, meth_name = self.stream_method.get(r.stream_id, (svc_name, None))
                m = self._method(svc_name, meth_name)
                if which == "open":
                    out["client_id"] = r.open.node_id
                    if r.open.metadata:
                        out["metadata"] = dict(r.open.metadata)
                elif which == "message":
                    if info.get("side") == "server":
                        cls = m.request_type if m else None
                    else:
                        cls = m.response_type if m else None
                    out["payload"] = self._payload(r.message.raw_message, cls)
                elif which == "close":
                    if r.close.error or r.close.code:
                        out["error"] = {"code": r.close.code or "unknown", "message": r.close.error}
            else:
                # a subscription message: the application message itself
                from google.protobuf import descriptor_pool

                from ._method import _message_class
                out["kind"] = "message"
                try:
                    cls = _message_class(descriptor_pool.Default().FindMessageTypeByName(tname))
                except KeyError:
                    cls = None
                out["type"] = tname
                out["payload"] = self._payload(value, cls)
        except Exception as e:  # noqa: BLE001 - a malformed message is shown, not fatal
            out = {"kind": "undecodable", "type": tname, "error": str(e)}
        ev["kind"] = out.pop("kind")
        if svc_name:
            ev["service"] = svc_name
        if meth_name:
            ev["method"] = meth_name
        if info.get("topics"):
            ev["topics"] = info["topics"]
        if info.get("client_id") and "client_id" not in out:
            ev["client_id"] = info["client_id"]
        ev.update(out)
        ev["size"] = len(body)
        ev["compression"] = comp
        return ev


def text_line(ev: Dict[str, Any]) -> str:
    from .cli import dumps

    head = [ev.get("time", ""), ev.get("kind", "")]
    if ev.get("method"):
        head.append(f"{ev.get('service', '?')}.{ev['method']}")
    elif ev.get("service"):
        head.append(ev["service"])
    if ev.get("topics"):
        head.append("topics=" + ",".join(ev["topics"]))
    for k in ("request_id", "stream_id", "client_id", "server_id"):
        if ev.get(k):
            head.append(f"{k.split('_')[0]}={ev[k]}")
    if "affinity" in ev:
        head.append(f"affinity={ev['affinity']:g}")
    head.append(f"{ev.get('size', 0)}B")
    if ev.get("compression") not in (None, "none"):
        head.append(ev["compression"])
    head.append(f"ch={ev.get('channel', '')}")
    if "error" in ev:
        head.append("error=" + dumps(ev["error"]))
    if "payload" in ev:
        head.append(dumps(ev["payload"]))
    return " ".join(head)


def sniff(url: str, services: List[str], args: Any, out: Callable[[str], None]) -> int:
    from .cli import UsageError

    u = urllib.parse.urlsplit(url)
    if u.scheme == "redis":
        tap: Any = RedisTap(u, args.timeout)
        nats = False
    elif u.scheme == "nats":
        tap = NatsTap(u, args.timeout)
        nats = True
    else:
        raise UsageError(f"sniff taps redis:// or nats:// buses, not {url!r} "
                         "(a local:// bus lives inside one process)")
    dec = Decoder(nats)
    wanted = set(services)
    wanted_redis = {sanitize(s) for s in services}
    if args.ready:
        print("sniffing", file=sys.stderr, flush=True)
    end = time.monotonic() + args.for_ if args.for_ else None
    n = 0
    from .cli import dumps
    while args.count is None or n < args.count:
        if end is not None and time.monotonic() >= end:
            break
        for channel, body in tap.messages():
            if nats and not (channel.startswith("SRV.") or channel.startswith("CLI.")):
                continue
            ev = dec.decode(channel, body)
            if ev is None:
                continue
            if wanted:
                svc = ev.get("service", "")
                if svc not in (wanted_redis if not nats else wanted):
                    if not (nats and any(channel.startswith(p + "." + s + ".") or
                                         channel == p + "." + s
                                         for s in wanted for p in ("SRV", "CLI"))):
                        continue
            out(dumps(ev) if args.json else text_line(ev))
            n += 1
            if args.count is not None and n >= args.count:
                break
    return 0
