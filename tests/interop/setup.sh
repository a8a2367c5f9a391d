#!/usr/bin/env bash
# setup.sh — installs what the interop tests (tests/interop, ctest label
# "interop") need beyond scripts/setup-deps.sh, on a fresh Debian machine:
#   - protoc (Debian protobuf-compiler) and google/protobuf/*.proto
#     (libprotobuf-dev: conformance.proto's options extend MethodOptions)
#   - protoc-gen-go v1.36.12 (the google.golang.org/protobuf version of
#     livekit/psrpc v0.8.2's go.mod) and protoc-gen-psrpc v0.8.2, into
#     $(go env GOPATH)/bin
#   - the Go module graph of tests/interop/go (go mod download)
# Go itself must be installed (the Go module proxy reachable). Idempotent.
# Uses sudo for apt-get only when not root.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PATH=$PATH:/usr/local/go/bin

missing=()
for p in protobuf-compiler libprotobuf-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    echo "setup.sh: installing ${missing[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" </dev/null
fi

command -v go >/dev/null || { echo "setup.sh: Go is not installed (need Go >= 1.25.5)" >&2; exit 1; }
go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
go install github.com/livekit/psrpc/protoc-gen-psrpc@v0.8.2
(cd "$here/go" && go mod download all)
echo "setup.sh: protoc $(protoc --version | cut -d' ' -f2), $(go version | cut -d' ' -f3), plugins in $(go env GOPATH)/bin"
