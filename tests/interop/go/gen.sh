#!/usr/bin/env bash
# Regenerates conformance/conformance.pb.go and conformance/conformance.psrpc.go
# from ../conformance.proto (options.proto: ../options.proto, a copy of
# livekit/psrpc v0.8.2's protoc-gen-psrpc/options/options.proto).
# Needs protoc (Debian protobuf-compiler), protoc-gen-go v1.36.12 and
# protoc-gen-psrpc v0.8.2 on PATH or in $(go env GOPATH)/bin: ../setup.sh
# installs them. The generated files are committed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PATH=$PATH:$(go env GOPATH)/bin
for tool in protoc protoc-gen-go protoc-gen-psrpc; do
    command -v "$tool" >/dev/null || { echo "gen.sh: $tool not found (run ../setup.sh)" >&2; exit 1; }
done
protoc -I.. \
    --go_out=conformance --go_opt=paths=source_relative \
    --psrpc_out=conformance --psrpc_opt=paths=source_relative \
    ../conformance.proto
echo "gen.sh: generated conformance/conformance.pb.go conformance/conformance.psrpc.go"
