#!/usr/bin/env bash
# scripts/install-test.sh — installs each release artifact of dist/
# (scripts/release.sh) OUTSIDE this tree, the way a user would, and runs that
# language's add_value example against the C example server
# (examples/add_value.c, `serve`) over Redis: `call 5` must print 5, `call 7`
# 12 (a fresh server per artifact), and the server must exit 0 on SIGTERM.
#
#   wheel  a fresh virtualenv in a temp dir; pip install --no-index of the wheel
#          with no compiler (CC=false), no pkg-config (PKG_CONFIG_LIBDIR empty)
#          and no include paths: nothing may be built. ldd of the extension:
#          every library resolves, libuv, hiredis, libnats, protobuf-c and
#          OpenSSL from the wheel's psrpc.libs/ (auditwheel's copies), not the
#          system. Then examples/python/add_value.py.
#   sdist  a second fresh virtualenv: pip install of the sdist, which compiles
#          libpsrpc from the C sources it carries (the Debian -dev packages of
#          scripts/setup-deps.sh are the only other input). Then add_value.py.
#   node   an empty npm project in a temp dir: npm install of the npm tarball
#          (its install script compiles the addon and libpsrpc from the tarball's
#          csrc/), protoc-gen-es for add_value.proto, examples/node/add_value.mjs.
#   rust   an empty cargo project in a temp dir depending on the unpacked
#          psrpc, psrpc-build and psrpc-sys (feature `vendored`: the crate's own
#          C sources) .crate files ([patch.crates-io] for psrpc-sys), with
#          examples/rust/add_value's main.rs; cargo build, then the binary.
#   deb    ONLY with --deb (CI sets PSRPC_INSTALL_TEST_DEB=1 through .ci/run):
#          changes the machine. dpkg -i libpsrpc0 and libpsrpc-dev; compiles
#          examples/add_value.c with `pkg-config --cflags --libs psrpc` (plus
#          libprotobuf-c for the example's own messages), checks it links
#          /usr/lib/.../libpsrpc.so.0, runs it (local:// demo, then against the
#          C server); then dpkg --purge of both, and checks that nothing is
#          left. Refuses to run if either package is installed already.
#
# Usage: install-test.sh [--dist DIR] [--only wheel,sdist,node,rust] [--deb]
#        [--c-example PATH]   (default build/examples/add_value: scripts/test.sh's
#                              plain tree; the server side of every check)
# Environment: PSRPC_TEST_REDIS_URL (default redis://127.0.0.1:6379),
# PSRPC_INSTALL_TEST_DEB=1 (same as --deb), CARGO_TARGET_DIR (the Rust
# project's target dir; default a temp dir: scripts/test.sh points it at
# bindings/target so tokio, prost etc. are not compiled twice. The psrpc
# crates themselves are compiled from the .crate files whatever it is).
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dist=$root/dist
only=wheel,sdist,node,rust
deb=${PSRPC_INSTALL_TEST_DEB:-0}
c_example=$root/build/examples/add_value
while [ $# -gt 0 ]; do
    case $1 in
    --dist) dist=$(cd "$2" && pwd); shift 2 ;;
    --only) only=$2; shift 2 ;;
    --deb) deb=1; shift ;;
    --c-example) c_example=$2; shift 2 ;;
    *) echo "usage: install-test.sh [--dist DIR] [--only wheel,sdist,node,rust] [--deb] [--c-example PATH]" >&2; exit 2 ;;
    esac
