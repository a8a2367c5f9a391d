#!/usr/bin/env bash
# setup-deps.sh — installs the Debian packages libpsrpc needs to build, test
# and demo. Idempotent: when every package is already installed it changes
# nothing and does not touch the network. Uses sudo only when not root.
set -euo pipefail

packages=(
    build-essential cmake pkg-config
    libuv1-dev libhiredis-dev libnats-dev libprotobuf-c-dev protobuf-c-compiler
    zlib1g-dev libssl-dev
    redis-server nats-server
    clang clang-format valgrind
    libclang-rt-14-dev  # libFuzzer and the sanitizer runtimes (tests/fuzz, -DPSRPC_FUZZ=ON)
    protobuf-compiler libprotobuf-dev  # protoc: Rust psrpc-build, Node gen-pb.sh, the interop Go code
)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
# Node.js for the Node binding (bindings/node/run_tests.sh): Debian's nodejs
# and npm, unless a node with its npm is already there (NodeSource's nodejs
# bundles npm and conflicts with Debian's npm package).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    for p in nodejs npm; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
fi
if [ ${#missing[@]} -eq 0 ]; then
    echo "setup-deps: all ${#packages[@]} packages already installed"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null; then
    sudo=(sudo)
else
    echo "setup-deps: need root or sudo to install: ${missing[*]}" >&2
    exit 1
fi

echo "setup-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    "${missing[@]}" </dev/null
