#!/usr/bin/env bash
# The main demo: fetches SmolLM2-135M-Instruct (scripts/fetch-smollm2.sh), builds libxdan
# (cargo build --release) and the C example examples/c/generate.c with gcc, and runs it on a
# chat prompt. Usage: scripts/run-example.sh ["PROMPT" [generate options: -n N -t TEMP -s SEED]]
set -euo pipefail
cd "$(dirname "$0")/.."

model=$(scripts/fetch-smollm2.sh)
cargo build --release --lib
target="${CARGO_TARGET_DIR:-$PWD/target}/release"
mkdir -p "$target/c-examples"
"${CC:-gcc}" -std=c11 -O2 -Wall -Wextra -I include examples/c/generate.c \
  -o "$target/c-examples/generate" -L "$target" -Wl,-rpath,"$target" -lxdan

if [ $# -eq 0 ]; then
  set -- "What is the capital of France? Answer in one sentence."
fi
exec "$target/c-examples/generate" "$model" "$@"