done
want() { [[ ",$only," == *",$1,"* ]]; }
url=${PSRPC_TEST_REDIS_URL:-redis://127.0.0.1:6379}
factor=${PSRPC_TEST_TIME_FACTOR:-1}
factor=${factor%%.*}
[ "$factor" -ge 1 ] 2>/dev/null || factor=1
version=$(sed -n 's/^project(psrpc VERSION \([0-9.]*\).*/\1/p' "$root/CMakeLists.txt")
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false

case $c_example in /*) ;; *) c_example=$PWD/$c_example ;; esac
if [ ! -x "$c_example" ]; then
    echo "install-test: no C example server at $c_example (cmake --build build, or --c-example PATH)" >&2
    exit 1
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/psrpc-install-test.XXXXXX")
server_pid=
deb_installed=0
cleanup() {
    [ -n "$server_pid" ] && kill -KILL "$server_pid" 2>/dev/null
    [ "$deb_installed" = 1 ] && deb_remove
    rm -rf "$tmp"
}
trap cleanup EXIT

results=()
failed=0
# check NAME FUNCTION: runs FUNCTION in a subshell, records PASS/FAIL and its time.
check() {
    local name=$1 t0 rc
    echo
    echo "=== install-test $name"
    t0=$(date +%s)
    # (a failing check leaves no server running and no package installed)
    (
        trap '[ -n "$server_pid" ] && kill -KILL "$server_pid" 2>/dev/null; [ "$deb_installed" = 1 ] && deb_remove' EXIT
        "$2"
    )
    rc=$?
    if [ $rc -eq 0 ]; then
        results+=("$(printf '%-6s %4ss  PASS' "$name" "$(($(date +%s) - t0))")")
    else
        results+=("$(printf '%-6s %4ss  FAIL (exit %s)' "$name" "$(($(date +%s) - t0))" "$rc")")
        failed=1
    fi
}

# against_c_server NAME CLIENT...: a fresh C server (`add_value --bus URL
# serve`, counter 0); CLIENT call 5 must print 5 and CLIENT call 7 12; the
# server must then exit 0 on SIGTERM.
against_c_server() {
    local name=$1 i=0 v st=0
    shift
    "$c_example" --bus "$url" serve >"$tmp/serve.out" 2>"$tmp/serve.err" &
    server_pid=$!
    until grep -qx ready "$tmp/serve.out"; do
        # 50 ms steps: 10 s, times PSRPC_TEST_TIME_FACTOR
        if ! kill -0 "$server_pid" 2>/dev/null || [ $((i += 1)) -gt $((200 * factor)) ]; then
            cat "$tmp/serve.err"
            echo "FAIL: the C server did not become ready"
            return 1
        fi
        sleep 0.05
    done
    v=$("$@" --bus "$url" call 5) || { echo "FAIL: $name call 5 exited with status $?"; return 1; }
    [ "$v" = 5 ] || { echo "FAIL: $name call 5 printed '$v', expected 5"; return 1; }
    echo "$name: call 5 -> $v (C server)"
    v=$("$@" --bus "$url" call 7) || { echo "FAIL: $name call 7 exited with status $?"; return 1; }
    [ "$v" = 12 ] || { echo "FAIL: $name call 7 printed '$v', expected 12"; return 1; }
    echo "$name: call 7 -> $v (C server)"
    kill -TERM "$server_pid"
    wait "$server_pid" || st=$?
    server_pid=
    [ $st -eq 0 ] || { cat "$tmp/serve.err"; echo "FAIL: the C server exited with status $st"; return 1; }
}

# The example tree a user would copy: add_value.proto next to the example.
copy_python_example() { # DIR
    mkdir -p "$1/python"
    cp "$root/examples/add_value.proto" "$1/"
    cp "$root/examples/python/add_value.py" "$1/python/"
}

# make_venv PYTHON DIR: python -m venv, installing Debian's pythonX.Y-venv
# first when it is missing (as root; bindings/python/run_tests.sh does the same).
make_venv() {
    rm -rf "$2"
    "$1" -m venv "$2" 2>/dev/null && return 0
    if command -v apt-get >/dev/null && [ "$(id -u)" -eq 0 ]; then
        local v
        v=$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "python$v-venv" python3-venv </dev/null >/dev/null
    fi
    rm -rf "$2"
    "$1" -m venv "$2"
}

# A virtualenv outside the tree with protobuf (the binding's dependency).
new_venv() { # DIR
    make_venv python3 "$1" && "$1/bin/python" -m pip install -q --disable-pip-version-check protobuf
}

# The extension imported from the venv (not the tree), and what it prints.
python_example() { # VENV EXDIR
    local mod
    mod=$(cd "$tmp" && "$1/bin/python" -c 'import psrpc, psrpc._core as c; print(c.__file__)') || return 1
    case $mod in "$1"/*) ;; *) echo "FAIL: psrpc._core from $mod, not the venv"; return 1 ;; esac
    echo "extension: $mod"
    (cd "$tmp" && against_c_server python "$1/bin/python" "$2/python/add_value.py")
}

test_wheel() {
    local v=$tmp/venv-wheel ext line bad=0 lib
    new_venv "$v" || return 1
    # No compiler, pkg-config or include path: a wheel installs, it does not build.
    env CC=/bin/false CXX=/bin/false PKG_CONFIG_LIBDIR=/nonexistent PKG_CONFIG_PATH= \
        CPATH= C_INCLUDE_PATH= CPLUS_INCLUDE_PATH= LIBRARY_PATH= \
        "$v/bin/python" -m pip install -q --disable-pip-version-check --no-index --only-binary=:all: \
        --find-links "$dist" "psrpc==$version" || return 1
    "$v/bin/python" -m pip show -f psrpc | grep 'psrpc\.libs/' >/dev/null || { echo "FAIL: no psrpc.libs/ in the wheel"; return 1; }
    ext=$(cd "$tmp" && "$v/bin/python" -c 'import psrpc._core as c; print(c.__file__)') || return 1
    echo "ldd $ext:"
    ldd "$ext" | sed 's/^/  /'
    if ldd "$ext" | grep 'not found' >/dev/null; then
        echo "FAIL: unresolved libraries"
        return 1
    fi
    for lib in libuv libhiredis libnats libprotobuf-c libssl libcrypto; do
        line=$(ldd "$ext" | grep -E "^[[:space:]]*$lib[-.]") || { echo "FAIL: $lib is not linked"; bad=1; continue; }
        case $line in
        *"=> $v/"*/psrpc.libs/*) ;;
        *) echo "FAIL: $lib does not resolve into the wheel's psrpc.libs/: $line"; bad=1 ;;
        esac
    done
    [ $bad -eq 0 ] || return 1
    copy_python_example "$tmp/ex-wheel"
    python_example "$v" "$tmp/ex-wheel"
}

test_sdist() {
    local v=$tmp/venv-sdist
    new_venv "$v" || return 1
    # pip builds it in an empty directory of its own: only the sdist's files.
    "$v/bin/python" -m pip install -q --disable-pip-version-check --no-binary=psrpc \
        "$dist/psrpc-$version.tar.gz" || return 1
    copy_python_example "$tmp/ex-sdist"
    python_example "$v" "$tmp/ex-sdist"
}

test_node() {
    local p=$tmp/node-project
    mkdir -p "$p" && cd "$p" || return 1
    npm init -y >/dev/null && npm pkg set type=module || return 1
    # psrpc's install script compiles the addon from the tarball's csrc/.
    CMAKE_BUILD_PARALLEL_LEVEL=${PSRPC_RELEASE_JOBS:-2} npm install --no-audit --no-fund --loglevel=error \
        "$dist/psrpc-$version.tgz" '@bufbuild/protobuf@^2.2.0' '@bufbuild/protoc-gen-es@^2.2.0' || return 1
    [ -f node_modules/psrpc/build/Release/psrpc_node.node ] || { echo "FAIL: the addon was not built"; return 1; }
    [ -L node_modules/psrpc ] && { echo "FAIL: node_modules/psrpc is a link"; return 1; }
    cp "$root/examples/add_value.proto" "$root/examples/node/add_value.mjs" . || return 1
    mkdir -p gen
    protoc --plugin=protoc-gen-es=node_modules/.bin/protoc-gen-es --es_out=gen \
        --es_opt=target=js+dts,import_extension=js -I . add_value.proto || return 1
    # CommonJS too: require() of the same package (its "exports" map).
    node -e "const p = require('psrpc'); if (typeof p.Bus.open !== 'function') process.exit(1);" ||
        { echo "FAIL: require('psrpc') in the installed project"; return 1; }
    against_c_server node node add_value.mjs
}

test_rust() {
    local p=$tmp/rust-project c
    mkdir -p "$p/crates" "$p/src" || return 1
    for c in psrpc-sys psrpc psrpc-build; do
        tar -xzf "$dist/$c-$version.crate" -C "$p/crates" || return 1
    done
    cp "$root/examples/rust/add_value/src/main.rs" "$p/src/" || return 1
    cp "$root/examples/add_value.proto" "$p/" || return 1
    # The example's own lock file: the same tokio/prost versions as the tree's
    # build (with CARGO_TARGET_DIR shared, they are not compiled again).
    cp "$root/examples/rust/add_value/Cargo.lock" "$p/" || return 1
    cat >"$p/Cargo.toml" <<EOF
[package]
name = "add_value_installed"
version = "0.1.0"
edition = "2021"
publish = false

[dependencies]
psrpc = { version = "$version", path = "crates/psrpc-$version" }
psrpc-sys = { version = "$version", features = ["vendored"] }
prost = "0.13"
tokio = { version = "1", features = ["rt-multi-thread", "macros", "signal"] }

[build-dependencies]
psrpc-build = { version = "$version", path = "crates/psrpc-build-$version" }

# psrpc's dependency on psrpc-sys names crates.io: the unpacked .crate instead.
[patch.crates-io]
psrpc-sys = { path = "crates/psrpc-sys-$version" }

[workspace]
EOF
    cat >"$p/build.rs" <<'EOF'
fn main() {
    psrpc_build::compile_protos(&["add_value.proto"], &["."]).unwrap();
}
EOF
    cd "$p" || return 1
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$p/target}
    # No libpsrpc from pkg-config: psrpc-sys must build its own csrc/.
    PKG_CONFIG_PATH= CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2} nice cargo build || return 1
    grep -rl "crates/psrpc-sys-$version/csrc" "$CARGO_TARGET_DIR"/debug/build/psrpc-sys-*/output >/dev/null ||
        { echo "FAIL: psrpc-sys did not build the crate's csrc/"; return 1; }
    against_c_server rust "$CARGO_TARGET_DIR/debug/add_value_installed"
}

