"""The ``psrpc`` command (psrpc.cli): every subcommand over local:// (in
process: local:// buses only meet inside one process), Redis and NATS against
a Python server, and against Go livekit/psrpc v0.8.2 on both brokers: call /
listen / stream / sniff / bench against the Go conformance server, publish to a
Go subscriber, a Go client calling serve --mock. Bad input must give
one line on stderr and a non-zero exit status, never a traceback."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import pytest

import psrpc
from psrpc import cli

from conftest import TRANSPORTS, _selected

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
CONFORMANCE_PROTO = os.path.join(ROOT, "tests", "interop", "conformance.proto")
BROKERS = [t for t in ("redis", "nats") if t in _selected]


def make_proto(tmp_path, tag: str = "") -> tuple:
    """A copy of conformance.proto with a unique package and service names
    (brokers are shared, and the default descriptor pool refuses a message
    name defined twice). Returns (path, service wire name, updates name, module)."""
    # letters only: the wire name (CamelCase of the proto name) is the same
    uid = "".join(chr(ord("a") + int(c, 16)) for c in uuid.uuid4().hex[:10])
    text = open(CONFORMANCE_PROTO).read()
    text = text.replace("package psrpc.conformance;", f"package cli{tag}_{uid};")
    text = text.replace("service ConformanceUpdates {", f"service CliUpd{uid} {{")
    text = text.replace("service Conformance {", f"service Cli{uid} {{")
    path = os.path.join(str(tmp_path), f"cli{tag}_{uid}.proto")
    with open(path, "w") as f:
        f.write(text)
    mod = psrpc.load_proto(path)
    return path, f"Cli{uid}", f"CliUpd{uid}", mod


def run_cli(*args, input=None, timeout=30, env=None):
    e = dict(os.environ)
    e.pop("PSRPC_BUS", None)
    if env:
        e.update(env)
    p = subprocess.run([sys.executable, "-m", "psrpc", *args], input=input, capture_output=True,
                       text=True, timeout=timeout, env=e)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def spawn_cli(*args, stdin=None):
    e = dict(os.environ)
    e.pop("PSRPC_BUS", None)
    return subprocess.Popen([sys.executable, "-m", "psrpc", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=stdin, text=True, env=e)


def wait_stderr_line(p, want: str, timeout: float = 15.0) -> None:
    """Reads p's stderr until a line equals want (its readiness line)."""
    box = []

    def rd():
        for ln in p.stderr:
            box.append(ln)
            if ln.strip() == want:
                return

    t = threading.Thread(target=rd, daemon=True)
    t.start()
    t.join(timeout)
    assert box and box[-1].strip() == want, f"no {want!r} line: {''.join(box)}"


def one_error_line(p, rc: int, *needles: str) -> str:
    assert p.returncode == rc, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("psrpc: error: "), lines[0]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def echo(pb):
    def handler(req, ctx):
        if req.fail_code:
            raise psrpc.PsrpcError(req.fail_message, code=req.fail_code)
        return pb.EchoResponse(payload=req.payload, server_id=ctx.server_id, tag=req.tag,
                               metadata=dict(ctx.metadata),
                               topic=ctx.topics[0] if ctx.topics else "")
    return handler


def chat(stream):
    for m in stream:
        if m.close_code:
            stream.close(psrpc.PsrpcError(m.close_message, code=m.close_code))
            return
        stream.send(type(m)(seq=m.seq + 1, payload=m.payload))


def serve_python(bus, mod, svc_name, server_id, affinity=1.0):
    sd = mod.DESCRIPTOR.services_by_name[svc_name]
    srv = psrpc.Server(bus, sd, server_id=server_id)
    for name in ("Echo", "Fanout"):
        srv.register(name, echo(mod))
    srv.register("Claim", echo(mod), affinity=lambda req, ctx: affinity)
    srv.register("RegionEcho", echo(mod), topics=["eu"])
    srv.register("Chat", chat)
    srv.wait_ready(10)
    return srv


# ------------------------------------------------------------ no broker

