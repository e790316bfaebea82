#!/usr/bin/env bash
# Compiles the C# binding (Xdan.dll) and its console test runner with Mono's mcs and runs the
# tests against target/release/libxdan.so (built here unless XDAN_NO_BUILD=1).
# Prints "N passed, N failed". Usage: bindings/csharp/test.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
if [ "${XDAN_NO_BUILD:-0}" != 1 ] || [ ! -f target/release/libxdan.so ]; then
  cargo build --release --lib
fi
out="$root/target/bindings/csharp"
mkdir -p "$out"
mcs -nologo -warnaserror -target:library -out:"$out/Xdan.dll" bindings/csharp/src/*.cs
mcs -nologo -warnaserror -out:"$out/XdanTests.exe" -r:"$out/Xdan.dll" bindings/csharp/tests/TestRunner.cs
# DllImport("xdan") resolves to libxdan.so on the library path.
LD_LIBRARY_PATH="$root/target/release${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" mono "$out/XdanTests.exe" "$root"
