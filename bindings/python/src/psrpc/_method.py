"""Methods and services: from a protobuf service descriptor, or by hand."""

from __future__ import annotations

from typing import (Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Type, Union,
                    cast)

from google.protobuf import descriptor as _descriptor
from google.protobuf.message import DecodeError, Message

from . import _core
from ._errors import InvalidArgument, MalformedRequest, MalformedResult, NotFound
from ._options import (ROUTING_AFFINITY, ROUTING_MULTI, ROUTING_QUEUE, PsrpcOptions,
                       camel_case, options_from_method_options)

__all__ = ["Method", "Service", "ROUTING_QUEUE", "ROUTING_AFFINITY", "ROUTING_MULTI"]

FLAG_SUBSCRIPTION = _core.PSRPC_METHOD_SUBSCRIPTION
FLAG_TOPICS = _core.PSRPC_METHOD_TOPICS
FLAG_STREAM = _core.PSRPC_METHOD_STREAM
FLAG_SINGLE_SERVER = _core.PSRPC_METHOD_SINGLE_SERVER

_ROUTING_NAMES = {"queue": ROUTING_QUEUE, "affinity": ROUTING_AFFINITY, "multi": ROUTING_MULTI}

Payload = Union[bytes, bytearray, memoryview, Message]


def _message_class(desc: _descriptor.Descriptor) -> Type[Message]:
    try:
        from google.protobuf.message_factory import GetMessageClass  # protobuf >= 4.21

        return GetMessageClass(desc)
    except ImportError:  # pragma: no cover - older protobuf
        from google.protobuf import message_factory

        return cast("Type[Message]", message_factory.MessageFactory().GetPrototype(desc))  # type: ignore[attr-defined]


class Method:
    """What both sides agree on about a method: its wire name, routing type,
    flags and message types.

    Build one by hand for a service without a .proto::

        Method("AddValue")                                   # queue routing
        Method("GetStats", routing="multi")
        Method("Updates", subscription=True, routing="multi", output_type="pkg.Update")
    """

    __slots__ = ("name", "routing", "flags", "request_type", "response_type", "output_type",
                 "topic_names", "proto_name", "options", "_c")

    def __init__(
        self,
        name: str,
        *,
        routing: Union[int, str] = ROUTING_QUEUE,
        subscription: bool = False,
        topics: bool = False,
        stream: bool = False,
        single_server: bool = False,
        request_type: Optional[Type[Message]] = None,
        response_type: Optional[Type[Message]] = None,
        output_type: Optional[str] = None,
        topic_names: Sequence[str] = (),
        proto_name: Optional[str] = None,
        options: Optional[PsrpcOptions] = None,
    ) -> None:
        if isinstance(routing, str):
            try:
                routing = _ROUTING_NAMES[routing.lower()]
            except KeyError:
                raise ValueError(f"routing must be one of {sorted(_ROUTING_NAMES)}") from None
        if routing not in (ROUTING_QUEUE, ROUTING_AFFINITY, ROUTING_MULTI):
            raise ValueError(f"unknown routing type {routing}")
        flags = 0
        if subscription:
            flags |= FLAG_SUBSCRIPTION
        if topics:
            flags |= FLAG_TOPICS
        if stream:
            flags |= FLAG_STREAM
        if single_server:
            flags |= FLAG_SINGLE_SERVER
        if output_type is None and response_type is not None:
            output_type = response_type.DESCRIPTOR.full_name
        self.name = name
        self.routing: int = routing
        self.flags = flags
        self.request_type = request_type
        self.response_type = response_type
        self.output_type = output_type
        self.topic_names = tuple(topic_names) or (("topic",) if topics else ())
        self.proto_name = proto_name or name
        self.options = options
        self._c: Tuple[str, int, int, Optional[str]] = (name, routing, flags, output_type)

    @classmethod
    def from_descriptor(cls, desc: _descriptor.MethodDescriptor) -> "Method":
        """A method of a generated ``_pb2`` module, with its psrpc options."""
        raw = desc.GetOptions().SerializeToString() if desc.has_options else b""
        opts = options_from_method_options(raw) or PsrpcOptions()
        return cls(
            camel_case(desc.name),
            routing=opts.routing,
            subscription=opts.subscription,
            topics=opts.topics,
            stream=opts.stream,
            single_server=opts.topic_params.single_server,
            request_type=_message_class(desc.input_type),
            response_type=_message_class(desc.output_type),
            output_type=desc.output_type.full_name,
            topic_names=opts.topic_params.names if opts.topics else (),
            proto_name=desc.name,
            options=opts,
        )

    # kinds
    @property
    def multi(self) -> bool:
        return self.routing == ROUTING_MULTI

    @property
    def affinity(self) -> bool:
        return self.routing == ROUTING_AFFINITY

    @property
    def queue(self) -> bool:
        return self.routing == ROUTING_QUEUE

    @property
    def subscription(self) -> bool:
        return bool(self.flags & FLAG_SUBSCRIPTION)

    @property
    def topics(self) -> bool:
        return bool(self.flags & FLAG_TOPICS)

    @property
    def stream(self) -> bool:
        return bool(self.flags & FLAG_STREAM)

    @property
    def single_server(self) -> bool:
        return bool(self.flags & FLAG_SINGLE_SERVER)

    @property
    def require_claim(self) -> bool:
        return self.routing != ROUTING_MULTI and not self.single_server

    def __repr__(self) -> str:
        kind = {ROUTING_QUEUE: "queue", ROUTING_AFFINITY: "affinity", ROUTING_MULTI: "multi"}[self.routing]
        extra = "".join(f", {f}" for f in ("subscription", "topics", "stream", "single_server")
                        if getattr(self, f))
        return f"Method({self.name!r}, {kind}{extra})"

    # messages
    def encode_request(self, message: Any) -> Any:
        return _encode(message, self.request_type, MalformedRequest, "request")

    def encode_response(self, message: Any) -> Any:
        return _encode(message, self.response_type, MalformedResult, "response")

    def decode_request(self, data: bytes) -> Any:
        return _decode(data, self.request_type, MalformedRequest)

    def decode_response(self, data: bytes) -> Any:
        return _decode(data, self.response_type, MalformedResult)


