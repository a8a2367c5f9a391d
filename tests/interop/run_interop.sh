#!/usr/bin/env bash
# run_interop.sh --client PATH methods — the method-table check (ctest
# interop_method_table): the committed generated Go code is what gen.sh makes
# of conformance.proto, and the method table of the C client (gen_methods)
# equals the one derived from the Go descriptor and protoc-gen-psrpc's
# RegisterMethod flags. No broker. The interop cells themselves are run by
# tests/interop/matrix.sh (docs/interop.md). Needs Go and the module graph
# (tests/interop/setup.sh).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ "${1:-}" = --client ] && [ $# -eq 3 ] && [ "$3" = methods ] || {
    echo "usage: $0 --client PATH methods   (cells: tests/interop/matrix.sh)" >&2
    exit 2
}
client=$2

export PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "run_interop: go not found (tests/interop/setup.sh)" >&2; exit 1; }
cd "$here/go"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
./gen.sh --out "$tmp"
for f in conformance.pb.go conformance.psrpc.go; do
    diff -u "conformance/$f" "$tmp/$f" || {
        echo "run_interop: conformance/$f is stale: run tests/interop/go/gen.sh" >&2
        exit 1
    }
done
echo "run_interop: generated code is current"
printf '{"go": {"server": ["unused"]}, "c": {"server": ["unused"], "client": ["%s"]}}\n' "$client" >"$tmp/slots.json"
PSRPC_INTEROP_SLOTS=$tmp/slots.json PSRPC_INTEROP_CLIENTS=c \
    go test -count=1 -v -run '^TestMethodTable$' ./interop/