def test_wire_schema_matches_impl_wire():
    """The sniffer's embedded envelope schema is impl/wire/internal.proto."""
    from google.protobuf import descriptor_pb2

    from psrpc import _wire_desc
    from psrpc._protoc import _run_protoc

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "w.pb")
        _run_protoc([f"-I{os.path.join(ROOT, 'impl', 'wire')}", f"--descriptor_set_out={out}",
                     "internal.proto"])
        fds = descriptor_pb2.FileDescriptorSet.FromString(open(out, "rb").read())
    f = fds.file[0]
    f.name = _wire_desc.FILE_NAME
    assert f == descriptor_pb2.FileDescriptorProto.FromString(_wire_desc.SERIALIZED)


def test_list_shows_methods_and_options(tmp_path):
    path, svc, upd, _ = make_proto(tmp_path)
    p = run_cli("list", "--proto", path)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert f"{svc}.Echo(" in out and "[queue]" in out
    assert re.search(rf"{svc}\.Claim\(.*\[affinity\]", out)
    assert re.search(rf"{svc}\.Fanout\(.*\[multi\]", out)
    assert re.search(rf"{svc}\.RegionFanout\(.*\[multi topics=topic\]", out)
    assert re.search(rf"{svc}\.Chat\(.*\[queue stream\]", out)
    assert re.search(rf"{upd}\.Updates\(.*\[multi subscription\]", out)
    p = run_cli("list", "--json", "--proto", path)
    rows = [json.loads(ln) for ln in p.stdout.splitlines()]
    meth = {m["name"]: m for m in rows[0]["methods"]}
    assert meth["Chat"]["kind"] == "stream" and meth["Claim"]["routing"] == "affinity"


def test_bad_input_is_one_line(tmp_path):
    path, svc, _, _ = make_proto(tmp_path)
    bus = ["--bus", "redis://127.0.0.1:1"]  # never reached: input is checked first
    p = run_cli("call", "--proto", path, *bus, f"{svc}.Ech", "{}")
    one_error_line(p, 2, "unknown method", f"{svc}.Echo")
    p = run_cli("call", "--proto", path, *bus, f"{svc}.Echo", '{"nope": 1}')
    one_error_line(p, 2, "does not match", "EchoRequest", "nope")
    p = run_cli("call", "--proto", path, *bus, f"{svc}.Echo", '{"tag": ')
    one_error_line(p, 2, "does not match")
    p = run_cli("call", "--proto", path, *bus, f"{svc}.Echo", '{"delay_ms": "x"}')
    one_error_line(p, 2, "does not match")
    p = run_cli("call", "--proto", path, *bus, f"{svc}.Chat", "{}")
    one_error_line(p, 2, "stream method", "psrpc stream")
    p = run_cli("call", "--proto", path, *bus, f"{svc}.RegionEcho", "{}")
    one_error_line(p, 2, "--topic")
    # an ambiguous short name lists the fully qualified candidates
    path2, _, _, _ = make_proto(tmp_path, "b")
    text = open(path2).read()
    pkg2 = re.search(r"package (\w+);", text).group(1)
    text = re.sub(r"service Cli\w+ \{", f"service {svc} {{", text, count=1)
    with open(path2, "w") as f:
        f.write(text)
    p = run_cli("call", "--proto", path, "--proto", path2, *bus, f"{svc}.Echo", "{}")
    pkg1 = re.search(r"package (\w+);", open(path).read()).group(1)
    one_error_line(p, 2, "ambiguous", f"{pkg1}.{svc}.Echo", f"{pkg2}.{svc}.Echo")
    p = run_cli("call", "--proto", path, "--proto", path2, *bus, f"{pkg2}.{svc}.Echo", "{",)
    one_error_line(p, 2, "does not match")  # the qualified name resolved
    # a proto that does not compile
    bad = tmp_path / "bad.proto"
    bad.write_text('syntax = "proto3";\nmessage X { int32 a = 1 }\n')
    p = run_cli("list", "--proto", str(bad))
    one_error_line(p, 2, "cannot compile", "bad.proto:2")
    p = run_cli("list", "--proto", str(tmp_path / "missing.proto"))
    one_error_line(p, 2, "no such file")
    # sniff taps a broker: a local:// bus lives inside one process
    p = run_cli("sniff", "--bus", "local://x", "--for", "1")
    one_error_line(p, 2, "redis:// or nats://", "local://")


