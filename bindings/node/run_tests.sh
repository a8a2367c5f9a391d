#!/usr/bin/env bash
# run_tests.sh — the Node binding's test suite, from scratch:
#   1. npm install in this directory (node-addon-api, cmake-js, typescript,
#      @bufbuild/protobuf from the npm registry; no download from nodejs.org:
#      cmake-js takes the Node-API headers from the node-api-headers package),
#   2. builds the addon (cmake-js over this tree's CMake, libpsrpc linked
#      statically; the build dir is reused) and the TypeScript layer, and
#      generates the tests' and examples' *_pb files (scripts/gen-pb.sh),
#   3. checks that `npm install <this directory>` and `npm install` of the
#      `npm pack` tarball (which carries libpsrpc's C sources) work in fresh
#      projects outside the tree (PSRPC_NODE_SKIP_INSTALL_CHECK=1 skips both,
#      PSRPC_NODE_SKIP_PACK_CHECK=1 the tarball's: scripts/test.sh sets it, as
#      its release-install step installs the release tarball the same way),
#   4. runs the node:test suite over local://, Redis and NATS.
# Brokers: PSRPC_TEST_REDIS_URL / PSRPC_TEST_NATS_URL (defaults
# redis://127.0.0.1:6379, nats://127.0.0.1:4222); a broker that does not answer
# FAILS its tests. Extra arguments go to node --test (e.g. test/rpc.test.mjs);
# PSRPC_NODE_INSTALL_ONLY=1 stops after the build; PSRPC_NODE_ASAN=1 runs the
# suite with the addon and libpsrpc built with ASan + UBSan.
# Needs node >= 18 with npm, and the Debian packages of scripts/setup-deps.sh.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "run_tests.sh: node and npm are needed (scripts/setup-deps.sh installs them)" >&2
    exit 1
fi

# 1-2. dependencies, then both builds (always: the sources may have changed;
# cmake-js and tsc rebuild incrementally).
npm install --no-audit --no-fund --ignore-scripts --loglevel=error
PSRPC_NODE_JOBS=${PSRPC_NODE_JOBS:-2} node scripts/build.js --force
# the protoc-gen-es code of the example and conformance protos (generated here,
# never committed: scripts/gen-pb.sh is the one recipe) for the tests, the
# type-check test and examples/node (which the interop slot runs)
scripts/gen-pb.sh test/gen js+dts
scripts/gen-pb.sh test/types/gen ts
scripts/gen-pb.sh ../../examples/node/gen js+dts
# examples/node imports 'psrpc' and '@bufbuild/protobuf': link them there (what
# `npm install` in examples/node does, without the network)
ex=$here/../../examples/node/node_modules
mkdir -p "$ex/@bufbuild"
ln -sfn "$here" "$ex/psrpc"
ln -sfn "$here/node_modules/@bufbuild/protobuf" "$ex/@bufbuild/protobuf"
[ "${PSRPC_NODE_INSTALL_ONLY:-0}" = 1 ] && exit 0

# 3. npm install of this directory, and of the packed tarball, into projects
# outside the tree.
install_check() { # WHAT SPEC
    local proj
    proj=$(mktemp -d /tmp/psrpc-node-install.XXXXXX)
    (cd "$proj" && npm init -y >/dev/null && npm install --no-audit --no-fund --loglevel=error "$2" &&
        node --input-type=module -e "
            import { Bus, Client, Server } from 'psrpc';
            const bus = await Bus.open('local://');
            const s = new Server(bus, 'InstallCheck');
            await s.handle('Echo', (b) => b);
            const r = await new Client(bus, 'InstallCheck').call('Echo', new Uint8Array([42]));
            if (r[0] !== 42) throw new Error('bad answer');
            await bus.close();" &&
        node -e "const p = require('psrpc'); if (typeof p.Bus.open !== 'function') process.exit(1);" &&
        echo "install check: npm install $1 in a fresh project outside the tree works (import and require)")
    local rc=$?
    rm -rf "$proj"
    return $rc
}
if [ "${PSRPC_NODE_SKIP_INSTALL_CHECK:-0}" != 1 ]; then
    install_check "<bindings/node>" "$here"
    if [ "${PSRPC_NODE_SKIP_PACK_CHECK:-0}" != 1 ]; then
        packdir=$(mktemp -d /tmp/psrpc-node-pack.XXXXXX)
        npm pack --loglevel=error --pack-destination "$packdir" >/dev/null
        CMAKE_BUILD_PARALLEL_LEVEL=${PSRPC_NODE_JOBS:-2} install_check "<npm pack tarball>" "$packdir"/psrpc-*.tgz
        rm -rf "$packdir"
    fi
fi

# 4. the suite (one file at a time: they share the brokers)
tests=("$@")
[ ${#tests[@]} -eq 0 ] && tests=(test/*.test.mjs)
if [ "${PSRPC_NODE_ASAN:-0}" = 1 ]; then
    # The addon and libpsrpc built with ASan + UBSan (build-asan/), loaded
    # into an uninstrumented node with the sanitizer runtimes preloaded (child
    # processes and workers inherit both). Leak checking is off: V8 does not
    # free everything at exit.
    node node_modules/cmake-js/bin/cmake-js compile --directory . --out build-asan --parallel "${PSRPC_NODE_JOBS:-2}" \
        --log-level warn --CDCMAKE_BUILD_TYPE=Debug \
        "--CDCMAKE_C_FLAGS=-fsanitize=address,undefined -fno-omit-frame-pointer" \
        "--CDCMAKE_CXX_FLAGS=-fsanitize=address,undefined -fno-omit-frame-pointer" \
        "--CDCMAKE_SHARED_LINKER_FLAGS=-fsanitize=address,undefined"
    export PSRPC_NODE_ADDON=$here/build-asan/Release/psrpc_node.node
    export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:halt_on_error=1}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
    export PSRPC_TEST_TIME_FACTOR=${PSRPC_TEST_TIME_FACTOR:-3}
fi
# One node --test per file, in order (works on every Node >= 18; the files
# share the brokers).
rc=0
for t in "${tests[@]}"; do
    node --expose-gc --test --test-reporter=spec "$t" || rc=1
done
[ $rc -eq 0 ] && echo "run_tests.sh: all test files passed" || echo "run_tests.sh: FAILED"
exit $rc
