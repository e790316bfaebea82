#!/usr/bin/env bash
# Installs the C library into PREFIX:
#   lib/libxdan.so.VERSION, lib/libxdan.so.1 -> it (the soname), lib/libxdan.so -> libxdan.so.1,
#   include/xdan.h (and the C++ wrapper include/xdan.hpp), lib/pkgconfig/xdan.pc, lib/cmake/xdan/xdanConfig{,Version}.cmake.
# Usage: scripts/install.sh PREFIX   (builds `cargo build --release --lib` first unless
# XDAN_NO_BUILD=1 and target/release/libxdan.so already exists)
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 PREFIX" >&2
  exit 2
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$1"
prefix="$(cd "$1" && pwd)"

version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)"
abi="$(sed -n 's/^#define XDAN_ABI_VERSION \([0-9]*\).*/\1/p' "$root/include/xdan.h" | head -n1)"
if [ -z "$version" ] || [ -z "$abi" ]; then
  echo "install.sh: cannot read the version from Cargo.toml or XDAN_ABI_VERSION from include/xdan.h" >&2
  exit 1
fi

lib="$root/target/release/libxdan.so"
if [ "${XDAN_NO_BUILD:-0}" != 1 ] || [ ! -f "$lib" ]; then
  (cd "$root" && cargo build --release --lib)
fi

soname="$(readelf -d "$lib" 2>/dev/null | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')"
if [ "$soname" != "libxdan.so.$abi" ]; then
  echo "install.sh: $lib has soname '$soname', expected libxdan.so.$abi (see build.rs)" >&2
  exit 1
fi

install -d "$prefix/lib" "$prefix/include" "$prefix/lib/pkgconfig" "$prefix/lib/cmake/xdan"
install -m 0755 "$lib" "$prefix/lib/libxdan.so.$version"
ln -sfn "libxdan.so.$version" "$prefix/lib/libxdan.so.$abi"
ln -sfn "libxdan.so.$abi" "$prefix/lib/libxdan.so"
install -m 0644 "$root/include/xdan.h" "$prefix/include/xdan.h"
install -m 0644 "$root/bindings/cpp/xdan.hpp" "$prefix/include/xdan.hpp"

subst() { sed -e "s/@VERSION@/$version/g" -e "s/@ABI@/$abi/g" "$1" > "$2"; chmod 0644 "$2"; }
subst "$root/packaging/xdan.pc.in" "$prefix/lib/pkgconfig/xdan.pc"
subst "$root/packaging/xdanConfig.cmake.in" "$prefix/lib/cmake/xdan/xdanConfig.cmake"
subst "$root/packaging/xdanConfigVersion.cmake.in" "$prefix/lib/cmake/xdan/xdanConfigVersion.cmake"

echo "installed xdan $version (ABI $abi) into $prefix"
