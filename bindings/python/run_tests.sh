#!/usr/bin/env bash
# run_tests.sh — the Python binding's test suite, from scratch:
#   1. creates a virtualenv (build/venv, or $PSRPC_PY_VENV),
#   2. pip installs the binding from this directory (scikit-build-core + CMake
#      + SWIG from PyPI, libpsrpc compiled from this source tree and linked in
#      statically) and the test tools (pytest, pytest-timeout, protobuf,
#      grpcio-tools for protoc, mypy + types-protobuf for the typed-stub tests,
#      opentelemetry-api + -sdk for the psrpc.otel tests),
#   3. runs pytest over local://, Redis and NATS.
# Brokers: PSRPC_TEST_REDIS_URL / PSRPC_TEST_NATS_URL (defaults
# redis://127.0.0.1:6379, nats://127.0.0.1:4222); a broker that does not answer
# FAILS its tests (start them with scripts/brokers.sh start). Extra arguments
# go to pytest; PSRPC_PY_INSTALL_ONLY=1 stops after the install. Needs the Debian packages of scripts/setup-deps.sh and a
# Python >= 3.9 (python3, or $PYTHON).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv=${PSRPC_PY_VENV:-$here/build/venv}
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
    rm -rf "$venv"
    if ! "$python" -m venv "$venv" 2>/dev/null; then
        # Debian's python3 ships venv separately.
        if command -v apt-get >/dev/null && [ "$(id -u)" -eq 0 ]; then
            pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q "python$pyver-venv" python3-venv </dev/null
        fi
        rm -rf "$venv"
        "$python" -m venv "$venv"
    fi
fi

pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q pytest pytest-timeout protobuf grpcio-tools mypy types-protobuf \
    opentelemetry-api opentelemetry-sdk
# Always rebuild from the current sources (the CMake build dir is reused).
"${pip[@]}" install -q --force-reinstall --no-deps "$here"
# Its dependencies (protobuf) came with the test tools above; pip check fails
# if a requirement of the installed binding is missing or the wrong version
# (a second `pip install "$here"` would build the extension again).
"${pip[@]}" check

[ "${PSRPC_PY_INSTALL_ONLY:-0}" = 1 ] && exit 0
cd "$here"
exec "$venv/bin/python" -m pytest tests -p no:cacheprovider --timeout=300 -ra "$@"