def test_unreachable_bus_fails_fast(tmp_path):
    path, svc, _, _ = make_proto(tmp_path)
    for url in ("redis://127.0.0.1:1", "nats://127.0.0.1:1"):
        t0 = time.monotonic()
        p = run_cli("call", "--proto", path, "--bus", url, f"{svc}.Echo", "{}")
        one_error_line(p, cli.EXIT_CODES["unavailable"], "unavailable", "127.0.0.1:1")
        assert time.monotonic() - t0 < 4.0
        p = run_cli("sniff", "--bus", url, "--for", "1")
        one_error_line(p, cli.EXIT_CODES["unavailable"], "unavailable")
    p = run_cli("call", "--proto", path, "--bus", "bogus://x", f"{svc}.Echo", "{}")
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_exit_status_table():
    assert cli.EXIT_CODES["canceled"] == 10
    assert cli.EXIT_CODES["not_found"] == 15
    assert cli.EXIT_CODES["unavailable"] == 25
    assert cli.EXIT_CODES["upstream_client_error"] == 31
    assert cli.exit_status("my_own_code") == 1
    # the table follows the C library's statuses: 9 + |status|
    for code, rc in cli.EXIT_CODES.items():
        assert rc == 9 - psrpc.Status.from_code(code), code


# ------------------------------------------------------------ local:// (in process)

