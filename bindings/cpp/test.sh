#!/usr/bin/env bash
# Builds the C++ binding's tests with every C++ compiler present (g++, clang++), warnings as
# errors, under AddressSanitizer + LeakSanitizer + UBSan, and runs them against
# target/release/libxdan.so (built here unless XDAN_NO_BUILD=1).
# XDAN_CPP_VALGRIND=1 also runs an uninstrumented build under valgrind's leak checker (as
# scripts/test-bindings.sh does).
# Usage: bindings/cpp/test.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
if [ "${XDAN_NO_BUILD:-0}" != 1 ] || [ ! -f target/release/libxdan.so ]; then
  cargo build --release --lib
fi
# Binaries linked here ask for the soname; build.rs links it beside the library, but re-link it in
# case that link was removed while the build script's output stayed fresh.
[ -e target/release/libxdan.so.1 ] || ln -sfn libxdan.so target/release/libxdan.so.1
out="$root/target/bindings/cpp"
mkdir -p "$out"
flags=(-std=c++17 -Wall -Wextra -Werror -g -I"$root/bindings/cpp" -I"$root/include")
link=(-L"$root/target/release" -Wl,-rpath,"$root/target/release" -lxdan)
# The Rust library itself is not instrumented; leaks it makes still show, as LSan watches malloc.
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

status=0
ran=0
for cxx in g++ clang++; do
  command -v "$cxx" >/dev/null || { echo "($cxx not found, skipped)"; continue; }
  exe="$out/test-$cxx-asan"
  echo "== $cxx, -fsanitize=address,undefined"
  "$cxx" "${flags[@]}" -O1 -fno-omit-frame-pointer -fsanitize=address,undefined \
    bindings/cpp/test.cpp -o "$exe" "${link[@]}"
  "$exe" "$root" || status=1
  ran=$((ran + 1))
done
if [ "${XDAN_CPP_VALGRIND:-0}" = 1 ]; then
  echo "== g++ under valgrind --leak-check=full"
  g++ "${flags[@]}" -O1 bindings/cpp/test.cpp -o "$out/test-valgrind" "${link[@]}"
  # Definite and indirect leaks are errors; "possibly lost" blocks are the library's
  # process-lifetime statics and pool threads (see tests/c/valgrind.supp).
  valgrind --quiet --leak-check=full --show-leak-kinds=definite,indirect \
    --errors-for-leak-kinds=definite,indirect --suppressions="$root/tests/c/valgrind.supp" \
    --error-exitcode=9 "$out/test-valgrind" "$root" || status=1
fi
[ "$ran" -gt 0 ] || { echo "no C++ compiler found" >&2; exit 1; }
exit "$status"
