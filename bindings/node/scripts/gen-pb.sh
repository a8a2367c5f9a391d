#!/usr/bin/env bash
# gen-pb.sh OUTDIR [TARGET]: protoc-gen-es code (TARGET js+dts, the default,
# or ts) for the protos the examples and tests use: examples/add_value.proto,
# tests/interop/conformance.proto and tests/interop/options.proto, into OUTDIR.
# The one way this tree makes its *_pb files (none are committed): run_tests.sh
# runs it for test/gen, test/types/gen and examples/node/gen, and
# `npm run gen` in examples/node runs it there.
# Needs protoc (Debian: protobuf-compiler) and protoc-gen-es (the npm package
# @bufbuild/protoc-gen-es: on PATH, as under `npm run`, or in
# bindings/node/node_modules).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:?usage: gen-pb.sh OUTDIR [js+dts|ts]}
target=${2:-js+dts}
plugin=$(command -v protoc-gen-es || echo "$here/node_modules/.bin/protoc-gen-es")
if ! command -v protoc >/dev/null || [ ! -x "$plugin" ]; then
    echo "gen-pb.sh: needs protoc (apt-get install protobuf-compiler) and protoc-gen-es (npm install in bindings/node)" >&2
    exit 1
fi
mkdir -p "$out"
protoc --plugin=protoc-gen-es="$plugin" --es_out="$out" --es_opt="target=$target,import_extension=js" \
    -I "$root/examples" -I "$root/tests/interop" add_value.proto conformance.proto options.proto
# plain .js output is ES modules whatever the enclosing package says
[ "$target" = ts ] || echo '{"type":"module"}' >"$out/package.json"
