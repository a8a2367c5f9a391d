#!/usr/bin/env bash
# Regenerates conformance/conformance.pb.go and conformance/conformance.psrpc.go
# from ../conformance.proto (options.proto: ../options.proto, a copy of
# livekit/psrpc v0.8.2's protoc-gen-psrpc/options/options.proto).
# Needs protoc (Debian protobuf-compiler), protoc-gen-go v1.36.12 and
# protoc-gen-psrpc v0.8.2 on PATH or in $(go env GOPATH)/bin: ../setup.sh
# installs them. The generated files are committed.
#
#   gen.sh             regenerate conformance/*.go
#   gen.sh --out DIR   write them to DIR instead (run_interop.sh methods uses
#                      this to check that the committed files are current)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
out=conformance
if [ "${1:-}" = --out ]; then
    out=${2:?directory}
fi
PATH=$PATH:$(go env GOPATH)/bin
for tool in protoc protoc-gen-go protoc-gen-psrpc; do
    command -v "$tool" >/dev/null || { echo "gen.sh: $tool not found (run ../setup.sh)" >&2; exit 1; }
done
protoc -I.. \
    --go_out="$out" --go_opt=paths=source_relative \
    --psrpc_out="$out" --psrpc_opt=paths=source_relative \
    ../conformance.proto
echo "gen.sh: generated $out/conformance.pb.go $out/conformance.psrpc.go"
