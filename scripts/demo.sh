#!/usr/bin/env bash
# scripts/demo.sh — the demo command (README.md): installs the dependencies,
# builds libpsrpc and the add_value example in build/, and runs it: a
# Counter.AddValue server and a client in one process on the local:// bus.
# Arguments are passed to add_value, e.g.
#   scripts/demo.sh --bus redis://127.0.0.1:6379
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup-deps.sh"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPSRPC_BUILD_EXAMPLES=ON
cmake --build "$root/build" -j "$(nproc 2>/dev/null || echo 2)" --target add_value
echo
echo "=== build/examples/add_value${*:+ $*}"
exec "$root/build/examples/add_value" "$@"
