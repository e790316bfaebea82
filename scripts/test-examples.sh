#!/usr/bin/env bash
# Builds the C/C++/Go/C# examples and runs each briefly on the tiny test model (a smoke test:
# they must run to the end and print what they promise; the text itself is the random model's).
# Usage: scripts/test-examples.sh   (XDAN_NO_BUILD=1: reuse target/release/libxdan.so)
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if [ "${XDAN_NO_BUILD:-0}" != 1 ] || [ ! -f target/release/libxdan.so ]; then
  cargo build --release --lib || exit 1
fi
# Binaries linked here ask for the soname; build.rs links it beside the library, but re-link it in
# case that link was removed while the build script's output stayed fresh.
[ -e target/release/libxdan.so.1 ] || ln -sfn libxdan.so target/release/libxdan.so.1
model="$root/tests/data/tiny-mixtral/Q8_0/tiny-mixtral-Q8_0.gguf"
out="$root/target/examples-bin"
mkdir -p "$out"
link=(-L"$root/target/release" -Wl,-rpath,"$root/target/release" -lxdan)
passed=0
failed=0
check() {  # check NAME COMMAND...
  if "${@:2}"; then echo "ok: $1"; passed=$((passed + 1)); else echo "FAILED: $1"; failed=$((failed + 1)); fi
}
# expect PATTERN COMMAND...: runs the command, shows its output, and looks for PATTERN in it.
expect() {
  local pattern="$1" log
  shift
  log="$("$@" 2>&1)" || { echo "$log"; return 1; }
  echo "$log"
  grep -q -- "$pattern" <<<"$log"
}

check "npc: build" cc -std=c11 -Wall -Wextra -Werror -O2 -I"$root/include" examples/npc/npc.c -o "$out/npc" "${link[@]}"
# The forked characters must share the world prompt's KV.
check "npc: run (forked sequences share KV)" \
  expect 'after forking 3 characters\] used [0-9]* of [0-9]* token slots, [1-9][0-9]* shared' "$out/npc" "$model" 12

check "cpp chat: build" c++ -std=c++17 -Wall -Wextra -Werror -O2 -I"$root/include" -I"$root/bindings/cpp" \
  examples/cpp/chat.cpp -o "$out/chat" "${link[@]}"
check "cpp chat: two turns" expect '^> .*> .*> ' bash -c "printf 'hello\nand again\n' | '$out/chat' '$model' -n 8 | tr '\n' ' '"

check "go generate: run" env GOPROXY=off GOFLAGS=-mod=mod GOCACHE="$root/target/go-cache" \
  bash -c "cd examples/go && go run . -m '$model' -p 'Once upon a time' -n 8 | grep -q '^Once upon a time'"

check "csharp generate: build" bash -c "mcs -nologo -warnaserror -target:library -out:'$out/Xdan.dll' bindings/csharp/src/*.cs \
  && mcs -nologo -warnaserror -r:'$out/Xdan.dll' -out:'$out/Generate.exe' examples/csharp/Generate.cs"
check "csharp generate: run" bash -c "LD_LIBRARY_PATH='$root/target/release' mono '$out/Generate.exe' '$model' 'Once upon a time' 8 | grep -q '^Once upon a time'"

echo "examples: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
