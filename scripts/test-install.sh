#!/usr/bin/env bash
# Installs the library into a temporary prefix, then builds and runs a C program against it twice:
# with only `pkg-config --cflags --libs xdan`, and as a CMake project using find_package(xdan).
# Usage: scripts/test-install.sh   (XDAN_NO_BUILD=1: reuse target/release/libxdan.so)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
model="$root/tests/data/tiny-mixtral/Q8_0/tiny-mixtral-Q8_0.gguf"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
passed=0
failed=0
check() {  # check NAME COMMAND...
  if "${@:2}"; then
    echo "ok: $1"; passed=$((passed + 1))
  else
    echo "FAILED: $1"; failed=$((failed + 1))
  fi
}

"$root/scripts/install.sh" "$tmp/prefix"
# Nothing from the build tree may leak into what follows.
unset LD_LIBRARY_PATH
cd "$tmp"

check "installed soname is libxdan.so.1" \
  bash -c "readelf -d prefix/lib/libxdan.so.1 | grep -q 'SONAME.*\[libxdan.so.1\]'"
check "libxdan.so -> libxdan.so.1 -> real file" \
  bash -c '[ "$(readlink prefix/lib/libxdan.so)" = libxdan.so.1 ] && [ -f "$(readlink -f prefix/lib/libxdan.so.1)" ]'

pc_build() {
  cc -Wall -Werror -o pc_test "$root/scripts/install-test/main.c" \
    $(PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig" pkg-config --cflags --libs xdan)
}
check "pkg-config: build" pc_build
check "pkg-config: binary asks for libxdan.so.1" bash -c "readelf -d pc_test | grep -q 'NEEDED.*\[libxdan.so.1\]'"
check "pkg-config: run" env LD_LIBRARY_PATH="$tmp/prefix/lib" ./pc_test "$model"

cmake_build() {
  cmake -S "$root/scripts/install-test" -B cmake_build -DCMAKE_PREFIX_PATH="$tmp/prefix" \
    -DCMAKE_BUILD_TYPE=Release >cmake.log 2>&1 && cmake --build cmake_build >>cmake.log 2>&1 \
    || { cat cmake.log; return 1; }
}
check "cmake find_package(xdan): build" cmake_build
# CMake puts the imported library's folder in the build rpath: no LD_LIBRARY_PATH needed.
check "cmake find_package(xdan): run" ./cmake_build/xdan_install_test "$model"

# The Go binding's pkg-config variant, against the installed library only. (Its own build cache:
# go 1.19 reuses cached cgo flags of an earlier prefix.)
go_pc() {
  (cd "$root/bindings/go" && PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig" GOPROXY=off GOFLAGS=-mod=mod \
    GOCACHE="$tmp/go-cache" go test -tags xdan_pkgconfig -c -o "$tmp/go_pc.test") || return 1
  # ldd's output is read whole first: under pipefail, `ldd | grep -q` fails whenever grep exits
  # before ldd has written its last line (SIGPIPE).
  local libs
  libs="$(LD_LIBRARY_PATH="$tmp/prefix/lib" ldd go_pc.test)" || return 1
  grep -q "libxdan.so.1 => $tmp/prefix/lib/" <<<"$libs" \
    || { echo "go_pc.test does not resolve libxdan.so.1 in the prefix:"; echo "$libs"; return 1; }
  (cd "$root/bindings/go" && LD_LIBRARY_PATH="$tmp/prefix/lib" "$tmp/go_pc.test" -test.run 'TestVersion|TestMissingFile|TestGreedy')
}
if command -v go >/dev/null; then
  check "go -tags xdan_pkgconfig: build and test against the installed library" go_pc
fi

echo "install: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