def _encode(message: Any, expected: Optional[Type[Message]], err: type, what: str) -> Any:
    if isinstance(message, Message):
        if expected is not None and message.DESCRIPTOR is not expected.DESCRIPTOR \
                and message.DESCRIPTOR.full_name != expected.DESCRIPTOR.full_name:
            raise err(f"{what} is a {message.DESCRIPTOR.full_name}, "
                      f"expected {expected.DESCRIPTOR.full_name}")
        try:
            return message.SerializeToString()
        except Exception as e:  # e.g. EncodeError of proto2 required fields
            raise err(str(e)) from e
    if isinstance(message, (bytes, bytearray, memoryview)):
        return message
    if message is None and expected is not None:
        return b""
    raise TypeError(f"{what} must be a protobuf message or bytes, not {type(message).__name__}")


def _decode(data: bytes, cls: Optional[Type[Message]], err: type) -> Any:
    if cls is None:
        return data
    try:
        return cls.FromString(data)
    except DecodeError as e:
        raise err(f"cannot decode {cls.DESCRIPTOR.full_name}: {e}") from e


class Service:
    """A psrpc service: its wire name and methods (by wire name; the proto
    name works too)."""

    __slots__ = ("name", "methods", "full_name", "_by_proto")

    def __init__(self, name: str, methods: Iterable[Method] = (), full_name: Optional[str] = None):
        self.name = name
        self.full_name = full_name or name
        self.methods: Dict[str, Method] = {m.name: m for m in methods}
        self._by_proto: Dict[str, Method] = {m.proto_name: m for m in self.methods.values()}

    @classmethod
    def from_descriptor(cls, desc: _descriptor.ServiceDescriptor) -> "Service":
        """``conformance_pb2.DESCRIPTOR.services_by_name["Conformance"]``."""
        return cls(camel_case(desc.name), (Method.from_descriptor(m) for m in desc.methods),
                   desc.full_name)

    def method(self, name: Union[str, Method]) -> Method:
        if isinstance(name, Method):
            return name
        m = self.methods.get(name) or self._by_proto.get(name)
        if m is None:
            raise NotFound(f"service {self.name} has no method {name!r}")
        return m

    def __repr__(self) -> str:
        return f"Service({self.name!r}, {sorted(self.methods)})"


ServiceLike = Union[Service, _descriptor.ServiceDescriptor, str]


def as_service(service: ServiceLike, methods: Iterable[Method] = ()) -> Tuple[Service, bool]:
    """(Service, strict): strict services refuse unknown method names; a plain
    name accepts any, as queue methods with bytes messages."""
    if isinstance(service, Service):
        return service, True
    if isinstance(service, _descriptor.ServiceDescriptor):
        return Service.from_descriptor(service), True
    if isinstance(service, str):
        return Service(service, methods), False
    raise TypeError("service must be a psrpc.Service, a protobuf ServiceDescriptor or a name")


def resolve(service: Service, strict: bool, name: Union[str, Method]) -> Method:
    if isinstance(name, Method):
        return name
    if strict:
        return service.method(name)
    m = service.methods.get(name)
    return m if m is not None else Method(name)


def topic_list(topics: Union[None, str, Sequence[str]]) -> Optional[Tuple[str, ...]]:
    if topics is None:
        return None
    if isinstance(topics, str):
        return (topics,)
    t = tuple(topics)
    for x in t:
        if not isinstance(x, str):
            raise InvalidArgument(f"topics must be str, not {type(x).__name__}")
    return t or None


def metadata_items(md: Optional[Mapping[str, str]]) -> Optional[Tuple[Tuple[str, str], ...]]:
    if not md:
        return None
    return tuple((str(k), str(v)) for k, v in md.items())
