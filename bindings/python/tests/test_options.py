"""Method options (extension 2198), name mangling and service descriptors."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2

import psrpc
from psrpc._options import decode_options, options_from_method_options
from conftest import pb


@pytest.mark.parametrize("proto,wire", [
    ("MyService", "MyService"), ("my_service", "MyService"), ("Haberdasher_v1", "HaberdasherV1"),
    ("MakeHat_v1", "MakeHatV1"), ("get_stats", "GetStats"), ("normalRPC", "NormalRPC"),
    ("getHTTP", "GetHTTP"), ("a2b", "A2B"), ("_foo", "XFoo"), ("foo__bar", "Foo_Bar"),
    ("foo_1bar", "Foo_1Bar"), ("", ""),
])
def test_camel_case(proto, wire):
    assert psrpc.camel_case(proto) == wire


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num, wt, payload):
    key = _varint((num << 3) | wt)
    if wt == 0:
        return key + _varint(payload)
    return key + _varint(len(payload)) + payload


def test_decode_options_fields_and_oneof():
    o = decode_options(_field(1, 0, 1) + _field(2, 0, 1) + _field(8, 0, 1))
    assert o.subscription and o.topics and o.routing == psrpc.ROUTING_AFFINITY
    # the deprecated oneof wins whenever present, even when false
    assert decode_options(_field(8, 0, 1) + _field(5, 0, 0)).routing == psrpc.ROUTING_MULTI
    assert decode_options(_field(6, 0, 1)).routing == psrpc.ROUTING_AFFINITY
    assert decode_options(_field(5, 0, 1) + _field(7, 0, 1)).routing == psrpc.ROUTING_QUEUE
    tp = _field(1, 2, b"grp") + _field(2, 2, b"region") + _field(2, 2, b"zone") + _field(4, 0, 1)
    o = decode_options(_field(2, 0, 1) + _field(3, 2, tp) + _field(99, 0, 5) + _field(4, 0, 1))
    assert o.topic_params.names == ("region", "zone") and o.topic_params.single_server
    assert o.topic_params.group == "grp" and o.stream


def test_options_in_method_options_merge():
    raw = _field(34, 0, 1) + _field(2198, 2, _field(8, 0, 2)) + _field(2198, 2, _field(1, 0, 1))
    o = options_from_method_options(raw)
    assert o is not None and o.routing == psrpc.ROUTING_MULTI and o.subscription
    assert options_from_method_options(_field(33, 0, 1)) is None


def test_service_from_descriptor():
    svc = psrpc.Service.from_descriptor(pb.DESCRIPTOR.services_by_name["PyTestService"])
    assert svc.name == "PyTestService" and svc.full_name == "psrpc.pytest.PyTestService"
    m = svc.methods
    assert m["Echo"].queue and m["Echo"].require_claim and not m["Echo"].topics
    assert m["Echo"].request_type is pb.EchoRequest and m["Echo"].response_type is pb.EchoResponse
    assert m["Echo"].output_type == "psrpc.pytest.EchoResponse"
    assert m["Claim"].affinity and m["Fanout"].multi and not m["Fanout"].require_claim
    assert svc.method("region_echo") is m["RegionEcho"]  # the proto name works too
    assert m["RegionEcho"].topics and m["RegionEcho"].topic_names == ("region",)
    assert m["RegionFanout"].multi and m["RegionFanout"].topics
    assert m["Single"].single_server and not m["Single"].require_claim
    assert m["Chat"].stream
    u = psrpc.Service.from_descriptor(pb.DESCRIPTOR.services_by_name["PyTestUpdates"]).methods
    assert u["Updates"].subscription and u["Updates"].multi
    assert u["Work"].subscription and u["Work"].queue
    assert u["RegionUpdates"].topics
    with pytest.raises(psrpc.NotFound):
        svc.method("Nope")


def test_options_without_extension_module():
    """Options are read from raw bytes: a descriptor built without options_pb2."""
    fdp = descriptor_pb2.FileDescriptorProto(name="raw_opts.proto", package="raw")
    fdp.message_type.add(name="M")
    s = fdp.service.add(name="raw_svc")
    meth = s.method.add(name="do_it", input_type=".raw.M", output_type=".raw.M")
    meth.options.MergeFromString(_field(2198, 2, _field(8, 0, 2) + _field(2, 0, 1)))
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.DescriptorPool()
    fd = pool.Add(fdp) if hasattr(pool, "Add") else None
    fd = pool.FindFileByName("raw_opts.proto")
    svc = psrpc.Service.from_descriptor(fd.services_by_name["raw_svc"])
    assert svc.name == "RawSvc"
    m = svc.method("DoIt")
    assert m.multi and m.topics and m.output_type == "raw.M"


def test_manual_methods():
    m = psrpc.Method("Stats", routing="multi", topics=True, response_type=pb.Update)
    assert m.multi and m.topics and m.output_type == "psrpc.pytest.Update"
    assert m.topic_names == ("topic",)
    with pytest.raises(ValueError):
        psrpc.Method("X", routing="broadcast")
    assert "multi" in repr(m)
