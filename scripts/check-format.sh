#!/usr/bin/env bash
# check-format.sh — fails (and lists the files) when a C or C++ file of the tree
# is not formatted as .clang-format says (clang-format 14, Debian bookworm's;
# other versions format differently, so another major version is an error,
# not a pass). The ctest test `format` runs it; `scripts/check-format.sh -i`
# formats the files in place instead.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
cf=${CLANG_FORMAT:-clang-format}
if ! command -v "$cf" >/dev/null; then
    echo "check-format: $cf not found (scripts/setup-deps.sh installs clang-format 14)" >&2
    exit 1
fi
major=$("$cf" --version | sed -n 's/.*clang-format version \([0-9]*\).*/\1/p')
if [ "$major" != 14 ]; then
    echo "check-format: $cf is version ${major:-unknown}; .clang-format is written for 14" >&2
    exit 1
fi
# The tracked C/C++ sources (a source tarball without .git: the same folders).
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    mapfile -t files < <(git ls-files '*.c' '*.h' '*.cc' '*.cpp')
else
    mapfile -t files < <(find capi impl tests examples bench bindings/node/src \
        \( -name '*.c' -o -name '*.h' -o -name '*.cc' -o -name '*.cpp' \) -type f 2>/dev/null |
        sort)
fi
if [ "${1:-}" = "-i" ]; then
    "$cf" -i "${files[@]}"
    exit 0
fi
bad=()
for f in "${files[@]}"; do
    [ -f "$f" ] || continue
    "$cf" --dry-run -Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done
if [ "${#bad[@]}" -gt 0 ]; then
    echo "check-format: ${#bad[@]} of ${#files[@]} files not formatted (fix: scripts/check-format.sh -i):" >&2
    printf '  %s\n' "${bad[@]}" >&2
    exit 1
fi
echo "check-format: ${#files[@]} files formatted as .clang-format says"
