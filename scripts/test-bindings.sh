#!/usr/bin/env bash
# The language bindings' tests (C++, Go, C#), the install/packaging test and the examples' smoke
# test, each against target/release/libxdan.so. Every suite runs even if an earlier one failed;
# the script fails if any did. Usage: scripts/test-bindings.sh  (XDAN_NO_BUILD=1: skip the build)
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if [ "${XDAN_NO_BUILD:-0}" != 1 ] || [ ! -f target/release/libxdan.so ]; then
  cargo build --release --lib || exit 1
fi
# Binaries linked here ask for the soname; build.rs links it beside the library, but re-link it in
# case that link was removed while the build script's output stayed fresh.
[ -e target/release/libxdan.so.1 ] || ln -sfn libxdan.so target/release/libxdan.so.1
export XDAN_NO_BUILD=1
failed=()
passed=0
suite() {  # suite NAME COMMAND...
  echo "=== $1"
  if "${@:2}"; then
    echo "=== $1: ok"; passed=$((passed + 1))
  else
    echo "=== $1: FAILED"; failed+=("$1")
  fi
}

suite "C++ binding" env XDAN_CPP_VALGRIND=1 bindings/cpp/test.sh
# Go: no module downloads (the binding has no dependencies); its own build cache under target/.
suite "Go binding" env GOPROXY=off GOFLAGS=-mod=mod GOCACHE="$root/target/go-cache" \
  bash -c 'cd bindings/go && go vet ./... && go test -count=1 ./...'
suite "C# binding" bindings/csharp/test.sh
suite "install (pkg-config, CMake)" scripts/test-install.sh
suite "examples" scripts/test-examples.sh

[ "${#failed[@]}" -eq 0 ] || echo "failed suites: ${failed[*]}"
echo "binding suites: $passed passed, ${#failed[@]} failed"
[ "${#failed[@]}" -eq 0 ]
