"""psrpc method options (extension 2198 of google.protobuf.MethodOptions) and
protoc-gen-psrpc's name mangling.

The options are read from the serialized ``MethodOptions`` with a small
protobuf wire reader, so they are found whether or not the ``options_pb2``
module that declares the extension is loaded, and whatever protobuf runtime
(upb, C++, pure Python) is in use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterator, List, Optional, Tuple

OPTIONS_EXTENSION_NUMBER = 2198

ROUTING_QUEUE = 0
ROUTING_AFFINITY = 1
ROUTING_MULTI = 2


def proto_include() -> str:
    """Directory holding ``options.proto`` (libpsrpc's copy of livekit/psrpc's
    schema): pass it to protoc with ``-I`` to compile .proto files that
    ``import "options.proto";``."""
    return os.path.join(os.path.dirname(__file__), "proto")


@dataclass(frozen=True)
class TopicParams:
    group: str = ""
    names: Tuple[str, ...] = ()
    typed: bool = False
    single_server: bool = False


@dataclass(frozen=True)
class PsrpcOptions:
    """The decoded ``psrpc.Options`` of a method."""

    subscription: bool = False
    topics: bool = False
    topic_params: TopicParams = field(default_factory=TopicParams)
    stream: bool = False
    routing: int = ROUTING_QUEUE


def _varint(buf: bytes, i: int) -> Tuple[int, int]:
    shift = 0
    value = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes) -> Iterator[Tuple[int, int, Any]]:
    """(field number, wire type, value) of a serialized message, in order."""
    i = 0
    n = len(buf)
    while i < n:
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
            yield num, wt, v
        elif wt == 1:
            i += 8
        elif wt == 2:
            ln, i = _varint(buf, i)
            if i + ln > n:
                raise ValueError("truncated field")
            yield num, wt, buf[i:i + ln]
            i += ln
        elif wt == 5:
            i += 4
        else:
            raise ValueError(f"unsupported wire type {wt}")


def _topic_params(buf: bytes, tp: TopicParams) -> TopicParams:
    group, names, typed, single = tp.group, list(tp.names), tp.typed, tp.single_server
    for num, wt, v in _fields(buf):
        if num == 1 and wt == 2:
            group = bytes(v).decode("utf-8")
        elif num == 2 and wt == 2:
            names.append(bytes(v).decode("utf-8"))
        elif num == 3 and wt == 0:
            typed = bool(v)
        elif num == 4 and wt == 0:
            single = bool(v)
    return TopicParams(group, tuple(names), typed, single)


def decode_options(buf: bytes) -> PsrpcOptions:
    """Decodes a serialized ``psrpc.Options``."""
    subscription = topics = stream = False
    tp = TopicParams()
    rtype = ROUTING_QUEUE
    oneof: Optional[int] = None  # the deprecated oneof wins when present
    for num, wt, v in _fields(buf):
        if wt == 0:
            iv = int(v)
            if num == 1:
                subscription = bool(iv)
            elif num == 2:
                topics = bool(iv)
            elif num == 4:
                stream = bool(iv)
            elif num == 5:
                oneof = ROUTING_MULTI
            elif num == 6:
                oneof = ROUTING_AFFINITY
            elif num == 7:
                oneof = ROUTING_QUEUE
            elif num == 8:
                rtype = iv
        elif wt == 2 and num == 3:
            tp = _topic_params(bytes(v), tp)
    return PsrpcOptions(subscription, topics, tp, stream, oneof if oneof is not None else rtype)


def options_from_method_options(serialized_method_options: bytes) -> Optional[PsrpcOptions]:
    """The psrpc options in a serialized ``google.protobuf.MethodOptions``
    (every occurrence of field 2198 merged), or None when absent."""
    parts: List[bytes] = []
    for num, wt, v in _fields(serialized_method_options):
        if num == OPTIONS_EXTENSION_NUMBER and wt == 2:
            parts.append(bytes(v))
    if not parts:
        return None
    return decode_options(b"".join(parts))


def camel_case(s: str) -> str:
    """protoc-gen-psrpc's name mangling (the classic protoc-gen-go CamelCase):
    ``get_stats`` -> ``GetStats``, ``_foo`` -> ``XFoo``, ``a2b`` -> ``A2B``."""
    b = s.encode("utf-8")
    if not b:
        return ""
    out = bytearray()
    i = 0
    n = len(b)

    def lower(c: int) -> bool:
        return 0x61 <= c <= 0x7A

    if b[0] == 0x5F:
        out += b"X"
        i = 1
    while i < n:
        c = b[i]
        if c == 0x5F and i + 1 < n and lower(b[i + 1]):
            i += 1
            continue
        if 0x30 <= c <= 0x39:
            out.append(c)
            i += 1
            continue
        if lower(c):
            c -= 0x20
        out.append(c)
        while i + 1 < n and lower(b[i + 1]):
            i += 1
            out.append(b[i])
        i += 1
    return out.decode("utf-8")
