"""Typed stubs (psrpc.codegen, the protoc plugin) checked by mypy --strict,
and the options module shipped in the package (psrpc.options_pb2)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

import psrpc
import psrpc.codegen
from conftest import GEN_DIR, TRANSPORTS, _selected, pb

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
EXAMPLE = os.path.join(ROOT, "examples", "python", "greeter.py")
EXAMPLE_PROTO = os.path.join(ROOT, "examples", "python", "greeter.proto")
BIN = os.path.dirname(sys.executable)

DEMO = ["Hello, Ada!", "{who} greets everyone", "nearest: {near}", "Hello from eu, Bob",
        "chat: 2 HI", "subscription: a greeting to all", "error: invalid_argument: name is empty"]


@pytest.fixture(scope="module")
def gen():
    """examples/python/greeter.proto compiled by python -m psrpc.codegen."""
    d = tempfile.mkdtemp(prefix="psrpc-typed-")
    p = subprocess.run([sys.executable, "-m", "psrpc.codegen", "-o", d, EXAMPLE_PROTO],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    written = sorted(os.path.basename(x) for x in p.stdout.split())
    assert written == ["greeter_pb2.py", "greeter_pb2.pyi", "greeter_psrpc.py"]
    yield d
    shutil.rmtree(d, ignore_errors=True)


def mypy(cwd, *files):
    """mypy --strict over files; {file: [error lines]}."""
    p = subprocess.run([os.path.join(BIN, "mypy"), "--strict", "--no-error-summary",
                        "--cache-dir", os.path.join(cwd, ".mypy_cache"), *files],
                       cwd=cwd, capture_output=True, text=True, timeout=300)
    errors = {f: [] for f in files}
    for line in p.stdout.splitlines():
        m = re.match(r"([^:]+):\d+: error: (.*)", line)
        if m:
            errors.setdefault(m.group(1), []).append(m.group(2))
    assert p.returncode in (0, 1), p.stdout + p.stderr
    return errors


def test_mypy_strict_catches_wrong_field_request_type_and_method(gen):
    src = open(EXAMPLE).read()
    shutil.copy(EXAMPLE, os.path.join(gen, "greeter.py"))
    mutants = {
        "wrong_field.py": ("print(reply.message)", "print(reply.mesage)"),
        "wrong_request.py": ('client.SayHello(pb.HelloRequest(name="Ada"))',
                             'client.SayHello(pb.ChatLine(text="Ada"))'),
        "wrong_method.py": ("reply = client.SayHello(", "reply = client.SayHelo("),
        "wrong_response.py": ('return pb.HelloReply(message=f"Hello from {context.topics[0]}',
                              'return pb.ChatLine(text=f"Hello from {context.topics[0]}'),
        "wrong_stream.py": ("chat.send(pb.ChatLine(seq=1, text=\"hi\"))",
                            "chat.send(pb.HelloRequest(name=\"hi\"))"),
        "wrong_multi.py": ("print(result.result().message)", "print(result.result().text)"),
    }
    for name, (old, new) in mutants.items():
        assert old in src, old
        with open(os.path.join(gen, name), "w") as fh:
            fh.write(src.replace(old, new))
    errors = mypy(gen, "greeter.py", *mutants)
    assert errors["greeter.py"] == []
    assert any('"HelloReply" has no attribute "mesage"' in e for e in errors["wrong_field.py"])
    assert any('incompatible type "ChatLine"; expected "HelloRequest"' in e
               for e in errors["wrong_request.py"])
    assert any('"GreeterClient" has no attribute "SayHelo"' in e
               for e in errors["wrong_method.py"])
    assert any("ChatLine" in e and "HelloReply" in e for e in errors["wrong_response.py"])
    assert any('"send" of "Stream"' in e and "HelloRequest" in e
               for e in errors["wrong_stream.py"])
    assert any('"HelloReply" has no attribute "text"' in e for e in errors["wrong_multi.py"])
    # The untyped API stays: everything is Any, nothing is caught.
    with open(os.path.join(gen, "dynamic.py"), "w") as fh:
        fh.write("import psrpc\n\n\ndef f(client: psrpc.Client) -> None:\n"
                 "    print(client.call('SayHelo', b'').mesage)\n")
    assert mypy(gen, "dynamic.py")["dynamic.py"] == []


def test_mypy_strict_on_add_value_example(tmp_path):
    """examples/python/add_value.py (the .proto shared with C and Go) is typed
    too: clean, and a wrong request type or response field is caught."""
    psrpc.codegen.generate([os.path.join(ROOT, "examples", "add_value.proto")], str(tmp_path))
    src = open(os.path.join(ROOT, "examples", "python", "add_value.py")).read()
    (tmp_path / "add_value.py").write_text(src)
    old = "print(client.AddValue(pb.AddRequest(increment=n)).value)"
    assert old in src
    (tmp_path / "bad_add.py").write_text(
        src.replace(old, "print(client.AddValue(pb.AddResult(value=n)).valeu)"))
    errors = mypy(str(tmp_path), "add_value.py", "bad_add.py")
    assert errors["add_value.py"] == []
    assert any('incompatible type "AddResult"; expected "AddRequest"' in e
               for e in errors["bad_add.py"])
    assert any('has no attribute "valeu"' in e for e in errors["bad_add.py"])


def test_options_pb2_shipped_and_mypy_clean(tmp_path):
    from psrpc import options_pb2

    o = options_pb2.Options(type=options_pb2.MULTI, topics=True)
    o.topic_params.names.append("region")
    assert options_pb2.options.number == 2198
    assert options_pb2.DESCRIPTOR.name == "options.proto"
    # the package's own decoder agrees with the generated classes
    from psrpc._options import decode_options

    d = decode_options(o.SerializeToString())
    assert d.routing == psrpc.ROUTING_MULTI and d.topics and d.topic_params.names == ("region",)
    (tmp_path / "use_options.py").write_text(
        "from psrpc import options_pb2\n\n\n"
        "def routing(o: options_pb2.Options) -> options_pb2.Routing:\n"
        "    return o.type\n\n\n"
        "x: int = options_pb2.OPTIONS_FIELD_NUMBER\n"
        "o = options_pb2.Options(topic_params={'names': ['a']}, type=options_pb2.AFFINITY)\n")
    assert mypy(str(tmp_path), "use_options.py")["use_options.py"] == []


def test_options_pb2_is_protocs_output_of_the_shipped_proto(tmp_path):
    """The serialized descriptor inside psrpc/options_pb2.py is protoc's
    output for psrpc/proto/options.proto (they cannot drift apart)."""
    from google.protobuf import descriptor_pb2

    from psrpc import options_pb2
    from psrpc._protoc import _run_protoc

    out = tmp_path / "set.pb"
    inc = psrpc.proto_include()
    _run_protoc([f"-I{inc}", f"--descriptor_set_out={out}", "options.proto"])
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    shipped = descriptor_pb2.FileDescriptorProto()
    options_pb2.DESCRIPTOR.CopyToProto(shipped)
    for fields in [m.field for m in list(fds.file[0].message_type) + list(shipped.message_type)] \
            + [fds.file[0].extension, shipped.extension]:
        for f in fields:
            f.ClearField("json_name")
    assert fds.file[0].message_type == shipped.message_type
    assert fds.file[0].enum_type == shipped.enum_type
    assert fds.file[0].extension == shipped.extension
    assert (fds.file[0].name, fds.file[0].package) == (shipped.name, shipped.package)


def test_compile_only_your_own_proto():
    """compile_protos (and the conftest's psrpc_test_pb2) did not compile
    options.proto: the generated module uses psrpc.options_pb2."""
    from psrpc import options_pb2

    assert not os.path.exists(os.path.join(GEN_DIR, "options_pb2.py"))
    assert "options_pb2" not in sys.modules
    src = open(os.path.join(GEN_DIR, "psrpc_test_pb2.py")).read()
    assert "from psrpc import options_pb2" in src
    fanout = pb.DESCRIPTOR.services_by_name["PyTestService"].methods_by_name["Fanout"]
    assert fanout.GetOptions().Extensions[options_pb2.options].type == options_pb2.MULTI


def test_protoc_plugin(tmp_path):
    """protoc-gen-psrpc-python writes the same module as python -m
    psrpc.codegen, and an options_pb2 shim for protoc's own output."""
    import grpc_tools

    plugin = os.path.join(BIN, "protoc-gen-psrpc-python")
    assert os.access(plugin, os.X_OK)
    wk = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    d = os.path.dirname(EXAMPLE_PROTO)
    p = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{d}", f"-I{psrpc.proto_include()}",
         f"-I{wk}", f"--plugin=protoc-gen-psrpc-python={plugin}", f"--python_out={tmp_path}",
         f"--psrpc-python_out={tmp_path}", "greeter.proto"],
        capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(tmp_path)) == ["greeter_pb2.py", "greeter_psrpc.py",
                                            "options_pb2.py", "options_pb2.pyi"]
    cli = tmp_path / "cli"
    psrpc.codegen.generate([EXAMPLE_PROTO], str(cli))
    assert (tmp_path / "greeter_psrpc.py").read_text() == (cli / "greeter_psrpc.py").read_text()
    # protoc's own greeter_pb2 ("import options_pb2") loads through the shim.
    check = ("import greeter_pb2, greeter_psrpc, options_pb2, psrpc.options_pb2 as o\n"
             "assert options_pb2.Options is o.Options\n"
             "print(greeter_psrpc.GREETER_SERVICE.methods['HelloAll'].multi)\n")
    p = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "True", p.stderr


