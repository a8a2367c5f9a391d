#!/bin/sh
# consumer.sh BUILD_DIR VERSION
#
# Uses libpsrpc the way a user outside this tree does:
#   1. the build tree through psrpc-uninstalled.pc (no install, rpath);
#   2. `cmake --install` into a temporary prefix, then a program built with
#      `cc $(pkg-config --cflags --libs psrpc)` alone, run with LD_LIBRARY_PATH;
#   3. the same program linked statically from `pkg-config --static --libs`;
#   4. a find_package(psrpc) CMake project (psrpc::psrpc and
#      psrpc::psrpc_static, SameMajorVersion).
# Each program opens a local:// bus, prints "libpsrpc VERSION" and exits 0.
# CC and CMAKE name the compiler and cmake to use (the build's, from ctest).
set -eu

build=$(cd "${1:?usage: consumer.sh BUILD_DIR VERSION}" && pwd)
version=${2:?usage: consumer.sh BUILD_DIR VERSION}
here=$(cd "$(dirname "$0")" && pwd)
cc=${CC:-cc}
cmake=${CMAKE:-cmake}

work=$(mktemp -d "${TMPDIR:-/tmp}/psrpc-consumer.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp "$here/consumer.c" "$work/consumer.c"
cp -r "$here/consumer_cmake" "$work/consumer_cmake"
prefix="$work/prefix"

step() { echo "== $*"; }
fail() { echo "FAIL: $*"; exit 1; }

# Runs a consumer program and checks its output line.
run_consumer() {
    out=$("$@") || fail "'$*' exited with status $?"
    [ "$out" = "libpsrpc $version" ] || fail "'$*' printed '$out', expected 'libpsrpc $version'"
    echo "   $out"
}

step "build tree: psrpc-uninstalled.pc"
[ -f "$build/psrpc-uninstalled.pc" ] || fail "$build/psrpc-uninstalled.pc is missing"
flags=$(PKG_CONFIG_PATH="$build" pkg-config --cflags --libs psrpc) ||
    fail "pkg-config cannot read $build/psrpc-uninstalled.pc"
# shellcheck disable=SC2086
"$cc" -o "$work/consumer_uninstalled" "$work/consumer.c" $flags
run_consumer env -u LD_LIBRARY_PATH "$work/consumer_uninstalled"

step "cmake --install $build --prefix $prefix"
"$cmake" --install "$build" --prefix "$prefix" >"$work/install.log" ||
    { cat "$work/install.log"; fail "cmake --install"; }
for f in include/psrpc.h lib/libpsrpc.so lib/libpsrpc.a lib/pkgconfig/psrpc.pc \
    lib/cmake/psrpc/psrpcConfig.cmake lib/cmake/psrpc/psrpcConfigVersion.cmake; do
    [ -e "$prefix/$f" ] || fail "$f not installed"
done
[ -e "$prefix/lib/libpsrpc.so.${version%%.*}" ] || fail "lib/libpsrpc.so.${version%%.*} not installed"
grep -q "^prefix=$prefix\$" "$prefix/lib/pkgconfig/psrpc.pc" ||
    fail "psrpc.pc does not name the install prefix: $(grep '^prefix=' "$prefix/lib/pkgconfig/psrpc.pc")"

step "pkg-config consumer (shared)"
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
unset PKG_CONFIG_LIBDIR 2>/dev/null || true
[ "$(pkg-config --modversion psrpc)" = "$version" ] || fail "pkg-config --modversion psrpc"
flags=$(pkg-config --cflags --libs psrpc)
echo "   cc consumer.c $flags"
# shellcheck disable=SC2086
"$cc" -o "$work/consumer" "$work/consumer.c" $flags
run_consumer env LD_LIBRARY_PATH="$prefix/lib" "$work/consumer"
LD_LIBRARY_PATH="$prefix/lib" ldd "$work/consumer" | grep -q "$prefix/lib/libpsrpc.so" ||
    fail "consumer did not load the installed libpsrpc.so"

step "pkg-config consumer (static)"
static_libs=$(pkg-config --static --libs psrpc | sed "s#-lpsrpc#$prefix/lib/libpsrpc.a#")
# shellcheck disable=SC2086
"$cc" -o "$work/consumer_static" "$work/consumer.c" $(pkg-config --cflags psrpc) $static_libs
readelf -d "$work/consumer_static" | grep -q 'libpsrpc' && fail "consumer_static needs libpsrpc.so"
run_consumer env -u LD_LIBRARY_PATH "$work/consumer_static"

step "find_package(psrpc) consumer"
CC="$cc" "$cmake" -S "$work/consumer_cmake" -B "$work/cmake_build" \
    -DCMAKE_PREFIX_PATH="$prefix" -DPSRPC_VERSION="$version" \
    -DPSRPC_CONSUMER_SOURCE="$work/consumer.c" >"$work/cmake.log" 2>&1 ||
    { cat "$work/cmake.log"; fail "configuring the find_package(psrpc) project"; }
"$cmake" --build "$work/cmake_build" >"$work/cmake_build.log" 2>&1 ||
    { cat "$work/cmake_build.log"; fail "building the find_package(psrpc) project"; }
run_consumer env LD_LIBRARY_PATH="$prefix/lib" "$work/cmake_build/consumer_shared"
run_consumer env -u LD_LIBRARY_PATH "$work/cmake_build/consumer_static"

echo "ok: build tree, pkg-config (shared, static) and find_package(psrpc) consumers all ran"
