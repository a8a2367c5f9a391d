#!/bin/sh
# check_exports.sh LIBPSRPC_SO PUBLIC_HEADER EXPECTED_SONAME
#
# The shared library's ABI surface (design.md, "The C ABI rules"):
#   1. every defined dynamic symbol starts with psrpc_ (nm -D --defined-only);
#   2. every function the public header declares with PSRPC_API is exported;
#   3. the SONAME is EXPECTED_SONAME (libpsrpc.so.0).
set -eu

lib=${1:?usage: check_exports.sh LIB HEADER SONAME}
header=${2:?usage: check_exports.sh LIB HEADER SONAME}
want_soname=${3:?usage: check_exports.sh LIB HEADER SONAME}
fail=0

[ -f "$lib" ] || { echo "FAIL: $lib does not exist"; exit 1; }
command -v nm >/dev/null || { echo "FAIL: nm not found (binutils)"; exit 1; }
command -v readelf >/dev/null || { echo "FAIL: readelf not found (binutils)"; exit 1; }

defined=$(nm -D --defined-only "$lib" | awk 'NF >= 3 { print $3 }' | sed 's/@.*//' | sort -u)
if [ -z "$defined" ]; then
    echo "FAIL: $lib defines no dynamic symbols"
    fail=1
fi

foreign=$(printf '%s\n' "$defined" | grep -v '^psrpc_' | grep -v '^$' || true)
if [ -n "$foreign" ]; then
    echo "FAIL: symbols exported without the psrpc_ prefix:"
    printf '  %s\n' $foreign
    fail=1
fi

# Functions the header declares: "PSRPC_API <type> [*]psrpc_name(" (the
# declaration may wrap, but the name always follows PSRPC_API on its line).
declared=$(grep -E '^PSRPC_API ' "$header" | grep -oE '\bpsrpc_[a-z0-9_]+\(' | tr -d '(' | sort -u)
if [ -z "$declared" ]; then
    echo "FAIL: no PSRPC_API declarations found in $header"
    fail=1
fi
missing=$(printf '%s\n' "$declared" | while read -r f; do
    printf '%s\n' "$defined" | grep -qx "$f" || echo "$f"
done)
if [ -n "$missing" ]; then
    echo "FAIL: declared in $(basename "$header") but not exported by $(basename "$lib"):"
    printf '  %s\n' $missing
    fail=1
fi

soname=$(readelf -d "$lib" | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')
if [ "$soname" != "$want_soname" ]; then
    echo "FAIL: SONAME is '${soname:-none}', expected '$want_soname'"
    fail=1
fi

ndef=$(printf '%s\n' "$defined" | grep -c . || true)
ndecl=$(printf '%s\n' "$declared" | grep -c . || true)
if [ "$fail" -eq 0 ]; then
    echo "ok: $ndef exported symbols, all psrpc_*; all $ndecl header functions exported; SONAME $soname"
fi
exit "$fail"