deb_remove() {
    dpkg --purge libpsrpc-dev libpsrpc0 >/dev/null
    deb_installed=0
}
test_deb() {
    local lib st
    if [ "$(id -u)" -ne 0 ]; then
        echo "FAIL: the .deb test needs root (dpkg -i); CI runs as root"
        return 1
    fi
    for p in libpsrpc0 libpsrpc-dev; do
        if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep 'install ok installed' >/dev/null; then
            echo "FAIL: $p is installed already; not touching it"
            return 1
        fi
    done
    deb_installed=1
    dpkg -i "$dist/libpsrpc0_${version}_"*.deb "$dist/libpsrpc-dev_${version}_"*.deb || return 1
    mkdir -p "$tmp/c" && cd "$tmp/c" || return 1
    cp "$root/examples/add_value.c" "$root/examples/add_value.proto" . || return 1
    protoc-c --c_out=. add_value.proto || return 1
    echo "pkg-config --cflags --libs psrpc: $(pkg-config --cflags --libs psrpc)"
    # shellcheck disable=SC2046
    cc -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Werror -o add_value add_value.c add_value.pb-c.c \
        $(pkg-config --cflags --libs psrpc) $(pkg-config --cflags --libs libprotobuf-c) -pthread || return 1
    lib=$(ldd ./add_value | awk '$1 == "libpsrpc.so.0" {print $3}')
    case $lib in
    /usr/lib/*/libpsrpc.so.0 | /lib/*/libpsrpc.so.0) echo "add_value links $lib" ;;
    *) echo "FAIL: add_value resolves libpsrpc.so.0 to '$lib'"; return 1 ;;
    esac
    ./add_value | grep -x 'AddValue(increment=3) -> value=6' >/dev/null || { echo "FAIL: the local:// demo"; return 1; }
    echo "deb: local:// demo ok"
    against_c_server deb ./add_value || return 1
    # The CMake package: find_package(psrpc COMPONENTS static), the static library.
    mkdir -p "$tmp/cmake-project" && cd "$tmp/cmake-project" || return 1
    cp "$tmp/c"/add_value.c "$tmp/c"/add_value.pb-c.[ch] . || return 1
    cat >CMakeLists.txt <<'EOF'
