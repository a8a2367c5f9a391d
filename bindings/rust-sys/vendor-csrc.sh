#!/usr/bin/env bash
# vendor-csrc.sh — copies the C sources of libpsrpc that the `vendored` build
# needs (CMakeLists.txt, capi/, impl/, cmake/, pkgconfig/) from this
# repository into csrc/, so that `cargo package` / `cargo publish` of
# psrpc-sys carries them (csrc/ is gitignored; build.rs prefers it to ../../).
# Run it before `cargo package -p psrpc-sys`; --clean removes csrc/ again.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
rm -rf "$here/csrc"
[ "${1:-}" = --clean ] && exit 0
mkdir -p "$here/csrc"
cp "$root/CMakeLists.txt" "$here/csrc/"
for d in capi impl cmake pkgconfig; do
    cp -R "$root/$d" "$here/csrc/$d"
done
# Build trees or editor leftovers must not travel.
find "$here/csrc" \( -name '*.o' -o -name '*~' -o -name '.#*' \) -delete
echo "vendor-csrc: $(find "$here/csrc" -type f | wc -l) files in $here/csrc"
