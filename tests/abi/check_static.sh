#!/bin/sh
# check_static.sh BUILD_DIR LIBPSRPC_A PUBLIC_HEADER SRC_DIR
#
# The static library's symbol surface (issue 20):
#   1. every defined global symbol of libpsrpc.a is a public psrpc_* name
#      (no psrpc__ internals, no protobuf-c generated internal__* code);
#   2. every function the public header declares with PSRPC_API is defined;
#   3. a program with its own protobuf-c code for a package "internal" (the
#      same C symbol names as libpsrpc's generated code) links with
#      libpsrpc.a and runs: both schemas work.
# CC and PROTOC_C name the compiler and protoc-c (the build's, from ctest).
set -eu

build=${1:?usage: check_static.sh BUILD_DIR LIB HEADER SRC_DIR}
lib=${2:?usage: check_static.sh BUILD_DIR LIB HEADER SRC_DIR}
header=${3:?usage: check_static.sh BUILD_DIR LIB HEADER SRC_DIR}
src=${4:?usage: check_static.sh BUILD_DIR LIB HEADER SRC_DIR}
cc=${CC:-cc}
protoc_c=${PROTOC_C:-protoc-c}
fail=0

[ -f "$lib" ] || { echo "FAIL: $lib does not exist"; exit 1; }
defined=$(nm -g --defined-only "$lib" | awk 'NF >= 3 { print $3 }' | sort -u)
foreign=$(printf '%s\n' "$defined" | grep -v '^psrpc_[a-z]' | grep -v '^$' || true)
if [ -n "$foreign" ]; then
    echo "FAIL: global symbols of $(basename "$lib") that are not public psrpc_* names:"
    printf '%s\n' "$foreign" | head -40 | sed 's/^/  /'
    fail=1
fi
declared=$(grep -E '^PSRPC_API ' "$header" | grep -oE '\bpsrpc_[a-z0-9_]+\(' | tr -d '(' | sort -u)
missing=$(printf '%s\n' "$declared" | while read -r f; do
    printf '%s\n' "$defined" | grep -qx "$f" || echo "$f"
done)
if [ -n "$missing" ]; then
    echo "FAIL: declared in $(basename "$header") but not defined by $(basename "$lib"):"
    printf '  %s\n' $missing
    fail=1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/psrpc-static.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp "$src/user_internal.proto" "$src/static_collision.c" "$work/"
(cd "$work" && "$protoc_c" --c_out=. user_internal.proto) || { echo "FAIL: protoc-c"; exit 1; }
libs=$(PKG_CONFIG_PATH="$build" pkg-config --static --libs psrpc | sed "s#-lpsrpc#$lib#")
cflags=$(PKG_CONFIG_PATH="$build" pkg-config --cflags psrpc libprotobuf-c)
# shellcheck disable=SC2086
if ! "$cc" -o "$work/static_collision" "$work/static_collision.c" "$work/user_internal.pb-c.c" \
    -I"$work" $cflags $libs $(pkg-config --libs libprotobuf-c) >"$work/link.log" 2>&1; then
    echo "FAIL: a program with its own internal.proto code does not link with $(basename "$lib"):"
    sed 's/^/  /' "$work/link.log" | head -20
    exit 1
fi
out=$("$work/static_collision") || { echo "FAIL: static_collision: $out"; exit 1; }
[ "$out" = "ok" ] || { echo "FAIL: static_collision printed '$out'"; fail=1; }

if [ "$fail" -eq 0 ]; then
    n=$(printf '%s\n' "$defined" | grep -c . || true)
    echo "ok: $n global symbols, all public psrpc_*; every header function defined; a program with its own internal.proto code links and runs"
fi
exit "$fail"
