# Type stub of psrpc.options_pb2 (protoc's --pyi_out, made clean under mypy --strict).
from typing import Any, ClassVar, Iterable, Mapping, Optional, Union

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper

DESCRIPTOR: _descriptor.FileDescriptor

class Routing(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUEUE: ClassVar[Routing]
    AFFINITY: ClassVar[Routing]
    MULTI: ClassVar[Routing]

QUEUE: Routing
AFFINITY: Routing
MULTI: Routing
OPTIONS_FIELD_NUMBER: int
options: _descriptor.FieldDescriptor

class Options(_message.Message):
    __slots__ = ("subscription", "topics", "topic_params", "stream", "type", "multi",
                 "affinity_func", "queue")
    SUBSCRIPTION_FIELD_NUMBER: ClassVar[int]
    TOPICS_FIELD_NUMBER: ClassVar[int]
    TOPIC_PARAMS_FIELD_NUMBER: ClassVar[int]
    STREAM_FIELD_NUMBER: ClassVar[int]
    TYPE_FIELD_NUMBER: ClassVar[int]
    MULTI_FIELD_NUMBER: ClassVar[int]
    AFFINITY_FUNC_FIELD_NUMBER: ClassVar[int]
    QUEUE_FIELD_NUMBER: ClassVar[int]
    subscription: bool
    topics: bool
    topic_params: TopicParamOptions
    stream: bool
    type: Routing
    multi: bool
    affinity_func: bool
    queue: bool
    def __init__(self, subscription: Optional[bool] = ..., topics: Optional[bool] = ...,
                 topic_params: Optional[Union[TopicParamOptions, Mapping[str, Any]]] = ...,
                 stream: Optional[bool] = ..., type: Optional[Union[Routing, str]] = ...,
                 multi: Optional[bool] = ..., affinity_func: Optional[bool] = ...,
                 queue: Optional[bool] = ...) -> None: ...

class TopicParamOptions(_message.Message):
    __slots__ = ("group", "names", "typed", "single_server")
    GROUP_FIELD_NUMBER: ClassVar[int]
    NAMES_FIELD_NUMBER: ClassVar[int]
    TYPED_FIELD_NUMBER: ClassVar[int]
    SINGLE_SERVER_FIELD_NUMBER: ClassVar[int]
    group: str
    names: _containers.RepeatedScalarFieldContainer[str]
    typed: bool
    single_server: bool
    def __init__(self, group: Optional[str] = ..., names: Optional[Iterable[str]] = ...,
                 typed: Optional[bool] = ..., single_server: Optional[bool] = ...) -> None: ...