cmake_minimum_required(VERSION 3.18)
project(add_value_static C)
find_package(psrpc 0.1 REQUIRED COMPONENTS static)
add_executable(add_value_static add_value.c add_value.pb-c.c)
target_compile_definitions(add_value_static PRIVATE _POSIX_C_SOURCE=200809L)
target_link_libraries(add_value_static PRIVATE psrpc::psrpc_static)
EOF
    cmake -S . -B build >/dev/null && cmake --build build >/dev/null || return 1
    if ldd build/add_value_static | grep libpsrpc >/dev/null; then
        echo "FAIL: psrpc::psrpc_static links libpsrpc.so"
        return 1
    fi
    build/add_value_static | grep -x 'AddValue(increment=3) -> value=6' >/dev/null ||
        { echo "FAIL: the statically linked demo"; return 1; }
    echo "deb: find_package(psrpc COMPONENTS static) + psrpc::psrpc_static: local:// demo ok"
    cd "$tmp" && deb_remove
    for p in libpsrpc0 libpsrpc-dev; do
        st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)
        [ -z "$st" ] || [ "$st" = "unknown ok not-installed" ] || { echo "FAIL: $p left as '$st'"; return 1; }
    done
    if [ -e /usr/include/psrpc.h ] || ls /usr/lib/*/libpsrpc* /usr/lib/*/pkgconfig/psrpc.pc >/dev/null 2>&1; then
        echo "FAIL: files left after dpkg --purge"
        return 1
    fi
    echo "deb: purged, nothing left"
}

t0=$(date +%s)
want wheel && check wheel test_wheel
want sdist && check sdist test_sdist
want node && check node test_node
want rust && check rust test_rust
if [ "$deb" = 1 ]; then
    check deb test_deb
else
    echo
    echo "install-test: the .deb check changes the machine (dpkg -i/--purge) and runs only with --deb or PSRPC_INSTALL_TEST_DEB=1 (CI sets it)"
fi
echo
echo "=== install-test summary ($(($(date +%s) - t0)) s)"
printf '  %s\n' "${results[@]}"
exit $failed