def run_main(capsys, *argv, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    rc = cli.main(list(argv))
    o = capsys.readouterr()
    assert "Traceback" not in o.err
    return rc, o.out, o.err


# local:// needs no broker: always runs, whatever PSRPC_PY_TRANSPORTS selects.
def test_local_in_process(tmp_path, capsys, monkeypatch):
    path, svc, upd, mod = make_proto(tmp_path)
    url = f"local://cli-{uuid.uuid4().hex[:8]}"
    P = ["--proto", path, "--bus", url, "--timeout", "3"]
    with psrpc.Bus(url) as bus:
        srv = serve_python(bus, mod, svc, "PY1", affinity=0.7)

        def add(req, ctx):
            raise psrpc.PsrpcError("over quota", code="resource_exhausted",
                                   details=[mod.EchoResponse(tag="detail")])

        srv.register("Add", add)
        rc, out, err = run_main(capsys, "call", *P, f"{svc}.Add", '{"increment": 1}')
        assert rc == 18 and out == ""
        line, = err.strip().splitlines()
        assert line.startswith("psrpc: error: resource_exhausted: over quota (server PY1) details=")
        assert json.loads(line.split("details=", 1)[1]) == [
            {"@type": f"type.googleapis.com/{mod.EchoResponse.DESCRIPTOR.full_name}",
             "tag": "detail"}]
        rc, out, err = run_main(capsys, "call", *P, f"{svc}.Echo", '{"tag": "t"}', "--meta", "k=v")
        assert rc == 0, err
        assert json.loads(out) == {"server_id": "PY1", "tag": "t", "metadata": {"k": "v"}}
        rc, out, err = run_main(capsys, "call", *P, f"{svc}.Fanout", '{"tag": "m"}')
        assert rc == 0, err
        assert [json.loads(ln) for ln in out.splitlines()] == [
            {"server_id": "PY1", "response": {"server_id": "PY1", "tag": "m"}}]
        rc, out, err = run_main(capsys, "call", *P, f"{svc}.Echo",
                                '{"fail_code": "not_found", "fail_message": "gone"}')
        assert rc == 15 and out == ""
        assert err.strip() == "psrpc: error: not_found: gone (server PY1)"
        rc, out, err = run_main(capsys, "call", *P, f"{svc}.Claim", "{}", "--min-affinity", "0.5")
        assert rc == 0 and json.loads(out)["server_id"] == "PY1", err
        rc, out, err = run_main(capsys, "call", *P, f"{svc}.Claim", "{}", "--min-affinity", "0.9")
        assert rc == cli.EXIT_CODES["unavailable"], (rc, err)
        rc, out, err = run_main(capsys, "call", *P, "--topic", "eu", f"{svc}.RegionEcho", "{}")
        assert rc == 0 and json.loads(out)["topic"] == "eu", err
        # request from stdin
        rc, out, err = run_main(capsys, "call", *P, f"{svc}.Echo", stdin='{"tag": "in"}',
                                monkeypatch=monkeypatch)
        assert json.loads(out)["tag"] == "in", err
        # stream: JSON lines in, replies out, the server's close code as exit status
        rc, out, err = run_main(capsys, "stream", *P, "--batch", "--linger", "0.2", f"{svc}.Chat",
                                stdin='{"seq": 1}\n{"seq": 4, "payload": "YQ=="}\n',
                                monkeypatch=monkeypatch)
        assert rc == 0, err
        assert [json.loads(ln) for ln in out.splitlines()] == [{"seq": 2},
                                                                 {"seq": 5, "payload": "YQ=="}]
        rc, out, err = run_main(capsys, "stream", *P, "--batch", f"{svc}.Chat",
                                stdin='{"close_code": "aborted", "close_message": "bye"}\n',
                                monkeypatch=monkeypatch)
        assert rc == cli.EXIT_CODES["aborted"] and "aborted: bye" in err
        # listen + publish
        box = {}

        def listen():
            box["r"] = run_main(capsys, "listen", *P, f"{upd}.Updates", "--count", "2", "--for", "10")

        t = threading.Thread(target=listen)
        t.start()
        deadline = time.monotonic() + 10
        while t.is_alive() and time.monotonic() < deadline:
            assert cli.main(["publish", *P, f"{upd}.Updates", '{"seq": 7}']) == 0
            time.sleep(0.1)
        t.join(5)
        rc, out, err = box["r"]
        assert rc == 0
        # capsys is shared: the listener's lines are in its capture
        assert [json.loads(ln) for ln in out.splitlines()][:2] == [{"seq": 7}, {"seq": 7}]
        # bench
        rc, out, err = run_main(capsys, "bench", *P, f"{svc}.Echo", "{}", "--inflight", "2",
                                "--duration", "0.3", "--json")
        res = json.loads(out)
        assert rc == 0 and res["ok"] > 10 and res["errors"] == {}
        assert 0 < res["p50_ms"] <= res["p90_ms"] <= res["p99_ms"]
        rc, out, err = run_main(capsys, "bench", *P, f"{svc}.Echo",
                                '{"fail_code": "aborted", "fail_message": "x"}',
                                "--duration", "0.2", "--json")
        res = json.loads(out)
        assert rc == cli.EXIT_CODES["aborted"] and res["ok"] == 0, err
        assert list(res["errors"]) == ["aborted"] and res["errors"]["aborted"] > 5


def test_serve_mock_local(tmp_path, monkeypatch):
    """serve --mock over local:// (in process: the command serves on the main
    thread, a Python client calls it from another, then SIGINT ends it)."""
    path, svc, _, mod = make_proto(tmp_path)
    url = f"local://mock-{uuid.uuid4().hex[:8]}"
    serving = threading.Event()

    class Err(io.StringIO):
        def write(self, s):
            if s.startswith("serving "):
                serving.set()
            return super().write(s)

    err = Err()
    monkeypatch.setattr(sys, "stderr", err)
    box = {}

    def client():
        try:
            assert serving.wait(10)
            with psrpc.Bus(url) as bus:
                c = psrpc.Client(bus, mod.DESCRIPTOR.services_by_name[svc], timeout=3)
                box["add"] = c.call("Add", mod.AddRequest(increment=1))
                box["region"] = c.call("RegionEcho", mod.EchoRequest(), topics=["eu"])
                with c.open_stream("Chat") as st:
                    st.send(mod.ChatMessage(seq=1))
                    box["chat"] = st.recv(timeout=3)
        except BaseException as e:  # reported by the main thread
            box["error"] = e
        finally:
            os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=client)
    t.start()
    rc = cli.main(["serve", "--mock", "--proto", path, "--bus", url, svc, "--topic", "eu",
                   "--response", 'Add={"value": 7}', "--response", 'Chat={"seq": 3}'])
    t.join(10)
    assert "error" not in box, box.get("error")
    assert rc == 0, err.getvalue()
    assert box == {"add": mod.AddResult(value=7), "region": mod.EchoResponse(),
                   "chat": mod.ChatMessage(seq=3)}
    assert err.getvalue() == f"serving {svc} on {url}\n"


