"""The examples run as programs: add_value.py alone, across processes, and with
the C example (build/examples/add_value, or $PSRPC_C_ADD_VALUE) when built."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import TRANSPORTS, _selected

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
ADD_VALUE = os.path.join(ROOT, "examples", "python", "add_value.py")
C_ADD_VALUE = os.environ.get("PSRPC_C_ADD_VALUE", os.path.join(ROOT, "build", "examples", "add_value"))
DEMO = ["AddValue(increment=1) -> value=1", "AddValue(increment=2) -> value=3",
        "AddValue(increment=3) -> value=6"]


def run(*args, timeout=60):
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr
    return p.stdout.split("\n")[:-1]


@pytest.mark.parametrize("transport", _selected)
def test_add_value_demo(transport):
    url = TRANSPORTS[transport] or "local://"
    assert run(sys.executable, ADD_VALUE, "--bus", url) == DEMO


def serve(cmd):
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    if line != "ready":
        p.kill()
        raise AssertionError(f"{cmd}: {line!r} {p.stderr.read()}")
    return p


def stop(p):
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0, p.stderr.read()


@pytest.mark.parametrize("transport", [t for t in _selected if t != "local"])
def test_add_value_across_processes_and_languages(transport):
    url = TRANSPORTS[transport]
    py = [sys.executable, ADD_VALUE, "--bus", url]
    have_c = os.access(C_ADD_VALUE, os.X_OK)
    c = [C_ADD_VALUE, "--bus", url]
    # Python server; Python (and C) clients
    srv = serve(py + ["serve"])
    try:
        assert run(*py, "call", "5") == ["5"]
        if have_c:
            assert run(*c, "call", "7") == ["12"]
    finally:
        stop(srv)
    if have_c:  # C server, Python client
        srv = serve(c + ["serve"])
        try:
            assert run(*py, "call", "4") == ["4"]
        finally:
            stop(srv)
    time.sleep(0.1)
