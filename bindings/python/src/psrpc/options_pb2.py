# psrpc method options (extension 2198 of google.protobuf.MethodOptions):
# the module protoc would generate from proto/options.proto, shipped with the
# binding so that a .proto importing "options.proto" needs only its own file
# compiled (psrpc.codegen / psrpc.compile_protos make its _pb2 module import
# this one). It registers the file as "options.proto" in the default
# descriptor pool, as livekit/psrpc's .proto files name it; do not also
# import an options_pb2 of your own in the same process.
#
# The serialized FileDescriptorProto below is protoc's output for
# proto/options.proto (tests/test_typed.py checks that they agree); no
# protobuf runtime version check, so it loads with any protobuf >= 4.21.
"""psrpc.options_pb2: the psrpc method options (``psrpc.Options``,
``psrpc.TopicParamOptions``, ``psrpc.Routing``, the ``options`` extension)."""
from google.protobuf import descriptor_pb2 as _descriptor_pb2  # noqa: F401 (dependency)
from google.protobuf import descriptor_pool as _descriptor_pool
from google.protobuf.internal import builder as _builder

DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(
    b'\n\roptions.proto\x12\x05psrpc\x1a google/protobuf/descriptor.proto\"\xdf\x01\n\x07Options\x12\x14\n\x0csubscription\x18\x01 \x01(\x08\x12\x0e\n\x06topics\x18\x02 \x01(\x08\x12.\n\x0ctopic_params\x18\x03 \x01(\x0b\x32\x18.psrpc.TopicParamOptions\x12\x0e\n\x06stream\x18\x04 \x01(\x08\x12\x1c\n\x04type\x18\x08 \x01(\x0e\x32\x0e.psrpc.Routing\x12\x13\n\x05multi\x18\x05 \x01(\x08\x42\x02\x18\x01H\x00\x12\x1b\n\raffinity_func\x18\x06 \x01(\x08\x42\x02\x18\x01H\x00\x12\x13\n\x05queue\x18\x07 \x01(\x08\x42\x02\x18\x01H\x00\x42\t\n\x07routing\"W\n\x11TopicParamOptions\x12\r\n\x05group\x18\x01 \x01(\t\x12\r\n\x05names\x18\x02 \x03(\t\x12\r\n\x05typed\x18\x03 \x01(\x08\x12\x15\n\rsingle_server\x18\x04 \x01(\x08*-\n\x07Routing\x12\t\n\x05QUEUE\x10\x00\x12\x0c\n\x08\x41\x46\x46INITY\x10\x01\x12\t\n\x05MULTI\x10\x02:C\n\x07options\x12\x1e.google.protobuf.MethodOptions\x18\x96\x11 \x01(\x0b\x32\x0e.psrpc.Options\x88\x01\x01\x42\x33Z1github.com/livekit/psrpc/protoc-gen-psrpc/optionsb\x06proto3')

_globals = globals()
_builder.BuildMessageAndEnumDescriptors(DESCRIPTOR, _globals)
_builder.BuildTopDescriptorsAndMessages(DESCRIPTOR, "psrpc.options_pb2", _globals)