# ------------------------------------------------------------ Redis / NATS, Python server

@pytest.fixture(params=BROKERS)
def broker(request):
    return TRANSPORTS[request.param]


def test_commands_over_broker(tmp_path, broker):
    path, svc, upd, mod = make_proto(tmp_path)
    P = ["--proto", path, "--bus", broker, "--timeout", "3"]
    with psrpc.Bus(broker) as bus:
        bus.wait_ready(10)
        srv = serve_python(bus, mod, svc, "PYB")
        sniff = spawn_cli("sniff", *P, svc, "--json", "--ready", "--count", "4", "--for", "20")
        wait_stderr_line(sniff, "sniffing")
        p = run_cli("call", *P, f"{svc}.Echo", '{"tag": "x", "payload": "AAE="}', "--meta", "a=b")
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout) == {"server_id": "PYB", "tag": "x", "payload": "AAE=",
                                        "metadata": {"a": "b"}}
        out, err = sniff.communicate(timeout=20)
        assert sniff.returncode == 0, err
        evs = [json.loads(ln) for ln in out.splitlines()]
        assert [e["kind"] for e in evs] == ["request", "claim request", "claim response",
                                            "response"]
        assert all(e["method"] == "Echo" and e["service"] == svc for e in evs), out
        assert evs[0]["payload"] == {"tag": "x", "payload": "AAE="}
        assert evs[0]["metadata"] == {"a": "b"}
        assert evs[1]["server_id"] == "PYB" and evs[1]["affinity"] == 1.0
        assert evs[3]["payload"]["server_id"] == "PYB"
        assert len({e["request_id"] for e in evs}) == 1

        p = run_cli("call", *P, f"{svc}.Fanout", "{}")
        assert [json.loads(ln)["server_id"] for ln in p.stdout.splitlines()] == ["PYB"]
        p = run_cli("call", *P, f"{svc}.Echo", '{"fail_code": "permission_denied"}')
        one_error_line(p, 17, "permission_denied")
        p = run_cli("stream", *P, f"{svc}.Chat", "--linger", "0.3", input='{"seq": 1}\n')
        assert p.returncode == 0 and json.loads(p.stdout) == {"seq": 2}, p.stderr

        # listen (a subprocess) to what this process publishes
        lis = spawn_cli("listen", *P, f"{upd}.Updates", "--ready", "--count", "1", "--for", "20")
        wait_stderr_line(lis, "listening")
        srv_u = psrpc.Server(bus, mod.DESCRIPTOR.services_by_name[upd])
        srv_u.publish("Updates", mod.Update(seq=3, nonce="n"))
        out, err = lis.communicate(timeout=20)
        assert lis.returncode == 0 and json.loads(out) == {"seq": 3, "nonce": "n"}, err
        # publish (a subprocess) to this process's subscription
        client = psrpc.Client(bus, mod.DESCRIPTOR.services_by_name[upd])
        with client.subscribe("Updates") as sub:
            p = run_cli("publish", *P, f"{upd}.Updates", '{"seq": 9}')
            assert p.returncode == 0, p.stderr
            assert sub.get(timeout=10).seq == 9
        # a queue listener
        lis = spawn_cli("listen", *P, f"{upd}.Work", "--queue", "--ready", "--count", "1",
                        "--for", "20")
        wait_stderr_line(lis, "listening")
        srv_u.publish("Work", mod.Update(seq=5))
        out, err = lis.communicate(timeout=20)
        assert json.loads(out) == {"seq": 5}, err

        p = run_cli("bench", *P, f"{svc}.Echo", "{}", "--inflight", "2", "--duration", "0.5",
                    "--json")
        res = json.loads(p.stdout)
        assert p.returncode == 0 and res["ok"] > 10 and res["errors"] == {}, p.stderr
        srv.close()