@pytest.mark.parametrize("aio", [False, True], ids=["blocking", "asyncio"])
def test_typed_example_runs(url, aio):
    if url.startswith("local://"):
        url = "local://"
    env = dict(os.environ)
    args = [sys.executable, EXAMPLE, "--bus", url] + (["--aio"] if aio else [])
    p = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    want = [x.format(who="async" if aio else "server-1", near="async" if aio else "server-1")
            for x in DEMO]
    assert p.stdout.splitlines() == want


@pytest.mark.parametrize("aio", [False, True], ids=["blocking", "asyncio"])
@pytest.mark.parametrize("transport", [t for t in _selected if t != "local"])
def test_typed_example_serves_until_sigterm(gen, transport, aio):
    url = TRANSPORTS[transport]
    env = dict(os.environ, PYTHONPATH=gen)
    srv = subprocess.Popen([sys.executable, EXAMPLE, "--bus", url] + (["--aio"] if aio else [])
                           + ["serve"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=env)
    try:
        assert srv.stdout.readline().strip() == "ready", srv.stderr.read()
        p = subprocess.run([sys.executable, EXAMPLE, "--bus", url, "hello", "Eve"],
                           capture_output=True, text=True, timeout=60, env=env)
        assert p.returncode == 0 and p.stdout.strip() == "Hello, Eve!", p.stderr
        srv.send_signal(signal.SIGTERM)
        assert srv.wait(30) == 0, srv.stderr.read()
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()


def test_servicer_registers_only_what_it_overrides(buses, gen):
    sys.path.insert(0, gen)
    try:
        import greeter_pb2 as gpb
        import greeter_psrpc as grpc_mod
    finally:
        sys.path.remove(gen)

    class OnlyHello(grpc_mod.GreeterServicer):
        def SayHello(self, request, context):
            return gpb.HelloReply(message="hi " + request.name)

    svc = psrpc.Service(f"PyGreeter_{os.getpid()}_{id(gen)}",
                        grpc_mod.GREETER_SERVICE.methods.values())
    bus = buses()
    # a fresh wire name per test (shared brokers): same code path, other service
    orig = grpc_mod.GREETER_SERVICE
    grpc_mod.GREETER_SERVICE = svc
    try:
        server = grpc_mod.GreeterServer(bus, OnlyHello())
        client = grpc_mod.GreeterClient(buses(), timeout=2)
    finally:
        grpc_mod.GREETER_SERVICE = orig
    assert client.SayHello(gpb.HelloRequest(name="x")).message == "hi x"
    with pytest.raises(psrpc.Unavailable):
        client.HelloNearest(gpb.HelloRequest(name="x"), timeout=1)
    server.close()


ODD_PROTO = """
syntax = "proto3";
package odd.v1;
import "options.proto";
import "google/protobuf/empty.proto";
import "google/protobuf/wrappers.proto";

service Odd {
  rpc close(google.protobuf.Empty) returns (google.protobuf.StringValue);
  rpc import(Outer.Inner) returns (Outer.Inner);
  rpc id(google.protobuf.Empty) returns (google.protobuf.Empty) {
    option (psrpc.options).type = MULTI;
  }
}
service Other {
  rpc Ping(google.protobuf.Empty) returns (google.protobuf.Empty);
}
message Outer { message Inner { int32 v = 1; } }
"""

ODD_USE = """
from __future__ import annotations
import psrpc
from google.protobuf import empty_pb2, wrappers_pb2
import odd_pb2, odd_psrpc


class Impl(odd_psrpc.OddServicer):
    def close_(self, request: empty_pb2.Empty, context: psrpc.Context) -> wrappers_pb2.StringValue:
        return wrappers_pb2.StringValue(value="closed")

    def import_(self, request: odd_pb2.Outer.Inner,
                context: psrpc.Context) -> odd_pb2.Outer.Inner:
        return odd_pb2.Outer.Inner(v=request.v + 1)

    def id_(self, request: empty_pb2.Empty, context: psrpc.Context) -> empty_pb2.Empty:
        return empty_pb2.Empty()


def main(url: str) -> None:
    with psrpc.Bus(url, wait_ready=10) as bus:
        odd_psrpc.OddServer(bus, Impl())
        client = odd_psrpc.OddClient(bus, timeout=5)
        assert client.close_(empty_pb2.Empty()).value == "closed"
        assert client.import_(odd_pb2.Outer.Inner(v=1)).v == 2
        assert len(client.id_(empty_pb2.Empty(), timeout=0.5).results()) == 1
        other = odd_psrpc.OtherClient(bus, timeout=1)
        try:
            other.Ping(empty_pb2.Empty())
        except psrpc.Unavailable:
            print("ok")
        client.close()


if __name__ == "__main__":
    import sys
    main(sys.argv[1])
"""


def test_codegen_odd_names_imports_and_services(tmp_path, url):
    """RPC names that are keywords or members of the generated classes get a
    trailing "_" (the wire name stays), messages of imported files and nested
    messages are referenced through their modules, several services per file."""
    (tmp_path / "odd.proto").write_text(ODD_PROTO)
    psrpc.codegen.generate([str(tmp_path / "odd.proto")], str(tmp_path))
    (tmp_path / "use_odd.py").write_text(ODD_USE)
    assert mypy(str(tmp_path), "use_odd.py")["use_odd.py"] == []
    src = (tmp_path / "odd_psrpc.py").read_text()
    assert 'self.client.call(\n            "close", request' in src
    if url.startswith("local://"):
        url = "local://"
    p = subprocess.run([sys.executable, "use_odd.py", url], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


def test_package_itself_is_mypy_strict_clean():
    """The package ships py.typed: its own annotations hold under --strict."""
    src = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "src", "psrpc"))
    with tempfile.TemporaryDirectory() as d:
        p = subprocess.run([os.path.join(BIN, "mypy"), "--strict", "--cache-dir",
                            os.path.join(d, "cache"), src], capture_output=True, text=True,
                           timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