def test_serve_mock_over_broker(tmp_path, broker):
    path, svc, _, mod = make_proto(tmp_path)
    P = ["--proto", path, "--bus", broker]
    mock = spawn_cli("serve", "--mock", *P, svc, "--server-id", "MOCK", "--topic", "eu",
                     "--response", 'Add={"value": 42}', "--response", 'Echo={"tag": "canned"}')
    try:
        wait_stderr_line(mock, f"serving {svc} on {broker}")
        sd = mod.DESCRIPTOR.services_by_name[svc]
        with psrpc.Bus(broker) as bus:
            c = psrpc.Client(bus, sd, timeout=5)
            assert c.call("Add", mod.AddRequest(increment=1)).value == 42
            assert c.call("Echo", mod.EchoRequest(tag="x")).tag == "canned"
            assert c.call("Claim", mod.EchoRequest()) == mod.EchoResponse()
            assert c.call("RegionEcho", mod.EchoRequest(), topics=["eu"]) == mod.EchoResponse()
            assert [r.server_id for r in c.multi_call("Fanout", mod.EchoRequest())] == ["MOCK"]
            with c.open_stream("Chat") as st:
                st.send(mod.ChatMessage(seq=1))
                assert st.recv(timeout=5) == mod.ChatMessage()
        # and the command's own call against it
        p = run_cli("call", *P, f"{svc}.Add", '{"increment": 1}')
        assert json.loads(p.stdout) == {"value": 42}
    finally:
        mock.send_signal(signal.SIGINT)
        mock.communicate(timeout=20)
    assert mock.returncode == 0
    p = run_cli("serve", "--mock", *P, svc, "--response", 'Nope={}')
    one_error_line(p, 2, "no method 'Nope'")
    p = run_cli("serve", "--mock", *P, svc, "--response", 'Add={"valu": 1}')
    one_error_line(p, 2, "does not match")


# ------------------------------------------------------------ Go livekit/psrpc v0.8.2

@pytest.fixture(scope="session")
def go_bins(tmp_path_factory):
    """The Go conformance server and probe (a Go client), built once."""
    go = shutil.which("go") or ("/usr/local/go/bin/go" if os.path.exists("/usr/local/go/bin/go")
                                else None)
    if go is None:
        pytest.fail("go not found: run tests/interop/setup.sh")
    out = str(tmp_path_factory.mktemp("go"))
    subprocess.run([go, "build", "-o", out + "/", "./cmd/conformance-server",
                    "./cmd/conformance-probe"],
                   cwd=os.path.join(ROOT, "tests", "interop", "go"), check=True, timeout=600)
    return {"server": os.environ.get("PSRPC_GO_CONFORMANCE_SERVER")
            or os.path.join(out, "conformance-server"),
            "probe": os.path.join(out, "conformance-probe")}


@pytest.fixture(scope="session")
def go_server_bin(go_bins):
    return go_bins["server"]


@pytest.fixture
def go_server(go_server_bin, broker):
    sid = f"GO_{uuid.uuid4().hex[:8]}"
    p = subprocess.Popen([go_server_bin, "--bus", broker, "--server-id", sid, "--topic", sid,
                          "--compress-threshold", "200"], stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line.strip() == "ready", line
        yield sid
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=20)


def test_against_go_server(broker, go_server):
    sid = go_server
    P = ["--proto", CONFORMANCE_PROTO, "--bus", broker, "--timeout", "5"]
    # call (topic method: only our Go server serves this topic)
    p = run_cli("call", *P, "--topic", sid, "Conformance.RegionEcho",
                '{"tag": "go", "payload": "AQI="}', "--meta", "m=1")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"server_id": sid, "tag": "go", "payload": "AQI=",
                                    "metadata": {"m": "1"}, "topic": sid}
    p = run_cli("call", *P, "--topic", sid, "psrpc.conformance.Conformance.RegionFanout", "{}")
    assert [json.loads(ln) for ln in p.stdout.splitlines()] == [
        {"server_id": sid, "response": {"server_id": sid, "topic": sid}}]
    p = run_cli("call", *P, "--topic", sid, "Conformance.RegionEcho",
                '{"fail_code": "resource_exhausted", "fail_message": "full"}')
    assert one_error_line(p, 18) == f"psrpc: error: resource_exhausted: full (server {sid})"

    # sniff what Go sends: a gzip-compressed response, an error response
    big = b"\x07" * 3000
    sniff = spawn_cli("sniff", *P, "Conformance", "--json", "--ready", "--count", "8",
                      "--for", "20")
    wait_stderr_line(sniff, "sniffing")
    p = run_cli("call", *P, "--topic", sid, "Conformance.RegionEcho", json.dumps(
        {"payload": b64(big), "tag": "big"}))
    assert p.returncode == 0 and json.loads(p.stdout)["payload"] == b64(big), p.stderr
    p = run_cli("call", *P, "--topic", sid, "Conformance.RegionEcho",
                '{"fail_code": "not_found", "fail_message": "nope"}')
    assert p.returncode == 15
    out, err = sniff.communicate(timeout=20)
    evs = [json.loads(ln) for ln in out.splitlines()]
    assert [e["kind"] for e in evs] == ["request", "claim request", "claim response",
                                        "response"] * 2, out
    assert all(e["method"] == "RegionEcho" for e in evs)
    assert evs[0]["topics"] == [sid] and evs[0]["payload"]["tag"] == "big"
    assert evs[1]["server_id"] == sid
    resp = evs[3]
    assert resp["server_id"] == sid and resp["compression"] == "gzip"
    assert resp["payload"] == {"payload": b64(big), "server_id": sid, "tag": "big",
                               "topic": sid}
    assert resp["size"] < 1000  # 3000 bytes of payload, compressed
    assert evs[7]["error"] == {"code": "not_found", "message": "nope"}

    # listen: the Go server publishes on ConformanceUpdates.RegionUpdates under our topic
    lis = spawn_cli("listen", *P, "--topic", sid, "ConformanceUpdates.RegionUpdates", "--ready",
                    "--count", "2", "--for", "20")
    wait_stderr_line(lis, "listening")
    p = run_cli("call", *P, "--topic", sid, "Conformance.RegionEcho", "{}")  # Go is up
    p = run_cli("call", *P, "Conformance.Publish", json.dumps(
        {"method": "RegionUpdates", "topic": [sid], "count": 2, "payload": "eg=="}))
    assert p.returncode == 0 and json.loads(p.stdout) == {"published": 2}, p.stderr
    out, err = lis.communicate(timeout=20)
    ups = [json.loads(ln) for ln in out.splitlines()]
    # Publish is a topic-less queue method: on a shared broker another
    # conformance server may be the one publishing, so the server id is not
    # asserted; the topic is ours.
    assert [(u["seq"], u["payload"]) for u in ups] == [(1, "eg=="), (2, "eg==")], err
    assert all(u["server_id"] and u["nonce"] for u in ups)

    # stream and bench against Go (topic-less methods may reach another Go
    # server on a shared broker: only the shape is asserted)
    sniff = spawn_cli("sniff", *P, "Conformance", "--json", "--ready", "--for", "6")
    wait_stderr_line(sniff, "sniffing")
    p = run_cli("stream", *P, "Conformance.Chat", "--linger", "0.3",
                input='{"seq": 1}\n{"seq": 10, "payload": "YQ=="}\n')
    assert p.returncode == 0, p.stderr
    # Go's conformance server sends each answer from its own goroutine: the two
    # answers may arrive in either order.
    got = sorted((json.loads(ln) for ln in p.stdout.splitlines()), key=lambda m: m["seq"])
    assert got == [{"seq": 2}, {"seq": 11, "payload": "YQ=="}], p.stdout
    out, err = sniff.communicate(timeout=20)
    evs = [json.loads(ln) for ln in out.splitlines()]
    evs = [e for e in evs if e.get("method") == "Chat" and e["kind"].startswith("stream")]
    sid_stream = evs[0]["stream_id"]
    assert evs[0]["kind"] == "stream open" and evs[0]["client_id"].startswith("CLI_"), out
    msgs = [e["payload"] for e in evs if e["kind"] == "stream message"
            and e["stream_id"] == sid_stream]
    assert sorted(msgs, key=lambda m: m["seq"]) == [
        {"seq": 1}, {"seq": 2}, {"seq": 10, "payload": "YQ=="}, {"seq": 11, "payload": "YQ=="}], out
    assert all(e["size"] > 20 for e in evs), out  # the whole envelope
    assert [e["kind"] for e in evs].count("stream ack") == 5  # the open and 4 messages
    assert evs[-1]["kind"] == "stream close"
    p = run_cli("bench", *P, "--topic", sid, "Conformance.RegionEcho", "{}", "--inflight", "2",
                "--duration", "0.5", "--json")
    res = json.loads(p.stdout)
    assert p.returncode == 0 and res["ok"] > 10 and res["errors"] == {}, p.stderr


def test_publish_to_go_subscriber(broker, go_bins):
    """`psrpc publish` received by a Go livekit/psrpc subscriber."""
    topic = f"T{uuid.uuid4().hex[:8]}"
    sub = subprocess.Popen([go_bins["probe"], "--bus", broker, "--mode", "subscribe",
                            "--method", "RegionUpdates", "--topic", topic, "--count", "2",
                            "--for", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        assert sub.stdout.readline().strip() == "ready", sub.stderr.read()
        P = ["--proto", CONFORMANCE_PROTO, "--bus", broker, "--topic", topic]
        for msg in ('{"seq": 3, "payload": "AQI="}', '{"seq": 4, "nonce": "n"}'):
            p = run_cli("publish", *P, "ConformanceUpdates.RegionUpdates", msg)
            assert p.returncode == 0 and p.stdout == "", p.stderr
        out, err = sub.communicate(timeout=20)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.communicate()
    assert sub.returncode == 0, err
    assert [json.loads(ln) for ln in out.splitlines()] == [{"seq": 3, "payload": "AQI="},
                                                            {"seq": 4, "nonce": "n"}]


def test_go_client_calls_serve_mock(broker, go_bins):
    """A Go livekit/psrpc client calls every method of `psrpc serve --mock`."""
    topic = f"T{uuid.uuid4().hex[:8]}"
    tag = uuid.uuid4().hex[:8]
    P = ["--proto", CONFORMANCE_PROTO, "--bus", broker]
    mock = spawn_cli("serve", "--mock", *P, "Conformance", "--server-id", "MOCK_" + tag,
                     "--topic", topic, "--response", f'Echo={{"tag": "{tag}"}}',
                     "--response", 'Add={"value": 42}',
                     "--response", f'RegionFanout={{"topic": "{topic}"}}',
                     "--response", 'Chat={"seq": 9}')
    try:
        wait_stderr_line(mock, f"serving Conformance on {broker}")
        p = subprocess.run([go_bins["probe"], "--bus", broker, "--mode", "call", "--topic", topic,
                            "--for", "20"], capture_output=True, text=True, timeout=30)
    finally:
        mock.send_signal(signal.SIGINT)
        mock.communicate(timeout=20)
    assert p.returncode == 0 and mock.returncode == 0, p.stderr
    got = {r.pop("method"): r for r in map(json.loads, p.stdout.splitlines())}
    assert got == {
        "Echo": {"response": {"tag": tag}},
        "Add": {"response": {"value": 42}},
        "Claim": {"response": {}},
        "Fanout": {"responses": [{"response": {}}]},
        "RegionEcho": {"response": {}},
        "RegionFanout": {"responses": [{"response": {"topic": topic}}]},
        "Publish": {"response": {}},
        "Chat": {"response": {"seq": 9}},
    }, p.stdout
